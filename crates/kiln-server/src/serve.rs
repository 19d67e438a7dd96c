//! The HTTP accept loop: what `axum::serve` does, with the connection settings Kiln needs.
//!
//! Every open SSE stream keeps its connection, and a connection's buffers are most of a
//! subscriber's memory. hyper's HTTP/1 read buffer is capped at 8 KiB here (hyper's
//! minimum; the default lets it grow to ~400 KiB and axum's `serve` cannot change it),
//! which also caps a request head at 8 KiB — request bodies are read in chunks and are
//! unaffected. `TCP_NODELAY` is set so small live events are not held back by Nagle's
//! algorithm. Shutdown is graceful: stop accepting, let each connection finish its
//! in-flight request, then return once every connection task has ended.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

/// The largest HTTP/1 read buffer per connection (and so the largest request head).
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;

/// Serves `app` on `listener` until `shutdown` completes, then waits for open
/// connections to finish their current request (long-lived streams end on their own
/// when the server announces shutdown to them).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a receiver; `closed()` resolves when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut app = app.clone();
            let mut request = request.map(Body::new);
            // The client's address, for per-address limits (login).
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            async move { app.call(request).await }
        });
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().max_buf_size(MAX_REQUEST_HEAD_BYTES);
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
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
