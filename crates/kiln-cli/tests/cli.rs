//! The real `kiln` binary against a real `kiln serve` process: reporting builds, exit
//! codes, nested `kiln emit`, the server being down or killed mid-build, and `kiln up`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

fn builds(workspace: &Workspace, server: &str, token: &str) -> Vec<Value> {
    let listed = output(workspace.kiln(server, token).args(["builds", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    let value: Value = serde_json::from_slice(&listed.stdout).unwrap();
    value["builds"].as_array().unwrap().clone()
}

fn build(workspace: &Workspace, server: &str, token: &str, run_id: &str) -> Value {
    let shown = output(
        workspace
            .kiln(server, token)
            .args(["build", run_id, "--json"]),
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    serde_json::from_slice(&shown.stdout).unwrap()
}

#[test]
fn run_reports_stages_and_keeps_the_exit_code() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);

    let success = output(workspace.kiln(&server.url, &token).args([
        "run",
        "--stage",
        "Install=echo installing",
        "--stage",
        "Plan=kiln emit plan_generated --data '{\"steps\":3}' --metric bundle_kb=412 --metric tests=1200 && kiln emit build_progress --progress 40",
        "--",
        "sh",
        "-c",
        "echo built",
    ]));
    assert!(success.status.success(), "{}", stderr(&success));
    assert!(stdout(&success).contains("installing") && stdout(&success).contains("built"));

    let failure = output(workspace.kiln(&server.url, &token).args([
        "run",
        "--stage",
        "Lint=true",
        "--stage",
        "Test=exit 7",
        "--stage",
        "Never=true",
    ]));
    assert_eq!(failure.status.code(), Some(7), "{}", stderr(&failure));

    let missing = output(workspace.kiln(&server.url, &token).args([
        "run",
        "--",
        "definitely-not-a-command-kiln",
    ]));
    assert_eq!(missing.status.code(), Some(127));

    let listed = builds(&workspace, &server.url, &token);
    assert_eq!(listed.len(), 3);
    let failed = &listed[1];
    assert_eq!(failed["status"], "failed");
    let failed = build(
        &workspace,
        &server.url,
        &token,
        failed["runId"].as_str().unwrap(),
    );
    let stages: Vec<(String, String)> = failed["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            ("Lint".into(), "success".into()),
            ("Test".into(), "failed".into())
        ]
    );
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 7")
    );

    let succeeded = build(
        &workspace,
        &server.url,
        &token,
        listed[2]["runId"].as_str().unwrap(),
    );
    assert_eq!(succeeded["status"], "success");
    assert_eq!(succeeded["host"].as_str().map(str::is_empty), Some(false));
    assert!(succeeded["durationMs"].as_i64().is_some());
    assert_eq!(
        succeeded["metrics"],
        serde_json::json!({"bundle_kb": 412.0, "tests": 1200.0}),
        "kiln emit --metric reached the build"
    );
    // The nested `kiln emit` joined the same build through KILN_RUN_ID.
    let events = output(workspace.kiln(&server.url, &token).args([
        "events",
        succeeded["runId"].as_str().unwrap(),
        "--json",
    ]));
    assert!(events.status.success(), "{}", stderr(&events));
    let page: Value = serde_json::from_slice(&events.stdout).unwrap();
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "build_started",
            "stage_started",
            "stage_completed",
            "stage_started",
            "plan_generated",
            "build_progress",
            "stage_completed",
            "build_completed"
        ]
    );
}

#[test]
fn with_the_server_down_the_build_is_unaffected_and_events_arrive_later() {
    let workspace = Workspace::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let run = output(workspace.kiln(&url, "kiln_whatever").args([
        "run",
        "--flush-timeout",
        "1",
        "--stage",
        "Build=true",
        "--",
        "sh",
        "-c",
        "exit 4",
    ]));
    assert_eq!(run.status.code(), Some(4));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the build waited for the server"
    );
    let message = stderr(&run);
    assert_eq!(
        message.matches("cannot deliver events").count(),
        1,
        "said once: {message}"
    );
    assert!(std::fs::read_dir(workspace.spool()).unwrap().count() >= 1);

    let server = Server::start(&workspace.data(), port, &[]);
    let token = project_token(&workspace, &server);
    // The spool remembers the old token; sending with a valid one here is what a user does.
    let spool_files: Vec<PathBuf> = std::fs::read_dir(workspace.spool())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for file in spool_files {
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("kiln_whatever", &token);
        std::fs::write(&file, text).unwrap();
    }
    let sent = output(workspace.kiln(&server.url, &token).args(["spool", "send"]));
    assert!(sent.status.success(), "{}{}", stdout(&sent), stderr(&sent));
    assert!(stdout(&sent).contains("0 remain"), "{}", stdout(&sent));
    let listed = builds(&workspace, &server.url, &token);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "failed");
    let shown = build(
        &workspace,
        &server.url,
        &token,
        listed[0]["runId"].as_str().unwrap(),
    );
    assert_eq!(shown["stages"][0]["status"], "success");
}

#[test]
fn a_server_killed_mid_build_loses_nothing() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let port = server.port();
    let url = server.url.clone();
    let token = project_token(&workspace, &server);
    let mut run = workspace
        .kiln(&url, &token)
        .args([
            "run",
            "--heartbeat-interval",
            "0.1",
            "--flush-timeout",
            "1",
            "--stage",
            "One=true",
            "--stage",
            "Two=sleep 1.5",
            "--stage",
            "Three=true",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    server.kill_hard();
    let status = run.wait().unwrap();
    assert!(status.success());

    let server = Server::start(&workspace.data(), port, &[]);
    let sent = output(workspace.kiln(&server.url, &token).args(["spool", "send"]));
    assert!(sent.status.success(), "{}{}", stdout(&sent), stderr(&sent));
    let listed = builds(&workspace, &server.url, &token);
    assert_eq!(listed.len(), 1);
    let shown = build(
        &workspace,
        &server.url,
        &token,
        listed[0]["runId"].as_str().unwrap(),
    );
    assert_eq!(shown["status"], "success");
    let names: Vec<&str> = shown["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["One", "Two", "Three"]);
    // Sending again is harmless: eventIds make it idempotent.
    let again = output(workspace.kiln(&server.url, &token).args(["spool", "send"]));
    assert!(again.status.success());
}

#[test]
fn the_seeds_environment_variables_work() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let run = output(
        Command::new(KILN)
            .current_dir(workspace.dir.path())
            .env_remove("KILN_URL")
            .env_remove("KILN_TOKEN")
            .env("KILN_SPOOL_DIR", workspace.spool())
            .env(
                "OM_BUILD_EVENT_URL",
                format!("{}/api/internal/build-events", server.url),
            )
            .env("OM_BUILD_EVENT_TOKEN", &token)
            .args(["run", "--", "true"]),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!stderr(&run).contains("cannot deliver"), "{}", stderr(&run));
    assert_eq!(
        builds(&workspace, &server.url, &token)[0]["status"],
        "success"
    );
}

/// `kiln test-report` inside `kiln run` uploads a real jest-junit report for that build;
/// `kiln tests` prints its failures, `kiln flaky` the project's flaky tests.
#[test]
fn test_reports_reach_the_build_and_read_back() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln-core/tests/fixtures/junit/jest-junit.xml");
    let run = output(workspace.kiln(&server.url, &token).args([
        "run",
        "--stage",
        &format!("Test=kiln test-report {}", report.display()),
        "--",
        "true",
    ]));
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("7 tests (4 passed, 2 failed, 0 errors, 1 skipped) stored"),
        "{}",
        stderr(&run)
    );
    let run_id = builds(&workspace, &server.url, &token)[0]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let tests = output(workspace.kiln(&server.url, &token).args(["tests", &run_id]));
    assert!(tests.status.success(), "{}", stderr(&tests));
    let text = stdout(&tests);
    assert!(text.contains("7 tests, 4 passed, 2 failed"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("FAILED\t")).count(),
        2,
        "{text}"
    );
    let flaky = output(workspace.kiln(&server.url, &token).args(["flaky"]));
    assert!(flaky.status.success(), "{}", stderr(&flaky));
    assert!(
        stdout(&flaky).contains("no flaky test"),
        "{}",
        stdout(&flaky)
    );
    // A file that is not a report: the server's reason, exit 1.
    let bad = workspace.data().join("bad.xml");
    std::fs::write(&bad, "not xml").unwrap();
    let refused = output(workspace.kiln(&server.url, &token).args([
        "test-report",
        "--run-id",
        &run_id,
        bad.to_str().unwrap(),
    ]));
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("not a JUnit XML report"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn emit_refuses_bad_arguments_with_a_clear_message() {
    let workspace = Workspace::new();
    let bad_type = output(
        workspace
            .kiln("http://127.0.0.1:9", "t")
            .args(["emit", "Bad-Type", "--run-id", "r"]),
    );
    assert_eq!(bad_type.status.code(), Some(2));
    assert!(stderr(&bad_type).contains("not a valid event type"));
    let no_run = output(
        workspace
            .kiln("http://127.0.0.1:9", "t")
            .args(["emit", "heartbeat"]),
    );
    assert_eq!(no_run.status.code(), Some(2));
    assert!(stderr(&no_run).contains("no run id"));
    let bad_data = output(workspace.kiln("http://127.0.0.1:9", "t").args([
        "emit",
        "heartbeat",
        "--run-id",
        "r",
        "--data",
        "[1]",
    ]));
    assert_eq!(bad_data.status.code(), Some(2));
    assert!(stderr(&bad_data).contains("JSON object"));
    for bad in ["kb", "kb=big", "bad name=1", "kb=inf"] {
        let bad_metric = output(workspace.kiln("http://127.0.0.1:9", "t").args([
            "emit",
            "heartbeat",
            "--run-id",
            "r",
            "--metric",
            bad,
        ]));
        assert_eq!(bad_metric.status.code(), Some(2), "{bad}");
        assert!(stderr(&bad_metric).contains("NAME=NUMBER"), "{bad}");
    }
}

#[test]
fn up_creates_the_default_project_once_and_prints_what_to_do() {
    let workspace = Workspace::new();
    let port = free_port();
    let start_up = || {
        let mut child = Command::new(KILN)
            .current_dir(workspace.dir.path())
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(workspace.data())
            .env("KILN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.starts_with("Stop with Ctrl-C");
            printed.push(line);
            if done {
                break;
            }
        }
        (child, printed.join("\n"))
    };
    let (mut first, printed) = start_up();
    assert!(
        printed.contains(&format!("http://127.0.0.1:{port}")),
        "{printed}"
    );
    // It names the binary to put on PATH, since its hints say `kiln`.
    let binary = std::fs::canonicalize(KILN).unwrap();
    assert!(
        printed.contains(&format!("kiln binary: {}", binary.display()))
            || printed.contains(&format!("kiln binary: {KILN}")),
        "{printed}"
    );
    let token = printed
        .lines()
        .find(|l| l.contains("project token"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("kiln_"));
    let run = output(
        workspace
            .kiln(&format!("http://127.0.0.1:{port}"), &token)
            .args(["run", "--", "true"]),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(
        first.wait().unwrap().success(),
        "SIGTERM is a clean shutdown"
    );

    let (mut second, printed) = start_up();
    assert!(printed.contains("exists"), "{printed}");
    assert!(!printed.contains(&token));
    assert_eq!(
        builds(&workspace, &format!("http://127.0.0.1:{port}"), &token).len(),
        1
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// `kiln artifact upload` inside `kiln run` (a file and a directory, paths as given),
/// `list`, `get` (checked against the SHA-256), `get --all` (a .tar.gz `tar` unpacks)
/// and `verify`.
#[test]
fn artifacts_upload_list_get_and_verify_from_the_command_line() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let site = workspace.data().join("site");
    std::fs::create_dir_all(site.join("dist/assets")).unwrap();
    std::fs::write(site.join("dist/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(site.join("dist/assets/app.js"), "console.log(1)").unwrap();
    std::fs::write(site.join("notes.txt"), "release notes").unwrap();
    let run = output(
        workspace
            .kiln(&server.url, &token)
            .current_dir(&site)
            .args([
                "run",
                "--stage",
                "Package=kiln artifact upload dist ./notes.txt --step Package",
                "--",
                "true",
            ]),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("3 files stored for"),
        "{}",
        stderr(&run)
    );
    let run_id = builds(&workspace, &server.url, &token)[0]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let list = output(
        workspace
            .kiln(&server.url, &token)
            .args(["artifact", "list", &run_id]),
    );
    assert!(list.status.success(), "{}", stderr(&list));
    let paths: Vec<String> = stdout(&list)
        .lines()
        .map(|line| line.rsplit('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        ["dist/assets/app.js", "dist/index.html", "notes.txt"]
    );
    assert!(stdout(&list).contains("\tPackage\t"), "{}", stdout(&list));
    let out = workspace.data().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let one = output(workspace.kiln(&server.url, &token).args([
        "artifact",
        "get",
        &run_id,
        "dist/index.html",
        "-o",
        out.join("index.html").to_str().unwrap(),
    ]));
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(stderr(&one).contains("verified"), "{}", stderr(&one));
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        "<h1>hi</h1>"
    );
    let all = output(workspace.kiln(&server.url, &token).args([
        "artifact",
        "get",
        &run_id,
        "--all",
        "-o",
        out.join("all.tar.gz").to_str().unwrap(),
    ]));
    assert!(all.status.success(), "{}", stderr(&all));
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(out.join("all.tar.gz"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["dist/assets/app.js", "dist/index.html", "notes.txt"]
    );
    let verify = output(
        workspace
            .kiln(&server.url, &token)
            .args(["artifact", "verify", &run_id]),
    );
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stderr(&verify).contains("3 files"), "{}", stderr(&verify));
    // A path outside the working directory is refused before anything is sent.
    let outside = output(
        workspace
            .kiln(&server.url, &token)
            .current_dir(&site)
            .args([
                "artifact",
                "upload",
                "../site/notes.txt",
                "--run-id",
                &run_id,
            ]),
    );
    assert!(!outside.status.success());
    assert!(stderr(&outside).contains("'..'"), "{}", stderr(&outside));
}
