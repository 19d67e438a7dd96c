//! A real webhook receiver for the CLI's end-to-end tests: an HTTP/1.1 server on
//! 127.0.0.1 (a thread per connection) that answers each path from a script, records
//! every request with the moment it arrived and the status it got, can go down
//! (connections refused) and come back on the same port, and checks Kiln's signatures
//! with its own HMAC code.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request the receiver answered.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// When the whole request had been read (before answering).
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// The delivery's id: the same on every attempt of one delivery.
    pub fn webhook_id(&self) -> &str {
        &self.headers["webhook-id"]
    }

    /// The Kiln event type (`x-kiln-event`), whatever the body's format.
    pub fn event_type(&self) -> &str {
        &self.headers["x-kiln-event"]
    }

    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A scripted answer: the status and an optional `Retry-After` in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Per path, the answers to its next requests; 200 once a script is used up.
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

pub struct Receiver {
    shared: Arc<Shared>,
    port: u16,
    running: Option<Running>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut receiver = Receiver {
            shared: Arc::new(Shared::default()),
            port,
            running: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared.clone();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        let shared = shared.clone();
                        std::thread::spawn(move || answer(socket, &shared));
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener closes here: connections are refused from now on.
        });
        self.running = Some(Running { stop, thread });
    }

    /// Stops listening: Kiln's connections are refused until `restart`.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.store(true, Ordering::SeqCst);
            running.thread.join().unwrap();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "the receiver is running");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.serve(listener);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers the next requests to `path` with these (status, Retry-After seconds).
    pub fn script(&self, path: &str, answers: &[(u16, Option<u64>)]) {
        self.shared.scripts.lock().unwrap().insert(
            path.to_owned(),
            answers
                .iter()
                .map(|&(status, retry_after)| Answer {
                    status,
                    retry_after,
                })
                .collect(),
        );
    }

    /// The requests to `path`, in the order they were answered.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }

    /// The requests to `path` answered with 2xx.
    pub fn successes(&self, path: &str) -> Vec<Received> {
        self.requests(path)
            .into_iter()
            .filter(Received::succeeded)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut socket: TcpStream, shared: &Shared) {
    socket.set_nonblocking(false).ok();
    socket.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    let at = Instant::now();
    let scripted = shared
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    let Answer {
        status,
        retry_after,
    } = scripted.unwrap_or(Answer {
        status: 200,
        retry_after: None,
    });
    shared.received.lock().unwrap().push(Received {
        path,
        headers,
        body,
        at,
        status,
    });
    let retry_after = retry_after
        .map(|seconds| format!("Retry-After: {seconds}\r\n"))
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n{retry_after}Connection: close\r\n\r\nok"
    );
    let _ = socket.write_all(answer.as_bytes());
    let _ = socket.flush();
}

/// Checks both of Kiln's signatures of `request` with `secret` (`whsec_…`): the Standard
/// Webhooks `webhook-signature` (HMAC-SHA256 of `id.timestamp.body`, base64, among the
/// space-separated `v1,` entries) and the seed's `x-webhook-signature` (hex HMAC-SHA256
/// of the body; it uses the current secret only, so pass `current: false` for an old one).
pub fn verify_signatures(secret: &str, request: &Received, current: bool) {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64 after whsec_");
    let signed = format!(
        "{}.{}.{}",
        request.headers["webhook-id"], request.headers["webhook-timestamp"], request.body
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(signed.as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    let presented: Vec<&str> = request.headers["webhook-signature"].split(' ').collect();
    assert!(
        presented.contains(&expected.as_str()),
        "{} to {}: webhook-signature {presented:?} lacks {expected}",
        request.event_type(),
        request.path
    );
    if current {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(request.body.as_bytes());
        assert_eq!(
            request.headers["x-webhook-signature"],
            hex::encode(mac.finalize().into_bytes()),
            "x-webhook-signature of {} to {}",
            request.event_type(),
            request.path
        );
    }
}

/// Waits until `condition` holds (polling every 50 ms), or panics after `timeout` with
/// `what` and the state `describe` gives.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}; {}",
        describe()
    );
}
