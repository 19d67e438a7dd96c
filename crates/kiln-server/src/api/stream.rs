//! Server-Sent Events: one build (`/builds/{runId}/stream`) or every build of a project
//! (`/stream?project=`), resumable with `Last-Event-ID` or `?lastEventId=`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;

use super::path::Path;
use axum::http::{HeaderMap, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::builds::required_project;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::live::follow::{Delivery, Scope, follow};
use crate::params::QueryParams;
use crate::services::builds::readable_build;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
const RETRY_HINT: Duration = Duration::from_secs(2);

/// Counts live streams per token, refuses those beyond the limit, and ends a token's
/// streams when it is revoked (on this replica).
#[derive(Clone)]
pub(crate) struct StreamLimiter {
    limit: usize,
    open: Arc<Mutex<HashMap<i64, TokenStreams>>>,
    /// Streams per user, across all their tokens and sessions (the same limit), so a
    /// user cannot multiply the limit by making tokens.
    per_user: Arc<Mutex<HashMap<i64, usize>>>,
}

struct TokenStreams {
    count: usize,
    revoked: watch::Sender<bool>,
}

/// Held by a stream; frees its place when dropped.
pub(crate) struct StreamPermit {
    token_id: i64,
    user_id: Option<i64>,
    open: Arc<Mutex<HashMap<i64, TokenStreams>>>,
    per_user: Arc<Mutex<HashMap<i64, usize>>>,
    revoked: watch::Receiver<bool>,
}

impl StreamPermit {
    /// Becomes true when the stream's token is revoked.
    pub fn revoked(&self) -> watch::Receiver<bool> {
        self.revoked.clone()
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(user_id) = self.user_id {
            let mut per_user = self.per_user.lock().expect("stream limiter lock");
            if let Some(count) = per_user.get_mut(&user_id) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_user.remove(&user_id);
                }
            }
        }
        let mut open = self.open.lock().expect("stream limiter lock");
        if let Some(streams) = open.get_mut(&self.token_id) {
            streams.count -= 1;
            if streams.count == 0 {
                open.remove(&self.token_id);
            }
        }
    }
}

impl StreamLimiter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::new(Mutex::new(HashMap::new())),
            per_user: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for one more stream of this caller: within the limit for its token (or
    /// session) and for its user.
    pub fn acquire(&self, caller: &Caller) -> Result<StreamPermit, ApiError> {
        let token_id = caller.token_id;
        // Lock order: per_user, then open (as in `drop`, which takes them one at a time).
        let mut per_user = self.per_user.lock().expect("stream limiter lock");
        if let Some(user_id) = caller.user_id
            && per_user.get(&user_id).copied().unwrap_or(0) >= self.limit
        {
            return Err(ApiError::TooManyRequests(format!(
                "your tokens and sessions already hold {} live streams, the limit per user; close some",
                self.limit
            )));
        }
        let mut open = self.open.lock().expect("stream limiter lock");
        let streams = open.entry(token_id).or_insert_with(|| TokenStreams {
            count: 0,
            revoked: watch::channel(false).0,
        });
        if streams.count >= self.limit {
            return Err(ApiError::TooManyRequests(format!(
                "this token already holds {} live streams, the limit; close some or use another token",
                self.limit
            )));
        }
        streams.count += 1;
        if let Some(user_id) = caller.user_id {
            *per_user.entry(user_id).or_insert(0) += 1;
        }
        Ok(StreamPermit {
            token_id,
            user_id: caller.user_id,
            open: self.open.clone(),
            per_user: self.per_user.clone(),
            revoked: streams.revoked.subscribe(),
        })
    }

    /// Ends every stream this replica holds for `token_id`.
    pub fn revoke(&self, token_id: i64) {
        let open = self.open.lock().expect("stream limiter lock");
        if let Some(streams) = open.get(&token_id) {
            streams.revoked.send_replace(true);
        }
    }
}

/// The resume cursor: the `Last-Event-ID` header (a reconnecting EventSource) wins over
/// the `lastEventId` query parameter.
/// `None` when the client gave neither.
fn cursor(headers: &HeaderMap, params: &QueryParams) -> Result<Option<i64>, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let raw = value.to_str().unwrap_or_default().trim();
        if raw.is_empty() {
            return Ok(None);
        }
        return raw
            .parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_field",
                    Some("Last-Event-ID"),
                    format!("Last-Event-ID: '{raw}' is not an event id (a whole number ≥ 0)"),
                )
            });
    }
    params.integer("lastEventId", 0, i64::MAX)
}

/// `?coalesce=50ms`: the window for progress-like events; off when absent.
fn coalesce_window(params: &QueryParams) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = params.string("coalesce") else {
        return Ok(None);
    };
    if raw == "off" || raw == "0" {
        return Ok(None);
    }
    let millis = raw
        .strip_suffix("ms")
        .unwrap_or(raw)
        .parse::<u64>()
        .ok()
        .filter(|ms| (1..=10_000).contains(ms));
    millis
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                Some("coalesce"),
                format!("coalesce: '{raw}' must look like 50ms (1-10000) or off"),
            )
        })
}

fn sse_response(
    deliveries: tokio::sync::mpsc::Receiver<Delivery>,
    permit: StreamPermit,
    run_id: Option<String>,
) -> Response {
    let hint = tokio_stream::once(Ok::<_, Infallible>(
        Event::default()
            .retry(RETRY_HINT)
            .comment("kiln live stream"),
    ));
    let events = ReceiverStream::new(deliveries).map(move |delivery| {
        // The permit lives as long as the stream.
        let _held = &permit;
        Ok::<_, Infallible>(match delivery {
            Delivery::Event(event) => Event::default()
                .id(event.id.to_string())
                .event(event.event_type.as_str())
                .data(&*event.json),
            Delivery::End => Event::default()
                .event("end")
                .data(json!({"runId": run_id, "reason": "the build ended"}).to_string()),
            Delivery::Dropped {
                reason,
                resume_from,
            } => Event::default()
                .event("dropped")
                .data(json!({"reason": reason, "lastEventId": resume_from}).to_string()),
            Delivery::Closing { resume_from } => Event::default().event("shutdown").data(
                json!({"reason": "the server is shutting down; reconnect", "lastEventId": resume_from})
                    .to_string(),
            ),
            Delivery::Revoked { resume_from } => Event::default().event("revoked").data(
                json!({"reason": "the token of this stream was revoked; reconnect with a valid token", "lastEventId": resume_from})
                    .to_string(),
            ),
        })
    });
    let sse = Sse::new(hint.chain(events)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        sse,
    )
        .into_response()
}

pub(crate) async fn build_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let after = cursor(&headers, &params)?.unwrap_or(0);
    let coalesce = coalesce_window(&params)?;
    let build = readable_build(&state, &caller, &run_id).await?;
    let permit = state.streams.acquire(&caller)?;
    let scope = Scope::Build {
        build_id: build.id,
        ended: build.state.status.is_terminal(),
    };
    let deliveries = follow(
        state.store.clone(),
        state.bus.clone(),
        scope,
        after,
        coalesce,
        permit.revoked(),
    );
    Ok(sse_response(deliveries, permit, Some(run_id)))
}

pub(crate) async fn project_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let after = cursor(&headers, &params)?;
    let coalesce = coalesce_window(&params)?;
    let project_id = required_project(&state, &caller, &params).await?;
    let permit = state.streams.acquire(&caller)?;
    // Without a cursor a project stream starts now: a project's whole history is what
    // the builds API is for. Events committed after this read are replayed.
    let after = match after {
        Some(after) => after,
        None => state.store.max_event_id().await?,
    };
    let deliveries = follow(
        state.store.clone(),
        state.bus.clone(),
        Scope::Project { project_id },
        after,
        coalesce,
        permit.revoked(),
    );
    Ok(sse_response(deliveries, permit, None))
}
