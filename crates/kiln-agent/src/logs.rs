//! The job log: output chunks turned into timestamped lines ([`LogFormatter`]) and
//! shipped to the server in appends at least every 250 ms, capped in size
//! ([`ship_logs`]).
//!
//! # Format
//!
//! The log is stored server-side append-only and shown to users as text. Every line
//! starts with a 30-byte prefix: the time its first byte was read (UTC, RFC 3339 with
//! milliseconds), a space, a 4-byte tag naming the stream, a space:
//!
//! ```text
//! 2026-11-24T22:40:01.123Z kiln $ git fetch --depth=1 --no-tags -- https://***@git.example.com/app.git 3f2a…
//! 2026-11-24T22:40:02.870Z out  > app@1.0.0 test
//! 2026-11-24T22:40:02.871Z err  npm WARN deprecated inflight@1.0.6
//! ```
//!
//! Tags: `out ` standard output, `err ` standard error, `kiln` the agent's own messages.
//! After the prefix come the line's bytes exactly as the step wrote them, up to and
//! including the `\n`: ANSI escape codes, `\r` and invalid UTF-8 are kept. A line
//! without a newline yet is shipped as it is (so a prompt or a progress dot shows up
//! within the flush interval); its continuation is appended without a new prefix. When
//! the other stream writes before the line is finished, or the output ends mid-line, a
//! `\n` is inserted to end it: that `\n` is the only byte the log adds to the output.
//!
//! When the log reaches its cap, the output is cut at the last line end that fits and
//! one last line is written with the `kiln` tag:
//! `... log truncated: the job wrote more than 100 MiB; the rest was discarded (Kiln)`.
//!
//! # Shipping
//!
//! [`ship_logs`] owns the receiver and is the only task that formats and sends. It
//! keeps at most one append in flight and goes on receiving meanwhile, up to four
//! appends' worth of buffered bytes; beyond that a step writing faster than the server
//! accepts is slowed down at its pipe by the bounded channel. Appends carry their byte
//! offset, so a retried append (after a [`LogSinkError::Transient`]) is idempotent on
//! the server; offsets are contiguous and no byte is dropped without being counted in
//! the [`ShipReport`]. After the cap, or after the server refused the log for good, the
//! receiver is still drained (and the bytes counted as discarded) so the step never
//! blocks on its output.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kiln_core::Millis;
use tokio::time::Instant;

use crate::output::{OutputChunk, OutputReceiver, Stream};

/// The length of the prefix of every line: timestamp, space, tag, space.
pub const PREFIX_LEN: usize = 30;

/// Turns output chunks into log lines. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct LogFormatter {
    /// The stream of the line written last, while that line has no `\n` yet.
    open_line: Option<Stream>,
}

impl LogFormatter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the formatted form of `chunk`, read at `now`, to `out`.
    pub fn push(&mut self, chunk: &OutputChunk, now: Millis, out: &mut Vec<u8>) {
        if chunk.bytes.is_empty() {
            return;
        }
        if self.open_line.is_some_and(|open| open != chunk.stream) {
            out.push(b'\n');
            self.open_line = None;
        }
        let mut rest = chunk.bytes.as_slice();
        while !rest.is_empty() {
            if self.open_line.is_none() {
                write_prefix(chunk.stream, now, out);
                self.open_line = Some(chunk.stream);
            }
            match rest.iter().position(|&byte| byte == b'\n') {
                Some(newline) => {
                    out.extend_from_slice(&rest[..=newline]);
                    self.open_line = None;
                    rest = &rest[newline + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
    }

    /// The formatted form of `chunk`, read at `now`.
    pub fn format(&mut self, chunk: &OutputChunk, now: Millis) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.bytes.len() + PREFIX_LEN);
        self.push(chunk, now, &mut out);
        out
    }

    /// Ends a line left without a newline (at the end of the output).
    pub fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.open_line.take().is_some() {
            out.push(b'\n');
        }
    }
}

fn write_prefix(stream: Stream, now: Millis, out: &mut Vec<u8>) {
    out.extend_from_slice(now.to_rfc3339().as_bytes());
    out.extend_from_slice(match stream {
        Stream::Stdout => b" out  ",
        Stream::Stderr => b" err  ",
        Stream::Agent => b" kiln ",
    });
}

/// The marker line's text (without prefix) for a log capped at `cap_bytes`.
pub fn truncation_message(cap_bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    let size = if cap_bytes >= MIB && cap_bytes.is_multiple_of(MIB) {
        format!("{} MiB", cap_bytes / MIB)
    } else if cap_bytes >= KIB && cap_bytes.is_multiple_of(KIB) {
        format!("{} KiB", cap_bytes / KIB)
    } else {
        format!("{cap_bytes} bytes")
    };
    format!("... log truncated: the job wrote more than {size}; the rest was discarded (Kiln)")
}

/// Where the log goes: the agent implements it with an HTTP append to the server.
pub trait LogSink: Send + Sync {
    /// Appends `bytes` at byte `offset` of the job's log. The shipper retries a
    /// transient failure with the same offset and bytes, so the server must treat an
    /// append it already has as a success.
    fn append(
        &self,
        offset: u64,
        bytes: Bytes,
    ) -> impl Future<Output = Result<(), LogSinkError>> + Send;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogSinkError {
    /// Worth retrying: a network error, a timeout, a 5xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (the job was cancelled or reassigned, the log is
    /// closed): the shipper stops sending and drains the output.
    #[error("{0}")]
    Refused(String),
}

/// How the shipper batches, caps and retries.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// The longest a byte waits before it is sent (unless an append is in flight).
    pub interval: Duration,
    /// The largest append; a full one is sent without waiting for the interval.
    pub max_chunk_bytes: usize,
    /// The most bytes of formatted output the log holds; the truncation marker line
    /// comes on top.
    pub cap_bytes: u64,
    /// After the output ends, how long the shipper keeps trying to send the rest.
    pub final_flush_timeout: Duration,
    /// The wait before the first retry of a failed append; it doubles up to
    /// `retry_max_delay`.
    pub retry_initial_delay: Duration,
    pub retry_max_delay: Duration,
}

impl Default for ShipOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            max_chunk_bytes: 256 * 1024,
            cap_bytes: 100 * 1024 * 1024,
            final_flush_timeout: Duration::from_secs(30),
            retry_initial_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(5),
        }
    }
}

/// What happened to a job's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Bytes the server acknowledged: the log's length.
    pub bytes_shipped: u64,
    /// Formatted bytes dropped: after the cap, after the server refused the log, or
    /// still unsent when the final flush gave up.
    pub bytes_discarded: u64,
    /// Whether the cap was reached (and the marker line written).
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(
        "the server refused the job's log ({message}); {} bytes were shipped, the rest was discarded",
        report.bytes_shipped
    )]
    Refused { message: String, report: ShipReport },
    #[error(
        "the last {unshipped} bytes of the job's log could not be shipped within {}s after \
         the job ended (last error: {}); check the agent's connection to the server",
        timeout.as_secs_f64(),
        last_error.as_deref().unwrap_or("none, the server did not answer")
    )]
    FinalFlushTimedOut {
        unshipped: u64,
        timeout: Duration,
        last_error: Option<String>,
        report: ShipReport,
    },
}

impl ShipError {
    pub fn report(&self) -> ShipReport {
        match self {
            ShipError::Refused { report, .. } | ShipError::FinalFlushTimedOut { report, .. } => {
                *report
            }
        }
    }
}

/// Where the shipper stands with respect to new output.
#[derive(PartialEq, Eq)]
enum Intake {
    Accepting,
    /// The cap was reached; output is counted and dropped.
    Truncated,
    /// The sink refused the log; output is counted and dropped.
    Refused(String),
}

enum Event {
    Received(Option<OutputChunk>),
    AppendDone(Result<(), LogSinkError>),
    FlushDue,
    FinalDeadline,
}

type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LogSinkError>> + Send + 'a>>;

/// Formats and ships everything `output` yields to `sink`, until the channel closes
/// and the rest is shipped. See the module documentation for the guarantees.
pub async fn ship_logs(
    mut output: OutputReceiver,
    sink: impl LogSink,
    options: ShipOptions,
) -> Result<ShipReport, ShipError> {
    let sink = &sink;
    let max_chunk_bytes = options.max_chunk_bytes.max(1);
    let max_buffered_bytes = max_chunk_bytes.saturating_mul(4);

    let mut formatter = LogFormatter::new();
    let mut formatted = Vec::new();
    let mut pending = BytesMut::new();
    // When the oldest byte in `pending` arrived.
    let mut pending_since: Option<Instant> = None;
    // Bytes taken into the log so far (shipped, in flight or pending).
    let mut accepted_bytes: u64 = 0;
    let mut last_accepted_byte: Option<u8> = None;
    let mut report = ShipReport::default();
    let mut intake = Intake::Accepting;

    let mut in_flight: Option<(Bytes, u32)> = None;
    let mut append_future: Option<AppendFuture<'_>> = None;
    let mut last_error: Option<String> = None;
    let mut final_deadline: Option<Instant> = None;

    loop {
        if in_flight.is_none() && !pending.is_empty() {
            let due = final_deadline.is_some()
                || pending.len() >= max_chunk_bytes
                || pending_since.is_none_or(|since| since.elapsed() >= options.interval);
            if due {
                let bytes = pending
                    .split_to(pending.len().min(max_chunk_bytes))
                    .freeze();
                if pending.is_empty() {
                    pending_since = None;
                }
                append_future = Some(Box::pin(sink.append(report.bytes_shipped, bytes.clone())));
                in_flight = Some((bytes, 0));
            }
        }
        if final_deadline.is_some() && in_flight.is_none() && pending.is_empty() {
            break;
        }

        let can_receive = final_deadline.is_none()
            && (intake != Intake::Accepting || pending.len() < max_buffered_bytes);
        let flush_at = match (&in_flight, pending_since) {
            (None, Some(since)) => Some(since + options.interval),
            _ => None,
        };
        let far_future = Instant::now() + Duration::from_secs(86_400);
        let event = tokio::select! {
            biased;
            result = async { append_future.as_mut().expect("guarded by the precondition").await },
                if append_future.is_some() => Event::AppendDone(result),
            () = tokio::time::sleep_until(final_deadline.unwrap_or(far_future)),
                if final_deadline.is_some() => Event::FinalDeadline,
            () = tokio::time::sleep_until(flush_at.unwrap_or(far_future)),
                if flush_at.is_some() => Event::FlushDue,
            chunk = output.recv(), if can_receive => Event::Received(chunk),
        };

        match event {
            Event::FlushDue => {}
            Event::Received(Some(chunk)) => {
                formatted.clear();
                formatter.push(&chunk, now_millis(), &mut formatted);
                if intake != Intake::Accepting {
                    report.bytes_discarded += formatted.len() as u64;
                    continue;
                }
                let room = options.cap_bytes.saturating_sub(accepted_bytes);
                let kept = if (formatted.len() as u64) <= room {
                    formatted.len()
                } else {
                    let room = usize::try_from(room).unwrap_or(usize::MAX);
                    // Cut after the last whole line that fits, if there is one.
                    formatted[..room]
                        .iter()
                        .rposition(|&byte| byte == b'\n')
                        .map_or(room, |newline| newline + 1)
                };
                accept(
                    &formatted[..kept],
                    &mut pending,
                    &mut pending_since,
                    &mut accepted_bytes,
                    &mut last_accepted_byte,
                );
                if kept < formatted.len() {
                    report.bytes_discarded += (formatted.len() - kept) as u64;
                    report.truncated = true;
                    intake = Intake::Truncated;
                    let mut marker = Vec::new();
                    if last_accepted_byte.is_some_and(|byte| byte != b'\n') {
                        marker.push(b'\n');
                    }
                    let mut marker_formatter = LogFormatter::new();
                    marker_formatter.push(
                        &OutputChunk::agent(truncation_message(options.cap_bytes)),
                        now_millis(),
                        &mut marker,
                    );
                    accept(
                        &marker,
                        &mut pending,
                        &mut pending_since,
                        &mut accepted_bytes,
                        &mut last_accepted_byte,
                    );
                }
            }
            Event::Received(None) => {
                final_deadline = Some(Instant::now() + options.final_flush_timeout);
                if intake == Intake::Accepting {
                    formatted.clear();
                    formatter.end_line(&mut formatted);
                    accept(
                        &formatted,
                        &mut pending,
                        &mut pending_since,
                        &mut accepted_bytes,
                        &mut last_accepted_byte,
                    );
                }
            }
            Event::AppendDone(result) => {
                append_future = None;
                let Some((bytes, attempt)) = in_flight.take() else {
                    continue;
                };
                match result {
                    Ok(()) => {
                        report.bytes_shipped += bytes.len() as u64;
                        last_error = None;
                    }
                    Err(LogSinkError::Transient(message)) => {
                        let delay = retry_delay(&options, attempt);
                        tracing::warn!(
                            offset = report.bytes_shipped,
                            bytes = bytes.len(),
                            attempt = attempt + 1,
                            retry_in_ms = delay.as_millis() as u64,
                            error = %message,
                            "a log append failed; retrying"
                        );
                        last_error = Some(message);
                        let offset = report.bytes_shipped;
                        let retry_bytes = bytes.clone();
                        append_future = Some(Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            sink.append(offset, retry_bytes).await
                        }));
                        in_flight = Some((bytes, attempt + 1));
                    }
                    Err(LogSinkError::Refused(message)) => {
                        tracing::error!(
                            offset = report.bytes_shipped,
                            error = %message,
                            "the server refused the job's log; the rest of the output is discarded"
                        );
                        report.bytes_discarded += (bytes.len() + pending.len()) as u64;
                        pending.clear();
                        pending_since = None;
                        intake = Intake::Refused(message);
                    }
                }
            }
            Event::FinalDeadline => {
                let unshipped = accepted_bytes - report.bytes_shipped;
                report.bytes_discarded += unshipped;
                return Err(ShipError::FinalFlushTimedOut {
                    unshipped,
                    timeout: options.final_flush_timeout,
                    last_error,
                    report,
                });
            }
        }
    }

    match intake {
        Intake::Refused(message) => Err(ShipError::Refused { message, report }),
        Intake::Accepting | Intake::Truncated => Ok(report),
    }
}

fn accept(
    bytes: &[u8],
    pending: &mut BytesMut,
    pending_since: &mut Option<Instant>,
    accepted_bytes: &mut u64,
    last_accepted_byte: &mut Option<u8>,
) {
    if bytes.is_empty() {
        return;
    }
    if pending.is_empty() {
        *pending_since = Some(Instant::now());
    }
    pending.extend_from_slice(bytes);
    *accepted_bytes += bytes.len() as u64;
    *last_accepted_byte = bytes.last().copied();
}

fn retry_delay(options: &ShipOptions, attempt: u32) -> Duration {
    options
        .retry_initial_delay
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(options.retry_max_delay)
}

/// The wall clock as the log prints it.
pub fn now_millis() -> Millis {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Millis(millis)
}
