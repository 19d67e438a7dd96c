//! `kiln watch RUN_ID`: follows one build live — stage lines, a progress line, custom
//! events, a final status line — over the server's event stream, resuming with
//! Last-Event-ID after a lost connection or a `dropped` stream. Exits 0 when the build
//! succeeded and 1 when it failed, was cancelled or went stale.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kiln_client::{Client, ClientError, SseEvent};
use serde_json::Value;

use crate::settings::ClientArgs;

/// The first pause before reconnecting; it doubles per failed attempt.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between attempts when the server suggested none (`retry:`).
const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(2);
/// A connection that lasted this long (or delivered an event) resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 24;
const CUSTOM_DATA_CHARS: usize = 100;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The run id of the build to follow.
    pub run_id: String,
    /// Give up after this many seconds without a connection to the server (default: keep
    /// reconnecting).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let timeout = match args.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(secs) => bail!("--timeout {secs}: must be a positive number of seconds"),
        None => None,
    };
    let client = args.client.client().await?;
    follow_build(&client, &args.run_id, timeout).await
}

/// Follows build `run_id` until it ends, printing its progress (`kiln watch`, `kiln
/// trigger --wait`); the exit code is the build's result.
pub async fn follow_build(
    client: &Client,
    run_id: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let mut watcher = Watcher::new(Screen::new(std::io::stdout().is_terminal()));
    let outcome = follow(client, run_id, timeout, &mut watcher).await?;
    watcher.screen.finish(&outcome)?;
    Ok(outcome.status.exit_code())
}

/// Streams until the build's end, reconnecting across outages.
async fn follow(
    client: &Client,
    run_id: &str,
    timeout: Option<Duration>,
    watcher: &mut Watcher,
) -> anyhow::Result<Outcome> {
    let mut outage: Option<Outage> = None;
    let mut max_delay = DEFAULT_MAX_DELAY;
    let mut delay = FIRST_DELAY;
    loop {
        let lost = match client.build_stream(run_id, watcher.cursor).await {
            Err(error) if !error.is_retryable() => return Err(refusal(run_id, &error)),
            Err(error) => error.to_string(),
            Ok(mut stream) => {
                if let Some(ended) = outage.take()
                    && ended.announced
                {
                    watcher.screen.notice(&format!(
                        "kiln: reconnected to {}; resuming after event {}",
                        client.base_url(),
                        watcher.cursor.unwrap_or(0)
                    ))?;
                }
                let opened = Instant::now();
                let mut delivered = false;
                let lost = loop {
                    let event = match stream.next().await {
                        Ok(Some(event)) => event,
                        Ok(None) => break "the server closed the stream".to_owned(),
                        Err(error) => break error.to_string(),
                    };
                    if let Some(hint) = stream.retry() {
                        max_delay = hint.clamp(Duration::from_millis(500), Duration::from_secs(10));
                    }
                    match watcher.handle(&event)? {
                        Step::Continue => delivered = true,
                        Step::Finished(outcome) => return Ok(outcome),
                        Step::Ended => return ended_without_terminal(client, run_id).await,
                        Step::Dropped(reason) => {
                            break format!("the server dropped the stream: {reason}");
                        }
                    }
                };
                if delivered || opened.elapsed() >= HEALTHY_AFTER {
                    delay = FIRST_DELAY;
                }
                lost
            }
        };
        let current = outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            announced: false,
        });
        if !current.announced {
            watcher.screen.notice(&format!(
                "kiln: lost the stream from {} ({lost}); reconnecting…",
                client.base_url()
            ))?;
            current.announced = true;
        }
        let mut pause = delay;
        if let Some(timeout) = timeout {
            let waited = current.since.elapsed();
            if waited >= timeout {
                bail!(
                    "gave up after {} without a connection to {}: {lost}",
                    format_duration(waited.as_millis() as i64),
                    client.base_url()
                );
            }
            pause = pause.min(timeout - waited);
        }
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(max_delay);
    }
}

/// The stream said `end` although no terminal event reached us: ask for the build.
async fn ended_without_terminal(client: &Client, run_id: &str) -> anyhow::Result<Outcome> {
    let build = client
        .get_build(run_id)
        .await
        .with_context(|| format!("the stream of build '{run_id}' ended; cannot read its status"))?;
    let status = Status::from_name(&build.status)
        .with_context(|| format!("the stream ended but build '{run_id}' is {}", build.status))?;
    Ok(Outcome {
        status,
        duration_ms: build.duration_ms,
        message: build.message,
    })
}

/// An answer that retrying will not change, explained for a person.
fn refusal(run_id: &str, error: &ClientError) -> anyhow::Error {
    match error.status() {
        Some(404) => anyhow::anyhow!(
            "no build '{run_id}' that this token may read ({error}); check the run id and the project of the token"
        ),
        Some(401 | 403) => anyhow::anyhow!(
            "the server refused the token ({error}); pass a read token with --token or KILN_TOKEN"
        ),
        _ => anyhow::anyhow!("cannot watch build '{run_id}': {error}"),
    }
}

struct Outage {
    since: Instant,
    announced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Success,
    Failed,
    Cancelled,
    Stale,
}

impl Status {
    fn from_name(name: &str) -> Option<Status> {
        match name {
            "success" => Some(Status::Success),
            "failed" => Some(Status::Failed),
            "cancelled" => Some(Status::Cancelled),
            "stale" => Some(Status::Stale),
            _ => None,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Status::Success => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "was cancelled",
            Status::Stale => "went stale",
        }
    }

    fn exit_code(self) -> ExitCode {
        match self {
            Status::Success => ExitCode::SUCCESS,
            Status::Failed | Status::Cancelled | Status::Stale => ExitCode::from(1),
        }
    }
}

#[derive(Debug)]
struct Outcome {
    status: Status,
    duration_ms: Option<i64>,
    message: Option<String>,
}

enum Step {
    Continue,
    /// The build's terminal event arrived.
    Finished(Outcome),
    /// The server ended the stream (`end`) without a terminal event we saw.
    Ended,
    /// The server dropped this subscriber; resume from the cursor.
    Dropped(String),
}

/// Turns events into lines, remembering what later lines need (start times, cursor).
struct Watcher {
    screen: Screen,
    /// The last event id handled: the Last-Event-ID of the next connection.
    cursor: Option<i64>,
    build_started_at: Option<i64>,
    stage_started_at: HashMap<String, i64>,
}

impl Watcher {
    fn new(screen: Screen) -> Watcher {
        Watcher {
            screen,
            cursor: None,
            build_started_at: None,
            stage_started_at: HashMap::new(),
        }
    }

    fn handle(&mut self, sse: &SseEvent) -> anyhow::Result<Step> {
        let data: Value = serde_json::from_str(&sse.data).unwrap_or(Value::Null);
        match sse.event.as_str() {
            "end" => return Ok(Step::Ended),
            "dropped" => {
                let reason = data["reason"].as_str().unwrap_or("no reason given");
                return Ok(Step::Dropped(reason.to_owned()));
            }
            _ => {}
        }
        let Some(id) = sse.id.as_deref().and_then(|id| id.parse::<i64>().ok()) else {
            // Not a build event (Kiln sends every one with its id): nothing to show.
            return Ok(Step::Continue);
        };
        if self.cursor.is_some_and(|seen| id <= seen) {
            return Ok(Step::Continue);
        }
        self.cursor = Some(id);
        self.show(&sse.event, &data)
    }

    fn show(&mut self, kind: &str, event: &Value) -> anyhow::Result<Step> {
        let received = event["receivedAt"].as_str().unwrap_or_default();
        let at = parse_time(received);
        let clock = received.get(11..19).unwrap_or("--:--:--");
        self.build_started_at = self.build_started_at.or(at);
        let stage = event["stage"].as_str().unwrap_or("?");
        let message = event["message"].as_str().filter(|m| !m.is_empty());
        let reported = event["durationMs"].as_i64();
        match kind {
            "build_started" => {
                let mut line = format!("{clock} build started");
                if let Some(command) = event["command"].as_str() {
                    line.push_str(&format!(": {command}"));
                }
                if let Some(branch) = event["branch"].as_str() {
                    line.push_str(&format!(" on {branch}"));
                    if let Some(commit) = event["commit"].as_str() {
                        line.push_str(&format!(" @ {commit}"));
                    }
                }
                self.screen.line(&line)?;
            }
            "stage_started" => {
                if let Some(at) = at {
                    self.stage_started_at.insert(stage.to_owned(), at);
                }
                self.screen.stage = Some(stage.to_owned());
                self.screen
                    .line(&format!("{clock} stage {stage} started"))?;
            }
            "stage_completed" | "stage_failed" => {
                let began = self.stage_started_at.remove(stage);
                let took = reported.or_else(|| Some(at? - began?));
                let verdict = if kind == "stage_completed" {
                    "succeeded"
                } else {
                    "FAILED"
                };
                let mut line = format!("{clock} stage {stage} {verdict}");
                if let Some(took) = took {
                    line.push_str(&format!(" in {}", format_duration(took)));
                }
                if let Some(message) = message {
                    line.push_str(&format!(": {message}"));
                }
                if self.screen.stage.as_deref() == Some(stage) {
                    self.screen.stage = None;
                }
                self.screen.line(&line)?;
            }
            "build_completed" | "build_failed" | "build_cancelled" => {
                let status = match kind {
                    "build_completed" => Status::Success,
                    "build_cancelled" => Status::Cancelled,
                    _ if event["data"]["reason"] == "stale" => Status::Stale,
                    _ => Status::Failed,
                };
                let duration_ms =
                    reported.or_else(|| Some(at? - self.build_started_at?).filter(|d| *d >= 0));
                return Ok(Step::Finished(Outcome {
                    status,
                    duration_ms,
                    message: message.map(str::to_owned),
                }));
            }
            "build_progress" | "heartbeat" => {}
            custom => {
                let detail = match (message, event.get("data")) {
                    (Some(message), _) => format!(" {message}"),
                    (None, Some(data)) => format!(" {}", shorten(&data.to_string())),
                    (None, None) => String::new(),
                };
                self.screen.line(&format!("{clock} {custom}{detail}"))?;
            }
        }
        if let Some(progress) = event["progress"].as_f64() {
            self.screen.progress(clock, progress)?;
        }
        Ok(Step::Continue)
    }
}

/// Standard output: plain lines, plus a progress line redrawn in place on a terminal.
struct Screen {
    tty: bool,
    /// The last progress shown, and whether its line is on screen unterminated.
    progress: Option<f64>,
    bar_drawn: bool,
    /// The running stage, shown beside the bar.
    stage: Option<String>,
}

impl Screen {
    fn new(tty: bool) -> Screen {
        Screen {
            tty,
            progress: None,
            bar_drawn: false,
            stage: None,
        }
    }

    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.bar_drawn {
            write!(out, "\r\x1b[2K")?;
        }
        writeln!(out, "{text}")?;
        if self.bar_drawn {
            write!(out, "{}", self.bar())?;
        }
        out.flush()?;
        Ok(())
    }

    /// A message on stderr, keeping the progress bar intact around it.
    fn notice(&mut self, text: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.bar_drawn {
            write!(out, "\r\x1b[2K")?;
            out.flush()?;
        }
        errln!("{text}");
        if self.bar_drawn {
            write!(out, "{}", self.bar())?;
            out.flush()?;
        }
        Ok(())
    }

    fn progress(&mut self, clock: &str, progress: f64) -> anyhow::Result<()> {
        if self.progress == Some(progress) {
            return Ok(());
        }
        self.progress = Some(progress);
        let mut out = std::io::stdout().lock();
        if self.tty {
            write!(out, "\r\x1b[2K{}", self.bar())?;
            self.bar_drawn = true;
        } else {
            writeln!(out, "{clock} progress {}", percent(progress))?;
        }
        out.flush()?;
        Ok(())
    }

    fn bar(&self) -> String {
        let progress = self.progress.unwrap_or(0.0).clamp(0.0, 100.0);
        let filled = ((progress / 100.0) * BAR_WIDTH as f64).round() as usize;
        let stage = self
            .stage
            .as_deref()
            .map(|s| format!("  {s}"))
            .unwrap_or_default();
        format!(
            "[{}{}] {:>4}{stage}",
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            percent(progress)
        )
    }

    /// Clears the bar and prints the final status line.
    fn finish(&mut self, outcome: &Outcome) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.bar_drawn {
            write!(out, "\r\x1b[2K")?;
            self.bar_drawn = false;
        }
        let mut line = format!("build {}", outcome.status.word());
        if let Some(duration) = outcome.duration_ms {
            line.push_str(&format!(" after {}", format_duration(duration)));
        }
        if let Some(message) = &outcome.message {
            line.push_str(&format!(": {message}"));
        }
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }
}

fn percent(progress: f64) -> String {
    if progress.fract() == 0.0 {
        format!("{progress:.0}%")
    } else {
        format!("{progress:.1}%")
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= CUSTOM_DATA_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(CUSTOM_DATA_CHARS - 1).collect();
    short.push('…');
    short
}

/// `850ms`, `5.3s`, `2m 05s`, `1h 02m`.
fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, ms / 60_000 % 60)
    }
}

/// Kiln's timestamps (`2026-11-24T17:03:09.042Z`, UTC) as Unix milliseconds.
fn parse_time(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || fraction.is_empty() {
        return None;
    }
    let millis = format!("{fraction:0<3}").get(..3)?.parse::<i64>().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(id: Option<i64>, event: &str, data: Value) -> SseEvent {
        SseEvent {
            id: id.map(|id| id.to_string()),
            event: event.to_owned(),
            data: data.to_string(),
        }
    }

    #[test]
    fn parses_kilns_timestamps() {
        assert_eq!(parse_time("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_time("2000-03-01T00:00:01.5Z"), Some(951_868_801_500));
        assert_eq!(
            parse_time("2026-11-24T17:03:09.042Z"),
            Some(1_795_539_789_042)
        );
        assert_eq!(parse_time("2026-11-24 17:03:09Z"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(850), "850ms");
        assert_eq!(format_duration(5_321), "5.3s");
        assert_eq!(format_duration(125_000), "2m 05s");
        assert_eq!(format_duration(3_720_000), "1h 02m");
        assert_eq!(percent(40.0), "40%");
        assert_eq!(percent(12.5), "12.5%");
    }

    #[test]
    fn terminal_events_decide_the_outcome_and_duplicates_are_skipped() {
        let mut watcher = Watcher::new(Screen::new(false));
        let started = sse(
            Some(3),
            "build_started",
            serde_json::json!({"event": "build_started", "receivedAt": "2026-01-01T00:00:00.000Z"}),
        );
        assert!(matches!(watcher.handle(&started).unwrap(), Step::Continue));
        assert!(matches!(watcher.handle(&started).unwrap(), Step::Continue));
        assert_eq!(watcher.cursor, Some(3));
        let stale = sse(
            Some(9),
            "build_failed",
            serde_json::json!({"event": "build_failed", "receivedAt": "2026-01-01T00:01:30.000Z",
                "message": "no heartbeat", "data": {"reason": "stale"}}),
        );
        let Step::Finished(outcome) = watcher.handle(&stale).unwrap() else {
            panic!("a terminal event finishes the watch");
        };
        assert_eq!(outcome.status, Status::Stale);
        assert_eq!(outcome.duration_ms, Some(90_000));
        let dropped = sse(
            None,
            "dropped",
            serde_json::json!({"reason": "lagged", "lastEventId": 9}),
        );
        assert!(matches!(watcher.handle(&dropped).unwrap(), Step::Dropped(r) if r == "lagged"));
        assert!(matches!(
            watcher
                .handle(&sse(Some(9), "end", serde_json::json!({})))
                .unwrap(),
            Step::Ended
        ));
    }
}
