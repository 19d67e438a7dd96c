//! The container executor: one container per step through the Docker Engine API
//! (create with the workspace bound at `/workspace`, network `none` unless the step
//! asks, label `kiln.step`; attach to its output; start; wait; `stop` on cancel and timeout;
//! forced removal in cleanup).
//!
//! The script runs as `sh -e -c <script>`, so `sh` is the container's PID 1, which
//! ignores SIGTERM unless the script traps it: a stopped container usually ends by the
//! engine's SIGKILL after the grace period (exit code 137). The image's own environment
//! (its `PATH` in particular) applies under the step's. Images are not pulled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::docker_api::{Demultiplexer, DockerClient};
use super::{ExecError, Executor, StepExit, StepSpec};
use crate::output::{OutputChunk, OutputSender};

/// Where the workspace appears inside the container.
pub const CONTAINER_WORKSPACE: &str = "/workspace";

/// Bound on each short API call (create, start, remove).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the engine may take to report the exit after a stop returned.
const EXIT_AFTER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ContainerExecutor {
    client: DockerClient,
    container_id: Option<String>,
    output: Option<JoinHandle<()>>,
    exit: Option<StepExit>,
}

impl ContainerExecutor {
    /// An executor talking to the Docker Engine API at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            client: DockerClient::new(socket),
            container_id: None,
            output: None,
            exit: None,
        }
    }

    fn container_id(&self) -> Result<&str, ExecError> {
        self.container_id
            .as_deref()
            .ok_or_else(|| ExecError::Engine {
                action: "run the step".into(),
                status: None,
                message: "no container was created".into(),
            })
    }
}

/// The `containers/create` body for `spec` with the workspace at `workspace`.
fn create_body(spec: &StepSpec, image: &str, workspace: &Path) -> Value {
    let mut env: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    env.entry("HOME").or_insert(CONTAINER_WORKSPACE);
    let env: Vec<String> = env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut host_config = json!({
        "Binds": [format!("{}:{CONTAINER_WORKSPACE}:rw", workspace.display())],
    });
    if !spec.network {
        host_config["NetworkMode"] = json!("none");
    }
    json!({
        "Image": image,
        "Cmd": ["sh", "-e", "-c", spec.script],
        "Env": env,
        "WorkingDir": CONTAINER_WORKSPACE,
        "Labels": { "kiln.step": spec.name },
        "Tty": false,
        "OpenStdin": false,
        "AttachStdin": false,
        "HostConfig": host_config,
    })
}

/// A name that is valid for the engine and unique on this host: `kiln-<step>-<n>`.
fn container_name(step: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let cleaned: String = step
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-') {
                character
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "kiln-{cleaned}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Executor for ContainerExecutor {
    async fn prepare(&mut self, spec: &StepSpec) -> Result<(), ExecError> {
        let image = spec
            .image
            .as_deref()
            .filter(|image| !image.trim().is_empty())
            .ok_or_else(|| ExecError::ImageRequired {
                step: spec.name.clone(),
            })?;
        let workspace = spec.canonical_workspace()?;
        if workspace.to_str().is_none_or(|path| path.contains(':')) {
            return Err(ExecError::Workspace {
                path: workspace,
                problem: "a container bind needs a UTF-8 path without ':'".into(),
            });
        }
        let body = create_body(spec, image, &workspace);
        let path = format!("/containers/create?name={}", container_name(&spec.name));
        let response = self
            .client
            .call(
                Method::POST,
                &path,
                Some(&body),
                "create the container",
                CALL_TIMEOUT,
            )
            .await?;
        match response.status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(ExecError::ImageNotFound {
                    image: image.to_owned(),
                });
            }
            _ => return Err(response.error("create the container")),
        }
        let id = response
            .json()
            .and_then(|value| value.get("Id")?.as_str().map(str::to_owned))
            .ok_or_else(|| response.error("create the container (no Id in the answer)"))?;
        tracing::debug!(container = %id, step = %spec.name, "container created");
        self.container_id = Some(id);
        Ok(())
    }

    async fn start(&mut self, output: OutputSender) -> Result<(), ExecError> {
        let id = self.container_id()?.to_owned();
        // Attached before the start, so no output is missed; the engine relays it as it
        // is written and holds the container back while we read slowly. (Following the
        // logs instead lost the tail of fast output with Podman 4.3.)
        let action = "attach to the container";
        let path = format!("/containers/{id}/attach?stream=1&stdout=1&stderr=1");
        let attach = self.client.send(Method::POST, &path, None, action);
        let attached = match tokio::time::timeout(CALL_TIMEOUT, attach).await {
            Ok(attached) => attached?,
            Err(_) => {
                return Err(ExecError::Engine {
                    action: action.into(),
                    status: None,
                    message: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
                });
            }
        };
        if !attached.status().is_success() {
            return Err(ExecError::Engine {
                action: action.into(),
                status: Some(attached.status().as_u16()),
                message: "the engine refused the attach".into(),
            });
        }
        let response = self
            .client
            .call(
                Method::POST,
                &format!("/containers/{id}/start"),
                None,
                "start the container",
                CALL_TIMEOUT,
            )
            .await?;
        if !(response.status.is_success() || response.status == StatusCode::NOT_MODIFIED) {
            return Err(response.error("start the container"));
        }
        self.output = Some(tokio::spawn(stream_output(attached, id, output)));
        Ok(())
    }

    async fn wait(&mut self) -> Result<StepExit, ExecError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let id = self.container_id()?.to_owned();
        let action = "wait for the container";
        let response = self
            .client
            .send(
                Method::POST,
                &format!("/containers/{id}/wait"),
                None,
                action,
            )
            .await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| ExecError::Engine {
                action: action.into(),
                status: None,
                message: error.to_string(),
            })?
            .to_bytes();
        let answer: Option<Value> = serde_json::from_slice(&body).ok();
        let code = answer
            .as_ref()
            .and_then(|value| value.get("StatusCode")?.as_i64())
            .and_then(|code| i32::try_from(code).ok());
        let Some(code) = code.filter(|_| status.is_success()) else {
            return Err(ExecError::Engine {
                action: action.into(),
                status: Some(status.as_u16()),
                message: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        };
        let exit = StepExit {
            exit_code: Some(code),
            signal: None,
        };
        self.exit = Some(exit);
        Ok(exit)
    }

    async fn terminate(&mut self, grace: Duration) -> Result<StepExit, ExecError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let id = self.container_id()?.to_owned();
        // The API counts whole seconds; round up so the step gets at least `grace`.
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let response = self
            .client
            .call(
                Method::POST,
                &format!("/containers/{id}/stop?t={seconds}"),
                None,
                "stop the container",
                grace + CALL_TIMEOUT,
            )
            .await?;
        if !(response.status.is_success() || response.status == StatusCode::NOT_MODIFIED) {
            return Err(response.error("stop the container"));
        }
        match tokio::time::timeout(EXIT_AFTER_STOP_TIMEOUT, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => Err(ExecError::Unkillable {
                seconds: EXIT_AFTER_STOP_TIMEOUT.as_secs(),
            }),
        }
    }

    async fn drain_output(&mut self, within: Duration) {
        if let Some(reader) = self.output.as_mut()
            && tokio::time::timeout(within, reader).await.is_err()
        {
            tracing::warn!("the container's output stream did not end; stopped reading it");
        }
        if let Some(reader) = self.output.take() {
            reader.abort();
        }
    }

    async fn cleanup(&mut self) {
        if let Some(reader) = self.output.take() {
            reader.abort();
        }
        if let Some(id) = self.container_id.take() {
            remove_container(self.client.clone(), id).await;
        }
    }

    fn cleanup_detached(&mut self) {
        if let Some(reader) = self.output.take() {
            reader.abort();
        }
        let Some(id) = self.container_id.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(remove_container(self.client.clone(), id));
            }
            Err(_) => tracing::error!(
                container = %id,
                "no runtime left to remove the container; remove it by hand (docker rm -f)"
            ),
        }
    }
}

/// `DELETE /containers/{id}?force=1`: kills it if still running, removes it and its
/// anonymous volumes. Failures are logged: the step's result stands.
async fn remove_container(client: DockerClient, id: String) {
    let path = format!("/containers/{id}?force=1&v=1");
    let action = "remove the container";
    match client
        .call(Method::DELETE, &path, None, action, CALL_TIMEOUT)
        .await
    {
        Ok(response)
            if response.status.is_success() || response.status == StatusCode::NOT_FOUND => {}
        Ok(response) => {
            tracing::error!(container = %id, error = %response.error(action), "container left behind; remove it by hand");
        }
        Err(error) => {
            tracing::error!(container = %id, %error, "container left behind; remove it by hand");
        }
    }
}

/// Demultiplexes the attached stream into `output` until the container stops. When
/// nobody listens any more, it keeps reading so the container never blocks on us.
async fn stream_output(attached: Response<Incoming>, id: String, output: OutputSender) {
    let mut body = attached.into_body();
    let mut demultiplexer = Demultiplexer::default();
    let mut chunks = Vec::new();
    let mut listening = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            tracing::warn!(container = %id, "the container's output stream broke off");
            let message = "the container's output stream broke off; output may be missing";
            let _ = output.send(OutputChunk::agent(message)).await;
            return;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        demultiplexer.push(&data, &mut chunks);
        for chunk in chunks.drain(..) {
            if listening {
                listening = output.send(chunk).await.is_ok();
            }
        }
    }
}
