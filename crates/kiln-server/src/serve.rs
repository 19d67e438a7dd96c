//! The HTTP accept loop: what `axum::serve` does, with the connection settings and
//! limits Kiln needs.
//!
//! Every open SSE stream keeps its connection, and a connection's buffers are most of a
//! subscriber's memory. hyper's HTTP/1 read buffer is capped at 8 KiB here (hyper's
//! minimum; the default lets it grow to ~400 KiB and axum's `serve` cannot change it),
//! which also caps a request head at 8 KiB — request bodies are read in chunks and are
//! unaffected. `TCP_NODELAY` is set so small live events are not held back by Nagle's
//! algorithm. Shutdown is graceful: stop accepting, let each connection finish its
//! in-flight request, then return once every connection task has ended.
//!
//! Connections cannot be held for free (`ConnectionConfig`): a connection with no request
//! in flight is closed once it has been idle for the idle timeout, or once a request head
//! it started has taken longer than the header timeout (slowloris); a connection past
//! the cap, or past one address's share of it, takes the place of the connection that
//! has been idle longest (within that address's connections when its share is what is
//! full), as nginx reuses keep-alive connections, so idle connections can never lock
//! other clients out; only when every connection is busy is the new one closed at once.
//! Accept errors (out of file descriptors) back off instead of spinning. A request in flight — a long SSE
//! stream included — is never cut by these timers, and an upgraded connection (Socket.IO's
//! WebSocket) leaves them when it upgrades.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

/// The largest request head (start line and headers); a longer one is answered 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// The largest HTTP/1 read buffer per connection. Bodies are read through it, so an
/// artifact upload arrives in reads of up to this size rather than of the head limit's
/// 8 KiB (25,600 reads and frames for 200 MiB); hyper starts every connection at 8 KiB
/// and grows its buffer towards this only while reads fill it, so an idle connection
/// costs what it did (10,000 idle: 131 MiB either way, the chaos suite's slow_clients).
/// It also bounds what hyper queues for a connection that does not read its response.
const MAX_READ_BUFFER_BYTES: usize = 256 * 1024;

/// How long connections may be held, and how many (`kiln serve` flags).
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// A request head must be complete this long after its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed as they are accepted.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_address: usize,
    /// Reverse proxies whose `X-Forwarded-For`/`Forwarded` name the client
    /// (`--trusted-proxies`); from any other peer those headers are ignored.
    pub trusted_proxies: Vec<kiln_core::net::Cidr>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_address: 2_500,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Open connections, in all and per address, with what each is doing (to find the one
/// idle longest when the cap is reached).
#[derive(Default)]
struct Census {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    connections: HashMap<u64, (IpAddr, Arc<Activity>)>,
    next_id: u64,
}

impl Census {
    /// The connection (of `address`, or of any address) idle longest and not yet asked to
    /// close; `None` when every such connection is busy.
    fn longest_idle(&self, address: Option<IpAddr>) -> Option<&Arc<Activity>> {
        self.connections
            .values()
            .filter(|(from, _)| address.is_none_or(|address| *from == address))
            .map(|(_, activity)| activity)
            .filter(|activity| activity.is_idle())
            .min_by_key(|activity| activity.idle_since_instant())
    }
}

/// One admitted connection; leaves the census when dropped.
struct Admitted {
    census: Arc<Mutex<Census>>,
    address: IpAddr,
    id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut census = self.census.lock().expect("census lock");
        census.connections.remove(&self.id);
        census.total = census.total.saturating_sub(1);
        if let Some(count) = census.per_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                census.per_address.remove(&self.address);
            }
        }
    }
}

/// Admits a connection from `address` with its `activity`: under the cap at once; at the
/// cap (or at the address's share) in place of the connection idle longest (of that
/// address when its share is full), which is told to close; `None` when all are busy.
fn admit(
    census: &Arc<Mutex<Census>>,
    address: IpAddr,
    activity: &Arc<Activity>,
    config: &ConnectionConfig,
) -> Option<Admitted> {
    let mut counts = census.lock().expect("census lock");
    let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
    let address_full = from_address >= config.max_connections_per_address;
    if address_full || counts.total >= config.max_connections {
        let victim = counts.longest_idle(address_full.then_some(address))?;
        victim.evict();
    }
    counts.total += 1;
    *counts.per_address.entry(address).or_insert(0) += 1;
    let id = counts.next_id;
    counts.next_id += 1;
    counts.connections.insert(id, (address, activity.clone()));
    Some(Admitted {
        census: census.clone(),
        address,
        id,
    })
}

/// What a connection is doing, shared by its I/O, its service and its watchdog.
struct Activity {
    started: Instant,
    /// Requests whose response has not been fully sent.
    in_flight: AtomicUsize,
    /// Milliseconds since `started` of the last time the connection became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `started` when the bytes of a new request head began, while
    /// no request was in flight; `u64::MAX` when none is being read.
    head_since: AtomicU64,
    /// Set when the connection upgraded (the timers no longer apply).
    upgraded: AtomicBool,
    /// Set when a new connection took this idle one's place at the cap.
    evicted: AtomicBool,
    /// Wakes the connection's task once `evicted` is set.
    evict: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(u64::MAX),
            upgraded: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
        }
    }

    /// No request in flight or being read, not upgraded, not already asked to close.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self.head_since.load(Ordering::SeqCst) == u64::MAX
            && !self.upgraded.load(Ordering::SeqCst)
            && !self.evicted.load(Ordering::SeqCst)
    }

    /// When the connection last became idle.
    fn idle_since_instant(&self) -> Instant {
        self.started + Duration::from_millis(self.idle_since.load(Ordering::SeqCst))
    }

    /// Asks the connection to close (it is idle and its slot is needed).
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.evict.notify_one();
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(u64::MAX, Ordering::SeqCst);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.now(), Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let now = self.now();
            let _ =
                self.head_since
                    .compare_exchange(u64::MAX, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, config: &ConnectionConfig) -> Option<&'static str> {
        if self.upgraded.load(Ordering::SeqCst) || self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let now = self.now();
        let head_since = self.head_since.load(Ordering::SeqCst);
        if head_since != u64::MAX {
            return (now.saturating_sub(head_since)
                > config.header_read_timeout.as_millis() as u64)
                .then_some("request head not complete within the header timeout");
        }
        let idle_since = self.idle_since.load(Ordering::SeqCst);
        (now.saturating_sub(idle_since) > config.idle_timeout.as_millis() as u64)
            .then_some("idle past the idle timeout")
    }
}

/// The connection's socket, noting when request bytes arrive.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that marks its request ended when it is finished or dropped.
struct TrackedBody {
    inner: Body,
    activity: Option<Arc<Activity>>,
}

impl TrackedBody {
    fn end(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.request_ended();
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.end();
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Accept errors (out of file descriptors, mostly): wait, doubling up to a second, and
/// log at most every 10 s with the count.
struct AcceptBackoff {
    delay: Duration,
    errors_since_log: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    fn new() -> Self {
        Self {
            delay: Duration::from_millis(5),
            errors_since_log: 0,
            last_log: None,
        }
    }

    async fn failed(&mut self, error: std::io::Error) {
        self.errors_since_log += 1;
        if self
            .last_log
            .is_none_or(|logged| logged.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(%error, errors = self.errors_since_log, "cannot accept connections; backing off (raise the open-files limit or lower --max-connections)");
            self.errors_since_log = 0;
            self.last_log = Some(Instant::now());
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }

    fn succeeded(&mut self) {
        self.delay = Duration::from_millis(5);
    }
}

/// The client behind `peer`: itself, or, when `peer` is a trusted proxy, the address
/// the forwarding headers name.
fn client_of(
    peer: std::net::SocketAddr,
    headers: &hyper::HeaderMap,
    trusted: &[kiln_core::net::Cidr],
) -> std::net::SocketAddr {
    if trusted.is_empty() {
        return peer;
    }
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect()
    };
    let chain = kiln_core::net::forwarded_chain(&values("x-forwarded-for"), &values("forwarded"));
    std::net::SocketAddr::new(
        kiln_core::net::client_address(peer.ip(), &chain, trusted),
        peer.port(),
    )
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for open
/// connections to finish their current request (long-lived streams end on their own
/// when the server announces shutdown to them).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    config: ConnectionConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a receiver; `closed()` resolves when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    let census = Arc::new(Mutex::new(Census::default()));
    let config = Arc::new(config);
    let mut backoff = AcceptBackoff::new();
    let mut refused_logged: Option<Instant> = None;
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    backoff.failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::new());
        let Some(admitted) = admit(&census, peer.ip(), &activity, &config) else {
            if refused_logged.is_none_or(|logged| logged.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(peer = %peer.ip(), "connection refused: the connection cap or this address's share of it is reached (--max-connections, --max-connections-per-address) and every connection is busy");
                refused_logged = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service_activity = activity.clone();
        let trusted_proxies = config.trusted_proxies.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut app = app.clone();
            let activity = service_activity.clone();
            activity.request_started();
            let upgrading = request.headers().contains_key(hyper::header::UPGRADE);
            let client = client_of(peer, request.headers(), &trusted_proxies);
            let mut request = request.map(Body::new);
            // The client's address, for per-address limits (login): the peer, or the
            // client a trusted proxy names.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(client));
            async move {
                let response = app.call(request).await?;
                if upgrading && response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                    activity.upgraded.store(true, Ordering::SeqCst);
                }
                Ok::<_, std::convert::Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    activity: Some(activity),
                }))
            }
        });
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            // No hyper timer: its header timeout would also start on an idle
            // keep-alive connection; the watchdog below tells the two apart.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.max_buf_size(MAX_READ_BUFFER_BYTES);
            builder.max_header_size(MAX_REQUEST_HEAD_BYTES);
            let io = TokioIo::new(Watched {
                inner: stream,
                activity: activity.clone(),
            });
            let mut connection = pin!(builder.serve_connection(io, service).with_upgrades());
            let mut watchdog = tokio::time::interval(Duration::from_millis(250));
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::trace!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|stop| *stop), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    () = activity.evict.notified() => {
                        // Checked again: a request may have begun since it was chosen.
                        if activity.in_flight.load(Ordering::SeqCst) == 0 {
                            tracing::debug!(peer = %peer, "closing an idle connection for a new one at the connection cap");
                            break;
                        }
                        activity.evicted.store(false, Ordering::SeqCst);
                    }
                    _ = watchdog.tick() => {
                        if let Some(reason) = activity.expired(&config) {
                            tracing::debug!(peer = %peer, reason, "closing a connection");
                            break;
                        }
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_census_caps_totals_and_each_address() {
        let census = Arc::new(Mutex::new(Census::default()));
        let config = ConnectionConfig {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ConnectionConfig::default()
        };
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let busy = || {
            let activity = Arc::new(Activity::new());
            activity.request_started();
            activity
        };
        let first = admit(&census, a, &busy(), &config).unwrap();
        let _second = admit(&census, a, &busy(), &config).unwrap();
        assert!(
            admit(&census, a, &busy(), &config).is_none(),
            "a's share is used"
        );
        let _third = admit(&census, b, &busy(), &config).unwrap();
        assert!(
            admit(&census, b, &busy(), &config).is_none(),
            "the cap is reached"
        );
        drop(first);
        assert!(
            admit(&census, a, &busy(), &config).is_some(),
            "a slot came free"
        );
    }

    #[test]
    fn at_the_cap_a_new_connection_takes_the_place_of_the_one_idle_longest() {
        let census = Arc::new(Mutex::new(Census::default()));
        let config = ConnectionConfig {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ConnectionConfig::default()
        };
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let older_idle = Arc::new(Activity::new());
        std::thread::sleep(Duration::from_millis(5));
        let newer_idle = Arc::new(Activity::new());
        let busy = Arc::new(Activity::new());
        busy.request_started();
        let _a1 = admit(&census, a, &older_idle, &config).unwrap();
        let _a2 = admit(&census, a, &busy, &config).unwrap();
        let _b1 = admit(&census, b, &newer_idle, &config).unwrap();

        // The cap is reached: b's new connection takes the place of a's idle one (the
        // oldest idle anywhere), not of the busy one.
        let _b2 = admit(&census, b, &Arc::new(Activity::new()), &config).unwrap();
        assert!(older_idle.evicted.load(Ordering::SeqCst));
        assert!(!busy.evicted.load(Ordering::SeqCst));
        assert!(!newer_idle.evicted.load(Ordering::SeqCst));

        // b's share is full: only b's own idle connections may make room, never a's.
        let third_b = Arc::new(Activity::new());
        assert!(admit(&census, b, &third_b, &config).is_some());
        assert!(newer_idle.evicted.load(Ordering::SeqCst));
        assert!(!busy.evicted.load(Ordering::SeqCst));

        // Every connection busy or already leaving: the new one is refused.
        for (_, (_, activity)) in census.lock().unwrap().connections.iter() {
            activity.request_started();
        }
        assert!(admit(&census, b, &Arc::new(Activity::new()), &config).is_none());
    }

    #[test]
    fn a_connection_expires_idle_or_mid_head_never_mid_request() {
        let config = ConnectionConfig {
            header_read_timeout: Duration::from_millis(0),
            idle_timeout: Duration::from_millis(0),
            ..ConnectionConfig::default()
        };
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            activity.expired(&config),
            Some("idle past the idle timeout")
        );
        activity.bytes_read();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            activity.expired(&config),
            Some("request head not complete within the header timeout")
        );
        activity.request_started();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(activity.expired(&config), None, "a request is in flight");
        activity.request_ended();
        activity.upgraded.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(activity.expired(&config), None, "upgraded");
    }
}
