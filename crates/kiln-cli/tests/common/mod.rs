//! Shared by the CLI's integration tests: a real `kiln serve` process, a workspace
//! with its own spool, and helpers that run the real `kiln` binary.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");
pub const ADMIN: &str = "kiln_cli_test_admin_token_0123456789";

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `kiln serve` on `port` (0 for any) with its SQLite data in `data_dir`.
    pub fn start(data_dir: &Path, port: u16, extra: &[&str]) -> Server {
        let mut child = Command::new(KILN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            // The tests' repositories are made in the temp dir.
            .arg("--allow-local-repos")
            .arg(std::env::temp_dir())
            .args(extra)
            .env("KILN_ADMIN_TOKEN", ADMIN)
            .env("KILN_LOG", "warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start kiln serve");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines.next().expect("kiln serve exited early").unwrap();
            if let Some(url) = line.strip_prefix("kiln listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A `kiln` command with the spool in this workspace and no inherited settings.
    pub fn kiln(&self, server: &str, token: &str) -> Command {
        let mut command = Command::new(KILN);
        command
            .current_dir(self.dir.path())
            .env("KILN_URL", server)
            .env("KILN_TOKEN", token)
            .env("KILN_SPOOL_DIR", self.spool())
            .env_remove("KILN_RUN_ID")
            .env_remove("OM_BUILD_EVENT_URL")
            .env_remove("OM_BUILD_EVENT_TOKEN")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI")
            .env_remove("CIRCLECI");
        command
    }
}

pub fn output(command: &mut Command) -> Output {
    command.output().expect("run kiln")
}

/// Runs `command` with `input` on its standard input, capturing its output.
pub fn output_with_stdin(command: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Starts `kiln up --no-agent` on `port` in the workspace and returns it with the lines
/// it printed up to "Stop with Ctrl-C".
pub fn start_up(workspace: &Workspace, port: u16) -> (Child, Vec<String>) {
    let mut child = Command::new(KILN)
        .current_dir(workspace.dir.path())
        .args(["up", "--no-agent", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(workspace.data())
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln up");
    let mut printed = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Stop with Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    (child, printed)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Creates project `web` and returns an ingest+read token, using the CLI itself.
pub fn project_token(workspace: &Workspace, server: &Server) -> String {
    let created = output(
        workspace
            .kiln(&server.url, ADMIN)
            .args(["project", "create", "web"]),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let token = output(workspace.kiln(&server.url, ADMIN).args([
        "token",
        "create",
        "--project",
        "web",
        "--scope",
        "ingest,read",
    ]));
    assert!(token.status.success(), "{}", stderr(&token));
    stdout(&token).trim().to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A git repository in a temporary directory, committed to with a fixed identity.
pub struct GitRepo {
    pub dir: tempfile::TempDir,
}

impl GitRepo {
    /// A new repository whose first branch is `main`.
    pub fn new() -> GitRepo {
        let repo = GitRepo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository and returns its trimmed standard output.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .current_dir(self.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .expect("run git");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn write(&self, file: &str, contents: &str) {
        let path = self.path().join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, contents).unwrap();
    }

    /// Commits every change on the current branch and returns the commit's id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A real `kiln agent` process; its log goes to `log`. Dropping it stops it with
/// SIGTERM (so it cancels its running steps) and SIGKILL if it lingers.
pub struct Agent {
    pub child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `kiln agent` named `name` with its work and cache directories under
    /// `dir/name`; `extra` adds flags (`--labels`, `--executor`, …).
    pub fn start(dir: &Path, server: &str, token: &str, name: &str, extra: &[&str]) -> Agent {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(KILN)
            .args([
                "agent", "--server", server, "--token", token, "--name", name,
            ])
            .arg("--work-dir")
            .arg(home.join("work"))
            .arg("--cache-dir")
            .arg(home.join("cache"))
            .args(extra)
            .env("KILN_LOG", "info")
            .env_remove("KILN_URL")
            .env_remove("KILN_AGENT_LABELS")
            .env_remove("KILN_AGENT_EXECUTOR")
            .env_remove("KILN_AGENT_CONCURRENCY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start kiln agent");
        Agent {
            child: Some(child),
            name: name.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// SIGKILL, like `kill -9`: the agent has no chance to stop its steps or report.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// What the agent logged so far (for failure messages).
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logged = self.logged();
            let mut start = logged.len().saturating_sub(4000);
            while !logged.is_char_boundary(start) {
                start += 1;
            }
            let tail = &logged[start..];
            eprintln!("--- agent {} logged (tail):\n{tail}", self.name);
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
