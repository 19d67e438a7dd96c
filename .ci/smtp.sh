#!/usr/bin/env bash
# Installs what the email tests of kiln-server need: aiosmtpd (PyPI), a real SMTP server
# the tests start on a free port with its Mailbox handler — plain through its CLI, with
# STARTTLS, implicit TLS and AUTH through crates/kiln-server/tests/smtp_tls_server.py
# (Python's own ssl module; the certificates are made by the Rust test). Idempotent.
# Prints the export line that makes the tests fail rather than skip when aiosmtpd is
# missing.
# Usage: eval "$(bash .ci/smtp.sh)"
set -euo pipefail
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing aiosmtpd" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq python3-pip; } >&2
  fi
  # A distribution's Python may refuse user packages (PEP 668): then install anyway, the
  # machine is a CI runner.
  python3 -m pip install --quiet aiosmtpd >&2 \
    || python3 -m pip install --quiet --break-system-packages aiosmtpd >&2
fi
python3 -c 'import aiosmtpd' >&2
echo "export KILN_REQUIRE_SMTP=1"
