//! A minimal SMTP client (RFC 5321) for a local relay: plain TCP, no TLS, no AUTH.
//!
//! One connection per message: greeting, EHLO (HELO when refused), MAIL FROM, RCPT TO,
//! DATA with dot-stuffing, QUIT. Replies are sorted into transient (4xx, network) and
//! permanent (5xx) failures, so the mail task retries only what may succeed later.

use std::time::Duration;

use kiln_core::Millis;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    /// Worth retrying: network trouble, a timeout, or a 4xx reply.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: a 5xx reply, or an address Kiln will not send to.
    #[error("{0}")]
    Permanent(String),
}

/// An address without anything that could break the SMTP dialogue or the headers.
pub(crate) fn is_plain_address(address: &str) -> bool {
    let ok_chars = address
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | '"' | '(' | ')'));
    match address.split_once('@') {
        Some((local, domain)) => {
            ok_chars && !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        }
        None => false,
    }
}

/// Sends `message` through the relay at `relay` (`host:port`) within `timeout`.
pub(crate) async fn send(
    relay: &str,
    message: &Message<'_>,
    timeout: Duration,
) -> Result<(), SmtpError> {
    if !is_plain_address(message.to) {
        return Err(SmtpError::Permanent(format!(
            "'{}' is not an address Kiln sends to",
            message.to
        )));
    }
    match tokio::time::timeout(timeout, dialogue(relay, message)).await {
        Ok(result) => result,
        Err(_) => Err(SmtpError::Transient(format!(
            "the SMTP relay {relay} did not finish within {} s",
            timeout.as_secs()
        ))),
    }
}

async fn dialogue(relay: &str, message: &Message<'_>) -> Result<(), SmtpError> {
    let stream = TcpStream::connect(relay)
        .await
        .map_err(|error| SmtpError::Transient(format!("cannot connect to {relay}: {error}")))?;
    let mut connection = Connection {
        stream: BufReader::new(stream),
    };
    connection.expect("greeting", &[220]).await?;
    let hostname = "kiln.localdomain";
    connection.command(&format!("EHLO {hostname}")).await?;
    if let Err(SmtpError::Permanent(_)) = connection.expect("EHLO", &[250]).await {
        connection.command(&format!("HELO {hostname}")).await?;
        connection.expect("HELO", &[250]).await?;
    }
    connection
        .command(&format!("MAIL FROM:<{}>", message.from))
        .await?;
    connection.expect("MAIL FROM", &[250]).await?;
    connection
        .command(&format!("RCPT TO:<{}>", message.to))
        .await?;
    connection.expect("RCPT TO", &[250, 251]).await?;
    connection.command("DATA").await?;
    connection.expect("DATA", &[354]).await?;
    connection.write(&render(message)).await?;
    connection.expect("end of data", &[250]).await?;
    // The relay accepted the message; a failed goodbye changes nothing.
    let _ = connection.command("QUIT").await;
    let _ = connection.expect("QUIT", &[221]).await;
    Ok(())
}

struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn command(&mut self, line: &str) -> Result<(), SmtpError> {
        self.write(&format!("{line}\r\n")).await
    }

    async fn write(&mut self, text: &str) -> Result<(), SmtpError> {
        let stream = self.stream.get_mut();
        stream
            .write_all(text.as_bytes())
            .await
            .map_err(|error| SmtpError::Transient(format!("SMTP write failed: {error}")))?;
        stream
            .flush()
            .await
            .map_err(|error| SmtpError::Transient(format!("SMTP write failed: {error}")))
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, step: &str, accepted: &[u16]) -> Result<(), SmtpError> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let read = (&mut self.stream)
                .take(4096)
                .read_line(&mut line)
                .await
                .map_err(|error| SmtpError::Transient(format!("SMTP read failed: {error}")))?;
            if read == 0 {
                return Err(SmtpError::Transient(format!(
                    "the SMTP relay closed the connection at {step}"
                )));
            }
            let line = line.trim_end();
            reply.push_str(line);
            reply.push(' ');
            // "250-…" continues a reply, "250 …" (or a bare code) ends it.
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        let code: u16 = reply.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
            SmtpError::Transient(format!("unreadable SMTP reply at {step}: {reply}"))
        })?;
        if accepted.contains(&code) {
            return Ok(());
        }
        let detail = format!("the SMTP relay refused {step}: {}", reply.trim_end());
        if (500..600).contains(&code) {
            Err(SmtpError::Permanent(detail))
        } else {
            Err(SmtpError::Transient(detail))
        }
    }
}

/// The message as sent after DATA: headers, body with CRLF line ends and dot-stuffing,
/// and the terminating `.` line.
fn render(message: &Message<'_>) -> String {
    let domain = message.from.rsplit('@').next().unwrap_or("localhost");
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
        ("Content-Transfer-Encoding", "8bit".to_owned()),
        ("Auto-Submitted", "auto-generated".to_owned()),
    ] {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    for line in message.body.lines() {
        if line.starts_with('.') {
            text.push('.');
        }
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str(".\r\n");
    text
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

    #[test]
    fn messages_are_dot_stuffed_and_headers_encoded() {
        let message = Message {
            from: "kiln@example.com",
            to: "ada@example.com",
            subject: "web #1 failed in stage tést",
            body: "first\n.hidden\nlast",
            date: Millis(1_795_565_495_000),
            id: 7,
        };
        let text = render(&message);
        assert!(text.contains("Subject: =?UTF-8?Q?web_#1_failed_in_stage_t=C3=A9st?=\r\n"));
        assert!(
            text.contains("Date: Wed, 25 Nov 2026 00:11:35 +0000\r\n"),
            "{text}"
        );
        assert!(text.contains("Message-ID: <kiln-notification-7@example.com>\r\n"));
        assert!(text.ends_with("\r\n\r\nfirst\r\n..hidden\r\nlast\r\n.\r\n"));
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
}
