//! Running one step to its end: the `Executor` lifecycle trait, its three
//! implementations (process, sandbox, container) and the driver `run_step` that runs
//! every phase in order and `cleanup` exactly once.
//!
//! # API
//!
//! ```text
//! pub async fn run_step(kind: &ExecutorKind, spec: &StepSpec, output: OutputSender,
//!                       cancel: CancelSignal, limits: StepLimits) -> Result<StepOutcome, ExecError>
//! pub async fn run_with<E: Executor>(executor: E, spec: &StepSpec, output: OutputSender,
//!                                    cancel: CancelSignal, limits: StepLimits) -> Result<StepOutcome, ExecError>
//! ```
//!
//! `CancelSignal` is a `tokio::sync::watch::Receiver<bool>`: the step is cancelled once
//! the value is `true` (a dropped sender never cancels). `StepLimits::new(timeout)`
//! uses the default grace period (10 s) between SIGTERM and SIGKILL.
//!
//! ```no_run
//! # async fn example(spec: kiln_agent::executor::StepSpec) -> Result<(), kiln_agent::executor::ExecError> {
//! use std::time::Duration;
//! use kiln_agent::executor::{run_step, ExecutorKind, StepLimits};
//! let (output, mut received) = tokio::sync::mpsc::channel(64);
//! let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);
//! let shipper = tokio::spawn(async move { while let Some(_chunk) = received.recv().await {} });
//! let outcome = run_step(&ExecutorKind::Process, &spec, output, cancel,
//!                        StepLimits::new(Duration::from_secs(3600))).await?;
//! shipper.await.ok();
//! println!("success: {}", outcome.success());
//! # Ok(()) }
//! ```
//!
//! # Lifecycle (what `run_with` guarantees)
//!
//! `prepare` → `start` → `wait`, raced against the cancel signal and the timeout; when
//! either fires, `terminate` (graceful stop, then forced after `limits.grace`) →
//! `drain_output` (bounded) → `cleanup`. `cleanup` runs exactly once on every path:
//! success, failure, timeout, cancel and an error in `prepare` or `start`. If the
//! `run_step` future itself is dropped before it finished, `cleanup_detached` runs
//! instead (from `Drop`, without blocking: it kills the process group, or spawns the
//! container's removal on the current tokio runtime). The timeout counts from `start`.
//!
//! # Environment of a step
//!
//! The step sees only `spec.env`, plus two defaults when the spec does not set them:
//! `PATH` (process and sandbox: the agent's own `PATH`, or a standard system path if the
//! agent has none; container: the image's) and `HOME` (the workspace as the step sees it).
//! The script runs as `sh -e -c <script>` with stdin empty and the workspace as cwd.
//!
//! Background processes a step leaves behind are killed when its shell exits (process:
//! the step's process group; sandbox and container: the whole PID namespace).

mod container;
mod docker_api;
mod error;
mod process;
mod sandbox;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use container::ContainerExecutor;
pub use error::ExecError;
pub use process::ProcessExecutor;
pub use sandbox::SandboxExecutor;

use crate::output::{OutputChunk, OutputSender};

/// The grace period between the polite stop (SIGTERM, `docker stop`) and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How long output is still read after the step ended. A process that escaped the
/// step's process group (`setsid`) may hold the pipes open forever.
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The Docker Engine API socket used when none is configured.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// `true` once the step must be cancelled.
pub type CancelSignal = tokio::sync::watch::Receiver<bool>;

/// What to run and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// The step's name, used in container names and labels.
    pub name: String,
    /// A shell script, run as `sh -e -c <script>`.
    pub script: String,
    /// The whole environment of the step (see the module doc for `PATH` and `HOME`).
    pub env: BTreeMap<String, String>,
    /// The checked-out workspace: the step's writable cwd.
    pub workspace: PathBuf,
    /// The container image (container executor only, where it is required).
    pub image: Option<String>,
    /// Sandbox and container: network access only when `true`.
    pub network: bool,
}

impl StepSpec {
    /// A step with an empty environment, no image and no network.
    pub fn new(
        name: impl Into<String>,
        script: impl Into<String>,
        workspace: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            env: BTreeMap::new(),
            workspace: workspace.into(),
            image: None,
            network: false,
        }
    }

    /// Refuses what no executor can pass to a process: NUL bytes, empty or `=`-bearing
    /// variable names.
    pub(crate) fn validate(&self) -> Result<(), ExecError> {
        let invalid = |problem: String| ExecError::InvalidStep {
            step: self.name.clone(),
            problem,
        };
        if self.script.contains('\0') {
            return Err(invalid("the script contains a NUL byte".into()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(format!(
                    "environment variable name {key:?} is empty or contains '=' or NUL"
                )));
            }
            if value.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {key} contains a NUL byte"
                )));
            }
        }
        Ok(())
    }

    /// The workspace as an absolute path without symlinks; it must be a directory.
    pub(crate) fn canonical_workspace(&self) -> Result<PathBuf, ExecError> {
        let workspace_error = |problem: String| ExecError::Workspace {
            path: self.workspace.clone(),
            problem,
        };
        let path = std::fs::canonicalize(&self.workspace)
            .map_err(|error| workspace_error(error.to_string()))?;
        if !path.is_dir() {
            return Err(workspace_error("not a directory".into()));
        }
        Ok(path)
    }
}

/// Which executor runs the steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// A child process of the agent in its own process group.
    Process,
    /// A bubblewrap sandbox: read-only host, writable workspace and /tmp, no network.
    Sandbox,
    /// A container through the Docker Engine API (Docker or Podman) at `socket`.
    Container { socket: PathBuf },
}

impl ExecutorKind {
    pub fn name(&self) -> &'static str {
        match self {
            ExecutorKind::Process => "process",
            ExecutorKind::Sandbox => "sandbox",
            ExecutorKind::Container { .. } => "container",
        }
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// `"container"` parses to the default socket (`/var/run/docker.sock`); set `socket`
/// afterwards from the agent's configuration.
impl FromStr for ExecutorKind {
    type Err = UnknownExecutor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "process" => Ok(ExecutorKind::Process),
            "sandbox" => Ok(ExecutorKind::Sandbox),
            "container" => Ok(ExecutorKind::Container {
                socket: PathBuf::from(DEFAULT_DOCKER_SOCKET),
            }),
            other => Err(UnknownExecutor(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown executor {0:?}: use process, sandbox or container")]
pub struct UnknownExecutor(pub String);

/// Time limits of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLimits {
    /// From start to the polite stop.
    pub timeout: Duration,
    /// From the polite stop to SIGKILL (on timeout and cancel).
    pub grace: Duration,
}

impl StepLimits {
    /// `timeout` with the default grace period.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Why a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// On its own.
    Exited,
    /// Stopped after its timeout.
    TimedOut,
    /// Stopped by the cancel signal.
    Cancelled,
}

/// How the step's shell ended, as the executor saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepExit {
    pub exit_code: Option<i32>,
    /// The signal that killed it (process executor; the sandbox reports what bwrap
    /// relays, 128 + N as exit code unless bwrap itself was killed; containers report
    /// the engine's exit code, 137 after SIGKILL).
    pub signal: Option<i32>,
}

/// The end of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub ending: Ending,
    /// From start to the end of the shell (cleanup excluded).
    pub duration: Duration,
}

impl StepOutcome {
    /// Exited on its own with status 0.
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited && self.exit_code == Some(0)
    }
}

/// The lifecycle of one step in one executor. An executor value runs one step.
/// `run_with` calls the methods in order; implementations may assume that order.
pub trait Executor: Send {
    /// Checks prerequisites and builds what `start` needs (argv, a created container).
    fn prepare(&mut self, spec: &StepSpec) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Starts the step and the tasks that stream its stdout and stderr to `output`.
    fn start(&mut self, output: OutputSender)
    -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Waits for the step to end on its own. Cancel-safe: dropping the future leaves the
    /// step running, and `terminate` may follow.
    fn wait(&mut self) -> impl Future<Output = Result<StepExit, ExecError>> + Send;

    /// Stops the step: politely (SIGTERM to everything it started, `docker stop`), then
    /// by force once `grace` has passed; returns how it ended.
    fn terminate(
        &mut self,
        grace: Duration,
    ) -> impl Future<Output = Result<StepExit, ExecError>> + Send;

    /// Waits, at most `within`, until all output has been sent; gives up on the rest.
    fn drain_output(&mut self, within: Duration) -> impl Future<Output = ()> + Send;

    /// Releases everything (processes, containers, reader tasks). Called exactly once,
    /// whatever happened before, also when `prepare` failed.
    fn cleanup(&mut self) -> impl Future<Output = ()> + Send;

    /// Cleanup when the driver is dropped before it could call `cleanup`: must not
    /// block; may spawn onto the current tokio runtime.
    fn cleanup_detached(&mut self);
}

/// Runs one step to its end with the executor `kind` selects.
pub async fn run_step(
    kind: &ExecutorKind,
    spec: &StepSpec,
    output: OutputSender,
    cancel: CancelSignal,
    limits: StepLimits,
) -> Result<StepOutcome, ExecError> {
    match kind {
        ExecutorKind::Process => {
            run_with(ProcessExecutor::new(), spec, output, cancel, limits).await
        }
        ExecutorKind::Sandbox => {
            run_with(SandboxExecutor::new(), spec, output, cancel, limits).await
        }
        ExecutorKind::Container { socket } => {
            let executor = ContainerExecutor::new(socket.clone());
            run_with(executor, spec, output, cancel, limits).await
        }
    }
}

/// Runs one step to its end with `executor` (see the module doc for the guarantees).
pub async fn run_with<E: Executor>(
    executor: E,
    spec: &StepSpec,
    output: OutputSender,
    cancel: CancelSignal,
    limits: StepLimits,
) -> Result<StepOutcome, ExecError> {
    let mut guard = CleanupGuard {
        executor,
        cleanup_started: false,
    };
    let result = drive(&mut guard.executor, spec, output, cancel, limits).await;
    guard.cleanup_started = true;
    guard.executor.cleanup().await;
    result
}

/// Owns the executor while the driver runs; runs `cleanup_detached` if the driver is
/// dropped before it started `cleanup`, so cleanup begins exactly once.
struct CleanupGuard<E: Executor> {
    executor: E,
    cleanup_started: bool,
}

impl<E: Executor> Drop for CleanupGuard<E> {
    fn drop(&mut self) {
        if !self.cleanup_started {
            self.executor.cleanup_detached();
        }
    }
}

async fn drive<E: Executor>(
    executor: &mut E,
    spec: &StepSpec,
    output: OutputSender,
    mut cancel: CancelSignal,
    limits: StepLimits,
) -> Result<StepOutcome, ExecError> {
    spec.validate()?;
    if *cancel.borrow_and_update() {
        return Ok(StepOutcome {
            exit_code: None,
            signal: None,
            ending: Ending::Cancelled,
            duration: Duration::ZERO,
        });
    }
    executor.prepare(spec).await?;
    let started = Instant::now();
    executor.start(output.clone()).await?;

    let ending = tokio::select! {
        biased;
        exit = executor.wait() => Ok(exit?),
        () = cancelled(&mut cancel) => Err(Ending::Cancelled),
        () = tokio::time::sleep(limits.timeout) => Err(Ending::TimedOut),
    };
    let (exit, ending) = match ending {
        Ok(exit) => (exit, Ending::Exited),
        Err(ending) => {
            let reason = match ending {
                Ending::TimedOut => format!("step exceeded its timeout of {:?}", limits.timeout),
                _ => "step cancelled".to_owned(),
            };
            send_agent_message(
                &output,
                format!(
                    "{reason}: stopping it (SIGTERM, SIGKILL after {:?})",
                    limits.grace
                ),
            )
            .await;
            (executor.terminate(limits.grace).await?, ending)
        }
    };
    let duration = started.elapsed();
    executor.drain_output(OUTPUT_DRAIN_TIMEOUT).await;
    Ok(StepOutcome {
        exit_code: exit.exit_code,
        signal: exit.signal,
        ending,
        duration,
    })
}

/// Resolves once the cancel signal is `true`; never if its sender is gone.
async fn cancelled(cancel: &mut CancelSignal) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The agent's own line in the step's log. Bounded: a stalled log consumer must not
/// delay stopping the step.
async fn send_agent_message(output: &OutputSender, message: String) {
    let send = output.send(OutputChunk::agent(message));
    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
}

/// `PATH` for process and sandbox steps that do not set one: the agent's own.
fn default_path() -> std::ffi::OsString {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// `spec.env` with `PATH` and `HOME` added when missing, for a step that sees its
/// workspace at `workspace_inside`.
fn step_environment(
    spec: &StepSpec,
    workspace_inside: &Path,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut environment: Vec<(std::ffi::OsString, std::ffi::OsString)> = spec
        .env
        .iter()
        .map(|(key, value)| (key.into(), value.into()))
        .collect();
    if !spec.env.contains_key("PATH") {
        environment.push(("PATH".into(), default_path()));
    }
    if !spec.env.contains_key("HOME") {
        environment.push(("HOME".into(), workspace_inside.into()));
    }
    environment
}
