//! `kiln run [--stage NAME=CMD]… [-- CMD ARGS…]`: runs a build and reports it.
//!
//! Stages run in order with `sh -c`; the first failure ends the build. The command after
//! `--` runs last, directly (no shell). The build's exit code is kiln's exit code: the
//! failing command's code, or 128 + the signal that killed it. Reporting never changes
//! the outcome: delivery happens in the background and unsent events are spooled.
//!
//! A cancel on the server (`kiln cancel`, the dashboard) reaches the running command: a
//! task follows the build's live stream, and on `build_cancelled` the command gets
//! SIGTERM — its whole process group when kiln's standard input is not a terminal (CI),
//! since each command then runs in a group of its own — and SIGKILL after
//! `--cancel-grace`; kiln then exits 130. From a terminal the command stays in kiln's
//! group (so it can read the terminal) and only it is signalled.

use std::io::IsTerminal;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kiln_agent::output::Stream;
use kiln_client::protocol::EventPayload;
use serde_json::json;
use tokio::process::Command;

use crate::commands::emit::new_event_id;
use crate::report::log::{BuildLogs, LogTarget, StepOutcome};
use crate::report::metadata::{self, BuildMetadata};
use crate::report::{Reporter, spool};
use crate::settings::ClientArgs;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A stage as NAME=COMMAND (run with sh -c); repeat for several, run in order.
    #[arg(long = "stage", value_name = "NAME=CMD")]
    pub stages: Vec<String>,
    /// Use this run id instead of a new UUID.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Deployment environment label (e.g. prod).
    #[arg(long, env = "KILN_ENV")]
    pub env: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, env = "KILN_HEARTBEAT_INTERVAL", default_value_t = 25.0)]
    pub heartbeat_interval: f64,
    /// Seconds to wait for delivery at the end before spooling.
    #[arg(long, env = "KILN_FLUSH_TIMEOUT", default_value_t = 5.0)]
    pub flush_timeout: f64,
    /// Seconds between SIGTERM and SIGKILL when the build is cancelled on the server (or
    /// kiln is interrupted).
    #[arg(long, default_value_t = 10.0)]
    pub cancel_grace: f64,
    /// Do not ship the commands' output as the build's log (it still reaches the
    /// terminal, and the commands write to it directly, as a terminal).
    #[arg(long)]
    pub no_log: bool,
    /// An environment variable whose value is replaced by *** in the build's log (as
    /// given, base64- and URL-encoded); repeat for several.
    #[arg(long = "mask", value_name = "VAR")]
    pub mask: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The build command and its arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The longest a step waits for earlier events to be delivered before it starts.
const SETTLE_LIMIT: Duration = Duration::from_millis(500);

struct Step {
    stage: Option<String>,
    program: String,
    args: Vec<String>,
    display: String,
}

impl Step {
    /// The step of the build's log this step's output goes to.
    fn log_name(&self) -> &str {
        self.stage.as_deref().unwrap_or("run")
    }
}

fn parse_steps(args: &RunArgs) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for raw in &args.stages {
        let (name, command) = raw
            .split_once('=')
            .filter(|(name, command)| !name.trim().is_empty() && !command.trim().is_empty())
            .with_context(|| {
                format!(
                    "--stage '{raw}' must look like NAME=COMMAND, e.g. --stage \"Test=npm test\""
                )
            })?;
        steps.push(Step {
            stage: Some(name.trim().to_owned()),
            program: "sh".into(),
            args: vec!["-c".into(), command.to_owned()],
            display: command.to_owned(),
        });
    }
    if let Some((program, rest)) = args.command.split_first() {
        steps.push(Step {
            stage: None,
            program: program.clone(),
            args: rest.to_vec(),
            display: args.command.join(" "),
        });
    }
    if steps.is_empty() {
        bail!("nothing to run: give a command after --, or --stage NAME=CMD");
    }
    Ok(steps)
}

/// The values of the `--mask` variables; an unset or empty one is named on stderr.
fn masked_values(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| match std::env::var(name) {
            Ok(value) if !value.is_empty() => Some(value),
            _ => {
                errln!("kiln: --mask {name}: the variable is not set or empty; nothing to mask");
                None
            }
        })
        .collect()
}

/// The exit code a shell would report for this status.
fn exit_code_of(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    1
}

struct BuildReport {
    reporter: Reporter,
    run_id: String,
    env: Option<String>,
}

impl BuildReport {
    fn event(&self, kind: &str) -> EventPayload {
        EventPayload {
            run_id: self.run_id.clone(),
            event: kind.into(),
            event_id: Some(new_event_id()),
            env: self.env.clone(),
            ..EventPayload::default()
        }
    }

    fn send(&self, event: EventPayload) {
        self.reporter.send(event);
    }
}

enum Outcome {
    Success,
    Failed {
        code: i32,
        stage: Option<String>,
        message: String,
    },
    Cancelled {
        code: i32,
    },
    /// Cancelled on the server, which already recorded the build's end.
    CancelledOnServer,
}

/// How a running step is stopped.
struct Stopping {
    grace: Duration,
    /// The command leads a process group of its own (signal the group).
    own_group: bool,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let steps = parse_steps(&args)?;
    let target = args.client.target()?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let working_dir = std::env::current_dir().context("cannot read the current directory")?;
    let BuildMetadata {
        repo,
        branch,
        commit,
        host,
        ci,
    } = metadata::collect(&working_dir);
    let command_line = steps
        .iter()
        .map(|s| s.display.as_str())
        .collect::<Vec<_>>()
        .join(" && ");

    let previous_spool = tokio::spawn({
        let target = target.clone();
        async move { spool::send_all(Some(&target), spool::Pass::Background).await }
    });
    let (cancel_sender, mut cancelled) = tokio::sync::watch::channel(false);
    let cancel_watch = tokio::spawn(watch_for_cancel(
        target.clone(),
        run_id.clone(),
        cancel_sender,
    ));
    let report = BuildReport {
        reporter: Reporter::start(target.clone()),
        run_id: run_id.clone(),
        env: args.env.clone(),
    };
    let flush_timeout = Duration::from_secs_f64(args.flush_timeout.max(0.0));
    let mut logs = BuildLogs::new((!args.no_log).then(|| LogTarget {
        client: kiln_client::Client::with_timeout(
            &target.server,
            target.token.clone(),
            Duration::from_secs(10),
        ),
        run_id: run_id.clone(),
        masked: Arc::new(masked_values(&args.mask)),
        unreachable: report.reporter.unreachable(),
    }));
    let started = Instant::now();
    report.send(EventPayload {
        origin: Some("kiln-cli".into()),
        command: Some(command_line.chars().take(4096).collect()),
        host,
        pid: Some(std::process::id()),
        repo,
        branch,
        commit,
        data: ci.map(|ci| json!({ "ci": ci })),
        heartbeat_timeout: None,
        ..report.event("build_started")
    });

    let heartbeat_every = Duration::from_secs_f64(args.heartbeat_interval.max(0.05));
    let stopping = Stopping {
        grace: Duration::from_secs_f64(args.cancel_grace.clamp(0.0, 86_400.0)),
        own_group: !std::io::stdin().is_terminal(),
    };
    let outcome = run_steps(
        &report,
        &steps,
        &run_id,
        heartbeat_every,
        &stopping,
        &mut cancelled,
        &mut logs,
    )
    .await;
    cancel_watch.abort();

    let duration_ms = started.elapsed().as_millis() as u64;
    let exit_code = match &outcome {
        Outcome::Success => {
            report.send(EventPayload {
                duration_ms: Some(duration_ms),
                ..report.event("build_completed")
            });
            0
        }
        Outcome::Failed {
            code,
            stage,
            message,
        } => {
            report.send(EventPayload {
                duration_ms: Some(duration_ms),
                stage: stage.clone(),
                message: Some(message.clone()),
                data: Some(json!({ "exitCode": code })),
                ..report.event("build_failed")
            });
            *code
        }
        Outcome::Cancelled { code } => {
            report.send(EventPayload {
                duration_ms: Some(duration_ms),
                message: Some("kiln run was interrupted".into()),
                ..report.event("build_cancelled")
            });
            *code
        }
        Outcome::CancelledOnServer => 130,
    };
    // The logs and the events are flushed together, within one flush timeout.
    tokio::join!(
        logs.wait(flush_timeout),
        report.reporter.finish(flush_timeout)
    );
    let _ = tokio::time::timeout(Duration::from_millis(200), previous_spool).await;
    Ok(ExitCode::from((exit_code & 0xff) as u8))
}

/// How a step's command ended.
enum StepEnd {
    Exited(std::io::Result<ExitStatus>),
    /// kiln was interrupted (SIGINT, SIGTERM) and stopped the command.
    Interrupted(std::io::Result<ExitStatus>),
    CancelledOnServer,
}

async fn run_steps(
    report: &BuildReport,
    steps: &[Step],
    run_id: &str,
    heartbeat_every: Duration,
    stopping: &Stopping,
    cancelled: &mut tokio::sync::watch::Receiver<bool>,
    logs: &mut BuildLogs,
) -> Outcome {
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + heartbeat_every,
        heartbeat_every,
    );
    let mut interrupted = std::pin::pin!(interrupted());
    for step in steps {
        if let Some(stage) = &step.stage {
            report.send(EventPayload {
                stage: Some(stage.clone()),
                ..report.event("stage_started")
            });
        }
        report.reporter.settle(SETTLE_LIMIT).await;
        if *cancelled.borrow() {
            errln!("kiln: the build was cancelled on the server");
            return Outcome::CancelledOnServer;
        }
        let step_log = logs.start(step.log_name());
        let stage_started = Instant::now();
        let mut command = Command::new(&step.program);
        command
            .args(&step.args)
            .env("KILN_RUN_ID", run_id)
            .env("PATH", child_path())
            .kill_on_drop(true);
        if step_log.is_some() {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if stopping.own_group {
            command.process_group(0);
        }
        let child = command.spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                let (message, code) = if error.kind() == std::io::ErrorKind::NotFound {
                    (format!("command not found: {}", step.program), 127)
                } else {
                    (format!("cannot start '{}': {error}", step.program), 126)
                };
                errln!("kiln: {message}");
                if let Some(step_log) = step_log {
                    let failed = StepOutcome::Failed;
                    logs.close(step_log, Vec::new(), failed, Some(code), Some(&message))
                        .await;
                }
                return step_failed(report, step, code, None, message);
            }
        };
        let mut readers = Vec::new();
        if let Some(step_log) = &step_log {
            if let Some(stdout) = child.stdout.take() {
                readers.push(step_log.pass_through(stdout, Stream::Stdout));
            }
            if let Some(stderr) = child.stderr.take() {
                readers.push(step_log.pass_through(stderr, Stream::Stderr));
            }
        }
        let end = loop {
            tokio::select! {
                status = child.wait() => break StepEnd::Exited(status),
                _ = heartbeat.tick() => report.send(report.event("heartbeat")),
                _ = &mut interrupted => {
                    // Give the command the same signal's chance to stop cleanly, then end it.
                    break StepEnd::Interrupted(stop(&mut child, stopping).await);
                }
                () = cancelled_on_server(cancelled) => {
                    errln!(
                        "kiln: the build was cancelled on the server; stopping '{}' (SIGTERM, SIGKILL after {}s)",
                        step.display.chars().take(200).collect::<String>(),
                        stopping.grace.as_secs_f64()
                    );
                    let _ = stop(&mut child, stopping).await;
                    break StepEnd::CancelledOnServer;
                }
            }
        };
        let duration_ms = Some(stage_started.elapsed().as_millis() as u64);
        let interrupted_step = matches!(end, StepEnd::Interrupted(_));
        let cancelled_here = matches!(end, StepEnd::CancelledOnServer);
        let (outcome, code, failure) = match end {
            StepEnd::Exited(Ok(status)) => {
                let code = exit_code_of(status);
                if code == 0 {
                    (StepOutcome::Passed, 0, None)
                } else {
                    let message = format!(
                        "'{}' exited with code {code}",
                        step.display.chars().take(200).collect::<String>()
                    );
                    (StepOutcome::Failed, code, Some(message))
                }
            }
            StepEnd::Exited(Err(error)) => {
                let message = format!("lost track of '{}': {error}", step.program);
                errln!("kiln: {message}");
                (StepOutcome::Failed, 1, Some(message))
            }
            StepEnd::Interrupted(status) => {
                let code = status.map(exit_code_of).unwrap_or(130);
                let code = if code == 0 { 130 } else { code };
                (StepOutcome::Cancelled, code, Some("interrupted".to_owned()))
            }
            StepEnd::CancelledOnServer => (
                StepOutcome::Cancelled,
                130,
                Some("the build was cancelled on the server".to_owned()),
            ),
        };
        if let Some(step_log) = step_log {
            logs.close(step_log, readers, outcome, Some(code), failure.as_deref())
                .await;
        }
        if interrupted_step {
            report_stage_failed(report, step, None, "interrupted");
            return Outcome::Cancelled { code };
        }
        if cancelled_here {
            return Outcome::CancelledOnServer;
        }
        if let Some(message) = failure {
            return step_failed(report, step, code, duration_ms, message);
        }
        if let Some(stage) = &step.stage {
            report.send(EventPayload {
                stage: Some(stage.clone()),
                duration_ms,
                ..report.event("stage_completed")
            });
        }
    }
    Outcome::Success
}

/// Resolves once the server cancelled the build; never if the watch ended otherwise.
async fn cancelled_on_server(cancelled: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *cancelled.borrow_and_update() {
            return;
        }
        if cancelled.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM to the command (its process group when it has one), SIGKILL to what is left
/// after the grace period; returns the command's status.
async fn stop(
    child: &mut tokio::process::Child,
    stopping: &Stopping,
) -> std::io::Result<ExitStatus> {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let Some(pid) = child.id() else {
        return child.wait().await;
    };
    let pid = Pid::from_raw(pid as i32);
    let send = |signal: Option<Signal>| {
        if stopping.own_group {
            killpg(pid, signal)
        } else {
            kill(pid, signal)
        }
    };
    let _ = send(Some(Signal::SIGTERM));
    let deadline = tokio::time::Instant::now() + stopping.grace;
    let mut status = None;
    loop {
        if status.is_none() {
            status = child.try_wait()?;
        }
        // With its own group, done when every process of the group is gone (the leader
        // reaped first: a zombie still counts).
        let gone = status.is_some() && (!stopping.own_group || send(None).is_err());
        if gone {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = send(Some(Signal::SIGKILL));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match status {
        Some(status) => Ok(status),
        None => child.wait().await,
    }
}

/// Follows the build's live stream and says when the server cancelled it (`kiln
/// cancel`, the dashboard). Reconnects quietly (the build may not be stored yet, the
/// server may be away); gives up when the token may not read the build.
async fn watch_for_cancel(
    target: crate::settings::Target,
    run_id: String,
    cancelled: tokio::sync::watch::Sender<bool>,
) {
    let client = kiln_client::Client::with_timeout(
        &target.server,
        target.token.clone(),
        Duration::from_secs(10),
    );
    let mut cursor: Option<i64> = None;
    let mut delay = Duration::from_millis(250);
    loop {
        match client.build_stream(&run_id, cursor).await {
            Ok(mut stream) => {
                delay = Duration::from_millis(250);
                while let Ok(Some(event)) = stream.next().await {
                    if let Some(id) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                        cursor = Some(id);
                    }
                    match event.event.as_str() {
                        "build_cancelled" => {
                            let _ = cancelled.send(true);
                            return;
                        }
                        "build_completed" | "build_failed" | "end" => return,
                        _ => {}
                    }
                }
            }
            Err(error) if matches!(error.status(), Some(401 | 403)) => return,
            Err(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Reports the step's stage, if it has one, as failed.
fn report_stage_failed(report: &BuildReport, step: &Step, duration_ms: Option<u64>, message: &str) {
    if let Some(stage) = &step.stage {
        report.send(EventPayload {
            stage: Some(stage.clone()),
            duration_ms,
            message: Some(message.to_owned()),
            ..report.event("stage_failed")
        });
    }
}

/// The step failed with `code`: its stage is reported failed and the build ends so.
fn step_failed(
    report: &BuildReport,
    step: &Step,
    code: i32,
    duration_ms: Option<u64>,
    message: String,
) -> Outcome {
    report_stage_failed(report, step, duration_ms, &message);
    Outcome::Failed {
        code,
        stage: step.stage.clone(),
        message,
    }
}

/// The children's PATH: the inherited one, with kiln's own directory appended so nested
/// `kiln emit` works even when kiln was started by path (e.g. `cargo run`).
fn child_path() -> std::ffi::OsString {
    let mut paths: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(ToOwned::to_owned))
        && !paths.contains(&dir)
    {
        paths.push(dir);
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Resolves when kiln receives SIGINT or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
