//! The output of a command `kiln run` wraps, shipped as its build's log while it passes
//! through to kiln's own stdout and stderr unchanged.
//!
//! Each step's output goes to a reported job of the build named after the step
//! (`POST /api/v1/builds/{runId}/log?step=`), in the agents' format and with their
//! shipper (`kiln_agent::logs`: timestamped lines tagged `out`/`err`/`kiln`, appends by
//! byte offset every 250 ms, the same cap), through their masker for `--mask`ed values.
//!
//! Logging never slows the command: the terminal gets each chunk first, and a chunk the
//! log cannot take at once (the server is slow or away) is left out of the log and
//! counted; the log then says how many bytes it misses. When a step ends its log is
//! finished in the background while the next step runs; at the build's end kiln waits
//! for the logs at most the flush timeout — not at all once the server proved
//! unreachable — alongside the events' own flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kiln_agent::logs::{LogSink, LogSinkError, ShipError, ShipOptions, ShipReport, ship_logs};
use kiln_agent::mask::{Masker, relay};
use kiln_agent::output::{OutputChunk, OutputSender, Stream};
use kiln_client::{Client, ClientError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Chunks waiting for the log; past this the log leaves output out rather than slow the
/// command down.
const QUEUE_CHUNKS: usize = 1024;
/// Bytes read from a pipe at once.
const READ_BUFFER: usize = 64 * 1024;
/// After the command exits, how long its pipes may stay open (held by a process it
/// left in the background) before kiln stops reading them.
const PIPE_DRAIN: Duration = Duration::from_millis(500);
/// The longest the request that ends a log may take.
const END_TIMEOUT: Duration = Duration::from_secs(5);

/// What a step's log needs from the run: where it goes and what it masks.
#[derive(Clone)]
pub struct LogTarget {
    pub client: Client,
    pub run_id: String,
    /// The values to replace by `***` (those of `--mask` variables).
    pub masked: Arc<Vec<String>>,
    /// Set once a request could not connect to the server; cleared by one that could.
    pub unreachable: Arc<AtomicBool>,
}

/// How a step ended, for its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    Passed,
    Failed,
    Cancelled,
}

impl StepOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Appends to the reported job of one step.
struct ReportedLog {
    target: LogTarget,
    step: String,
}

impl LogSink for ReportedLog {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<(), LogSinkError> {
        let result = self
            .target
            .client
            .report_log(
                &self.target.run_id,
                &self.step,
                offset as i64,
                bytes.to_vec(),
                None,
            )
            .await;
        self.target.note(&result);
        match result {
            Ok(_) => Ok(()),
            // The build's build_started may not be stored yet: try again.
            Err(ClientError::Api { status: 404, .. }) => Err(LogSinkError::Transient(
                "the build is not stored yet".into(),
            )),
            Err(ClientError::Api { status, body })
                if (400..500).contains(&status) && status != 429 =>
            {
                Err(LogSinkError::Refused(body.error.message))
            }
            Err(error) => Err(LogSinkError::Transient(error.to_string())),
        }
    }
}

impl LogTarget {
    fn note<T>(&self, result: &Result<T, ClientError>) {
        match result {
            Err(error) if error.is_unreachable() => self.unreachable.store(true, Ordering::SeqCst),
            Err(_) => {}
            Ok(_) => self.unreachable.store(false, Ordering::SeqCst),
        }
    }
}

/// The log of one running step.
pub struct StepLog {
    target: LogTarget,
    step: String,
    sender: OutputSender,
    dropped: Arc<AtomicU64>,
    relay: JoinHandle<()>,
    shipper: JoinHandle<Result<ShipReport, ShipError>>,
}

impl StepLog {
    pub fn start(target: &LogTarget, step: &str) -> Self {
        let (sender, unmasked) = tokio::sync::mpsc::channel(QUEUE_CHUNKS);
        let (masked, shipped) = tokio::sync::mpsc::channel(256);
        let masker = Masker::new(target.masked.iter().map(String::as_str));
        let relay = tokio::spawn(relay(unmasked, masked, masker));
        let sink = ReportedLog {
            target: target.clone(),
            step: step.to_owned(),
        };
        let options = ShipOptions {
            // `finish` bounds the wait itself (and cuts it when the server is away).
            final_flush_timeout: Duration::from_secs(3600),
            ..ShipOptions::default()
        };
        let shipper = tokio::spawn(ship_logs(shipped, sink, options));
        Self {
            target: target.clone(),
            step: step.to_owned(),
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            relay,
            shipper,
        }
    }

    /// Copies `pipe` to kiln's own `stream` and to this log, until end of file.
    pub fn pass_through(
        &self,
        pipe: impl AsyncRead + Unpin + Send + 'static,
        stream: Stream,
    ) -> JoinHandle<()> {
        let sender = self.sender.clone();
        let dropped = self.dropped.clone();
        tokio::spawn(async move {
            match stream {
                Stream::Stderr => copy(pipe, tokio::io::stderr(), stream, sender, dropped).await,
                _ => copy(pipe, tokio::io::stdout(), stream, sender, dropped).await,
            }
        })
    }

    /// A line of kiln's own (tagged `kiln`).
    fn note(&self, message: &str) {
        if self.sender.try_send(OutputChunk::agent(message)).is_err() {
            self.dropped
                .fetch_add(message.len() as u64 + 1, Ordering::Relaxed);
        }
    }

    /// Waits for the pipes' end (briefly: see `PIPE_DRAIN`) and adds kiln's
    /// `last_word` on how the step ended; then sends the rest and ends the log with the
    /// step's outcome in the background (the next step need not wait for it). Await
    /// the handles with [`wait_for_logs`] before kiln exits.
    pub async fn close(
        self,
        readers: Vec<JoinHandle<()>>,
        outcome: StepOutcome,
        exit_code: Option<i32>,
        last_word: Option<&str>,
    ) -> JoinHandle<()> {
        for mut reader in readers {
            if tokio::time::timeout(PIPE_DRAIN, &mut reader).await.is_err() {
                reader.abort();
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            self.note(&format!(
                "... {dropped} bytes of output are not in this log: the server did not take them fast enough (Kiln)"
            ));
        }
        if let Some(message) = last_word {
            self.note(message);
        }
        let StepLog {
            target,
            step,
            sender,
            relay,
            shipper,
            ..
        } = self;
        drop(sender);
        tokio::spawn(async move {
            let _ = relay.await;
            let size = match shipper.await {
                Ok(Ok(report)) => report.bytes_shipped,
                Ok(Err(ShipError::Refused { message, .. })) => {
                    errln!("kiln: the server refused the log of step '{step}': {message}");
                    return;
                }
                Ok(Err(error)) => error.report().bytes_shipped,
                Err(_) => return,
            };
            let end = target.client.report_log(
                &target.run_id,
                &step,
                size as i64,
                Vec::new(),
                Some((outcome.as_str(), exit_code.map(i64::from))),
            );
            if let Ok(result) = tokio::time::timeout(END_TIMEOUT, end).await {
                target.note(&result);
            }
        })
    }
}

/// A build's logs: where they go (nowhere with `--no-log`) and those still being sent.
pub struct BuildLogs {
    target: Option<LogTarget>,
    pending: Vec<JoinHandle<()>>,
}

impl BuildLogs {
    pub fn new(target: Option<LogTarget>) -> Self {
        Self {
            target,
            pending: Vec::new(),
        }
    }

    /// The log of a step starting now, unless logs are off.
    pub fn start(&self, step: &str) -> Option<StepLog> {
        self.target
            .as_ref()
            .map(|target| StepLog::start(target, step))
    }

    /// Closes a step's log (see [`StepLog::close`]).
    pub async fn close(
        &mut self,
        log: StepLog,
        readers: Vec<JoinHandle<()>>,
        outcome: StepOutcome,
        exit_code: Option<i32>,
        last_word: Option<&str>,
    ) {
        let sending = log.close(readers, outcome, exit_code, last_word).await;
        self.pending.push(sending);
    }

    /// Waits for the steps' logs to be sent and ended, at most `flush_timeout`, and not
    /// at all once the server proved unreachable; what is left is given up (logs are
    /// not spooled).
    pub async fn wait(self, flush_timeout: Duration) {
        if let Some(target) = &self.target {
            wait_for_logs(self.pending, flush_timeout, &target.unreachable).await;
        }
    }
}

async fn wait_for_logs(
    logs: Vec<JoinHandle<()>>,
    flush_timeout: Duration,
    unreachable: &AtomicBool,
) {
    if logs.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + flush_timeout;
    let count = logs.len();
    let mut all = std::pin::pin!(async {
        for log in logs {
            let _ = log.await;
        }
    });
    loop {
        if unreachable.load(Ordering::SeqCst) {
            return;
        }
        tokio::select! {
            () = &mut all => return,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            () = tokio::time::sleep_until(deadline) => {
                errln!(
                    "kiln: the build's log ({count} step(s)) could not all be sent within {}s; the server has a part of it",
                    flush_timeout.as_secs_f64()
                );
                return;
            }
        }
    }
}

async fn copy(
    mut pipe: impl AsyncRead + Unpin,
    mut terminal: impl AsyncWrite + Unpin,
    stream: Stream,
    log: OutputSender,
    dropped: Arc<AtomicU64>,
) {
    let mut buffer = vec![0_u8; READ_BUFFER];
    let mut terminal_open = true;
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let bytes = &buffer[..read];
        // The terminal first, unchanged; a closed one (`kiln run … | head`) stops
        // getting output, the log does not.
        if terminal_open {
            terminal_open =
                terminal.write_all(bytes).await.is_ok() && terminal.flush().await.is_ok();
        }
        if log.try_send(OutputChunk::new(stream, bytes)).is_err() {
            dropped.fetch_add(read as u64, Ordering::Relaxed);
        }
    }
}
