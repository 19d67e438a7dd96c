//! PostgreSQL stopped under a running server, on a private PostgreSQL server this test
//! starts and stops (never the shared one): while it is down, ingest and reads answer
//! 503 `unavailable` with `Retry-After` quickly (not after the pool's 10 s wait), and
//! once it is back the server recovers by itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestApp;
use kiln_store::test_support::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

/// A PostgreSQL cluster of its own on a free loopback port, owned by the `postgres`
/// user (the server refuses to run as root), removed when dropped.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn bin() -> PathBuf {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed under /usr/lib/postgresql")
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop().expect("an initdb under /usr/lib/postgresql")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .expect("runuser runs");
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn create() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kiln-outage-pg.")
            .tempdir_in("/tmp")
            .unwrap();
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "chown the cluster's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let postgres = Self {
            bin: Self::bin(),
            dir,
            port,
        };
        let data = postgres.data();
        postgres.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        postgres.start();
        let output = Command::new(postgres.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-qc", "create database kiln"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        postgres
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kiln", self.port)
    }

    fn start(&self) {
        let log = self.dir.path().join("pg.log").display().to_string();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn can_run_private_postgres() -> bool {
    Path::new("/usr/lib/postgresql").exists()
        && Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .is_ok_and(|output| output.status.success())
}

/// One answer: status, `Retry-After`, body, and how long it took.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    connection: Option<String>,
    body: Value,
    took: Duration,
}

async fn request(
    http: &reqwest::Client,
    method: Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Answer {
    let started = Instant::now();
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    let connection = response
        .headers()
        .get("connection")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        connection,
        body,
        took: started.elapsed(),
    }
}

/// PostgreSQL stopped for about three seconds under 20 clients (ingest and reads, each
/// asking again at once): every answer while it is down is 503 `unavailable` with
/// `Retry-After: 1` and Kiln's JSON error, and (once the server has seen the database
/// fail) each comes within 2 s; after PostgreSQL starts again, ingest and reads answer
/// 201/200 again without restarting Kiln.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(kiln_postgres_tests),
    ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
)]
async fn while_postgres_is_down_requests_answer_503_fast_and_recover() {
    // Where PostgreSQL tests run (`.ci/run` installs it), its binaries must be there too:
    // a missing install fails here rather than passing without running.
    assert!(
        can_run_private_postgres(),
        "needs PostgreSQL under /usr/lib/postgresql and a postgres user (bash .ci/postgres.sh installs both)"
    );
    let postgres = PrivatePostgres::create();
    let database = Arc::new(TestDatabase::existing(postgres.url()));
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |_| {}).await;
    let (_, token) = app.project_client("outage", &["ingest", "read"]).await;
    let http = reqwest::Client::new();
    let events = format!("{}/api/v1/events", app.base_url);
    let builds = format!("{}/api/v1/builds?limit=5", app.base_url);
    let answer = request(
        &http,
        Method::POST,
        events.clone(),
        &token,
        Some(json!({"runId": "before", "event": "build_started"})),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    postgres.stop();
    let stopped = Instant::now();
    let down_for = Duration::from_secs(3);
    let clients: Vec<_> = (0..20)
        .map(|client| {
            let (http, events, builds, token) =
                (http.clone(), events.clone(), builds.clone(), token.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while stopped.elapsed() < down_for {
                    n += 1;
                    let answer = if client % 2 == 0 {
                        request(&http, Method::POST, events.clone(), &token, Some(json!({"runId": format!("down-{client}-{n}"), "event": "build_started"}))).await
                    } else {
                        request(&http, Method::GET, builds.clone(), &token, None).await
                    };
                    answers.push(answer);
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let whole = stopped.elapsed();
    postgres.start();
    let started_again = Instant::now();

    let mut took: Vec<Duration> = answers.iter().map(|answer| answer.took).collect();
    took.sort();
    let slowest = *took.last().unwrap();
    let median = took[took.len() / 2];
    println!(
        "PostgreSQL down {whole:.1?} under 20 clients: {} answers, median {median:.2?}, slowest {slowest:.2?}",
        answers.len()
    );
    for answer in &answers {
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{}", answer.body);
        assert_eq!(
            answer.connection.as_deref(),
            Some("close"),
            "{}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["code"], "unavailable",
            "{}",
            answer.body
        );
    }
    // Every client's first request may be the one that finds the database gone; the
    // ones after it must not wait for the pool's 10 s.
    assert!(
        slowest < Duration::from_secs(2),
        "answers while PostgreSQL was down took up to {slowest:?}"
    );
    assert!(
        answers.len() >= 40,
        "20 clients asking again at once got only {} answers in {whole:?}",
        answers.len()
    );

    let mut recovered = None;
    let mut n = 0;
    while started_again.elapsed() < Duration::from_secs(20) {
        n += 1;
        let ingest = request(
            &http,
            Method::POST,
            events.clone(),
            &token,
            Some(json!({"runId": format!("after-{n}"), "event": "build_started"})),
        )
        .await;
        let read = request(&http, Method::GET, builds.clone(), &token, None).await;
        if ingest.status == 201 && read.status == 200 {
            recovered = Some(started_again.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered =
        recovered.expect("ingest and reads answer again within 20 s of PostgreSQL's start");
    println!("ingest and reads answered again {recovered:.2?} after PostgreSQL started");
    app.stop().await;
}
