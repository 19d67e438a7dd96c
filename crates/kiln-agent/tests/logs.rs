//! The log format (with an injected clock) and the shipper against an in-memory server:
//! partial-line latency, byte exactness, the cap and its marker, retries, refusals and
//! the bounded final flush.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_agent::logs::{
    LogFormatter, LogSink, LogSinkError, PREFIX_LEN, ShipError, ShipOptions, ship_logs,
    truncation_message,
};
use kiln_agent::output::{OutputChunk, Stream};
use kiln_core::Millis;
use tokio::sync::mpsc;

/// 2026-11-24T22:40:01.123Z
const T0: Millis = Millis(1_795_560_001_123);

fn stdout(bytes: &[u8]) -> OutputChunk {
    OutputChunk::new(Stream::Stdout, bytes.to_vec())
}

fn stderr(bytes: &[u8]) -> OutputChunk {
    OutputChunk::new(Stream::Stderr, bytes.to_vec())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_line_gets_a_timestamp_and_a_stream_tag() {
    let mut formatter = LogFormatter::new();
    let mut log = Vec::new();
    formatter.push(&stdout(b"one\ntwo\n"), T0, &mut log);
    formatter.push(&stderr(b"warning\n"), T0.plus_ms(5), &mut log);
    formatter.push(&OutputChunk::agent("exit 0"), Millis(T0.0 + 1000), &mut log);

    assert_eq!(
        text(&log),
        "2026-11-24T22:40:01.123Z out  one\n\
         2026-11-24T22:40:01.123Z out  two\n\
         2026-11-24T22:40:01.128Z err  warning\n\
         2026-11-24T22:40:02.123Z kiln exit 0\n"
    );
    assert_eq!(log.iter().position(|&b| b == b'o'), Some(PREFIX_LEN - 5));
    assert_eq!(&log[PREFIX_LEN..PREFIX_LEN + 3], b"one");
}

#[test]
fn a_partial_line_continues_without_a_new_prefix() {
    let mut formatter = LogFormatter::new();
    let first = formatter.format(&stdout(b"Compiling"), T0);
    let second = formatter.format(&stdout(b" kiln... done\nnext"), T0.plus_ms(300));
    let third = formatter.format(&stdout(b" line\n"), T0.plus_ms(600));

    assert_eq!(text(&first), "2026-11-24T22:40:01.123Z out  Compiling");
    assert_eq!(
        text(&second),
        " kiln... done\n2026-11-24T22:40:01.423Z out  next"
    );
    assert_eq!(text(&third), " line\n");
}

#[test]
fn a_stream_change_mid_line_starts_a_new_line() {
    let mut formatter = LogFormatter::new();
    let mut log = Vec::new();
    formatter.push(&stdout(b"Password: "), T0, &mut log);
    formatter.push(&stderr(b"error: no tty\n"), T0.plus_ms(1), &mut log);
    formatter.push(&stdout(b"tail"), T0.plus_ms(2), &mut log);
    formatter.end_line(&mut log);
    formatter.end_line(&mut log);

    assert_eq!(
        text(&log),
        "2026-11-24T22:40:01.123Z out  Password: \n\
         2026-11-24T22:40:01.124Z err  error: no tty\n\
         2026-11-24T22:40:01.125Z out  tail\n"
    );
}

#[test]
fn ansi_codes_carriage_returns_and_invalid_utf8_are_kept() {
    let line: &[u8] = b"\x1b[32mok\x1b[0m 50%\r100% \xff\xfe caf\xc3\xa9\r\n";
    let mut formatter = LogFormatter::new();
    let log = formatter.format(&stdout(line), T0);

    assert_eq!(&log[PREFIX_LEN..], line);
    assert_eq!(log.len(), PREFIX_LEN + line.len());
}

#[test]
fn the_truncation_message_names_the_cap() {
    assert_eq!(
        truncation_message(100 * 1024 * 1024),
        "... log truncated: the job wrote more than 100 MiB; the rest was discarded (Kiln)"
    );
    assert!(truncation_message(1500).contains("1500 bytes"));
}

/// What the in-memory server does with an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Accept,
    /// Fails every other append before storing it.
    FailEveryOther,
    /// Stores every other append but answers with an error (a lost response).
    StoreThenFailEveryOther,
    AlwaysFail,
    Refuse,
}

/// A log server in memory: appends must be contiguous; a repeated append is accepted.
#[derive(Clone)]
struct MemoryServer {
    state: Arc<Mutex<ServerState>>,
}

struct ServerState {
    behavior: Behavior,
    log: Vec<u8>,
    calls: u64,
    /// (offset, length, when) of every append the server stored.
    appends: Vec<(u64, usize, Instant)>,
}

impl MemoryServer {
    fn new(behavior: Behavior) -> Self {
        Self {
            state: Arc::new(Mutex::new(ServerState {
                behavior,
                log: Vec::new(),
                calls: 0,
                appends: Vec::new(),
            })),
        }
    }

    fn log(&self) -> Vec<u8> {
        self.state.lock().unwrap().log.clone()
    }

    fn appends(&self) -> Vec<(u64, usize, Instant)> {
        self.state.lock().unwrap().appends.clone()
    }
}

impl LogSink for MemoryServer {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<(), LogSinkError> {
        let mut state = self.state.lock().unwrap();
        state.calls += 1;
        let odd_call = state.calls % 2 == 1;
        match state.behavior {
            Behavior::Refuse => return Err(LogSinkError::Refused("job cancelled".into())),
            Behavior::AlwaysFail => return Err(LogSinkError::Transient("503".into())),
            Behavior::FailEveryOther if odd_call => {
                return Err(LogSinkError::Transient("connection reset".into()));
            }
            _ => {}
        }
        let offset = usize::try_from(offset).unwrap();
        let length = state.log.len();
        if offset == length {
            state.log.extend_from_slice(&bytes);
            state
                .appends
                .push((offset as u64, bytes.len(), Instant::now()));
        } else {
            assert!(offset < length, "gap: append at {offset}, log has {length}");
            assert_eq!(
                &state.log[offset..offset + bytes.len()],
                &bytes[..],
                "a repeated append changed bytes"
            );
        }
        if state.behavior == Behavior::StoreThenFailEveryOther && odd_call {
            return Err(LogSinkError::Transient("response lost".into()));
        }
        Ok(())
    }
}

fn fast_options() -> ShipOptions {
    ShipOptions {
        retry_initial_delay: Duration::from_millis(5),
        retry_max_delay: Duration::from_millis(20),
        ..ShipOptions::default()
    }
}

/// Removes the 30-byte prefix of every line (lines start after each `\n`).
fn strip_prefixes(log: &[u8]) -> Vec<u8> {
    let mut stripped = Vec::new();
    for line in log.split_inclusive(|&byte| byte == b'\n') {
        assert!(line.len() > PREFIX_LEN, "short line {:?}", text(line));
        stripped.extend_from_slice(&line[PREFIX_LEN..]);
    }
    stripped
}

#[tokio::test]
async fn a_partial_line_ships_within_the_interval() {
    let server = MemoryServer::new(Behavior::Accept);
    let (sender, receiver) = mpsc::channel(16);
    let shipper = tokio::spawn(ship_logs(receiver, server.clone(), ShipOptions::default()));

    let sent_at = Instant::now();
    sender.send(stdout(b"Continue? [y/N] ")).await.unwrap();
    let deadline = sent_at + Duration::from_secs(2);
    while server.appends().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let appends = server.appends();
    assert_eq!(appends.len(), 1);
    let latency = appends[0].2 - sent_at;
    assert!(latency < Duration::from_millis(400), "{latency:?}");
    assert!(text(&server.log()).ends_with("out  Continue? [y/N] "));

    sender.send(stdout(b"y\n")).await.unwrap();
    drop(sender);
    let report = shipper.await.unwrap().unwrap();
    assert!(text(&server.log()).ends_with("out  Continue? [y/N] y\n"));
    assert_eq!(report.bytes_shipped, server.log().len() as u64);
    assert!(!report.truncated);
}

#[tokio::test]
async fn a_burst_is_split_into_appends_of_at_most_max_chunk_bytes() {
    let server = MemoryServer::new(Behavior::Accept);
    let (sender, receiver) = mpsc::channel(16);
    let options = ShipOptions {
        max_chunk_bytes: 1000,
        ..fast_options()
    };
    let shipper = tokio::spawn(ship_logs(receiver, server.clone(), options));

    let line = format!("{}\n", "y".repeat(99));
    for _ in 0..100 {
        sender.send(stdout(line.as_bytes())).await.unwrap();
    }
    drop(sender);
    let report = shipper.await.unwrap().unwrap();

    let appends = server.appends();
    assert!(appends.iter().all(|(_, length, _)| *length <= 1000));
    assert!(appends.len() >= 13, "{}", appends.len());
    assert_eq!(strip_prefixes(&server.log()), line.repeat(100).into_bytes());
    assert_eq!(report.bytes_shipped, 100 * (PREFIX_LEN as u64 + 100));
}

#[tokio::test]
async fn retries_keep_offsets_contiguous_and_bytes_exact() {
    for behavior in [Behavior::FailEveryOther, Behavior::StoreThenFailEveryOther] {
        let server = MemoryServer::new(behavior);
        let (sender, receiver) = mpsc::channel(16);
        let options = ShipOptions {
            max_chunk_bytes: 500,
            interval: Duration::from_millis(10),
            ..fast_options()
        };
        let shipper = tokio::spawn(ship_logs(receiver, server.clone(), options));

        let mut expected = Vec::new();
        for index in 0..300u32 {
            let chunk: Vec<u8> = if index % 3 == 0 {
                let mut chunk = format!("line {index} \x1b[1mbold\x1b[0m ").into_bytes();
                chunk.extend_from_slice(b"\xff\n");
                chunk
            } else {
                format!("line {index}\n").into_bytes()
            };
            expected.extend_from_slice(&chunk);
            sender.send(stdout(&chunk)).await.unwrap();
            if index % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
        drop(sender);
        let report = shipper.await.unwrap().unwrap();

        let log = server.log();
        assert_eq!(strip_prefixes(&log), expected, "{behavior:?}");
        assert_eq!(report.bytes_shipped, log.len() as u64, "{behavior:?}");
        assert_eq!(report.bytes_discarded, 0);
        let appends = server.appends();
        let mut next_offset = 0;
        for (offset, length, _) in appends {
            assert_eq!(offset, next_offset, "{behavior:?}");
            next_offset += length as u64;
        }
    }
}

#[tokio::test]
async fn the_cap_writes_a_marker_and_keeps_draining_without_blocking_the_step() {
    let server = MemoryServer::new(Behavior::Accept);
    let (sender, receiver) = mpsc::channel(8);
    let cap = 1024 * 1024;
    let options = ShipOptions {
        cap_bytes: cap,
        ..fast_options()
    };
    let shipper = tokio::spawn(ship_logs(receiver, server.clone(), options));

    // 5 MB in 64 KiB chunks of 100-byte lines.
    let line = format!("{}\n", "z".repeat(99));
    let chunk = line.repeat(655);
    let started = Instant::now();
    let mut written = 0;
    let mut slowest_send = Duration::ZERO;
    while written < 5_000_000 {
        let send_started = Instant::now();
        sender.send(stdout(chunk.as_bytes())).await.unwrap();
        slowest_send = slowest_send.max(send_started.elapsed());
        written += chunk.len();
    }
    drop(sender);
    let sending_took = started.elapsed();
    let report = shipper.await.unwrap().unwrap();

    assert!(sending_took < Duration::from_secs(3), "{sending_took:?}");
    assert!(slowest_send < Duration::from_secs(1), "{slowest_send:?}");
    assert!(report.truncated);
    let log = server.log();
    assert_eq!(report.bytes_shipped, log.len() as u64);
    let message = "... log truncated: the job wrote more than 1 MiB; the rest was discarded (Kiln)";
    let log_text = text(&log);
    assert!(
        log_text.ends_with(&format!(" kiln {message}\n")),
        "{}",
        &log_text[log_text.len() - 200..]
    );
    let marker_line_len = PREFIX_LEN + message.len() + 1;
    let body = log.len() - marker_line_len;
    assert!(body as u64 <= cap);
    assert!(body as u64 > cap - (PREFIX_LEN as u64 + 100));
    // Whole lines only before the marker.
    assert!(
        strip_prefixes(&log[..body])
            .iter()
            .all(|&b| b == b'z' || b == b'\n')
    );
    let formatted_total = (written / 100 * (PREFIX_LEN + 100)) as u64;
    assert_eq!(
        report.bytes_shipped - marker_line_len as u64 + report.bytes_discarded,
        formatted_total
    );
}

#[tokio::test]
async fn a_refused_log_is_reported_and_the_output_still_drains() {
    let server = MemoryServer::new(Behavior::Refuse);
    let (sender, receiver) = mpsc::channel(2);
    let shipper = tokio::spawn(ship_logs(receiver, server.clone(), fast_options()));

    for _ in 0..1000 {
        sender
            .send(stdout(b"output nobody will see\n"))
            .await
            .unwrap();
    }
    drop(sender);
    let error = shipper.await.unwrap().unwrap_err();

    assert!(matches!(error, ShipError::Refused { .. }), "{error:?}");
    assert!(error.to_string().contains("job cancelled"), "{error}");
    let report = error.report();
    assert_eq!(report.bytes_shipped, 0);
    assert_eq!(report.bytes_discarded, 1000 * (PREFIX_LEN as u64 + 23));
}

#[tokio::test]
async fn the_final_flush_gives_up_after_its_deadline() {
    let server = MemoryServer::new(Behavior::AlwaysFail);
    let (sender, receiver) = mpsc::channel(8);
    let options = ShipOptions {
        final_flush_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let shipper = tokio::spawn(ship_logs(receiver, server.clone(), options));

    sender.send(stdout(b"last words\n")).await.unwrap();
    drop(sender);
    let started = Instant::now();
    let error = shipper.await.unwrap().unwrap_err();

    assert!(started.elapsed() < Duration::from_secs(2));
    match &error {
        ShipError::FinalFlushTimedOut {
            unshipped,
            last_error,
            ..
        } => {
            assert_eq!(*unshipped, PREFIX_LEN as u64 + 11);
            assert_eq!(last_error.as_deref(), Some("503"));
        }
        other => panic!("expected FinalFlushTimedOut, got {other:?}"),
    }
    assert!(error.to_string().contains("503"), "{error}");
    assert_eq!(error.report().bytes_discarded, PREFIX_LEN as u64 + 11);
}
