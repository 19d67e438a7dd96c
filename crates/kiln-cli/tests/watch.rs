//! `kiln watch` against a real `kiln serve` process: following a running build to its
//! end, exit codes, builds that already ended, a server restarted mid-watch, stale
//! builds, unknown run ids and giving up with --timeout.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;

use common::*;

/// Generous: the machine may be busy running other tests.
const PATIENCE: Duration = Duration::from_secs(30);

impl Workspace {
    /// Reports one event with `kiln emit`, which must be delivered.
    fn emit(&self, server: &str, token: &str, run_id: &str, event: &str, extra: &[&str]) {
        let sent = output(
            self.kiln(server, token)
                .args(["emit", event, "--run-id", run_id])
                .args(extra),
        );
        assert!(sent.status.success(), "emit {event}: {}", stderr(&sent));
        assert!(
            !stderr(&sent).contains("cannot deliver"),
            "emit {event} was spooled: {}",
            stderr(&sent)
        );
    }

    /// Starts `kiln watch` with its output captured line by line.
    fn watch(&self, server: &str, token: &str, run_id: &str, extra: &[&str]) -> Watch {
        let mut child = self
            .kiln(server, token)
            .args(["watch", run_id])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln watch");
        let (sender, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
            reader: Some(reader),
            errors: Some(errors),
        }
    }
}

struct Watch {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    reader: Option<JoinHandle<()>>,
    errors: Option<JoinHandle<String>>,
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Finished {
    /// Asserts the exit code, showing what the command printed when it differs.
    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}\n{}", self.stdout, self.stderr);
    }
}

impl Watch {
    /// Waits until a line containing `needle` is printed.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.seen.iter().any(|line| line.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with '{needle}' in time; so far: {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let finished = self.finish();
                    panic!(
                        "kiln watch exited ({:?}) before printing '{needle}':\n{}\n{}",
                        finished.code, finished.stdout, finished.stderr
                    )
                }
            }
        }
    }

    /// Waits for the process to exit on its own and collects everything it printed.
    fn finish(&mut self) -> Finished {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("kiln watch did not exit in time; printed: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.seen.extend(self.lines.try_iter());
        let stderr = self
            .errors
            .take()
            .map(|errors| errors.join().unwrap())
            .unwrap_or_default();
        Finished {
            code: status.code(),
            stdout: self.seen.join("\n"),
            stderr,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that `needles` appear in `text` in this order.
fn assert_in_order(text: &str, needles: &[&str]) {
    let mut rest = text;
    for needle in needles {
        let at = rest
            .find(needle)
            .unwrap_or_else(|| panic!("'{needle}' missing (in order) from:\n{text}"));
        rest = &rest[at + needle.len()..];
    }
}

#[test]
fn follows_a_running_build_to_success() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let emit =
        |event: &str, extra: &[&str]| workspace.emit(&server.url, &token, "live-1", event, extra);
    emit("build_started", &["--data", r#"{"trigger":"push"}"#]);
    emit("stage_started", &["--stage", "Install"]);

    let mut watch = workspace.watch(&server.url, &token, "live-1", &[]);
    watch.wait_for("stage Install started");
    emit("build_progress", &["--progress", "30"]);
    emit(
        "stage_completed",
        &["--stage", "Install", "--duration-ms", "1500"],
    );
    watch.wait_for("stage Install succeeded in 1.5s");
    emit("stage_started", &["--stage", "Test"]);
    emit("coverage_uploaded", &["--data", r#"{"percent":87}"#]);
    emit("stage_completed", &["--stage", "Test"]);
    emit("build_completed", &[]);

    let finished = watch.finish();
    finished.assert_code(0);
    assert_in_order(
        &finished.stdout,
        &[
            "build started",
            "stage Install started",
            "progress 30%",
            "stage Install succeeded in 1.5s",
            "stage Test started",
            r#"coverage_uploaded {"percent":87}"#,
            "stage Test succeeded",
            "build succeeded",
        ],
    );
    // Not a terminal: plain lines, no carriage-return redraws or escape sequences.
    assert!(!finished.stdout.contains('\r') && !finished.stdout.contains('\x1b'));
    assert!(finished.stderr.is_empty(), "{}", finished.stderr);
}

#[test]
fn a_failing_build_exits_1_with_the_failure() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let emit =
        |event: &str, extra: &[&str]| workspace.emit(&server.url, &token, "fail-1", event, extra);
    emit("build_started", &[]);
    emit("stage_started", &["--stage", "Test"]);

    let mut watch = workspace.watch(&server.url, &token, "fail-1", &[]);
    watch.wait_for("stage Test started");
    emit(
        "stage_failed",
        &[
            "--stage",
            "Test",
            "--message",
            "3 tests failed",
            "--duration-ms",
            "4200",
        ],
    );
    emit("build_failed", &["--message", "Test failed"]);

    let finished = watch.finish();
    finished.assert_code(1);
    assert_in_order(
        &finished.stdout,
        &[
            "stage Test FAILED in 4.2s: 3 tests failed",
            "build failed after",
            ": Test failed",
        ],
    );
}

#[test]
fn a_build_that_already_ended_prints_its_history_and_exits() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    for (event, extra) in [
        ("build_started", vec![]),
        ("stage_started", vec!["--stage", "Build"]),
        ("stage_completed", vec!["--stage", "Build"]),
        ("build_completed", vec![]),
    ] {
        workspace.emit(&server.url, &token, "done-1", event, &extra);
    }
    for (event, extra) in [
        ("build_started", vec![]),
        ("stage_started", vec!["--stage", "Deploy"]),
        ("build_cancelled", vec!["--message", "superseded"]),
    ] {
        workspace.emit(&server.url, &token, "done-2", event, &extra);
    }

    let started = Instant::now();
    let finished = workspace.watch(&server.url, &token, "done-1", &[]).finish();
    finished.assert_code(0);
    assert_in_order(
        &finished.stdout,
        &[
            "build started",
            "stage Build started",
            "stage Build succeeded",
            "build succeeded",
        ],
    );
    let cancelled = workspace.watch(&server.url, &token, "done-2", &[]).finish();
    assert_eq!(cancelled.code, Some(1), "{}", cancelled.stdout);
    assert_in_order(
        &cancelled.stdout,
        &["stage Deploy started", "build was cancelled", "superseded"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an ended build is printed at once"
    );
}

#[test]
fn a_server_restarted_mid_watch_is_reconnected_to() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let port = server.port();
    let url = server.url.clone();
    let token = project_token(&workspace, &server);
    let emit =
        |event: &str, extra: &[&str]| workspace.emit(&url, &token, "restart-1", event, extra);
    emit("build_started", &[]);
    emit("stage_started", &["--stage", "One"]);
    emit("stage_completed", &["--stage", "One"]);

    let mut watch = workspace.watch(&url, &token, "restart-1", &[]);
    watch.wait_for("stage One succeeded");
    server.kill_hard();
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::start(&workspace.data(), port, &[]);
    emit("stage_started", &["--stage", "Two"]);
    watch.wait_for("stage Two started");
    // A second outage is announced again, once.
    server.kill_hard();
    std::thread::sleep(Duration::from_millis(800));
    let _server = Server::start(&workspace.data(), port, &[]);
    emit("stage_failed", &["--stage", "Two", "--message", "boom"]);
    emit("build_failed", &[]);

    let finished = watch.finish();
    finished.assert_code(1);
    assert_in_order(
        &finished.stdout,
        &[
            "stage One started",
            "stage One succeeded",
            "stage Two started",
            "stage Two FAILED",
            "boom",
            "build failed",
        ],
    );
    // Each event once, although the stream was resumed twice.
    assert_eq!(finished.stdout.matches("stage One succeeded").count(), 1);
    assert_eq!(finished.stdout.matches("stage Two started").count(), 1);
    assert_eq!(
        finished.stderr.matches("lost the stream").count(),
        2,
        "{}",
        finished.stderr
    );
    assert_eq!(
        finished.stderr.matches("reconnected").count(),
        2,
        "{}",
        finished.stderr
    );
}

#[test]
fn a_stale_build_exits_1() {
    let workspace = Workspace::new();
    let server = Server::start(
        &workspace.data(),
        0,
        &[
            "--heartbeat-timeout",
            "5",
            "--stale-check-interval-ms",
            "100",
        ],
    );
    let token = project_token(&workspace, &server);
    workspace.emit(&server.url, &token, "stale-1", "build_started", &[]);
    let finished = workspace
        .watch(&server.url, &token, "stale-1", &[])
        .finish();
    finished.assert_code(1);
    assert_in_order(&finished.stdout, &["build started", "build went stale"]);
}

#[test]
fn an_unknown_build_or_an_unreachable_server_is_a_clear_error() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let unknown = output(
        workspace
            .kiln(&server.url, &token)
            .args(["watch", "no-such-run"]),
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no build 'no-such-run'"),
        "{}",
        stderr(&unknown)
    );
    let bad_token = output(
        workspace
            .kiln(&server.url, "kiln_not_a_real_token")
            .args(["watch", "no-such-run"]),
    );
    assert_eq!(bad_token.status.code(), Some(2));
    assert!(
        stderr(&bad_token).contains("refused the token"),
        "{}",
        stderr(&bad_token)
    );

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let gave_up =
        output(
            workspace
                .kiln(&nobody, &token)
                .args(["watch", "any-run", "--timeout", "1.5"]),
        );
    assert_eq!(gave_up.status.code(), Some(2));
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = stderr(&gave_up);
    assert_eq!(message.matches("lost the stream").count(), 1, "{message}");
    assert!(message.contains("gave up after"), "{message}");
}
