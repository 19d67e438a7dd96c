//! The spool: events that could not be delivered, kept on disk until a later `kiln`
//! command sends them.
//!
//! One JSON-lines file per unfinished delivery: a header line with the server and token
//! (the directory is 0700 and the files 0600, since the token is a secret), then one
//! event per line. A sender claims a file by renaming it, so two `kiln` processes never
//! send the same file at once; resending is safe anyway because events carry eventIds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kiln_client::Client;
use kiln_client::protocol::EventPayload;
use serde::{Deserialize, Serialize};

use crate::settings::{ClientArgs, Target};

const SEND_BATCH: usize = 1000;

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

/// Sends every spool file, oldest first. Files whose server is unreachable stay.
pub async fn send_all(fallback: Option<&Target>) -> anyhow::Result<SendSummary> {
    let dir = directory();
    let mut summary = SendSummary::default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(summary);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    paths.sort();
    for path in paths {
        // Claim the file; another process that claimed it first makes this fail.
        let claimed = path.with_extension(format!("sending-{}", std::process::id()));
        if std::fs::rename(&path, &claimed).is_err() {
            continue;
        }
        summary.files += 1;
        match send_file(&claimed, fallback).await {
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

async fn send_file(path: &Path, fallback: Option<&Target>) -> Result<usize, Unsent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let header: Header = match lines
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
    {
        Some(header) => header,
        None => {
            eprintln!("kiln: ignoring unreadable spool file {}", path.display());
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
            Err(error) => {
                eprintln!(
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
    let summary = send_all(Some(&target)).await?;
    println!(
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
