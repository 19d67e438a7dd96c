//! The spool: events that could not be delivered, kept on disk until a later `kiln`
//! command sends them.
//!
//! One JSON-lines file per unfinished delivery: a header line with the server and token
//! (the directory is 0700 and the files 0600, since the token is a secret), then one
//! event per line. A sender claims a file by renaming it (`….sending-PID`), so two `kiln`
//! processes never send the same file at once; a claim whose process is gone (it exited
//! mid-send) is taken over by the next sender. Resending is safe anyway because events
//! carry eventIds.
//!
//! Who sends: `kiln spool send`, `kiln run` and `kiln emit` (in the background while they
//! work), and every other command that talks to a server with a token, before it does
//! (`resend_before_command`), so that what it reads includes the resent events.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use kiln_client::Client;
use kiln_client::protocol::EventPayload;
use serde::{Deserialize, Serialize};

use crate::settings::{ClientArgs, Target};

const SEND_BATCH: usize = 1000;
/// The longest a command waits for the spool to be resent before it does its own work;
/// past it, the resend carries on in the background.
const RESEND_WAIT: Duration = Duration::from_secs(2);

/// Who asked for a spool pass: `kiln spool send` explains what it keeps, other commands
/// stay quiet about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Explicit,
    Background,
}

#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(rename = "kilnSpool")]
    version: u32,
    server: String,
    token: Option<String>,
}

/// `KILN_SPOOL_DIR`, else `$XDG_STATE_HOME/kiln/spool`, else `~/.local/state/kiln/spool`.
pub fn directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_SPOOL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(state).join("kiln/spool");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/kiln/spool"),
        None => std::env::temp_dir().join("kiln-spool"),
    }
}

fn ensure_directory(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes events to a new spool file (atomically: temp file, then rename).
pub fn write(target: &Target, events: &[EventPayload]) -> anyhow::Result<PathBuf> {
    let dir = directory();
    ensure_directory(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!(
        "{}-{}.jsonl",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let path = dir.join(&name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    let header = Header {
        version: 1,
        server: target.server.clone(),
        token: target.token.clone(),
    };
    let mut text = serde_json::to_string(&header)?;
    text.push('\n');
    for event in events {
        text.push_str(&serde_json::to_string(event)?);
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// What a spool pass did.
#[derive(Debug, Default)]
pub struct SendSummary {
    pub sent: usize,
    pub remaining: usize,
    pub files: usize,
}

/// Spool files waiting to be sent: `*.jsonl`, and claims (`*.sending-PID`) whose
/// process is gone. Each as (the file now, its name once unclaimed), oldest first.
fn waiting_files(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter_map(|path| {
            let extension = path.extension()?.to_str()?;
            if extension == "jsonl" {
                return Some((path.clone(), path));
            }
            let pid: i32 = extension.strip_prefix("sending-")?.parse().ok()?;
            let original = path.with_extension("jsonl");
            (!process_is_alive(pid)).then_some((path, original))
        })
        .collect();
    // Oldest first: names are PID-UUIDv7, and a v7 UUID starts with its time.
    files.sort_by_cached_key(|(_, original)| {
        let name = original
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.split_once('-') {
            Some((_, time_ordered)) => time_ordered.to_owned(),
            None => name,
        }
    });
    files
}

/// Whether process `pid` still runs (a claim of a running process is left alone).
fn process_is_alive(pid: i32) -> bool {
    if pid <= 0 || pid == std::process::id() as i32 {
        return pid > 0;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        // EPERM: it exists, under another user.
        Err(_) => true,
    }
}

/// Whether any spool file waits (cheap: no file is read).
fn anything_waiting(dir: &Path) -> bool {
    !waiting_files(dir).is_empty()
}

static RESEND_STARTED: AtomicBool = AtomicBool::new(false);

/// Resends the spool (once per process) before a command talks to the server, waiting at
/// most `RESEND_WAIT`; a slow server's resend carries on in the background while the
/// command runs (and a claim left by exiting mid-send is taken over by the next command).
pub async fn resend_before_command(target: &Target) {
    if RESEND_STARTED.swap(true, Ordering::SeqCst) || !anything_waiting(&directory()) {
        return;
    }
    let fallback = target.clone();
    let resend = tokio::spawn(async move { send_all(Some(&fallback), Pass::Background).await });
    if let Ok(Ok(Ok(summary))) = tokio::time::timeout(RESEND_WAIT, resend).await
        && summary.sent > 0
    {
        errln!(
            "kiln: delivered {} event(s) spooled earlier{}",
            summary.sent,
            if summary.remaining > 0 {
                format!(
                    "; {} still wait in {} (`kiln spool send` says why)",
                    summary.remaining,
                    directory().display()
                )
            } else {
                String::new()
            }
        );
    }
}

/// Sends every spool file, oldest first (by the time in its name). Files whose server is
/// unreachable, or refuses the file's token, stay.
pub async fn send_all(fallback: Option<&Target>, pass: Pass) -> anyhow::Result<SendSummary> {
    let dir = directory();
    let mut summary = SendSummary::default();
    for (current, path) in waiting_files(&dir) {
        // Claim the file; another process that claimed it first makes this fail.
        let claimed = path.with_extension(format!("sending-{}", std::process::id()));
        if std::fs::rename(&current, &claimed).is_err() {
            continue;
        }
        summary.files += 1;
        match send_file(&claimed, fallback, pass).await {
            Ok(sent) => {
                summary.sent += sent;
                std::fs::remove_file(&claimed).ok();
            }
            Err((sent, remaining_events, header)) => {
                summary.sent += sent;
                summary.remaining += remaining_events.len();
                // Keep only what is left, under the original name.
                let target = Target {
                    server: header.server,
                    token: header.token,
                };
                if write(&target, &remaining_events).is_ok() {
                    std::fs::remove_file(&claimed).ok();
                } else {
                    std::fs::rename(&claimed, &path).ok();
                }
            }
        }
    }
    Ok(summary)
}

type Unsent = (usize, Vec<EventPayload>, Header);

async fn send_file(path: &Path, fallback: Option<&Target>, pass: Pass) -> Result<usize, Unsent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let header: Header = match lines
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
    {
        Some(header) => header,
        None => {
            errln!("kiln: ignoring unreadable spool file {}", path.display());
            return Ok(0);
        }
    };
    let events: Vec<EventPayload> = lines
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let token = header
        .token
        .clone()
        .or_else(|| fallback.and_then(|t| t.token.clone()));
    let client = Client::with_timeout(&header.server, token, Duration::from_secs(10));
    let mut sent = 0;
    for chunk in events.chunks(SEND_BATCH) {
        match client.send_events(chunk).await {
            Ok(_) => sent += chunk.len(),
            Err(error) if error.is_retryable() => {
                return Err((sent, events[sent..].to_vec(), header));
            }
            Err(error) if matches!(error.status(), Some(401 | 403)) => {
                // The token is refused, not the events: keep them for a fixed token.
                if pass == Pass::Explicit {
                    errln!(
                        "kiln: {} refused the token of {} spooled event(s) ({error}); they stay in {}: put a valid token in their file's first line, or delete the file",
                        header.server,
                        events.len() - sent,
                        directory().display()
                    );
                }
                return Err((sent, events[sent..].to_vec(), header));
            }
            Err(error) => {
                errln!(
                    "kiln: the server refused {} spooled event(s): {error}",
                    chunk.len()
                );
                sent += chunk.len();
            }
        }
    }
    Ok(sent)
}

/// `kiln spool send`.
pub async fn send_command(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let target = args.target()?;
    let summary = send_all(Some(&target), Pass::Explicit).await?;
    outln!(
        "sent {} spooled event(s) from {} file(s); {} remain in {}",
        summary.sent,
        summary.files,
        summary.remaining,
        directory().display()
    );
    Ok(if summary.remaining == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
