//! The step executors against real processes, a real bubblewrap sandbox and a real
//! container engine (Podman's Docker API). Sandbox tests need `bwrap`; container tests
//! need `KILN_TEST_DOCKER_SOCKET` and `KILN_TEST_DOCKER_IMAGE` (`.ci/executors.sh` sets
//! them up). Without them a test is listed as ignored with the reason (the
//! `kiln_bwrap_tests` and `kiln_docker_tests` cfgs of `build-support/prerequisites.rs`),
//! unless `KILN_REQUIRE_EXECUTORS=1`, which turns a missing prerequisite into a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_agent::executor::{
    CancelSignal, Ending, ExecError, Executor, ExecutorKind, ProcessExecutor, StepExit, StepLimits,
    StepOutcome, StepSpec, run_step, run_with,
};
use kiln_agent::output::{OutputChunk, OutputReceiver, OutputSender, Stream};
use tokio::sync::{mpsc, watch};

// ---------------------------------------------------------------------------------
// Helpers

/// Everything a step wrote, by stream.
#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    agent: String,
}

impl Collected {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

async fn collect(mut receiver: OutputReceiver) -> Collected {
    let mut collected = Collected::default();
    while let Some(chunk) = receiver.recv().await {
        match chunk.stream {
            Stream::Stdout => collected.stdout.extend(chunk.bytes),
            Stream::Stderr => collected.stderr.extend(chunk.bytes),
            Stream::Agent => collected
                .agent
                .push_str(&String::from_utf8_lossy(&chunk.bytes)),
        }
    }
    collected
}

fn limits(timeout: Duration, grace: Duration) -> StepLimits {
    StepLimits { timeout, grace }
}

fn short_limits() -> StepLimits {
    limits(Duration::from_secs(60), Duration::from_secs(1))
}

/// Runs `spec` with `kind`, cancelling it after `cancel_after` when given.
async fn run(
    kind: &ExecutorKind,
    spec: &StepSpec,
    limits: StepLimits,
    cancel_after: Option<Duration>,
) -> (Result<StepOutcome, ExecError>, Collected) {
    let (output, receiver) = mpsc::channel(16);
    let collector = tokio::spawn(collect(receiver));
    let (cancel_sender, cancel) = watch::channel(false);
    if let Some(delay) = cancel_after {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = cancel_sender.send(true);
        });
        let result = run_step(kind, spec, output, cancel, limits).await;
        return (result, collector.await.unwrap());
    }
    let result = run_step(kind, spec, output, cancel, limits).await;
    drop(cancel_sender);
    (result, collector.await.unwrap())
}

fn step(name: &str, script: &str, workspace: &Path) -> StepSpec {
    StepSpec::new(name, script, workspace)
}

/// False when `pid` no longer runs (gone, or a zombie nobody reaped yet).
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits up to 3 s for `pid` to be gone.
async fn assert_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_pid(workspace: &Path, file: &str) -> i32 {
    let text = std::fs::read_to_string(workspace.join(file)).unwrap();
    text.trim().parse().unwrap()
}

/// True when the prerequisite is there; otherwise prints one `skipped:` line, or fails
/// when `KILN_REQUIRE_EXECUTORS=1`.
fn prerequisite(available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("KILN_REQUIRE_EXECUTORS").as_deref() == Ok("1") {
        panic!("KILN_REQUIRE_EXECUTORS=1 but {missing} (eval \"$(bash .ci/executors.sh)\")");
    }
    println!("skipped: {missing} (eval \"$(bash .ci/executors.sh)\" sets it up)");
    false
}

fn bwrap_available() -> bool {
    prerequisite(
        std::process::Command::new("bwrap")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success()),
        "bwrap is not installed (apt-get install bubblewrap)",
    )
}

/// The engine socket and image, when configured.
fn container_engine() -> Option<(PathBuf, String)> {
    let socket = std::env::var_os("KILN_TEST_DOCKER_SOCKET").map(PathBuf::from);
    let image = std::env::var("KILN_TEST_DOCKER_IMAGE").ok();
    let available = socket.is_some() && image.is_some();
    if !prerequisite(
        available,
        "set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE",
    ) {
        return None;
    }
    Some((socket?, image?))
}

fn workspace() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

// ---------------------------------------------------------------------------------
// The driver and the kinds

#[test]
fn executor_kinds_parse_and_display() {
    for name in ["process", "sandbox", "container"] {
        let kind: ExecutorKind = name.parse().unwrap();
        assert_eq!(kind.to_string(), name);
    }
    let error = "docker".parse::<ExecutorKind>().unwrap_err();
    assert!(error.to_string().contains("process, sandbox or container"));
}

/// Wraps the real process executor and counts the lifecycle calls.
struct Counting {
    inner: ProcessExecutor,
    cleanups: Arc<AtomicUsize>,
    detached_cleanups: Arc<AtomicUsize>,
}

impl Executor for Counting {
    async fn prepare(&mut self, spec: &StepSpec) -> Result<(), ExecError> {
        self.inner.prepare(spec).await
    }
    async fn start(&mut self, output: OutputSender) -> Result<(), ExecError> {
        self.inner.start(output).await
    }
    async fn wait(&mut self) -> Result<StepExit, ExecError> {
        self.inner.wait().await
    }
    async fn terminate(&mut self, grace: Duration) -> Result<StepExit, ExecError> {
        self.inner.terminate(grace).await
    }
    async fn drain_output(&mut self, within: Duration) {
        self.inner.drain_output(within).await;
    }
    async fn cleanup(&mut self) {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        self.inner.cleanup().await;
    }
    fn cleanup_detached(&mut self) {
        self.detached_cleanups.fetch_add(1, Ordering::SeqCst);
        self.inner.cleanup_detached();
    }
}

struct Counters {
    cleanups: Arc<AtomicUsize>,
    detached_cleanups: Arc<AtomicUsize>,
}

impl Counters {
    fn new() -> Self {
        Self {
            cleanups: Arc::default(),
            detached_cleanups: Arc::default(),
        }
    }
    fn executor(&self) -> Counting {
        Counting {
            inner: ProcessExecutor::new(),
            cleanups: self.cleanups.clone(),
            detached_cleanups: self.detached_cleanups.clone(),
        }
    }
    fn counts(&self) -> (usize, usize) {
        (
            self.cleanups.load(Ordering::SeqCst),
            self.detached_cleanups.load(Ordering::SeqCst),
        )
    }
}

async fn run_counting(
    counters: &Counters,
    spec: &StepSpec,
    limits: StepLimits,
    cancel: CancelSignal,
) -> Result<StepOutcome, ExecError> {
    let (output, receiver) = mpsc::channel(16);
    let collector = tokio::spawn(collect(receiver));
    let result = run_with(counters.executor(), spec, output, cancel, limits).await;
    collector.await.unwrap();
    result
}

#[tokio::test]
async fn cleanup_runs_exactly_once_on_every_path() {
    let workspace = workspace();
    let (_cancel_sender, cancel) = watch::channel(false);

    let counters = Counters::new();
    let spec = step("ok", "true", workspace.path());
    let outcome = run_counting(&counters, &spec, short_limits(), cancel.clone()).await;
    assert!(outcome.unwrap().success());
    assert_eq!(counters.counts(), (1, 0), "success");

    let counters = Counters::new();
    let spec = step("failing", "exit 3", workspace.path());
    let outcome = run_counting(&counters, &spec, short_limits(), cancel.clone()).await;
    assert_eq!(outcome.unwrap().exit_code, Some(3));
    assert_eq!(counters.counts(), (1, 0), "failure");

    let counters = Counters::new();
    let spec = step("no workspace", "true", &workspace.path().join("missing"));
    let error = run_counting(&counters, &spec, short_limits(), cancel.clone())
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::Workspace { .. }), "{error}");
    assert_eq!(counters.counts(), (1, 0), "error in prepare");

    let counters = Counters::new();
    let spec = step("slow", "sleep 1000", workspace.path());
    let fast_timeout = limits(Duration::from_millis(200), Duration::from_secs(1));
    let outcome = run_counting(&counters, &spec, fast_timeout, cancel.clone()).await;
    assert_eq!(outcome.unwrap().ending, Ending::TimedOut);
    assert_eq!(counters.counts(), (1, 0), "timeout");

    let counters = Counters::new();
    let (cancel_sender, cancelled) = watch::channel(false);
    cancel_sender.send(true).unwrap();
    let outcome = run_counting(&counters, &spec, short_limits(), cancelled).await;
    assert_eq!(outcome.unwrap().ending, Ending::Cancelled);
    assert_eq!(counters.counts(), (1, 0), "cancelled before start");
}

#[tokio::test]
async fn dropping_the_driver_cleans_up_once_and_kills_the_step() {
    let workspace = workspace();
    let counters = Counters::new();
    let spec = step(
        "dropped",
        "sleep 1000 & echo $! > bg.pid; sleep 1000",
        workspace.path(),
    );
    let (output, receiver) = mpsc::channel(16);
    let collector = tokio::spawn(collect(receiver));
    let (_cancel_sender, cancel) = watch::channel(false);
    let executor = counters.executor();
    let driver =
        tokio::spawn(
            async move { run_with(executor, &spec, output, cancel, short_limits()).await },
        );
    let pid_file = workspace.path().join("bg.pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&pid_file).map_or(true, |text| !text.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the step did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    driver.abort();
    assert!(driver.await.unwrap_err().is_cancelled());
    assert_eq!(counters.counts(), (0, 1));
    assert_gone(read_pid(workspace.path(), "bg.pid")).await;
    collector.await.unwrap();
}

#[tokio::test]
async fn invalid_steps_are_refused_with_a_reason() {
    let workspace = workspace();
    let mut spec = step("bad env", "true", workspace.path());
    spec.env.insert("A=B".into(), "x".into());
    let (result, _) = run(&ExecutorKind::Process, &spec, short_limits(), None).await;
    let error = result.unwrap_err();
    assert!(matches!(error, ExecError::InvalidStep { .. }), "{error}");

    let spec = step("no image", "true", workspace.path());
    let kind = ExecutorKind::Container {
        socket: "/nonexistent/docker.sock".into(),
    };
    let (result, _) = run(&kind, &spec, short_limits(), None).await;
    let error = result.unwrap_err().to_string();
    assert!(error.contains("needs an image"), "{error}");
}

#[tokio::test]
async fn cancel_before_start_runs_nothing() {
    let workspace = workspace();
    let spec = step("never", "touch ran", workspace.path());
    let (output, receiver) = mpsc::channel(16);
    let collector = tokio::spawn(collect(receiver));
    let (_cancel_sender, cancel) = watch::channel(true);
    let outcome = run_step(
        &ExecutorKind::Process,
        &spec,
        output,
        cancel,
        short_limits(),
    )
    .await
    .unwrap();
    collector.await.unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled);
    assert_eq!((outcome.exit_code, outcome.signal), (None, None));
    assert!(!workspace.path().join("ran").exists());
}

// ---------------------------------------------------------------------------------
// Process executor

#[tokio::test]
async fn process_separates_stdout_and_stderr_and_reports_the_exit_code() {
    let workspace = workspace();
    let spec = step(
        "streams",
        r"echo out; echo err >&2; printf '\377\000'; exit 7",
        workspace.path(),
    );
    let (result, collected) = run(&ExecutorKind::Process, &spec, short_limits(), None).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.exit_code, Some(7));
    assert_eq!(outcome.signal, None);
    assert_eq!(outcome.ending, Ending::Exited);
    assert!(!outcome.success());
    assert_eq!(collected.stdout, b"out\n\xff\x00");
    assert_eq!(collected.stderr, b"err\n");

    let spec = step("fine", "true", workspace.path());
    let (result, _) = run(&ExecutorKind::Process, &spec, short_limits(), None).await;
    assert!(result.unwrap().success());

    let spec = step("set -e", "false; echo unreachable", workspace.path());
    let (result, collected) = run(&ExecutorKind::Process, &spec, short_limits(), None).await;
    assert_eq!(result.unwrap().exit_code, Some(1));
    assert!(collected.stdout.is_empty());
}

#[tokio::test]
async fn process_sees_only_its_environment_in_its_workspace() {
    let workspace = workspace();
    let mut spec = step("env", "env; echo \"cwd=$(pwd)\"", workspace.path());
    spec.env
        .insert("KILN_STEP_VALUE".into(), "hello world".into());
    let (result, collected) = run(&ExecutorKind::Process, &spec, short_limits(), None).await;
    assert!(result.unwrap().success());
    let text = collected.stdout_text();
    let variables: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let value = |key: &str| {
        variables
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    };
    assert_eq!(value("KILN_STEP_VALUE"), Some("hello world"));
    assert_eq!(value("HOME"), Some(canonical(workspace.path()).as_str()));
    assert_eq!(value("PATH"), std::env::var("PATH").ok().as_deref());
    assert_eq!(value("cwd"), Some(canonical(workspace.path()).as_str()));
    // The shell adds PWD (and some add SHLVL); nothing of the agent's environment leaks.
    for (key, _) in std::env::vars() {
        if !matches!(
            key.as_str(),
            "PATH" | "HOME" | "PWD" | "SHLVL" | "OLDPWD" | "_"
        ) {
            assert_eq!(value(&key), None, "{key} leaked into the step");
        }
    }
    assert!(text.contains("KILN_STEP_VALUE"), "{text}");
}

#[tokio::test]
async fn process_cancel_kills_the_whole_process_group() {
    let workspace = workspace();
    let spec = step(
        "cancelled",
        "sleep 1000 & echo $! > bg.pid; sleep 1000; wait",
        workspace.path(),
    );
    let started = Instant::now();
    let (result, collected) = run(
        &ExecutorKind::Process,
        &spec,
        limits(Duration::from_secs(60), Duration::from_secs(5)),
        Some(Duration::from_millis(300)),
    )
    .await;
    let outcome = result.unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled);
    assert_eq!(outcome.signal, Some(15), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SIGTERM was enough"
    );
    assert!(collected.agent.contains("cancelled"), "{}", collected.agent);
    assert_gone(read_pid(workspace.path(), "bg.pid")).await;
}

#[tokio::test]
async fn process_timeout_ends_the_step() {
    let workspace = workspace();
    let spec = step("slow", "sleep 1000", workspace.path());
    let started = Instant::now();
    let (result, collected) = run(
        &ExecutorKind::Process,
        &spec,
        limits(Duration::from_millis(300), Duration::from_secs(5)),
        None,
    )
    .await;
    let outcome = result.unwrap();
    assert_eq!(outcome.ending, Ending::TimedOut);
    assert!(!outcome.success());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(collected.agent.contains("timeout"), "{}", collected.agent);
}

#[tokio::test]
async fn process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let workspace = workspace();
    let spec = step(
        "stubborn",
        "trap '' TERM; sleep 1000 & echo $! > bg.pid; sleep 1000; wait",
        workspace.path(),
    );
    let started = Instant::now();
    let (result, _) = run(
        &ExecutorKind::Process,
        &spec,
        limits(Duration::from_millis(300), Duration::from_secs(1)),
        None,
    )
    .await;
    let outcome = result.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(outcome.ending, Ending::TimedOut);
    assert_eq!(outcome.signal, Some(9), "{outcome:?}");
    assert!(elapsed >= Duration::from_millis(1300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_gone(read_pid(workspace.path(), "bg.pid")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_streams_50_megabytes_of_binary_output_completely() {
    let workspace = workspace();
    let spec = step(
        "flood",
        "head -c 50000000 /dev/urandom; echo done >&2",
        workspace.path(),
    );
    let (output, mut receiver) = mpsc::channel::<OutputChunk>(16);
    let counter = tokio::spawn(async move {
        let (mut stdout, mut stderr) = (0_usize, Vec::new());
        while let Some(chunk) = receiver.recv().await {
            match chunk.stream {
                Stream::Stdout => stdout += chunk.bytes.len(),
                Stream::Stderr => stderr.extend(chunk.bytes),
                Stream::Agent => {}
            }
        }
        (stdout, stderr)
    });
    let (_cancel_sender, cancel) = watch::channel(false);
    let outcome = run_step(
        &ExecutorKind::Process,
        &spec,
        output,
        cancel,
        limits(Duration::from_secs(120), Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert!(outcome.success(), "{outcome:?}");
    let (stdout, stderr) = counter.await.unwrap();
    assert_eq!(stdout, 50_000_000);
    assert_eq!(stderr, b"done\n");
}

#[tokio::test]
async fn process_output_held_open_by_an_escaped_process_does_not_hang() {
    let workspace = workspace();
    // setsid leaves the step's process group, so the group kill misses it and it keeps
    // stdout open; the driver stops reading after its bound.
    let spec = step(
        "escaped",
        "setsid sleep 30 & echo $! > bg.pid; echo started",
        workspace.path(),
    );
    let started = Instant::now();
    let (result, collected) = run(&ExecutorKind::Process, &spec, short_limits(), None).await;
    assert!(result.unwrap().success());
    assert_eq!(collected.stdout_text(), "started\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = read_pid(workspace.path(), "bg.pid");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
}

// ---------------------------------------------------------------------------------
// Sandbox executor (bubblewrap)

#[tokio::test]
#[cfg_attr(
    not(kiln_bwrap_tests),
    ignore = "bubblewrap skipped: apt-get install bubblewrap (eval \"$(bash .ci/executors.sh)\")"
)]
async fn sandbox_workspace_is_writable_and_the_host_read_only() {
    if !bwrap_available() {
        return;
    }
    let workspace = workspace();
    std::fs::write(workspace.path().join("input.txt"), "from host\n").unwrap();
    let spec = step(
        "sandboxed",
        "cat input.txt; echo written > output.txt; touch /tmp/scratch; echo \"home=$HOME cwd=$(pwd)\"",
        workspace.path(),
    );
    let (result, collected) = run(&ExecutorKind::Sandbox, &spec, short_limits(), None).await;
    let outcome = result.unwrap();
    assert!(outcome.success(), "{outcome:?} {}", collected.stderr_text());
    let path = canonical(workspace.path());
    assert_eq!(
        collected.stdout_text(),
        format!("from host\nhome={path} cwd={path}\n")
    );
    let written = std::fs::read_to_string(workspace.path().join("output.txt")).unwrap();
    assert_eq!(written, "written\n");

    let spec = step(
        "read-only host",
        "touch /usr/kiln-sandbox-test",
        workspace.path(),
    );
    let (result, collected) = run(&ExecutorKind::Sandbox, &spec, short_limits(), None).await;
    let outcome = result.unwrap();
    assert_ne!(outcome.exit_code, Some(0));
    assert!(
        collected.stderr_text().contains("Read-only"),
        "{}",
        collected.stderr_text()
    );
    assert!(!Path::new("/usr/kiln-sandbox-test").exists());
}

#[tokio::test]
#[cfg_attr(
    not(kiln_bwrap_tests),
    ignore = "bubblewrap skipped: apt-get install bubblewrap (eval \"$(bash .ci/executors.sh)\")"
)]
async fn sandbox_has_network_only_when_asked() {
    if !bwrap_available() {
        return;
    }
    let workspace = workspace();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    let mut spec = step("offline", &format!("bash -c '{script}'"), workspace.path());

    let (result, collected) = run(&ExecutorKind::Sandbox, &spec, short_limits(), None).await;
    assert_ne!(
        result.unwrap().exit_code,
        Some(0),
        "{}",
        collected.stdout_text()
    );
    assert!(listener.accept().is_err(), "no connection reached the host");

    spec.network = true;
    let (result, collected) = run(&ExecutorKind::Sandbox, &spec, short_limits(), None).await;
    let outcome = result.unwrap();
    assert!(outcome.success(), "{outcome:?} {}", collected.stderr_text());
    assert_eq!(collected.stdout_text(), "connected\n");
    assert!(
        listener.accept().is_ok(),
        "the host listener saw the connection"
    );
}

#[tokio::test]
#[cfg_attr(
    not(kiln_bwrap_tests),
    ignore = "bubblewrap skipped: apt-get install bubblewrap (eval \"$(bash .ci/executors.sh)\")"
)]
async fn sandbox_cancel_is_graceful_and_stubborn_steps_are_killed() {
    if !bwrap_available() {
        return;
    }
    let workspace = workspace();
    let spec = step(
        "cancelled",
        "sleep 1000 & sleep 1000; wait",
        workspace.path(),
    );
    let started = Instant::now();
    let (result, _) = run(
        &ExecutorKind::Sandbox,
        &spec,
        limits(Duration::from_secs(60), Duration::from_secs(5)),
        Some(Duration::from_millis(300)),
    )
    .await;
    let outcome = result.unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SIGTERM reached the script"
    );
    assert_eq!(outcome.exit_code, Some(128 + 15), "{outcome:?}");

    let spec = step("stubborn", "trap '' TERM; sleep 1000", workspace.path());
    let started = Instant::now();
    let (result, _) = run(
        &ExecutorKind::Sandbox,
        &spec,
        limits(Duration::from_millis(300), Duration::from_secs(1)),
        None,
    )
    .await;
    let outcome = result.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(outcome.ending, Ending::TimedOut);
    assert!(elapsed >= Duration::from_millis(1300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

// ---------------------------------------------------------------------------------
// Container executor (Docker Engine API; Podman in CI)

/// `GET /containers/json` filtered by the `kiln.step` label, over a plain HTTP/1.0
/// exchange (no chunked encoding to undo).
fn containers_labelled(socket: &Path, step_name: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let filters = format!("%7B%22label%22%3A%5B%22kiln.step%3D{step_name}%22%5D%7D");
    write!(
        stream,
        "GET /v1.41/containers/json?all=1&filters={filters} HTTP/1.0\r\nHost: docker\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    serde_json::from_str(body).unwrap()
}

fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn assert_removed(socket: &Path, name: &str) {
    let left = containers_labelled(socket, name);
    assert_eq!(left, serde_json::json!([]), "containers left for {name}");
}

#[tokio::test]
#[cfg_attr(
    not(kiln_docker_tests),
    ignore = "Docker API skipped: set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE (eval \"$(bash .ci/executors.sh)\")"
)]
async fn container_runs_the_script_with_separate_streams_and_exit_code() {
    let Some((socket, image)) = container_engine() else {
        return;
    };
    let kind = ExecutorKind::Container {
        socket: socket.clone(),
    };
    let workspace = workspace();
    let name = unique_name("streams");
    let mut spec = step(
        &name,
        "echo out; echo err >&2; echo \"v=$KILN_VALUE\"; exit 3",
        workspace.path(),
    );
    spec.image = Some(image);
    spec.env.insert("KILN_VALUE".into(), "42".into());
    let (result, collected) = run(&kind, &spec, short_limits(), None).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.exit_code, Some(3), "{outcome:?} {collected:?}");
    assert_eq!(outcome.ending, Ending::Exited);
    assert_eq!(collected.stdout_text(), "out\nv=42\n");
    assert_eq!(collected.stderr_text(), "err\n");
    assert_removed(&socket, &name);
}

#[tokio::test]
#[cfg_attr(
    not(kiln_docker_tests),
    ignore = "Docker API skipped: set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE (eval \"$(bash .ci/executors.sh)\")"
)]
async fn container_sees_the_workspace_and_network_only_when_asked() {
    let Some((socket, image)) = container_engine() else {
        return;
    };
    let kind = ExecutorKind::Container {
        socket: socket.clone(),
    };
    let workspace = workspace();
    std::fs::write(workspace.path().join("input.txt"), "from host\n").unwrap();
    let name = unique_name("workspace");
    let mut spec = step(
        &name,
        "cat input.txt; echo back > output.txt; pwd; echo \"home=$HOME\"; ls /sys/class/net",
        workspace.path(),
    );
    spec.image = Some(image);
    let (result, collected) = run(&kind, &spec, short_limits(), None).await;
    let outcome = result.unwrap();
    assert!(outcome.success(), "{outcome:?} {collected:?}");
    assert_eq!(
        collected.stdout_text(),
        "from host\n/workspace\nhome=/workspace\nlo\n",
        "only the loopback interface without network"
    );
    let back = std::fs::read_to_string(workspace.path().join("output.txt")).unwrap();
    assert_eq!(back, "back\n");
    assert_removed(&socket, &name);

    spec.script = "ls /sys/class/net".into();
    spec.network = true;
    let (result, collected) = run(&kind, &spec, short_limits(), None).await;
    assert!(result.unwrap().success());
    assert!(
        collected
            .stdout_text()
            .lines()
            .any(|interface| interface != "lo"),
        "an interface besides loopback with network: {}",
        collected.stdout_text()
    );
    assert_removed(&socket, &name);
}

#[tokio::test]
#[cfg_attr(
    not(kiln_docker_tests),
    ignore = "Docker API skipped: set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE (eval \"$(bash .ci/executors.sh)\")"
)]
async fn container_streams_binary_output_completely() {
    let Some((socket, image)) = container_engine() else {
        return;
    };
    let kind = ExecutorKind::Container { socket };
    let workspace = workspace();
    let mut spec = step(
        &unique_name("flood"),
        "head -c 5000000 /dev/urandom; echo done >&2",
        workspace.path(),
    );
    spec.image = Some(image);
    let (result, collected) = run(&kind, &spec, short_limits(), None).await;
    assert!(result.unwrap().success());
    assert_eq!(collected.stdout.len(), 5_000_000);
    assert_eq!(collected.stderr, b"done\n");
}

#[tokio::test]
#[cfg_attr(
    not(kiln_docker_tests),
    ignore = "Docker API skipped: set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE (eval \"$(bash .ci/executors.sh)\")"
)]
async fn container_cancel_stops_and_removes_it() {
    let Some((socket, image)) = container_engine() else {
        return;
    };
    let kind = ExecutorKind::Container {
        socket: socket.clone(),
    };
    let workspace = workspace();
    let name = unique_name("cancelled");
    let mut spec = step(&name, "echo started; sleep 1000", workspace.path());
    spec.image = Some(image);
    let started = Instant::now();
    let (result, collected) = run(
        &kind,
        &spec,
        short_limits(),
        Some(Duration::from_millis(1500)),
    )
    .await;
    let outcome = result.unwrap();
    assert_eq!(outcome.ending, Ending::Cancelled);
    assert!(!outcome.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(collected.stdout_text(), "started\n");
    assert_removed(&socket, &name);
}

#[tokio::test]
async fn container_errors_name_the_socket() {
    let workspace = workspace();
    let mut spec = step("unreachable", "true", workspace.path());
    spec.image = Some("localhost/busybox:kiln".into());
    let kind = ExecutorKind::Container {
        socket: "/nonexistent/kiln-docker.sock".into(),
    };
    let (result, _) = run(&kind, &spec, short_limits(), None).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, ExecError::EngineUnreachable { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("/nonexistent/kiln-docker.sock"),
        "{error}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(kiln_docker_tests),
    ignore = "Docker API skipped: set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE (eval \"$(bash .ci/executors.sh)\")"
)]
async fn container_errors_name_the_missing_image() {
    let workspace = workspace();
    let Some((socket, _image)) = container_engine() else {
        return;
    };
    let name = unique_name("missing-image");
    let mut spec = step(&name, "true", workspace.path());
    spec.image = Some("localhost/kiln-no-such-image:1".into());
    let kind = ExecutorKind::Container {
        socket: socket.clone(),
    };
    let (result, _) = run(&kind, &spec, short_limits(), None).await;
    let error = result.unwrap_err();
    assert!(matches!(error, ExecError::ImageNotFound { .. }), "{error}");
    assert!(
        error.to_string().contains("localhost/kiln-no-such-image:1"),
        "{error}"
    );
    assert_removed(&socket, &name);
}
