//! The newcomer's path (issue 20), with the real `kiln` binary against a real `kiln
//! serve` process: no panic on a closed pipe, `kiln run` not slowed by a down server,
//! spooled events resent by ordinary commands, the project taken from the token or the
//! build, `kiln trigger [--wait]`, builds that fail before their steps, table headers,
//! the empty queue and a server log without colour codes when it is not a terminal.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

fn builds_json(workspace: &Workspace, server: &str, token: &str) -> Vec<Value> {
    let listed = output(workspace.kiln(server, token).args(["builds", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    let value: Value = serde_json::from_slice(&listed.stdout).unwrap();
    value["builds"].as_array().unwrap().clone()
}

/// Runs `command` with its standard output a pipe whose reading end is closed before the
/// command writes anything.
fn with_stdout_closed(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

fn spool_files(workspace: &Workspace) -> Vec<PathBuf> {
    match std::fs::read_dir(workspace.spool()) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_closed_pipe_ends_commands_quietly_without_a_panic() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    for _ in 0..3 {
        let run = output(
            workspace
                .kiln(&server.url, &token)
                .args(["run", "--stage", "One=true", "--", "true"]),
        );
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let run_id = builds_json(&workspace, &server.url, &token)[0]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let commands: Vec<Vec<&str>> = vec![
        vec!["builds"],
        vec!["builds", "--json"],
        vec!["build", &run_id],
        vec!["events", &run_id],
        vec!["watch", &run_id],
        vec!["queue"],
        vec!["--help"],
    ];
    for args in commands {
        let ended = with_stdout_closed(workspace.kiln(&server.url, &token).args(&args));
        let said = stderr(&ended);
        assert!(
            !said.contains("panicked") && !said.contains("Broken pipe"),
            "kiln {args:?} on a closed pipe said: {said}"
        );
        assert_ne!(ended.status.code(), Some(101), "kiln {args:?} panicked");
        assert!(
            ended.status.success() || ended.status.code() == Some(141),
            "kiln {args:?} ended with {:?}: {said}",
            ended.status
        );
    }
    // With a reader, the same command prints its table, header first.
    let listed = output(workspace.kiln(&server.url, &token).args(["builds"]));
    let text = stdout(&listed);
    assert!(
        text.starts_with("BUILD\tSTATUS\tPROGRESS\tBRANCH\tDURATION\tRUN ID\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn run_with_the_server_down_adds_no_flush_timeout() {
    let workspace = Workspace::new();
    // Nothing listens on this port: connections are refused.
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        // The default flush timeout (5 s) applies: only knowing the server is
        // unreachable lets kiln run stop waiting.
        let run = output(
            workspace
                .kiln(&url, "kiln_whatever")
                .env_remove("KILN_FLUSH_TIMEOUT")
                .args(["run", "--", "true"]),
        );
        slowest = slowest.max(started.elapsed());
        assert!(run.status.success(), "{}", stderr(&run));
        assert!(
            stderr(&run).contains("cannot deliver events"),
            "{}",
            stderr(&run)
        );
    }
    assert!(
        slowest < Duration::from_secs(2),
        "kiln run -- true took {slowest:?} with the server down"
    );
    // Nothing was lost: every run's events are in the spool.
    let spooled: usize = spool_files(&workspace)
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap().lines().count() - 1)
        .sum();
    assert_eq!(
        spooled,
        3 * 2,
        "build_started and build_completed of 3 runs"
    );
}

#[test]
fn spooled_events_are_resent_by_an_ordinary_command() {
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
            "0.2",
            "--stage",
            "One=true",
            "--stage",
            "Two=sleep 1.5",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    server.kill_hard();
    assert!(run.wait().unwrap().success());
    let mut files = spool_files(&workspace);
    assert!(!files.is_empty(), "the end of the build was spooled");
    // One file looks claimed by a `kiln` that exited mid-send: the next one takes it over.
    let mut finished = Command::new("true").spawn().unwrap();
    let dead_pid = finished.id();
    finished.wait().unwrap();
    let abandoned = files[0].with_extension(format!("sending-{dead_pid}"));
    std::fs::rename(&files[0], &abandoned).unwrap();
    files[0] = abandoned;

    let server = Server::start(&workspace.data(), port, &[]);
    let listed = output(
        workspace
            .kiln(&server.url, &token)
            .args(["builds", "--json"]),
    );
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stderr(&listed).contains("spooled earlier"),
        "{}",
        stderr(&listed)
    );
    let value: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let builds = value["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["status"], "success", "{builds:?}");
    assert_eq!(spool_files(&workspace), Vec::<PathBuf>::new());
}

/// A project `web` building `repo`, its ingest+read token, and an agent token.
struct Project {
    token: String,
    agent_token: String,
}

fn project_with_repo(workspace: &Workspace, server: &Server, repo: &Path) -> Project {
    let token = project_token(workspace, server);
    let set = output(workspace.kiln(&server.url, ADMIN).args([
        "project",
        "set-repo",
        "web",
        &repo.display().to_string(),
    ]));
    assert!(set.status.success(), "{}", stderr(&set));
    let agent = output(
        workspace
            .kiln(&server.url, ADMIN)
            .args(["token", "create", "--agent", "--name", "pool"]),
    );
    assert!(agent.status.success(), "{}", stderr(&agent));
    Project {
        token,
        agent_token: stdout(&agent).trim().to_owned(),
    }
}

#[test]
fn commands_take_the_project_from_the_token_or_the_build() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let repo = GitRepo::new();
    repo.write(
        ".kiln.yml",
        "steps:\n  - name: hello\n    run: echo hello from web\n",
    );
    repo.commit("pipeline");
    let project = project_with_repo(&workspace, &server, repo.path());
    let kiln = || {
        let mut command = workspace.kiln(&server.url, &project.token);
        command.env_remove("KILN_PROJECT");
        command
    };

    // No agent yet: the build waits, and the queue says why.
    let empty = output(kiln().arg("queue"));
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert!(
        stdout(&empty).starts_with("no jobs waiting"),
        "{}",
        stdout(&empty)
    );
    let triggered = output(kiln().arg("trigger"));
    assert!(triggered.status.success(), "{}", stderr(&triggered));
    let text = stdout(&triggered);
    assert!(text.starts_with("web#1 "), "{text}");
    let run_id = text
        .lines()
        .next()
        .unwrap()
        .rsplit('(')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_owned();
    let queue = output(kiln().arg("queue"));
    assert!(
        stdout(&queue).starts_with("PROJECT\tRUN ID\t"),
        "{}",
        stdout(&queue)
    );
    assert!(stdout(&queue).contains(&run_id), "{}", stdout(&queue));

    // `kiln build` without a run id still triggers; `kiln cancel RUN` finds the project.
    let second = output(kiln().args(["build", "--json"]));
    assert!(second.status.success(), "{}", stderr(&second));
    let second: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(second["project"], "web");
    let cancelled = output(kiln().args(["cancel", second["runId"].as_str().unwrap()]));
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));

    let _agent = Agent::start(
        workspace.dir.path(),
        &server.url,
        &project.agent_token,
        "a1",
        &[],
    );
    let followed = output(kiln().args(["logs", "-f", &run_id]));
    assert!(followed.status.success(), "{}", stderr(&followed));
    assert!(
        stdout(&followed).contains("hello from web"),
        "{}",
        stdout(&followed)
    );

    // --wait follows the build and exits with its result.
    let waited = output(kiln().args(["trigger", "--wait"]));
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    assert!(
        stdout(&waited).contains("build succeeded"),
        "{}",
        stdout(&waited)
    );
    repo.write(".kiln.yml", "steps:\n  - name: hello\n    run: exit 3\n");
    repo.commit("failing");
    let failed = output(kiln().args(["trigger", "--wait"]));
    assert_eq!(failed.status.code(), Some(1), "{}", stdout(&failed));
    assert!(
        stdout(&failed).contains("build failed"),
        "{}",
        stdout(&failed)
    );

    // A step whose command does not exist says which.
    repo.write(
        ".kiln.yml",
        "steps:\n  - name: hello\n    run: definitely-not-a-command-kiln --version\n",
    );
    repo.commit("missing command");
    let missing = output(kiln().args(["trigger", "--wait"]));
    assert_eq!(missing.status.code(), Some(1), "{}", stdout(&missing));
    assert!(
        stdout(&missing).contains("command not found: definitely-not-a-command-kiln"),
        "{}",
        stdout(&missing)
    );

    // A wrong run id says what to check.
    let unknown = output(kiln().args(["logs", "no-such-run"]));
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("kiln builds"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn a_build_that_fails_before_its_steps_says_why_and_exits_non_zero() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let repo = GitRepo::new();
    repo.write(".kiln.yml", "steps:\n  - name: hello\n    runn: echo hi\n");
    repo.commit("a typo");
    let project = project_with_repo(&workspace, &server, repo.path());
    for args in [vec!["trigger"], vec!["trigger", "--wait"], vec!["build"]] {
        let failed = output(
            workspace
                .kiln(&server.url, &project.token)
                .env_remove("KILN_PROJECT")
                .args(&args),
        );
        let text = stdout(&failed);
        assert_eq!(failed.status.code(), Some(1), "kiln {args:?}: {text}");
        assert!(
            text.contains("build failed before its steps ran: ") && text.contains("runn"),
            "kiln {args:?}: {text}"
        );
        assert!(!text.contains("logs -f"), "kiln {args:?}: {text}");
    }
}

/// Reads the server's stderr until it says it listens, then a little more.
fn server_log(data_dir: &Path, color: Option<&str>) -> String {
    let mut command = Command::new(KILN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("KILN_LOG", "info")
        .env_remove("KILN_COLOR")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(color) = color {
        command.args(["--color", color]);
    }
    let mut child = command.spawn().unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if line.starts_with("kiln listening on ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    log.push_str(&rest);
    log
}

#[test]
fn the_server_log_has_colour_codes_only_on_a_terminal_or_when_asked() {
    let workspace = Workspace::new();
    // A fresh data directory each time, so the server logs (at INFO) that it created
    // the secret key file before it listens.
    let plain = server_log(&workspace.dir.path().join("plain"), None);
    assert!(plain.contains(" INFO "), "the log said: {plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour codes in a piped log: {plain:?}"
    );
    let never = server_log(&workspace.dir.path().join("never"), Some("never"));
    assert!(!never.contains('\u{1b}'), "{never:?}");
    let always = server_log(&workspace.dir.path().join("always"), Some("always"));
    assert!(always.contains("\u{1b}["), "--color always: {always:?}");
}

#[test]
fn admin_commands_take_the_project_of_a_user_with_one_project() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let admin = |args: &[&str]| output(workspace.kiln(&server.url, ADMIN).args(args));
    for args in [
        vec!["project", "create", "web"],
        vec!["project", "create", "api"],
        vec![
            "user",
            "create",
            "--email",
            "ada@example.com",
            "--name",
            "Ada",
            "--password-stdin",
        ],
    ] {
        let done = if args.contains(&"--password-stdin") {
            output_with_stdin(
                workspace.kiln(&server.url, ADMIN).args(&args),
                "correct horse battery\n",
            )
        } else {
            admin(&args)
        };
        assert!(done.status.success(), "{args:?}: {}", stderr(&done));
    }
    let role = admin(&[
        "member",
        "set",
        "--project",
        "web",
        "ada@example.com",
        "admin",
    ]);
    assert!(role.status.success(), "{}", stderr(&role));
    let login = output_with_stdin(
        workspace
            .kiln(&server.url, "")
            .args(["login", "--email", "ada@example.com"]),
        "correct horse battery\n",
    );
    assert!(login.status.success(), "{}", stderr(&login));
    let ada = stdout(&login).trim().to_owned();
    let kiln = |args: &[&str]| {
        output(
            workspace
                .kiln(&server.url, &ada)
                .env_remove("KILN_PROJECT")
                .args(args),
        )
    };

    // Ada administers web only: no --project needed.
    let set = output_with_stdin(
        workspace
            .kiln(&server.url, &ada)
            .env_remove("KILN_PROJECT")
            .args(["secret", "set", "DEPLOY_TOKEN"]),
        "s3cret\n",
    );
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(stdout(&set).contains("of web"), "{}", stdout(&set));
    let members = kiln(&["member", "list"]);
    assert!(members.status.success(), "{}", stderr(&members));
    assert!(
        stdout(&members).contains("ada@example.com\tadmin"),
        "{}",
        stdout(&members)
    );
    let hooks = kiln(&["webhook", "list"]);
    assert!(hooks.status.success(), "{}", stderr(&hooks));

    // With a role in a second project she must say which.
    let second = admin(&[
        "member",
        "set",
        "--project",
        "api",
        "ada@example.com",
        "viewer",
    ]);
    assert!(second.status.success(), "{}", stderr(&second));
    // Roles reach a user's tokens within the 5 s cache.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = kiln(&["secret", "list"]);
        if !listed.status.success() {
            assert!(
                stderr(&listed).contains("several projects (")
                    && stderr(&listed).contains("api")
                    && stderr(&listed).contains("--project"),
                "{}",
                stderr(&listed)
            );
            break;
        }
        assert!(Instant::now() < deadline, "the second role never showed");
        std::thread::sleep(Duration::from_millis(250));
    }
    let named = kiln(&["secret", "list", "--project", "web"]);
    assert!(named.status.success(), "{}", stderr(&named));
    assert!(
        stdout(&named).contains("DEPLOY_TOKEN"),
        "{}",
        stdout(&named)
    );
}

/// The README's quickstart, run as a newcomer would: `kiln up`, then the block that
/// reports a build, line by line in `sh` with `kiln` on PATH.
#[test]
fn the_readme_quickstart_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let quickstart = &readme[readme.find("## Quickstart").unwrap()..];
    let quickstart = &quickstart[..quickstart[3..].find("\n## ").unwrap() + 3];
    let blocks: Vec<&str> = quickstart
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    assert!(blocks[0].contains("-- up"), "{blocks:?}");
    assert!(
        blocks[1].contains("cargo install --path crates/kiln-cli --locked"),
        "{blocks:?}"
    );
    let report = blocks
        .iter()
        .find(|block| block.contains("export KILN_URL="))
        .expect("the block that reports a build");

    let workspace = Workspace::new();
    let port = free_port();
    let (mut up, printed) = start_up(&workspace, port);
    let token = printed
        .iter()
        .find(|line| line.contains("project token"))
        .and_then(|line| line.split_whitespace().last())
        .unwrap_or_else(|| panic!("no project token in {printed:#?}"))
        .to_owned();
    let run_id_of_the_newest_build =
        r#""$(kiln builds --json | sed -n 's/.*"runId": "\([^"]*\)".*/\1/p' | head -n 1)""#;
    let script = report
        .replace("http://127.0.0.1:8090", &format!("http://127.0.0.1:{port}"))
        .replace("<project token>", &token)
        .replace("<runId>", run_id_of_the_newest_build);
    let binary_dir = Path::new(KILN).parent().unwrap();
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ran = output(
        Command::new("sh")
            .args(["-ec", &script])
            .current_dir(workspace.dir.path())
            .env("PATH", path)
            .env("KILN_SPOOL_DIR", workspace.spool())
            .env_remove("KILN_URL")
            .env_remove("KILN_TOKEN")
            .env_remove("KILN_RUN_ID"),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let _ = up.wait();
    let said = stdout(&ran);
    assert!(ran.status.success(), "{script}\n{said}\n{}", stderr(&ran));
    assert!(said.contains("built"), "{said}");
    assert!(said.contains("BUILD\tSTATUS"), "{said}");
    assert!(said.contains("default#1 success ("), "{said}");
    assert!(!stderr(&ran).contains("cannot deliver"), "{}", stderr(&ran));
}

/// Whether process `pid` still runs: it exists and is not a zombie (a killed process
/// whose new parent, here the container's init, has not reaped it yet).
fn process_runs(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "1234 (sleep) Z …".
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn a_cancel_on_the_server_stops_a_wrapped_command_and_its_process_group() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let pids = workspace.dir.path().join("pids");
    // The shell and its background sleep both ignore SIGTERM: only SIGKILL after the
    // grace period ends them, and only if it reaches the whole group.
    let script = format!(
        "trap '' TERM; sleep 60 & echo $$ $! > {}.tmp; mv {0}.tmp {0}; wait",
        pids.display()
    );
    let mut run = workspace
        .kiln(&server.url, &token)
        .args(["run", "--cancel-grace", "1", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.exists() {
        assert!(
            Instant::now() < deadline,
            "the wrapped command never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(pids.len(), 2, "{text}");
    let builds = builds_json(&workspace, &server.url, &token);
    assert_eq!(builds[0]["status"], "running", "{builds:?}");
    let run_id = builds[0]["runId"].as_str().unwrap();

    let cancelled_at = Instant::now();
    let cancel = output(workspace.kiln(&server.url, &token).args(["cancel", run_id]));
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(6),
            "kiln run still runs {:?} after the cancel",
            cancelled_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = cancelled_at.elapsed();
    // Checked before reading kiln's stderr: a surviving process would hold it open.
    for pid in &pids {
        assert!(!process_runs(pid), "process {pid} of the group survived");
    }
    let mut said = String::new();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("cancelled on the server"), "{said}");
    // Learnt within 2 s, plus the 1 s grace before SIGKILL.
    assert!(
        took < Duration::from_secs(3) + Duration::from_millis(500),
        "{took:?}"
    );
    let shown = builds_json(&workspace, &server.url, &token);
    assert_eq!(shown[0]["status"], "cancelled");
    assert!(!said.contains("refused"), "{said}");
}

/// GET `path` on the server with `token`; the status and the body as text.
fn get(server: &str, token: &str, path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Building a Kiln client installs the TLS provider reqwest needs.
    let _ = kiln_client::Client::new(server, None);
    runtime.block_on(async {
        let answer = reqwest::Client::new()
            .get(format!("{server}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    })
}

#[test]
fn a_wrapped_commands_output_is_the_builds_log() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let run = output(
        workspace
            .kiln(&server.url, &token)
            .env("DEPLOY_KEY", "hunter2-s3cret")
            .args([
                "run",
                "--run-id",
                "logged-1",
                "--mask",
                "DEPLOY_KEY",
                "--stage",
                "Build=echo building; echo careful >&2",
                "--",
                "sh",
                "-c",
                "echo \"key=$DEPLOY_KEY\"; printf 'no newline'; exit 3",
            ]),
    );
    // The terminal gets the output unchanged (masking is for the stored log).
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    let said = stdout(&run);
    assert!(said.contains("building\n"), "{said}");
    assert!(said.contains("key=hunter2-s3cret\nno newline"), "{said}");
    assert!(stderr(&run).contains("careful\n"), "{}", stderr(&run));

    let (status, body) = get(
        &server.url,
        &token,
        "/api/v1/projects/web/builds/logged-1/jobs",
    );
    assert_eq!(status, 200, "{body}");
    let jobs: Value = serde_json::from_str(&body).unwrap();
    let jobs = jobs["jobs"].as_array().unwrap();
    let steps: Vec<(&str, &str, Option<i64>, bool)> = jobs
        .iter()
        .map(|job| {
            (
                job["step"].as_str().unwrap(),
                job["state"].as_str().unwrap(),
                job["exitCode"].as_i64(),
                job["reported"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("Build", "passed", Some(0), true),
            ("run", "failed", Some(3), true)
        ]
    );

    let (status, build_log) = get(
        &server.url,
        &token,
        "/api/v1/projects/web/builds/logged-1/jobs/Build/log",
    );
    assert_eq!(status, 200);
    // The agents' format: a 30-byte prefix of time and stream tag. (The two pipes are
    // read apart, so their lines may come in either order.)
    let mut lines: Vec<&str> = build_log.lines().map(|line| &line[23..]).collect();
    lines.sort();
    assert_eq!(lines, ["Z err  careful", "Z out  building"], "{build_log}");
    assert!(build_log.starts_with("20"), "{build_log}");

    let (_, run_log) = get(
        &server.url,
        &token,
        "/api/v1/projects/web/builds/logged-1/jobs/run/log",
    );
    assert!(run_log.contains(" out  key=***\n"), "{run_log}");
    assert!(!run_log.contains("hunter2"), "{run_log}");
    // The unfinished line is ended by the log, and kiln says how the command ended.
    assert!(run_log.contains(" out  no newline\n"), "{run_log}");
    assert!(
        run_log.trim_end().ends_with(
            "kiln 'sh -c echo \"key=$DEPLOY_KEY\"; printf 'no newline'; exit 3' exited with code 3"
        ),
        "{run_log}"
    );

    // `kiln logs` shows it like the log of a build Kiln ran.
    let shown = output(
        workspace
            .kiln(&server.url, &token)
            .args(["logs", "logged-1"]),
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(stdout(&shown).contains("--- run ---"), "{}", stdout(&shown));
    assert!(stdout(&shown).contains("key=***"), "{}", stdout(&shown));

    // --no-log keeps the output out of Kiln.
    let quiet = output(
        workspace
            .kiln(&server.url, &token)
            .args(["run", "--run-id", "quiet-1", "--no-log", "--", "echo", "hi"]),
    );
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert_eq!(stdout(&quiet), "hi\n");
    let (_, body) = get(
        &server.url,
        &token,
        "/api/v1/projects/web/builds/quiet-1/jobs",
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["jobs"],
        serde_json::json!([])
    );
}
