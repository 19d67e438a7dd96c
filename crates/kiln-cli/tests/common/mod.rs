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
