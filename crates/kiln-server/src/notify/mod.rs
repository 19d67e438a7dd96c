//! The notifier: one task per replica that turns committed build events into
//! notifications for the project's admins and the instance admins.
//!
//! It owns its state (the cursor, when it last auto-archived) on one task, and reacts to
//! a closed set of wake-ups (`Wake`): a local commit (the bus), a tick (commits of other
//! replicas, auto-archive), or stop. It reads events in id order after its cursor, which
//! it stores (`kiln_counters.notifier_cursor`) when it notified someone, at a tick, at
//! stop, and otherwise at most once per poll interval, so a restart resumes at most that
//! far back; ids are gap-free, so nothing is skipped. Every replica runs a
//! notifier: the store keeps one notification per (user, event) and per (user, build,
//! kind), so replays and concurrent replicas notify no one twice, and the cursor moves
//! by compare-and-set, never backwards.
//!
//! Only `build_started`, `build_completed` and `build_failed` notify (a `build_failed`
//! with `data.reason = "stale"` as kind `build_stale`); stages, heartbeats, progress and
//! custom events never do. Email (`mail`) is a separate task fed by the store's outbox,
//! so a slow or absent mail server never delays the notifier, let alone ingest.

pub(crate) mod mail;
mod render;
pub(crate) mod smtp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::Millis;
use kiln_store::{Delivery, NotificationKind, Store, StoreError, StoredEvent};
use tokio::sync::{Notify, watch};

use self::smtp::{Login, SmtpRelay, TlsMode};
use crate::clock::Clock;
use crate::live::Bus;
use crate::secret_box::Secret;

/// Events read per page.
const PAGE: i64 = 500;
/// How often, in server time, notifications older than the retention are archived.
const ARCHIVE_EVERY_MS: i64 = 3_600_000;

/// Notifications: retention and optional email.
#[derive(Clone, Debug)]
pub struct NotificationConfig {
    /// Notifications older than this many days are archived automatically.
    pub retention_days: i64,
    /// How often the notifier looks for events committed by other replicas (local
    /// commits wake it at once) and the mail task for due retries.
    pub poll_interval: Duration,
    /// Email delivery; `None` (the default) sends none.
    pub email: Option<EmailConfig>,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            poll_interval: Duration::from_secs(1),
            email: None,
        }
    }
}

/// Where and how notification emails are sent. `Debug` shows no password.
#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// The SMTP relay: address, TLS mode, login, trusted CAs.
    pub(crate) relay: SmtpRelay,
    /// The envelope and header sender.
    pub from: String,
    /// Attempts per email before it is given up (transient failures only; a permanent
    /// refusal, 5xx, gives up at once).
    pub max_attempts: i64,
    /// The wait before the first retry; each further retry waits twice as long, up to
    /// `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit on one delivery (connect, TLS, login, dialogue, data).
    pub send_timeout: Duration,
}

/// What `--smtp-password-file` and `--smtp-ca-file` hold (the caller reads the files).
#[derive(Clone, Debug, Default)]
pub struct SmtpFiles {
    /// The relay's password as the file holds it (a final line break is dropped); the
    /// user is the one in `--smtp-url` (`smtp://USER@HOST`).
    pub password: Option<Secret>,
    /// PEM certificates of the CA(s) that signed the relay's certificate, trusted in
    /// addition to Mozilla's roots.
    pub ca_certificates_pem: Option<Vec<u8>>,
}

/// The accepted forms, for error messages.
const SMTP_URL_FORMS: &str = "use smtp://[USER[:PASSWORD]@]HOST[:PORT][?tls=required|none] \
                              (STARTTLS when offered, port 25) or \
                              smtps://[USER[:PASSWORD]@]HOST[:PORT] (TLS from the first byte, port 465)";

impl EmailConfig {
    /// Parses `--smtp-url`, `--smtp-from` and what `--smtp-password-file` and
    /// `--smtp-ca-file` hold. Every error names the flag and what to write instead; none
    /// shows the password.
    ///
    /// - `smtp://HOST[:PORT]` (port 25): STARTTLS when the relay offers it, plain
    ///   otherwise; `?tls=required` fails rather than send in plain; `?tls=none` never
    ///   tries TLS.
    /// - `smtps://HOST[:PORT]` (port 465): TLS from the first byte.
    /// - `USER:PASSWORD@` (percent-encoded) or `USER@` with the password file: AUTH PLAIN
    ///   or LOGIN. With a login, `smtp://` requires STARTTLS (the password never travels in
    ///   plain) unless `?tls=none` says otherwise.
    pub fn parse(smtp_url: &str, from: &str, files: &SmtpFiles) -> Result<EmailConfig, String> {
        let shown = redacted_url(smtp_url);
        let url = url::Url::parse(smtp_url)
            .map_err(|error| format!("--smtp-url '{shown}': {error}; {SMTP_URL_FORMS}"))?;
        let (default_port, mut tls) = match url.scheme() {
            "smtp" => (25, TlsMode::Opportunistic),
            "smtps" => (465, TlsMode::Implicit),
            other => {
                return Err(format!(
                    "--smtp-url '{shown}': unknown scheme '{other}'; {SMTP_URL_FORMS}"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() && !name.contains('%') => {
                name.to_owned()
            }
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            _ => {
                return Err(format!(
                    "--smtp-url '{shown}': no host name; {SMTP_URL_FORMS}"
                ));
            }
        };
        let port = url.port().unwrap_or(default_port);
        if port == 0 {
            return Err(format!("--smtp-url '{shown}': port 0 cannot be used"));
        }
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(format!(
                "--smtp-url '{shown}': a path or #fragment has no meaning here; {SMTP_URL_FORMS}"
            ));
        }
        let mut tls_given = false;
        for (name, value) in url.query_pairs() {
            if name != "tls" || tls_given {
                return Err(format!(
                    "--smtp-url '{shown}': '{name}' is not a setting Kiln knows (once: \
                     ?tls=required, ?tls=opportunistic or ?tls=none)"
                ));
            }
            tls_given = true;
            tls = match (tls, value.as_ref()) {
                (TlsMode::Implicit, _) => {
                    return Err(format!(
                        "--smtp-url '{shown}': smtps:// is TLS from the first byte, so ?tls= \
                         does not apply; for STARTTLS use smtp://HOST:587?tls=required"
                    ));
                }
                (_, "required") => TlsMode::Required,
                (_, "opportunistic") => TlsMode::Opportunistic,
                (_, "none") => TlsMode::None,
                (_, other) => {
                    return Err(format!(
                        "--smtp-url '{shown}': tls={other} is not a choice: tls=required \
                         (STARTTLS or nothing is sent), tls=opportunistic (STARTTLS when \
                         offered, the default) or tls=none (plain SMTP)"
                    ));
                }
            };
        }
        let login = login(&url, &shown, files)?;
        // A relay that "forgets" to offer STARTTLS must not get the password in plain:
        // with a login, STARTTLS is required unless the URL says tls=none.
        if login.is_some() && tls == TlsMode::Opportunistic {
            tls = TlsMode::Required;
        }
        let relay = SmtpRelay::new(host, port, tls, login, files.ca_certificates_pem.as_deref())?;
        if !smtp::is_plain_address(from) {
            return Err(format!(
                "--smtp-from '{from}': give an address like kiln@example.com"
            ));
        }
        Ok(EmailConfig {
            relay,
            from: from.to_owned(),
            max_attempts: 8,
            first_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            send_timeout: Duration::from_secs(30),
        })
    }

    /// The relay as a URL without its password, for logs.
    pub fn relay_url(&self) -> String {
        self.relay.to_string()
    }
}

/// The user and password of `--smtp-url`, or its user and `--smtp-password-file`.
fn login(url: &url::Url, shown: &str, files: &SmtpFiles) -> Result<Option<Login>, String> {
    let decode = |part: &str, what: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| format!("--smtp-url '{shown}': the {what} is not UTF-8 once decoded"))
    };
    let user = decode(url.username(), "user")?;
    let url_password = url.password().map(|p| decode(p, "password")).transpose()?;
    let file_password = files.password.as_ref().map(|password| {
        let text = password.expose();
        text.strip_suffix('\n')
            .map(|text| text.strip_suffix('\r').unwrap_or(text))
            .unwrap_or(text)
            .to_owned()
    });
    let password = match (url_password, file_password) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "the SMTP password is given twice, in --smtp-url '{shown}' and in \
                 --smtp-password-file: keep one (the file keeps it out of the process list)"
            ));
        }
        (Some(password), None) | (None, Some(password)) => Some(password),
        (None, None) => None,
    };
    match (user.is_empty(), password) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(format!(
            "--smtp-url '{shown}': a password needs a user: smtp://USER@HOST with \
             --smtp-password-file, or smtp://USER:PASSWORD@HOST"
        )),
        (false, None) => Err(format!(
            "--smtp-url '{shown}' names the user '{user}' but no password: give \
             --smtp-password-file, or smtp://USER:PASSWORD@HOST"
        )),
        (false, Some(password)) if password.is_empty() => Err(format!(
            "the SMTP password of user '{user}' is empty (--smtp-url '{shown}' or \
             --smtp-password-file)"
        )),
        (false, Some(password)) => Ok(Some(Login {
            user,
            password: Secret::new(password),
        })),
    }
}

/// `smtp://user:secret@host` as `smtp://***@host`, also when it does not parse: the user
/// information is dropped whole.
fn redacted_url(smtp_url: &str) -> String {
    let Some((scheme, rest)) = smtp_url.split_once("://") else {
        return if smtp_url.contains('@') {
            "***".to_owned()
        } else {
            smtp_url.to_owned()
        };
    };
    // The last `@` anywhere: a password may hold an unencoded `/` or `@`.
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => smtp_url.to_owned(),
    }
}

/// Why the notifier loop runs an iteration.
enum Wake {
    Commit,
    Tick,
    Stop,
}

struct Notifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: NotificationConfig,
    /// Wakes the mail task when new emails are queued.
    mail_wake: Arc<Notify>,
    last_archive: Option<Millis>,
    /// Where this notifier got to (ahead of the stored cursor between two saves).
    cursor: Option<i64>,
    /// The cursor as this notifier last stored it, and when.
    stored: i64,
    stored_at: std::time::Instant,
}

/// The notifier task; returns when `stop` changes.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    bus: Arc<Bus>,
    clock: Arc<dyn Clock>,
    config: NotificationConfig,
    mail_wake: Arc<Notify>,
    passes: Arc<crate::background::Passes>,
    mut stop: watch::Receiver<bool>,
) {
    let poll_interval = config.poll_interval;
    let mut notifier = Notifier {
        store,
        clock,
        config,
        mail_wake,
        last_archive: None,
        cursor: None,
        stored: 0,
        stored_at: std::time::Instant::now(),
    };
    let mut wake = Wake::Tick;
    loop {
        match wake {
            Wake::Stop => {
                if let Err(error) = notifier.save_cursor().await {
                    tracing::warn!(%error, "notifier cursor not saved at stop; events after it are read again");
                }
                return;
            }
            Wake::Commit | Wake::Tick => {
                if let Err(error) = notifier.catch_up(matches!(wake, Wake::Tick)).await {
                    tracing::warn!(%error, "notifier cannot process events; retrying");
                }
                if matches!(wake, Wake::Tick) {
                    notifier.auto_archive().await;
                }
                passes.done(crate::background::Periodic::Notifier);
            }
        }
        wake = tokio::select! {
            _ = bus.notifier_commits().notified() => Wake::Commit,
            _ = tokio::time::sleep(poll_interval) => Wake::Tick,
            _ = stop.changed() => Wake::Stop,
        };
    }
}

impl Notifier {
    /// Processes every event after the cursor, page by page. The cursor is stored when
    /// a page held an event that notifies, on a tick (`save`), and otherwise at most once
    /// per poll interval: under load a commit is then not followed by a second commit for
    /// the cursor. Events read again after a restart notify no one twice (the store keeps
    /// one notification per user and event).
    async fn catch_up(&mut self, save: bool) -> Result<(), StoreError> {
        let mut cursor = match self.cursor {
            Some(cursor) => cursor,
            None => {
                let stored = self.store.notifier_cursor().await?;
                self.stored = stored;
                self.cursor = Some(stored);
                stored
            }
        };
        let mut notified = false;
        loop {
            let events = self.store.events_after_global(cursor, PAGE).await?;
            let Some(last) = events.last().map(|event| event.id) else {
                break;
            };
            let mut recipients_by_project: HashMap<i64, Vec<i64>> = HashMap::new();
            for event in &events {
                notified |= self.handle(event, &mut recipients_by_project).await?;
            }
            cursor = last;
            self.cursor = Some(cursor);
            if (events.len() as i64) < PAGE {
                break;
            }
        }
        if notified || save || self.stored_at.elapsed() >= self.config.poll_interval {
            self.save_cursor().await?;
        }
        Ok(())
    }

    /// Stores the cursor if it moved, by compare-and-set: when another replica's notifier
    /// moved it meanwhile, whichever is further wins (what both did is stored once).
    async fn save_cursor(&mut self) -> Result<(), StoreError> {
        let Some(cursor) = self.cursor.filter(|cursor| *cursor > self.stored) else {
            self.stored_at = std::time::Instant::now();
            return Ok(());
        };
        let saved = if self
            .store
            .advance_notifier_cursor(self.stored, cursor)
            .await?
        {
            cursor
        } else {
            let stored = self.store.notifier_cursor().await?;
            if stored < cursor {
                self.store.advance_notifier_cursor(stored, cursor).await?;
            }
            stored.max(cursor)
        };
        self.stored = saved;
        self.cursor = Some(saved);
        self.stored_at = std::time::Instant::now();
        Ok(())
    }

    async fn handle(
        &self,
        event: &StoredEvent,
        recipients_by_project: &mut HashMap<i64, Vec<i64>>,
    ) -> Result<bool, StoreError> {
        if !render::notifies(&event.event_type) {
            return Ok(false);
        }
        let recipients = match recipients_by_project.get(&event.project_id) {
            Some(recipients) => recipients.clone(),
            None => {
                let recipients = self.store.project_admins(event.project_id).await?;
                recipients_by_project.insert(event.project_id, recipients.clone());
                recipients
            }
        };
        if recipients.is_empty() {
            return Ok(false);
        }
        let Some(run_id) = event.payload.get("runId").and_then(|v| v.as_str()) else {
            return Ok(false);
        };
        let Some(build) = self.store.build_by_run_id(run_id).await? else {
            return Ok(false);
        };
        let Some(notification) = render::notification(event, &build) else {
            return Ok(false);
        };
        let delivery = match self.config.email {
            Some(_) => Delivery::InboxAndEmail,
            None => Delivery::Inbox,
        };
        let inserted = self
            .store
            .insert_notifications(&notification, &recipients, delivery)
            .await?;
        if !inserted.is_empty() {
            tracing::debug!(
                event_id = event.id,
                kind = notification.kind.as_str(),
                recipients = inserted.len(),
                "notified"
            );
            if delivery == Delivery::InboxAndEmail {
                self.mail_wake.notify_one();
            }
        }
        Ok(true)
    }

    /// Archives notifications older than the retention, at most once per
    /// `ARCHIVE_EVERY_MS` of server time.
    async fn auto_archive(&mut self) {
        let now = self.clock.now();
        if self
            .last_archive
            .is_some_and(|last| now.saturating_sub(last) < ARCHIVE_EVERY_MS)
        {
            return;
        }
        let cutoff = now.plus_ms(-self.config.retention_days.saturating_mul(86_400_000));
        match self.store.archive_notifications_before(cutoff, now).await {
            Ok(archived) => {
                self.last_archive = Some(now);
                if archived > 0 {
                    tracing::info!(
                        archived,
                        retention_days = self.config.retention_days,
                        "archived old notifications"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot archive old notifications; retrying at the next tick")
            }
        }
    }
}

/// The kinds users may mute, for error messages.
pub(crate) fn kind_names() -> String {
    NotificationKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, files: &SmtpFiles) -> Result<EmailConfig, String> {
        EmailConfig::parse(url, "kiln@example.com", files)
    }

    fn relay(url: &str) -> SmtpRelay {
        parse(url, &SmtpFiles::default()).unwrap().relay
    }

    fn with_password(password: &str) -> SmtpFiles {
        SmtpFiles {
            password: Some(Secret::new(password)),
            ca_certificates_pem: None,
        }
    }

    fn ca_pem() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[test]
    fn every_url_form_parses() {
        for (url, host, port, tls, shown) in [
            (
                "smtp://mail.local",
                "mail.local",
                25,
                TlsMode::Opportunistic,
                "smtp://mail.local:25",
            ),
            (
                "smtp://mail.local:587?tls=required",
                "mail.local",
                587,
                TlsMode::Required,
                "smtp://mail.local:587?tls=required",
            ),
            (
                "smtp://mail.local/?tls=opportunistic",
                "mail.local",
                25,
                TlsMode::Opportunistic,
                "smtp://mail.local:25",
            ),
            (
                "smtp://10.0.0.7:2525?tls=none",
                "10.0.0.7",
                2525,
                TlsMode::None,
                "smtp://10.0.0.7:2525?tls=none",
            ),
            (
                "smtps://mail.local",
                "mail.local",
                465,
                TlsMode::Implicit,
                "smtps://mail.local:465",
            ),
            (
                "smtps://[::1]:2465",
                "::1",
                2465,
                TlsMode::Implicit,
                "smtps://[::1]:2465",
            ),
        ] {
            let relay = relay(url);
            assert_eq!(
                (relay.host.as_str(), relay.port, relay.tls),
                (host, port, tls),
                "{url}"
            );
            assert!(relay.login.is_none(), "{url}");
            assert_eq!(relay.to_string(), shown);
        }
    }

    #[test]
    fn a_login_comes_from_the_url_or_the_password_file() {
        let config = parse(
            "smtp://kiln%40corp.example:p%40ss%3Aw%2Frd@mail.local:587",
            &SmtpFiles::default(),
        )
        .unwrap();
        let login = config.relay.login.clone().unwrap();
        assert_eq!(login.user, "kiln@corp.example");
        assert_eq!(login.password.expose(), "p@ss:w/rd");
        // A login makes STARTTLS required: the password never travels in plain.
        assert_eq!(config.relay.tls, TlsMode::Required);
        assert_eq!(
            config.relay_url(),
            "smtp://kiln@corp.example@mail.local:587?tls=required"
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("p@ss"), "{debug}");

        let config = parse("smtps://kiln@mail.local", &with_password("s3cret\r\n")).unwrap();
        let login = config.relay.login.unwrap();
        assert_eq!(
            (login.user.as_str(), login.password.expose()),
            ("kiln", "s3cret")
        );
        assert_eq!(config.relay.tls, TlsMode::Implicit);

        // Plain on purpose (a trusted local relay) stays plain.
        let config = parse("smtp://kiln:pw@localhost?tls=none", &SmtpFiles::default()).unwrap();
        assert_eq!(config.relay.tls, TlsMode::None);
        assert!(config.relay.login.is_some());
    }

    #[test]
    fn a_ca_file_is_added_to_the_public_roots() {
        let files = SmtpFiles {
            password: None,
            ca_certificates_pem: Some(ca_pem()),
        };
        let config = parse("smtps://mail.local", &files).unwrap();
        assert!(config.relay.extra_ca);
        assert!(!relay("smtps://mail.local").extra_ca);
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_do() {
        let no_files = SmtpFiles::default();
        let garbage_ca = SmtpFiles {
            password: None,
            ca_certificates_pem: Some(b"not a certificate\n".to_vec()),
        };
        let hunter2 = with_password("hunter2");
        let empty = with_password("\n");
        let cases: Vec<(&str, &str, &SmtpFiles, &str)> = vec![
            (
                "http://mail.local",
                "kiln@example.com",
                &no_files,
                "unknown scheme 'http'",
            ),
            (
                "mail.local:25",
                "kiln@example.com",
                &no_files,
                "unknown scheme",
            ),
            ("smtp://", "kiln@example.com", &no_files, "smtp://"),
            (
                "smtp://mail.local:port",
                "kiln@example.com",
                &no_files,
                "port",
            ),
            (
                "smtp://mail.local/relay",
                "kiln@example.com",
                &no_files,
                "path",
            ),
            (
                "smtp://mail.local?tls=maybe",
                "kiln@example.com",
                &no_files,
                "tls=maybe is not a choice",
            ),
            (
                "smtp://mail.local?tls=none&tls=required",
                "kiln@example.com",
                &no_files,
                "once",
            ),
            (
                "smtp://mail.local?user=kiln",
                "kiln@example.com",
                &no_files,
                "'user' is not a setting",
            ),
            (
                "smtps://mail.local?tls=required",
                "kiln@example.com",
                &no_files,
                "does not apply",
            ),
            (
                "smtp://kiln@mail.local",
                "kiln@example.com",
                &no_files,
                "no password",
            ),
            (
                "smtp://kiln:@mail.local",
                "kiln@example.com",
                &no_files,
                "no password",
            ),
            (
                "smtp://:hunter2@mail.local",
                "kiln@example.com",
                &no_files,
                "needs a user",
            ),
            (
                "smtp://mail.local",
                "kiln@example.com",
                &hunter2,
                "needs a user",
            ),
            (
                "smtp://kiln:hunter2@mail.local",
                "kiln@example.com",
                &hunter2,
                "given twice",
            ),
            (
                "smtp://kiln@mail.local",
                "kiln@example.com",
                &empty,
                "empty",
            ),
            (
                "smtp://kiln:hunter2@mail.local:port",
                "kiln@example.com",
                &no_files,
                "smtp://***@mail.local:port",
            ),
            (
                "smtp://mail.local?tls=none",
                "kiln@example.com",
                &garbage_ca,
                "no use",
            ),
            (
                "smtps://mail.local",
                "kiln@example.com",
                &garbage_ca,
                "holds no certificate",
            ),
            (
                "smtp://mail.local",
                "not an address",
                &no_files,
                "--smtp-from",
            ),
        ];
        for (url, from, files, expected) in cases {
            let error = EmailConfig::parse(url, from, files).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_user_information() {
        assert_eq!(redacted_url("smtp://u:p@host:25"), "smtp://***@host:25");
        assert_eq!(redacted_url("smtp://u:p/q@host"), "smtp://***@host");
        assert_eq!(redacted_url("smtp://host?tls=none"), "smtp://host?tls=none");
        assert_eq!(redacted_url("u:p@host"), "***");
    }
}
