//! The SMTP client of the mail task: lettre's connection over tokio, TLS by rustls (ring).
//!
//! One connection per message, driven step by step — connect (TLS from the start for
//! `smtps://`), STARTTLS (required, when offered, or never), AUTH PLAIN/LOGIN, MAIL FROM,
//! RCPT TO, DATA, QUIT — so that a failure names its step and what to fix. Failures are
//! sorted by lettre's classification: a 5xx reply is permanent (the mail task gives up),
//! anything else — network, TLS, a 4xx reply, a relay without STARTTLS or a usable AUTH —
//! is transient and retried. The password never appears in a message or in `Debug`.

use std::fmt;
use std::time::Duration;

use kiln_core::Millis;
use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::Error as LettreError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters, TlsParametersBuilder,
};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::secret_box::Secret;

/// The name Kiln gives in EHLO.
const HELLO_NAME: &str = "kiln.localdomain";

/// One message to one recipient.
#[derive(Clone, Debug)]
pub(crate) struct Message<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub date: Millis,
    /// Unique per message (the outbox id), for the `Message-ID` header.
    pub id: i64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SmtpError {
    /// Worth retrying: network or TLS trouble, a timeout, a 4xx reply, a relay that does
    /// not offer what the URL asks for.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: a 5xx reply (a refused login among them), or an address
    /// Kiln will not send to.
    #[error("{0}")]
    Permanent(String),
}

/// How the connection to the relay is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsMode {
    /// `?tls=none`: plain SMTP, never STARTTLS.
    None,
    /// `smtp://` without credentials: STARTTLS when the relay offers it, plain otherwise.
    Opportunistic,
    /// `?tls=required` (and `smtp://` with credentials): STARTTLS or nothing is sent.
    Required,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

impl TlsMode {
    fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Required => "required",
            TlsMode::Implicit => "implicit",
        }
    }
}

/// A relay's login: the user and the password (redacted in `Debug`).
#[derive(Clone, Debug)]
pub(crate) struct Login {
    pub user: String,
    pub password: Secret,
}

/// Where and how mail is sent: parsed once at start-up (`EmailConfig::parse`).
#[derive(Clone)]
pub(crate) struct SmtpRelay {
    /// A host name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub login: Option<Login>,
    /// Whether `--smtp-ca-file` added a CA to Mozilla's roots (for the advice on a
    /// certificate Kiln does not trust).
    pub extra_ca: bool,
    /// The rustls configuration; `None` with `TlsMode::None`.
    tls_parameters: Option<TlsParameters>,
}

impl fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("relay", &self.to_string())
            .field("tls", &self.tls)
            .field("login", &self.login)
            .field("extra_ca", &self.extra_ca)
            .finish()
    }
}

/// The relay as an URL without the password, for logs and errors:
/// `smtps://kiln@mail.example.com:465`, `smtp://[::1]:25?tls=none`.
impl fmt::Display for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.tls {
            TlsMode::Implicit => "smtps",
            _ => "smtp",
        };
        write!(f, "{scheme}://")?;
        if let Some(login) = &self.login {
            write!(f, "{}@", login.user)?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        match self.tls {
            TlsMode::None | TlsMode::Required => write!(f, "?tls={}", self.tls.as_str()),
            TlsMode::Opportunistic | TlsMode::Implicit => Ok(()),
        }
    }
}

impl SmtpRelay {
    /// Builds the relay and its TLS configuration: Mozilla's roots, plus the CA
    /// certificates of `ca_pem` when given. Errors name what to fix.
    pub(crate) fn new(
        host: String,
        port: u16,
        tls: TlsMode,
        login: Option<Login>,
        ca_pem: Option<&[u8]>,
    ) -> Result<SmtpRelay, String> {
        let tls_parameters = match tls {
            TlsMode::None => {
                if ca_pem.is_some() {
                    return Err(
                        "--smtp-ca-file is of no use with ?tls=none in --smtp-url: drop one"
                            .to_owned(),
                    );
                }
                None
            }
            TlsMode::Opportunistic | TlsMode::Required | TlsMode::Implicit => {
                Some(tls_parameters(&host, ca_pem)?)
            }
        };
        Ok(SmtpRelay {
            host,
            port,
            tls,
            login,
            extra_ca: ca_pem.is_some(),
            tls_parameters,
        })
    }
}

fn tls_parameters(host: &str, ca_pem: Option<&[u8]>) -> Result<TlsParameters, String> {
    let mut builder =
        TlsParametersBuilder::new(host.to_owned()).certificate_store(CertificateStore::WebpkiRoots);
    if let Some(pem) = ca_pem {
        // lettre reads a file without certificates as an empty list; say so instead.
        let count = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("--smtp-ca-file: not a readable PEM file ({error})"))?
            .len();
        if count == 0 {
            return Err(
                "--smtp-ca-file holds no certificate: give the CA's certificate in PEM \
                 (-----BEGIN CERTIFICATE-----)"
                    .to_owned(),
            );
        }
        let certificate = Certificate::from_pem(pem)
            .map_err(|error| format!("--smtp-ca-file: not a readable PEM file ({error})"))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|error| {
        format!("--smtp-ca-file: a certificate in it cannot be used as a CA ({error})")
    })
}

/// An address without anything that could break the SMTP dialogue or the headers.
pub(crate) fn is_plain_address(address: &str) -> bool {
    let ok_chars = address
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | '"' | '(' | ')'));
    match address.split_once('@') {
        Some((local, domain)) => {
            ok_chars
                && !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && address.parse::<Address>().is_ok()
        }
        None => false,
    }
}

/// Sends `message` through `relay` within `timeout`.
pub(crate) async fn send(
    relay: &SmtpRelay,
    message: &Message<'_>,
    timeout: Duration,
) -> Result<(), SmtpError> {
    let envelope = envelope(message)?;
    let data = render(message);
    match tokio::time::timeout(timeout, dialogue(relay, &envelope, &data, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(SmtpError::Transient(format!(
            "the SMTP relay {relay} did not finish within {} s",
            timeout.as_secs()
        ))),
    }
}

fn envelope(message: &Message<'_>) -> Result<Envelope, SmtpError> {
    let refused = |address: &str| {
        SmtpError::Permanent(format!("'{address}' is not an address Kiln sends to"))
    };
    if !is_plain_address(message.to) {
        return Err(refused(message.to));
    }
    let to: Address = message.to.parse().map_err(|_| refused(message.to))?;
    let from: Address = message.from.parse().map_err(|_| refused(message.from))?;
    Envelope::new(Some(from), vec![to]).map_err(|_| refused(message.to))
}

async fn dialogue(
    relay: &SmtpRelay,
    envelope: &Envelope,
    data: &str,
    timeout: Duration,
) -> Result<(), SmtpError> {
    let hello = ClientId::Domain(HELLO_NAME.to_owned());
    let implicit_tls = match relay.tls {
        TlsMode::Implicit => relay.tls_parameters.clone(),
        TlsMode::None | TlsMode::Opportunistic | TlsMode::Required => None,
    };
    let mut connection = AsyncSmtpConnection::connect_tokio1(
        (relay.host.as_str(), relay.port),
        Some(timeout),
        &hello,
        implicit_tls,
        None,
    )
    .await
    .map_err(|error| failure(relay, "the connection", &error))?;

    // A failed TLS handshake leaves lettre's connection without a stream: it is dropped
    // as it is (QUIT on it would write nowhere). lettre itself aborts (QUIT, close) after
    // a refused command.
    starttls(relay, &mut connection, &hello).await?;
    if let Some(login) = &relay.login {
        let credentials = Credentials::new(login.user.clone(), login.password.expose().to_owned());
        if let Err(error) = connection
            .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
            .await
        {
            connection.abort().await;
            return Err(login_failure(relay, login, &error));
        }
    }
    connection
        .send(envelope, data.as_bytes())
        .await
        .map_err(|error| failure(relay, "the message", &error))?;
    // The relay accepted the message; a failed goodbye changes nothing.
    let _ = connection.quit().await;
    Ok(())
}

/// STARTTLS as the URL asks: always (`Required`), when offered (`Opportunistic`), never.
async fn starttls(
    relay: &SmtpRelay,
    connection: &mut AsyncSmtpConnection,
    hello: &ClientId,
) -> Result<(), SmtpError> {
    let starttls = match relay.tls {
        TlsMode::Required if !connection.can_starttls() => {
            let _ = connection.quit().await;
            return Err(SmtpError::Transient(format!(
                "the SMTP relay {relay} does not offer STARTTLS, and --smtp-url requires it \
                 (tls=required, or a login): nothing was sent. Enable STARTTLS on the relay, \
                 use smtps:// if it speaks TLS from the first byte (port 465), or \
                 ?tls=none for a trusted local relay"
            )));
        }
        TlsMode::Required => true,
        TlsMode::Opportunistic => connection.can_starttls(),
        TlsMode::None | TlsMode::Implicit => false,
    };
    if starttls && let Some(tls_parameters) = &relay.tls_parameters {
        connection
            .starttls(tls_parameters.clone(), hello)
            .await
            .map_err(|error| failure(relay, "STARTTLS", &error))?;
    }
    Ok(())
}

/// A failed step, classified as lettre classifies it, with what to fix.
fn failure(relay: &SmtpRelay, step: &str, error: &LettreError) -> SmtpError {
    if let Some(tls_error) = rustls_error(error) {
        return SmtpError::Transient(tls_failure(relay, tls_error));
    }
    let detail = match step {
        "the connection" if error.status().is_none() => {
            format!("cannot connect to the SMTP relay {relay}: {error}")
        }
        _ => {
            let mut detail = format!("the SMTP relay {relay} refused {step}: {error}");
            if relay.login.is_none() && error.status().is_some_and(|code| code.to_string() == "530")
            {
                detail.push_str(
                    "; the relay wants a login: give smtp://USER:PASSWORD@HOST in --smtp-url, \
                     or the user there and --smtp-password-file",
                );
            }
            detail
        }
    };
    classify(error, detail)
}

fn login_failure(relay: &SmtpRelay, login: &Login, error: &LettreError) -> SmtpError {
    let user = &login.user;
    if error.is_permanent() {
        SmtpError::Permanent(format!(
            "the SMTP relay {relay} refused the credentials of user '{user}' ({error}): \
             check the user in --smtp-url and the password (--smtp-password-file, or \
             user:password@ in --smtp-url)"
        ))
    } else if error.is_transient() {
        SmtpError::Transient(format!(
            "the SMTP relay {relay} refused the login of user '{user}' for now ({error})"
        ))
    } else if error.is_client() {
        SmtpError::Transient(format!(
            "the SMTP relay {relay} offers no login Kiln can use on this connection ({error}): \
             Kiln logs in with AUTH PLAIN or LOGIN; a relay may offer them only over TLS"
        ))
    } else {
        failure(relay, "the login", error)
    }
}

/// 5xx → permanent, everything else → transient.
fn classify(error: &LettreError, detail: String) -> SmtpError {
    if error.is_permanent() {
        SmtpError::Permanent(detail)
    } else {
        SmtpError::Transient(detail)
    }
}

/// The rustls error behind a failed handshake: lettre wraps it in an `io::Error`, whose
/// `source()` skips it, so each `io::Error` is opened too.
fn rustls_error(error: &LettreError) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(tls_error) = error.downcast_ref::<rustls::Error>() {
            return Some(tls_error);
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io_error| io_error.get_ref())
            && let Some(tls_error) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls_error);
        }
        current = error.source();
    }
    None
}

fn tls_failure(relay: &SmtpRelay, tls_error: &rustls::Error) -> String {
    use rustls::CertificateError;
    let host = &relay.host;
    let advice = match tls_error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) if relay.extra_ca => {
            "the relay's certificate is signed neither by the CA in --smtp-ca-file nor by a \
             public CA: give the CA that signed it"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the relay's certificate is not signed by a public CA Kiln trusts: give the CA \
             that signed it with --smtp-ca-file (PEM)"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the relay's certificate is not issued for '{host}': name the relay in \
             --smtp-url as its certificate does"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the relay's certificate has expired: renew it on the relay".to_owned(),
        rustls::Error::InvalidCertificate(_) => {
            "the relay's certificate is refused: check it on the relay".to_owned()
        }
        _ if relay.tls == TlsMode::Implicit => format!(
            "does port {} speak TLS from the first byte? smtps:// is for that (usually port \
             465); for STARTTLS (usually port 587) use smtp://",
            relay.port
        ),
        _ => "check the relay's TLS set-up".to_owned(),
    };
    format!("TLS handshake with the SMTP relay {relay} failed ({tls_error}): {advice}")
}

/// The message as sent after DATA: headers and the body with CRLF line ends (lettre
/// dot-stuffs it and adds the terminating `.` line). A body that is not plain ASCII, or
/// has a line too long for SMTP, is quoted-printable, so no relay needs 8BITMIME.
fn render(message: &Message<'_>) -> String {
    let domain = message.from.rsplit('@').next().unwrap_or("localhost");
    let seven_bit = message.body.is_ascii() && message.body.lines().all(|line| line.len() <= 998);
    let mut text = String::new();
    for (name, value) in [
        ("From", message.from.to_owned()),
        ("To", message.to.to_owned()),
        ("Subject", encode_header(message.subject)),
        ("Date", rfc5322_date(message.date)),
        (
            "Message-ID",
            format!("<kiln-notification-{}@{domain}>", message.id),
        ),
        ("MIME-Version", "1.0".to_owned()),
        ("Content-Type", "text/plain; charset=utf-8".to_owned()),
        (
            "Content-Transfer-Encoding",
            if seven_bit {
                "7bit"
            } else {
                "quoted-printable"
            }
            .to_owned(),
        ),
        ("Auto-Submitted", "auto-generated".to_owned()),
    ] {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    if seven_bit {
        text.push_str(&message.body.lines().collect::<Vec<_>>().join("\r\n"));
    } else {
        text.push_str(&quoted_printable(message.body));
    }
    text
}

/// RFC 2045 quoted-printable: line breaks become CRLF, encoded lines stay within 76
/// characters (soft breaks `=`), and a space or tab ending a line is encoded.
fn quoted_printable(body: &str) -> String {
    let mut out = String::new();
    for (index, line) in body.lines().enumerate() {
        if index > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut width = 0;
        for (position, &byte) in bytes.iter().enumerate() {
            let last = position + 1 == bytes.len();
            let literal = matches!(byte, b'!'..=b'<' | b'>'..=b'~')
                || (matches!(byte, b' ' | b'\t') && !last);
            let piece = if literal { 1 } else { 3 };
            if width + piece > 75 {
                out.push_str("=\r\n");
                width = 0;
            }
            if literal {
                out.push(byte as char);
            } else {
                out.push_str(&format!("={byte:02X}"));
            }
            width += piece;
        }
    }
    out
}

/// A header value: as is when plain ASCII, else RFC 2047 Q-encoded UTF-8. Line breaks
/// never reach a header.
fn encode_header(value: &str) -> String {
    let value: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if value.is_ascii() {
        return value;
    }
    let mut encoded = String::from("=?UTF-8?Q?");
    for byte in value.bytes() {
        match byte {
            b' ' => encoded.push('_'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'#' | b'/' | b':' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("={byte:02X}")),
        }
    }
    encoded.push_str("?=");
    encoded
}

/// `Wed, 25 Nov 2026 00:11:35 +0000`.
fn rfc5322_date(at: Millis) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // RFC 3339 from kiln-core: `2026-11-25T00:11:35.042Z`.
    let rfc3339 = at.to_rfc3339();
    let part = |range: std::ops::Range<usize>| rfc3339.get(range).unwrap_or("0");
    let month: usize = part(5..7).parse().unwrap_or(1);
    let weekday = (at.0.div_euclid(86_400_000) + 4).rem_euclid(7) as usize;
    format!(
        "{}, {} {} {} {} +0000",
        DAYS[weekday],
        part(8..10).trim_start_matches('0'),
        MONTHS[month.clamp(1, 12) - 1],
        part(0..4),
        part(11..19),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(subject: &'a str, body: &'a str) -> Message<'a> {
        Message {
            from: "kiln@example.com",
            to: "ada@example.com",
            subject,
            body,
            date: Millis(1_795_565_495_000),
            id: 7,
        }
    }

    #[test]
    fn headers_are_encoded_and_ascii_bodies_sent_as_is() {
        let text = render(&message(
            "web #1 failed in stage tést",
            "first\n.hidden\nlast",
        ));
        assert!(text.contains("Subject: =?UTF-8?Q?web_#1_failed_in_stage_t=C3=A9st?=\r\n"));
        assert!(
            text.contains("Date: Wed, 25 Nov 2026 00:11:35 +0000\r\n"),
            "{text}"
        );
        assert!(text.contains("Message-ID: <kiln-notification-7@example.com>\r\n"));
        assert!(text.contains("Content-Transfer-Encoding: 7bit\r\n"));
        // lettre dot-stuffs and ends the data; the text must not do either.
        assert!(text.ends_with("\r\n\r\nfirst\r\n.hidden\r\nlast"), "{text}");
    }

    #[test]
    fn other_bodies_are_quoted_printable() {
        let long = "x".repeat(100);
        let body = format!("stage tést = ok \n{long}");
        let text = render(&message("s", &body));
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        let encoded = text.split("\r\n\r\n").nth(1).unwrap();
        let expected_long = format!("{}=\r\n{}", "x".repeat(75), "x".repeat(25));
        assert_eq!(
            encoded,
            format!("stage t=C3=A9st =3D ok=20\r\n{expected_long}")
        );
        assert!(encoded.lines().all(|line| line.len() <= 76));
    }

    #[test]
    fn addresses_that_could_inject_are_refused() {
        assert!(is_plain_address("ada@example.com"));
        for bad in [
            "ada",
            "ada@",
            "@x",
            "a b@x",
            "a>@x",
            "a@x\r\nRCPT TO:<b@y>",
            "a@b@c",
        ] {
            assert!(!is_plain_address(bad), "{bad}");
        }
    }

    #[test]
    fn the_relay_shows_without_its_password() {
        let relay = SmtpRelay::new(
            "mail.example.com".to_owned(),
            587,
            TlsMode::Required,
            Some(Login {
                user: "kiln".to_owned(),
                password: Secret::new("hunter2"),
            }),
            None,
        )
        .unwrap();
        assert_eq!(
            relay.to_string(),
            "smtp://kiln@mail.example.com:587?tls=required"
        );
        let debug = format!("{relay:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("kiln@mail.example.com"), "{debug}");
    }
}
