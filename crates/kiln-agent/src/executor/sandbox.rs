//! The sandbox executor: the script under bubblewrap (`bwrap`) with every namespace
//! unshared (network only when the step asks), the host mounted read-only, a private
//! `/tmp` and `/dev`, and the workspace bound writable at its own path (so paths in the
//! step's output are the host's). The graceful stop signals every process of the
//! sandbox's PID namespace; the forced stop kills bwrap, whose `--die-with-parent`
//! takes the namespace down with it.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use super::process::{RunningStep, find_on_path};
use super::{ExecError, Executor, StepExit, StepSpec, step_environment};
use crate::output::OutputSender;

#[derive(Default)]
pub struct SandboxExecutor {
    command: Option<Command>,
    running: Option<RunningStep>,
}

impl SandboxExecutor {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The bwrap arguments that run `script` in `workspace` (before the environment, which
/// bwrap passes on from its own).
pub(crate) fn bwrap_arguments(
    workspace: &std::path::Path,
    network: bool,
    script: &str,
) -> Vec<std::ffi::OsString> {
    let mut arguments: Vec<std::ffi::OsString> = vec!["--unshare-all".into()];
    if network {
        arguments.push("--share-net".into());
    }
    for argument in [
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ] {
        arguments.push(argument.into());
    }
    // After --tmpfs /tmp, so a workspace under /tmp is bound on top of the new tmpfs.
    arguments.push("--bind".into());
    arguments.push(workspace.into());
    arguments.push(workspace.into());
    arguments.push("--chdir".into());
    arguments.push(workspace.into());
    for argument in ["--", "/bin/sh", "-e", "-c"] {
        arguments.push(argument.into());
    }
    arguments.push(script.into());
    arguments
}

impl Executor for SandboxExecutor {
    async fn prepare(&mut self, spec: &StepSpec) -> Result<(), ExecError> {
        let bwrap: PathBuf = find_on_path("bwrap").ok_or(ExecError::SandboxUnavailable)?;
        let workspace = spec.canonical_workspace()?;
        let mut command = Command::new(bwrap);
        command.args(bwrap_arguments(&workspace, spec.network, &spec.script));
        command.env_clear().envs(step_environment(spec, &workspace));
        command.current_dir(&workspace);
        self.command = Some(command);
        Ok(())
    }

    async fn start(&mut self, output: OutputSender) -> Result<(), ExecError> {
        let command = self.command.take().ok_or_else(not_started)?;
        self.running = Some(RunningStep::spawn(command, "bwrap", output)?);
        Ok(())
    }

    async fn wait(&mut self) -> Result<StepExit, ExecError> {
        self.running.as_mut().ok_or_else(not_started)?.wait().await
    }

    async fn terminate(&mut self, grace: Duration) -> Result<StepExit, ExecError> {
        let running = self.running.as_mut().ok_or_else(not_started)?;
        running
            .stop(grace, |running| {
                signal_sandbox(running.pid(), Signal::SIGTERM)
            })
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

fn not_started() -> ExecError {
    ExecError::Wait {
        source: std::io::Error::other("the sandbox was not started"),
    }
}

/// Sends `signal` to every process in the PID namespace of the sandbox that the bwrap
/// process `bwrap` created. Its child is the namespace's init (bwrap's reaper), which
/// ignores signals from outside; the script and everything it started receive it.
/// When the namespace cannot be found, bwrap itself gets the signal (it then dies and
/// `--die-with-parent` kills the sandbox: not graceful, but the step stops).
fn signal_sandbox(bwrap: Pid, signal: Signal) {
    let namespace = sandbox_init(bwrap).and_then(|init| pid_namespace(init.as_raw()));
    // Never the agent's own namespace: that would signal every process of the host
    // (bwrap may not have created its child yet, or failed to unshare).
    let own_namespace = std::fs::read_link("/proc/self/ns/pid").ok();
    let namespace = namespace.filter(|namespace| {
        own_namespace
            .as_ref()
            .is_some_and(|own| own.to_str() != Some(namespace.as_str()))
    });
    let Some(namespace) = namespace else {
        let _ = kill(bwrap, signal);
        return;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        let _ = kill(bwrap, signal);
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // Only processes whose namespace could be read and matches exactly.
        if pid_namespace(pid).as_deref() == Some(namespace.as_str()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// The first child of the bwrap process: the init of the sandbox's PID namespace.
fn sandbox_init(bwrap: Pid) -> Option<Pid> {
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", bwrap.as_raw())).ok()?;
    let init = children.split_whitespace().next()?.parse::<i32>().ok()?;
    Some(Pid::from_raw(init))
}

/// The PID namespace of `pid` (`pid:[inode]`), `None` when unreadable.
fn pid_namespace(pid: i32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    let text = link.to_str()?.to_owned();
    (text.starts_with("pid:[") && text.len() > "pid:[]".len()).then_some(text)
}
