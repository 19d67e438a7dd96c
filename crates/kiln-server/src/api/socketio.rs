//! Socket.IO (protocol v5, for the official `socket.io-client`) at `/socket.io/`: the
//! handshake authenticates, `subscribe`/`unsubscribe` manage a socket's subscriptions to
//! builds and projects, and each subscription is one `follow()` emitted as `update`.
//!
//! One session task per socket owns its subscriptions and does all of its emitting. The
//! event handlers only queue commands, synchronously on the socket's receive path, so
//! commands run in the order the client sent them; deliveries are drained from a
//! `StreamMap` by the same task. Hence a subscription's ack always precedes its first
//! `update`, and no `update` of a subscription follows the ack of its `unsubscribe`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use kiln_store::Store;
use serde::Serialize;
use serde_json::{Map, Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};

use super::StreamLimiter;
use super::stream::StreamPermit;
use crate::AppState;
use crate::auth::{Authenticator, Caller};
use crate::error::ApiError;
use crate::live::Bus;
use crate::live::follow::{Delivery, Scope, follow};

/// Every Socket.IO room is throttled: progress-like events at most once per 50 ms.
const COALESCE: Duration = Duration::from_millis(50);
/// Subscriptions one socket may hold; the per-token stream limit applies as well.
const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 1000;
/// Commands a socket may have waiting; a client that floods gets error acks, not memory.
const COMMAND_QUEUE: usize = 64;
/// Packets socketioxide buffers per socket. A replay emits as fast as the store reads, so
/// the default (128) would fill up while the transport drains.
const OUTGOING_BUFFER: usize = 1024;
const EMIT_RETRY: Duration = Duration::from_millis(10);
/// A socket whose buffer stayed full this long is not reading; it is disconnected (the
/// engine's own ping timeout usually gets there first).
const EMIT_GIVE_UP: Duration = Duration::from_secs(30);
/// A subscription that falls behind its room is resumed from the store by the session
/// itself (an EventSource reconnects by itself; a Socket.IO client should not have to).
/// Only this many times in a row without an event delivered in between, so a store that
/// keeps failing ends in `dropped` rather than a loop.
const MAX_QUIET_RESUMES: u32 = 3;

/// What Socket.IO needs of the server state. Deliberately not `AppState`: socketioxide
/// keeps its handlers alive in tasks that can outlive `axum::serve` (its connect timeout,
/// open sessions), and an `Ingestor` clone held there would keep `run()` waiting for the
/// ingest task to finish after shutdown.
#[derive(Clone)]
struct Live {
    store: Arc<dyn Store>,
    bus: Arc<Bus>,
    authenticator: Authenticator,
    streams: StreamLimiter,
}

/// The Socket.IO layer for the router (requests outside `/socket.io/` pass through), and
/// the handle that closes every socket at shutdown.
pub(crate) fn layer(state: &AppState) -> (SocketIoLayer, SocketIo) {
    let state = Live {
        store: state.store.clone(),
        bus: state.bus.clone(),
        authenticator: state.authenticator.clone(),
        streams: state.streams.clone(),
    };
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(OUTGOING_BUFFER)
        .build_layer();
    let auth_state = state.clone();
    let on_connect = move |socket: SocketRef| {
        connected(state.clone(), socket);
        std::future::ready(())
    };
    let check = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let state = auth_state.clone();
        async move { authorize(&state, &socket, auth.ok()).await }
    };
    io.ns("/", on_connect.with(check));
    (layer, io)
}

/// Why a handshake was refused; socket.io-client shows it as the `connect_error`'s
/// `message`, prefixed with the HTTP API's error code (`unauthorized: …`).
#[derive(Debug)]
struct Refused(AckError);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)
    }
}

/// The connect middleware: the token comes from `auth: {token}` or, for clients that
/// can set headers, from the handshake's `Authorization`/`X-OM-BUILD-TOKEN`. Any token
/// that may read some project's builds may connect; each subscription is then checked
/// against the project it concerns.
async fn authorize(state: &Live, socket: &SocketRef, auth: Option<Value>) -> Result<(), Refused> {
    let from_auth = auth
        .as_ref()
        .and_then(|auth| auth.get("token"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let headers = &socket.req_parts().headers;
    let caller = match from_auth {
        Some(token) => state.authenticator.authenticate_token(token).await,
        None if headers.contains_key(AUTHORIZATION) || headers.contains_key("x-om-build-token") => {
            state.authenticator.authenticate(headers).await
        }
        None => Err(ApiError::Unauthorized(
            "a token is required: connect with `io(url, {auth: {token}})`".into(),
        )),
    }
    .map_err(|error| Refused(error.into()))?;
    let may_read = caller.is_admin()
        || !caller.roles.is_empty()
        || caller.project_id.is_some_and(|id| caller.can_read(id));
    if !may_read {
        return Err(Refused(
            ApiError::Forbidden(
                "this token may not read builds; live updates need a project token with the \"read\" or \"ingest\" scope"
                    .into(),
            )
            .into(),
        ));
    }
    socket.extensions.insert(caller);
    Ok(())
}

/// Runs synchronously when the handshake succeeded, before any of the client's events
/// are dispatched, so the handlers are in place for its first `subscribe`.
fn connected(state: Live, socket: SocketRef) {
    let Some(caller) = socket.extensions.get::<Caller>() else {
        tracing::warn!("socket connected without an authenticated caller; closing it");
        let _ = socket.disconnect();
        return;
    };
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    for (event, kind) in [
        ("subscribe", Kind::Subscribe),
        ("unsubscribe", Kind::Unsubscribe),
    ] {
        let commands = commands.clone();
        socket.on(
            event,
            move |TryData(payload): TryData<Value>, ack: AckSender| {
                enqueue(&commands, kind, payload.ok(), ack);
                std::future::ready(())
            },
        );
    }
    let (close, closed) = watch::channel(false);
    socket.on_disconnect(move || {
        let _ = close.send(true);
        std::future::ready(())
    });
    let session = Session {
        state,
        caller,
        socket,
        deliveries: StreamMap::new(),
        subscriptions: HashMap::new(),
    };
    tokio::spawn(session.run(inbox, closed));
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Subscribe,
    Unsubscribe,
}

struct Command {
    kind: Kind,
    payload: Option<Value>,
    ack: AckSender,
}

fn enqueue(commands: &mpsc::Sender<Command>, kind: Kind, payload: Option<Value>, ack: AckSender) {
    match commands.try_send(Command { kind, payload, ack }) {
        Ok(()) => {}
        Err(TrySendError::Full(command)) => {
            let refusal = AckError {
                status: 429,
                code: "too_many_requests",
                message: format!(
                    "more than {COMMAND_QUEUE} subscribe/unsubscribe requests are waiting on this socket; wait for their acks"
                ),
                field: None,
            };
            let _ = command.ack.send(&refusal.to_json());
        }
        // The session has ended: the socket is going away and cannot be answered.
        Err(TrySendError::Closed(_)) => {}
    }
}

/// What a subscription follows, as the client named it; also the key of its entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Build(String),
    Project(String),
}

impl Target {
    fn fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        match self {
            Target::Build(run_id) => fields.insert("buildId".into(), run_id.as_str().into()),
            Target::Project(slug) => fields.insert("project".into(), slug.as_str().into()),
        };
        fields
    }

    fn with(&self, extra: Value) -> Value {
        let mut fields = self.fields();
        if let Value::Object(extra) = extra {
            fields.extend(extra);
        }
        Value::Object(fields)
    }
}

/// An error ack: the HTTP API's error shape plus the status it would have had.
#[derive(Debug)]
struct AckError {
    status: u16,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl AckError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        AckError {
            status: 400,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    fn to_json(&self) -> Value {
        json!({"ok": false, "error": {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "field": self.field,
        }})
    }
}

impl From<ApiError> for AckError {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        let (status, code, field) = match error {
            ApiError::BadRequest { code, field, .. } => (400, code, field),
            ApiError::Unauthorized(_) => (401, "unauthorized", None),
            ApiError::Forbidden(_) => (403, "forbidden", None),
            ApiError::NotFound(_) => (404, "not_found", None),
            ApiError::Conflict { code, field, .. } => (409, code, field),
            ApiError::Unprocessable { code, field, .. } => (422, code, field),
            ApiError::PayloadTooLarge(_) => (413, "body_too_large", None),
            ApiError::TooManyRequests(_) => (429, "too_many_streams", None),
            ApiError::RateLimited(_) => (429, "rate_limited", None),
            ApiError::Unavailable(_) => (503, "unavailable", None),
        };
        AckError {
            status,
            code,
            message,
            field,
        }
    }
}

struct Request {
    target: Target,
    last_event_id: Option<i64>,
}

/// `{buildId, lastEventId?}` or `{project, lastEventId?}`.
fn parse_request(payload: Option<Value>) -> Result<Request, AckError> {
    let Some(Value::Object(payload)) = payload else {
        return Err(AckError::invalid(
            "body",
            "send an object: {buildId, lastEventId} or {project, lastEventId}",
        ));
    };
    let name = |field: &str| -> Result<Option<String>, AckError> {
        match payload.get(field) {
            None | Some(Value::Null) => Ok(None),
            // As in JSON bodies (`body::parse_json`): no name holds U+0000, and on
            // PostgreSQL the lookup would fail as if the database were down.
            Some(Value::String(value)) if value.contains('\0') => {
                Err(AckError::invalid(field, super::body::holds_nul(field)))
            }
            Some(Value::String(value)) if !value.trim().is_empty() => Ok(Some(value.clone())),
            Some(_) => Err(AckError::invalid(
                field,
                format!("{field}: must be a non-empty string"),
            )),
        }
    };
    let target = match (name("buildId")?, name("project")?) {
        (Some(run_id), None) => Target::Build(run_id),
        (None, Some(slug)) => Target::Project(slug),
        (Some(_), Some(_)) => {
            return Err(AckError::invalid(
                "buildId",
                "buildId: give either buildId or project, not both",
            ));
        }
        (None, None) => {
            return Err(AckError::invalid(
                "buildId",
                "buildId: required (the build's runId), or project (its slug)",
            ));
        }
    };
    let invalid_cursor = |raw: &Value| {
        AckError::invalid(
            "lastEventId",
            format!("lastEventId: {raw} is not an event id (a whole number ≥ 0)"),
        )
    };
    let last_event_id = match payload.get("lastEventId") {
        None | Some(Value::Null) => None,
        Some(raw @ Value::Number(number)) => Some(
            number
                .as_i64()
                .filter(|id| *id >= 0)
                .ok_or_else(|| invalid_cursor(raw))?,
        ),
        // EventSource hands cursors around as strings; accept those too.
        Some(raw @ Value::String(text)) => Some(
            text.trim()
                .parse::<i64>()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| invalid_cursor(raw))?,
        ),
        Some(raw) => return Err(invalid_cursor(raw)),
    };
    Ok(Request {
        target,
        last_event_id,
    })
}

/// Whether the session goes on after a step.
enum Flow {
    Continue,
    Stop,
}

struct Session {
    state: Live,
    caller: Caller,
    socket: SocketRef,
    deliveries: StreamMap<Target, ReceiverStream<Delivery>>,
    /// Keyed like `deliveries`.
    subscriptions: HashMap<Target, Subscription>,
}

struct Subscription {
    scope: Scope,
    /// Frees the token's place when the subscription is removed.
    permit: StreamPermit,
    /// Resumes since the last event delivered (see `MAX_QUIET_RESUMES`).
    quiet_resumes: u32,
}

impl Session {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, mut closed: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                // Either the disconnect handler said so or it is gone with the socket.
                _ = closed.changed() => return,
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                Some((target, delivery)) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    if let Flow::Stop = self.deliver(target, delivery).await {
                        return;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        let answer = match command.kind {
            Kind::Subscribe => self.subscribe(command.payload).await,
            Kind::Unsubscribe => self.unsubscribe(command.payload),
        };
        let body = answer.unwrap_or_else(|error| error.to_json());
        if let Err(error) = command.ack.send(&body) {
            tracing::debug!(%error, "could not send a Socket.IO ack");
        }
    }

    async fn subscribe(&mut self, payload: Option<Value>) -> Result<Value, AckError> {
        let Request {
            target,
            last_event_id,
        } = parse_request(payload)?;
        let (scope, after) = match &target {
            Target::Build(run_id) => {
                let build = self.readable_build(run_id).await?;
                let scope = Scope::Build {
                    build_id: build.id,
                    ended: build.state.status.is_terminal(),
                };
                // A build view wants the whole build unless it is resuming.
                (scope, last_event_id.unwrap_or(0))
            }
            Target::Project(slug) => {
                let project = self.readable_project(slug).await?;
                // A project's history can be long: without a cursor, only what comes next.
                let after = match last_event_id {
                    Some(id) => id,
                    None => self
                        .state
                        .store
                        .max_event_id()
                        .await
                        .map_err(ApiError::from)?,
                };
                (
                    Scope::Project {
                        project_id: project.id,
                    },
                    after,
                )
            }
        };
        // Subscribing again replaces the subscription: the client resumes from a new cursor.
        self.remove(&target);
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS_PER_SOCKET {
            return Err(AckError {
                status: 429,
                code: "too_many_subscriptions",
                message: format!(
                    "this socket already holds {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions, the limit; unsubscribe from some or subscribe to the project instead"
                ),
                field: None,
            });
        }
        let permit = self.state.streams.acquire(&self.caller)?;
        self.follow(&target, scope, after, permit.revoked());
        self.subscriptions.insert(
            target.clone(),
            Subscription {
                scope,
                permit,
                quiet_resumes: 0,
            },
        );
        Ok(target.with(json!({"ok": true, "lastEventId": after})))
    }

    /// Starts (or restarts) following `scope` after `after`, replacing any previous
    /// follow of `target`.
    fn follow(
        &mut self,
        target: &Target,
        scope: Scope,
        after: i64,
        revoked: tokio::sync::watch::Receiver<bool>,
    ) {
        let deliveries = follow(
            self.state.store.clone(),
            self.state.bus.clone(),
            scope,
            after,
            Some(COALESCE),
            revoked,
        );
        self.deliveries
            .insert(target.clone(), ReceiverStream::new(deliveries));
    }

    /// As `builds::readable_build`, which takes the whole `AppState` (see `Live`).
    async fn readable_build(&self, run_id: &str) -> Result<kiln_store::BuildRecord, ApiError> {
        match self.state.store.build_by_run_id(run_id).await? {
            Some(build) if self.caller.can_read(build.project_id) => Ok(build),
            _ => Err(ApiError::NotFound(format!("build '{run_id}' not found"))),
        }
    }

    /// As `projects::readable_project`, which takes the whole `AppState` (see `Live`).
    async fn readable_project(&self, slug: &str) -> Result<kiln_store::Project, ApiError> {
        match self.state.store.project_by_slug(slug).await? {
            Some(project) if self.caller.can_read(project.id) => Ok(project),
            _ => Err(ApiError::NotFound(format!("project '{slug}' not found"))),
        }
    }

    fn unsubscribe(&mut self, payload: Option<Value>) -> Result<Value, AckError> {
        let Request { target, .. } = parse_request(payload)?;
        let was_subscribed = self.remove(&target);
        Ok(target.with(json!({"ok": true, "wasSubscribed": was_subscribed})))
    }

    /// Ends a subscription: dropping its receiver stops its follow task.
    fn remove(&mut self, target: &Target) -> bool {
        self.deliveries.remove(target);
        self.subscriptions.remove(target).is_some()
    }

    async fn deliver(&mut self, target: Target, delivery: Delivery) -> Flow {
        match delivery {
            Delivery::Event(event) => match serde_json::from_str::<Value>(&event.json) {
                // The second argument says which subscription this is for: one event can
                // reach a socket through its build's and its project's subscription.
                Ok(payload) => {
                    if let Some(subscription) = self.subscriptions.get_mut(&target) {
                        subscription.quiet_resumes = 0;
                    }
                    self.emit("update", &(payload, target.with(Value::Null)))
                        .await
                }
                Err(error) => {
                    tracing::error!(%error, id = event.id, "a live event is not JSON; skipped");
                    Flow::Continue
                }
            },
            Delivery::End => {
                self.remove(&target);
                let body = target.with(json!({"reason": "the build ended"}));
                self.emit("end", &body).await
            }
            Delivery::Dropped {
                reason,
                resume_from,
            } => {
                // Everything up to `resume_from` was emitted, in order, before this; the
                // store has the rest, so following again from there loses nothing.
                if let Some(subscription) = self.subscriptions.get_mut(&target)
                    && subscription.quiet_resumes < MAX_QUIET_RESUMES
                {
                    subscription.quiet_resumes += 1;
                    let scope = subscription.scope;
                    let revoked = subscription.permit.revoked();
                    tracing::debug!(?target, resume_from, %reason, "resuming a Socket.IO subscription that fell behind");
                    self.follow(&target, scope, resume_from, revoked);
                    return Flow::Continue;
                }
                self.remove(&target);
                let body = target.with(json!({"reason": reason, "lastEventId": resume_from}));
                self.emit("dropped", &body).await
            }
            Delivery::Closing { resume_from } => {
                self.remove(&target);
                let body = target.with(json!({"reason": "the server is shutting down; reconnect", "lastEventId": resume_from}));
                self.emit("shutdown", &body).await
            }
            Delivery::Revoked { resume_from } => {
                // The socket authenticated with that token: it goes, with every
                // subscription it holds.
                self.remove(&target);
                let body = target.with(json!({"reason": "the token of this connection was revoked; reconnect with a valid token", "lastEventId": resume_from}));
                let _ = self.emit("revoked", &body).await;
                let _ = self.socket.clone().disconnect();
                Flow::Stop
            }
        }
    }

    /// Emits, waiting while the socket's buffer is full: the follow tasks then wait too,
    /// and one that falls behind its room is resumed from the store (see `deliver`).
    async fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Flow {
        let started = Instant::now();
        loop {
            match self.socket.emit(event, data) {
                Ok(()) => return Flow::Continue,
                Err(SendError::Socket(SocketError::InternalChannelFull))
                    if started.elapsed() < EMIT_GIVE_UP =>
                {
                    tokio::time::sleep(EMIT_RETRY).await;
                }
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    tracing::info!(socket = %self.socket.id, "Socket.IO client stopped reading; disconnecting it");
                    let _ = self.socket.clone().disconnect();
                    return Flow::Stop;
                }
                Err(SendError::Socket(SocketError::Closed)) => return Flow::Stop,
                Err(SendError::Serialize(error)) => {
                    tracing::error!(%error, event, "cannot encode a Socket.IO event; skipped");
                    return Flow::Continue;
                }
            }
        }
    }
}
