//! A typed async client for Kiln's HTTP API, used by the `kiln` CLI and by tests that
//! drive the real server.

mod accounts;
mod analytics;
mod artifact_lifecycle;
mod artifacts;
pub use artifacts::{ArtifactTarget, HASH_WHILE_SENDING_FROM, file_sha256};
mod deployments;
mod runs;
mod secrets;
pub mod sse;
mod test_results;
mod webhooks;

pub use runs::LogPage;

use std::collections::VecDeque;
use std::sync::Once;
use std::time::Duration;

pub use kiln_protocol as protocol;
use kiln_protocol::*;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
pub use sse::SseEvent;
use sse::SseParser;

/// A live stream with no byte for this long is considered lost (the server sends a
/// keep-alive comment every 15 s).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status}: {}", .body.error.message)]
    Api { status: u16, body: ErrorBody },
    /// The server could not be reached or the answer could not be read.
    #[error("cannot reach the Kiln server: {0}")]
    Transport(String),
    /// No connection could be made at all (connection refused, no such host, connect
    /// timeout): unlike a slow answer, waiting for this one is pointless.
    #[error("cannot reach the Kiln server: {0}")]
    Unreachable(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Transport(_) | Self::Unreachable(_) => None,
        }
    }

    /// Whether no connection to the server could be made (see `Unreachable`).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }

    /// Whether retrying the same request may succeed (transport errors, 5xx, 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Unreachable(_) => true,
            Self::Api { status, .. } => *status >= 500 || *status == 429,
        }
    }
}

/// Installs the TLS crypto provider once per process (ring; see Cargo.toml).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8090`).
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        Self::with_timeout(base_url, token, Duration::from_secs(30))
    }

    pub fn with_timeout(base_url: &str, token: Option<String>, timeout: Duration) -> Self {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .expect("HTTP client configuration is valid");
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A request to `path` with the client's token.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and reads the whole answer; an error status is `ClientError::Api`.
    async fn exchange(
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                ClientError::Unreachable(describe(&e))
            } else {
                ClientError::Transport(e.to_string())
            }
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok((status, headers, bytes.to_vec()))
    }

    /// Sends a JSON request and reads a JSON answer; `None` for 204 No Content.
    async fn send_for<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, ClientError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let (status, _, bytes) = Self::exchange(request).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        json_answer(&bytes).map(Some)
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.send_for(method, path, body, None)
            .await?
            .ok_or_else(|| ClientError::Transport("the server sent no answer body".into()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// The calling credential and the projects it reaches.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/api/v1/whoami").await
    }

    pub async fn healthz(&self) -> Result<Health, ClientError> {
        self.get("/healthz").await
    }

    pub async fn create_project(&self, slug: &str, name: &str) -> Result<ProjectDto, ClientError> {
        let body = CreateProject {
            slug: slug.into(),
            name: name.into(),
        };
        self.call(Method::POST, "/api/v1/projects", Some(&body))
            .await
    }

    pub async fn list_projects(&self) -> Result<ProjectList, ClientError> {
        self.get("/api/v1/projects").await
    }

    pub async fn create_token(
        &self,
        project: &str,
        name: &str,
        scopes: &[&str],
    ) -> Result<CreatedToken, ClientError> {
        let body = CreateToken {
            name: name.into(),
            scopes: Some(scopes.iter().map(|s| (*s).to_owned()).collect()),
        };
        self.call(
            Method::POST,
            &format!("/api/v1/projects/{}/tokens", encode(project)),
            Some(&body),
        )
        .await
    }

    pub async fn list_tokens(&self, project: &str) -> Result<TokenList, ClientError> {
        self.get(&format!("/api/v1/projects/{}/tokens", encode(project)))
            .await
    }

    pub async fn revoke_token(
        &self,
        project: &str,
        token_id: i64,
    ) -> Result<TokenDto, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/projects/{}/tokens/{token_id}", encode(project)),
            None,
        )
        .await
    }

    /// Sends events (one request; a batch is one transaction).
    pub async fn send_events(
        &self,
        events: &[EventPayload],
    ) -> Result<IngestResponse, ClientError> {
        self.call(Method::POST, "/api/v1/events", Some(&events))
            .await
    }

    pub async fn list_builds(&self, query: &BuildQuery) -> Result<BuildList, ClientError> {
        let mut pairs = Vec::new();
        for (key, value) in [
            ("project", query.project.clone()),
            ("branch", query.branch.clone()),
            ("status", query.status.clone()),
            ("limit", query.limit.map(|v| v.to_string())),
            ("before", query.before.map(|v| v.to_string())),
        ] {
            if let Some(value) = value {
                pairs.push(format!("{key}={}", encode(&value)));
            }
        }
        self.get(&format!("/api/v1/builds?{}", pairs.join("&")))
            .await
    }

    pub async fn get_build(&self, run_id: &str) -> Result<BuildDto, ClientError> {
        self.get(&format!("/api/v1/builds/{}", encode(run_id)))
            .await
    }

    pub async fn build_events(
        &self,
        run_id: &str,
        last_event_id: i64,
        limit: Option<i64>,
    ) -> Result<EventPage, ClientError> {
        let limit = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        self.get(&format!(
            "/api/v1/builds/{}/events?lastEventId={last_event_id}{limit}",
            encode(run_id)
        ))
        .await
    }

    pub async fn build_status(&self, run_id: &str) -> Result<BuildStatusDto, ClientError> {
        self.get(&format!("/api/v1/builds/{}/status", encode(run_id)))
            .await
    }

    pub async fn project_status(
        &self,
        project: Option<&str>,
        heartbeat_timeout_secs: Option<i64>,
    ) -> Result<ProjectStatus, ClientError> {
        let mut pairs = Vec::new();
        if let Some(project) = project {
            pairs.push(format!("project={}", encode(project)));
        }
        if let Some(timeout) = heartbeat_timeout_secs {
            pairs.push(format!("heartbeatTimeout={timeout}"));
        }
        self.get(&format!("/api/v1/status?{}", pairs.join("&")))
            .await
    }
}

impl Client {
    /// Opens a build's live stream (Server-Sent Events), resuming after `last_event_id`
    /// (replaying the build's history from the start when `None`). The stream ends after
    /// the build's `end` event; a lost connection is an error, to be resumed by calling
    /// again with the last id received.
    pub async fn build_stream(
        &self,
        run_id: &str,
        last_event_id: Option<i64>,
    ) -> Result<EventStream, ClientError> {
        // A stream has no total deadline, only an idle one: another client than `http`.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(STREAM_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Transport(describe(&e)))?;
        let mut request = http
            .get(format!(
                "{}/api/v1/builds/{}/stream",
                self.base_url,
                encode(run_id)
            ))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ClientError::Transport(describe(&e)))?;
            return Err(api_error(status, &bytes));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(ClientError::Transport(format!(
                "unexpected answer from the server: content type '{content_type}' instead of text/event-stream"
            )));
        }
        Ok(EventStream {
            response,
            parser: SseParser::new(),
            ready: VecDeque::new(),
        })
    }
}

/// An open Server-Sent Events stream: `next` yields its events in order.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the server closed the stream cleanly, an error when
    /// the connection broke or went silent for [`STREAM_IDLE_TIMEOUT`].
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| ClientError::Transport(describe(&e)))?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            let mut parsed = Vec::new();
            self.parser
                .feed(&chunk, &mut parsed)
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            self.ready.extend(parsed);
        }
    }

    /// The reconnection delay the server suggested (`retry:`), once received.
    pub fn retry(&self) -> Option<Duration> {
        self.parser.retry()
    }
}

/// A transport error with its causes ("error decoding response body: connection reset").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An error answer as `ClientError::Api`, with a synthetic body when it is not Kiln's JSON.
fn json_answer<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Transport(format!("unexpected answer from the server: {e}")))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        error: ErrorDetail {
            code: status_code_name(status),
            message: String::from_utf8_lossy(bytes).chars().take(500).collect(),
            field: None,
        },
    });
    ClientError::Api {
        status: status.as_u16(),
        body,
    }
}

/// Filters for `list_builds`.
#[derive(Clone, Debug, Default)]
pub struct BuildQuery {
    pub project: Option<String>,
    pub branch: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub before: Option<i64>,
}

fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}

/// Percent-encodes a path segment or query value.
fn encode(raw: &str) -> String {
    let mut encoded = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
