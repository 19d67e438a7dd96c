#!/usr/bin/env bash
# Installs what the observability tests of kiln-server need: Prometheus' `promtool`
# (Debian's `prometheus` package; its server is not started) to lint a real /metrics
# scrape, and the `opentelemetry-proto` package (PyPI; it brings `protobuf`) for the
# OTLP receiver crates/kiln-server/tests/otlp_receiver.py, which decodes Kiln's traces
# with the official schema. Idempotent. Prints the export line that makes those tests
# fail rather than skip when a tool is missing.
# Usage: eval "$(bash .ci/observability.sh)"
set -euo pipefail
if ! command -v promtool >/dev/null; then
  echo "installing prometheus (promtool)" >&2
  { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >&2
fi
promtool --version >/dev/null
receiver_import='import opentelemetry.proto.collector.trace.v1.trace_service_pb2, google.protobuf.json_format'
if ! python3 -c "$receiver_import" 2>/dev/null; then
  echo "installing opentelemetry-proto" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq python3-pip; } >&2
  fi
  # As in smtp.sh: a distribution's Python may refuse user packages (PEP 668).
  python3 -m pip install --quiet opentelemetry-proto >&2 \
    || python3 -m pip install --quiet --break-system-packages opentelemetry-proto >&2
fi
python3 -c "$receiver_import" >&2
echo "export KILN_REQUIRE_PROMTOOL=1 KILN_REQUIRE_OTLP=1"
