"""A real SMTP server with TLS and AUTH for kiln-server's email tests (tests/notifications.rs).

`python3 -m aiosmtpd` cannot switch on STARTTLS, implicit TLS or AUTH, so the tests run
aiosmtpd's Controller through this script. Messages go to a maildir (aiosmtpd's Mailbox
handler); every login attempt is appended to AUTH_LOG as `MECHANISM USER ok|refused`, so a
test can tell that no password reached a server. Prints `ready` once listening, then runs
until killed.

Usage: smtp_tls_server.py MODE PORT MAILDIR AUTH_LOG CERT KEY USER PASSWORD
  MODE starttls: STARTTLS required before anything else, then AUTH required.
  MODE smtps:    TLS from the first byte, AUTH required.
  MODE plain:    no STARTTLS; AUTH offered (and required) in plain text.
"""

import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


def main() -> None:
    mode, port, maildir, auth_log, cert, key, user, password = sys.argv[1:9]

    def authenticator(server, session, envelope, mechanism, auth_data):
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else "?"
        with open(auth_log, "a", encoding="utf-8") as log:
            log.write(f"{mechanism} {login} {'ok' if accepted else 'refused'}\n")
        return AuthResult(success=accepted, handled=False)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    common = dict(
        hostname="127.0.0.1",
        port=int(port),
        authenticator=authenticator,
        auth_required=True,
        ready_timeout=30,
    )
    if mode == "starttls":
        controller = Controller(
            Mailbox(maildir), tls_context=context, require_starttls=True, **common
        )
    elif mode == "smtps":
        # Implicit TLS is the transport's, not STARTTLS: aiosmtpd would not offer AUTH
        # on it unless told that the connection needs no STARTTLS for it.
        controller = Controller(
            Mailbox(maildir), ssl_context=context, auth_require_tls=False, **common
        )
    elif mode == "plain":
        controller = Controller(Mailbox(maildir), auth_require_tls=False, **common)
    else:
        sys.exit(f"unknown mode {mode!r}: starttls, smtps or plain")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server thread starts, so sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    controller.start()
    print("ready", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
