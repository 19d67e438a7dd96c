//! `TestApp`: the real server on 127.0.0.1:0 with a fresh database, and helpers.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::sync::Arc;
use std::time::Duration;

use kiln_client::Client;
use kiln_core::Millis;
use kiln_server::clock::ManualClock;
use kiln_server::{Secret, ServerConfig};
use kiln_store::Engine;
use kiln_store::test_support::TestDatabase;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod fake_agent;
pub mod page;
pub mod snapshot;
pub mod sse;

pub const ADMIN_TOKEN: &str = "kiln_test_admin_token_0123456789abcdef";

/// A git mirror directory of its own for each test server.
pub fn database_git_dir(database: &TestDatabase) -> std::path::PathBuf {
    database_dir(database, "git")
}

/// A directory of the test database's own under the temp dir (`what`: its use).
pub fn database_dir(database: &TestDatabase, what: &str) -> std::path::PathBuf {
    let unique = database
        .url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>();
    std::env::temp_dir().join(format!("kiln-test-{what}-{unique}"))
}

pub struct TestApp {
    pub base_url: String,
    pub admin: Client,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub database: Arc<TestDatabase>,
    /// The server's background task passes: wait on these, not on a sleep.
    pub passes: Arc<kiln_server::Passes>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> TestApp {
        Self::spawn_with(engine, |_| {}).await
    }

    /// A fresh database and test clock, with settings changed from the tests' defaults.
    pub async fn spawn_with(engine: Engine, configure: impl FnOnce(&mut ServerConfig)) -> TestApp {
        let database = Arc::new(TestDatabase::create(engine).await);
        let clock = ManualClock::new(Millis(1_800_000_000_000));
        Self::spawn_configured(database, clock, configure).await
    }

    /// Starts a server on an existing database (a restart, or a second replica).
    pub async fn spawn_on(database: Arc<TestDatabase>, clock: Arc<ManualClock>) -> TestApp {
        Self::spawn_configured(database, clock, |_| {}).await
    }

    /// Starts a server with settings changed from the tests' defaults.
    pub async fn spawn_configured(
        database: Arc<TestDatabase>,
        clock: Arc<ManualClock>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestApp {
        let store = database.open_dyn().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = ServerConfig {
            heartbeat_timeout_secs: 90,
            reaper_interval: Duration::from_millis(20),
            admin_token: Some(Secret::new(ADMIN_TOKEN)),
            max_streams_per_token: 20,
            clock: clock.clone(),
            scheduler: kiln_server::SchedulerConfig {
                git_dir: database_git_dir(&database),
                // Tests build repositories made in temp dirs; the mirrors, also under
                // the temp dir, stay refused.
                repo_policy: kiln_server::RepoPolicy {
                    allow_local: vec![std::env::temp_dir()],
                    ..kiln_server::RepoPolicy::default()
                },
                ..kiln_server::SchedulerConfig::default()
            },
            secure_cookies: false,
            artifacts: Some(
                kiln_server::ArtifactConfig::local(&database_dir(&database, "artifacts"))
                    .expect("artifact directory"),
            ),
            ..ServerConfig::default()
        };
        configure(&mut config);
        let passes = config.passes.clone();
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            kiln_server::run(listener, store, config, async {
                let _ = shutdown_signal.await;
            })
            .await
            .expect("server runs");
        });
        let app = TestApp {
            admin: Client::new(&base_url, Some(ADMIN_TOKEN.into())),
            base_url,
            http: reqwest::Client::new(),
            clock,
            database,
            passes,
            shutdown: Some(shutdown),
            server: Some(server),
        };
        for _ in 0..200 {
            if app.admin.healthz().await.is_ok() {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not become healthy");
    }

    /// Waits for `more` passes of a periodic background task (the one that would act
    /// has then run), failing the test after 10 s.
    pub async fn passes_of(&self, task: kiln_server::Periodic, more: u64) {
        assert!(
            self.passes
                .wait_for(task, more, Duration::from_secs(10))
                .await,
            "{task:?} did not make {more} passes within 10 s"
        );
    }

    /// Graceful shutdown: returns once the server has stopped.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    /// Creates a project and returns a client holding a token with the given scopes.
    pub async fn project_client(&self, slug: &str, scopes: &[&str]) -> (Client, String) {
        match self.admin.create_project(slug, slug).await {
            Ok(_) => {}
            Err(error) if error.status() == Some(409) => {}
            Err(error) => panic!("create project {slug}: {error}"),
        }
        let token = self
            .admin
            .create_token(slug, "test", scopes)
            .await
            .unwrap()
            .token;
        (Client::new(&self.base_url, Some(token.clone())), token)
    }

    /// A user with `role` in `project` (created if needed), logged in, and a personal
    /// token made with the session; returns the token.
    pub async fn member_token(&self, email: &str, project: &str, role: &str) -> String {
        let (tokens, _) = self.member_tokens(email, project, role, 1).await;
        tokens.into_iter().next().unwrap()
    }

    /// Like `member_token`, with `count` personal tokens; also returns the answer to
    /// one more token request (status, body), which the per-user cap may refuse.
    pub async fn member_tokens(
        &self,
        email: &str,
        project: &str,
        role: &str,
        count: usize,
    ) -> (Vec<String>, (u16, Value)) {
        let _ = self.admin.create_project(project, project).await;
        let (status, created) = self
            .raw(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(ADMIN_TOKEN),
                Some(
                    serde_json::to_vec(&serde_json::json!({"email": email, "name": email}))
                        .unwrap(),
                ),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let (status, member) = self
            .raw(
                reqwest::Method::PUT,
                &format!("/api/v1/projects/{project}/members/{email}"),
                Some(ADMIN_TOKEN),
                Some(serde_json::to_vec(&serde_json::json!({"role": role})).unwrap()),
            )
            .await;
        assert!(status < 300, "{member}");
        let login = self
            .http
            .post(format!("{}/api/v1/session", self.base_url))
            .json(&serde_json::json!({"email": email, "password": created["password"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status().as_u16(), 200);
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let csrf = login.json::<Value>().await.unwrap()["csrfToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let create = || async {
            let response = self
                .http
                .post(format!("{}/api/v1/me/tokens", self.base_url))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&serde_json::json!({"name": "t"}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        };
        let mut tokens = Vec::new();
        for _ in 0..count {
            let (status, token) = create().await;
            assert_eq!(status, 201, "{token}");
            tokens.push(token["token"].as_str().unwrap().to_owned());
        }
        (tokens, create().await)
    }

    /// `GET path` with `token`, which must answer 200; its JSON body.
    pub async fn get_ok(&self, path: &str, token: &str) -> Value {
        let (status, body) = self
            .raw(reqwest::Method::GET, path, Some(token), None)
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A raw request, for bad input and header tests: returns status and JSON body.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, value)
    }
}

/// Asserts the error shape `{"error":{"code","message","field"}}`.
pub fn assert_error(body: &Value, code: &str, field: Option<&str>) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match field {
        Some(field) => assert_eq!(body["error"]["field"], field, "{body}"),
        None => assert!(
            body["error"].get("field").is_none() || body["error"]["field"].is_null(),
            "{body}"
        ),
    }
}

/// Runs git in `dir` with a fixed identity and `main` as the first branch; panics with
/// git's stderr when it fails; answers its stdout.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
