//! The process executor (`sh -e -c` as a child of the agent in its own process group)
//! and `RunningStep`, the child-process machinery the sandbox executor shares: spawn
//! with piped output, stream it, wait, signal the group, drain, kill leftovers.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{ExecError, Executor, StepExit, StepSpec, step_environment};
use crate::output::{OutputChunk, OutputSender, Stream};

/// How long a step may take to disappear after SIGKILL before it counts as stuck.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Bytes read from a pipe at once (one output chunk at most).
const READ_BUFFER: usize = 64 * 1024;

/// Runs the script as a child process: env cleared then set from the spec, cwd the
/// workspace, stdin `/dev/null`, own process group.
#[derive(Default)]
pub struct ProcessExecutor {
    command: Option<Command>,
    running: Option<RunningStep>,
}

impl ProcessExecutor {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Executor for ProcessExecutor {
    async fn prepare(&mut self, spec: &StepSpec) -> Result<(), ExecError> {
        let workspace = spec.canonical_workspace()?;
        let mut command = Command::new("/bin/sh");
        command.arg("-e").arg("-c").arg(&spec.script);
        command.env_clear().envs(step_environment(spec, &workspace));
        command.current_dir(&workspace);
        self.command = Some(command);
        Ok(())
    }

    async fn start(&mut self, output: OutputSender) -> Result<(), ExecError> {
        let command = self.command.take().ok_or_else(not_prepared)?;
        self.running = Some(RunningStep::spawn(command, "/bin/sh", output)?);
        Ok(())
    }

    async fn wait(&mut self) -> Result<StepExit, ExecError> {
        self.running.as_mut().ok_or_else(not_prepared)?.wait().await
    }

    async fn terminate(&mut self, grace: Duration) -> Result<StepExit, ExecError> {
        let running = self.running.as_mut().ok_or_else(not_prepared)?;
        running
            .stop(grace, |running| running.signal_group(Signal::SIGTERM))
            .await
    }

    async fn drain_output(&mut self, within: Duration) {
        if let Some(running) = self.running.as_mut() {
            running.drain_output(within).await;
        }
    }

    async fn cleanup(&mut self) {
        self.cleanup_detached();
    }

    fn cleanup_detached(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill_everything();
        }
    }
}

fn not_prepared() -> ExecError {
    ExecError::Wait {
        source: std::io::Error::other("the step was not started"),
    }
}

/// A spawned step: its child, the process group it leads, and the output readers.
pub(crate) struct RunningStep {
    child: Child,
    process_group: Pid,
    readers: Vec<JoinHandle<()>>,
    exit: Option<StepExit>,
}

impl RunningStep {
    /// Spawns `command` as the leader of a new process group with stdin empty and
    /// stdout/stderr streamed to `output` by one task each.
    pub(crate) fn spawn(
        mut command: Command,
        program: &str,
        output: OutputSender,
    ) -> Result<Self, ExecError> {
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ExecError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let process_group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| ExecError::Spawn {
                program: program.to_owned(),
                source: std::io::Error::other("the child exited before its pid was known"),
            })?;
        let mut readers = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(stream_pipe(
                stdout,
                Stream::Stdout,
                output.clone(),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(stream_pipe(stderr, Stream::Stderr, output)));
        }
        Ok(Self {
            child,
            process_group,
            readers,
            exit: None,
        })
    }

    /// The host pid of the child (the group leader).
    pub(crate) fn pid(&self) -> Pid {
        self.process_group
    }

    /// Waits for the child to exit, then kills what it left behind in its group (so
    /// their pipes close too). Cancel-safe.
    pub(crate) async fn wait(&mut self) -> Result<StepExit, ExecError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| ExecError::Wait { source })?;
        self.signal_group(Signal::SIGKILL);
        let exit = step_exit(status);
        self.exit = Some(exit);
        Ok(exit)
    }

    /// `polite_stop`, up to `grace` for the step to end, then SIGKILL to the group.
    pub(crate) async fn stop(
        &mut self,
        grace: Duration,
        polite_stop: impl FnOnce(&Self),
    ) -> Result<StepExit, ExecError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        polite_stop(self);
        if let Ok(exit) = tokio::time::timeout(grace, self.wait()).await {
            return exit;
        }
        self.signal_group(Signal::SIGKILL);
        match tokio::time::timeout(KILL_WAIT, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => Err(ExecError::Unkillable {
                seconds: KILL_WAIT.as_secs(),
            }),
        }
    }

    /// Sends `signal` to the child's process group. Errors mean the group is gone.
    pub(crate) fn signal_group(&self, signal: Signal) {
        let _ = killpg(self.process_group, signal);
    }

    /// Waits until both pipes reached end of file, at most `within`; then stops reading.
    pub(crate) async fn drain_output(&mut self, within: Duration) {
        let readers = std::mem::take(&mut self.readers);
        let aborts: Vec<_> = readers.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_join_all(readers);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                pid = self.process_group.as_raw(),
                "a process outside the step still holds its output open; stopped reading"
            );
            for abort in aborts {
                abort.abort();
            }
        }
    }

    /// SIGKILL to the group and the readers stopped: nothing of the step survives.
    /// The child itself is reaped by tokio (`kill_on_drop`) once dropped.
    pub(crate) fn kill_everything(mut self) {
        self.signal_group(Signal::SIGKILL);
        let _ = self.child.start_kill();
        for reader in self.readers.drain(..) {
            reader.abort();
        }
    }
}

/// Awaits every handle (the crate has no `futures` dependency for `join_all`).
async fn futures_join_all(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

fn step_exit(status: ExitStatus) -> StepExit {
    use std::os::unix::process::ExitStatusExt;
    StepExit {
        exit_code: status.code(),
        signal: status.signal(),
    }
}

/// Copies a pipe to `output` chunk by chunk until end of file. When nobody listens any
/// more, it keeps reading (and drops the bytes) so the step never blocks on a full pipe.
async fn stream_pipe(mut pipe: impl AsyncRead + Unpin, stream: Stream, output: OutputSender) {
    let mut buffer = vec![0_u8; READ_BUFFER];
    let mut listening = true;
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(%error, ?stream, "reading the step's output failed");
                return;
            }
        };
        if listening {
            let chunk = OutputChunk::new(stream, &buffer[..read]);
            listening = output.send(chunk).await.is_ok();
        }
    }
}

/// Where a bwrap or sh binary is, from the agent's `PATH`.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}
