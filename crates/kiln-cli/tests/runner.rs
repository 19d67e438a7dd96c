//! Builds Kiln runs, end to end with real processes: a `kiln serve` process, `kiln agent`
//! processes, git repositories made in temp dirs and real build steps. Agents killed
//! mid-step, a server killed mid-step, priorities, labels, timeouts, cancel, the cache,
//! capped logs, branch polling and the isolating executors.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_client::protocol::{JobDto, RepoSettings, TriggerBuild, TriggeredBuild};
use kiln_client::{BuildQuery, Client};
use kiln_store::Engine;
use kiln_store::test_support::{POSTGRES_URL_VAR, TestDatabase};
use serde_json::Value;

mod common;

use common::*;

const PROJECT: &str = "app";

/// A server with one project whose repository is a fresh git repository, the clients
/// of the admin and of a project token (ingest + read), and an agent token.
struct Kiln {
    runtime: tokio::runtime::Runtime,
    workspace: Workspace,
    server: Option<Server>,
    server_flags: Vec<String>,
    admin: Client,
    user: Client,
    user_token: String,
    agent_token: String,
    repo: GitRepo,
}

impl Kiln {
    fn start(server_flags: &[&str]) -> Kiln {
        let workspace = Workspace::new();
        let server = Server::start(&workspace.data(), 0, server_flags);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let admin = Client::new(&server.url, Some(ADMIN.into()));
        let repo = GitRepo::new();
        runtime
            .block_on(admin.create_project(PROJECT, "App"))
            .unwrap();
        let settings = RepoSettings {
            repo: Some(repo.path().display().to_string()),
            default_branch: None,
            max_concurrency: None,
        };
        runtime
            .block_on(admin.set_repo(PROJECT, &settings))
            .unwrap();
        let user_token = runtime
            .block_on(admin.create_token(PROJECT, "user", &["ingest", "read"]))
            .unwrap()
            .token;
        let agent_token = runtime
            .block_on(admin.create_agent_token("agents"))
            .unwrap()
            .token;
        let user = Client::new(&server.url, Some(user_token.clone()));
        Kiln {
            runtime,
            workspace,
            server: Some(server),
            server_flags: server_flags.iter().map(|f| (*f).to_owned()).collect(),
            admin,
            user,
            user_token,
            agent_token,
            repo,
        }
    }

    fn url(&self) -> String {
        self.admin.base_url().to_owned()
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Starts `kiln agent` named `name`; `extra` adds flags.
    fn agent(&self, name: &str, extra: &[&str]) -> Agent {
        Agent::start(
            &self.workspace.dir.path().join("agents"),
            &self.url(),
            &self.agent_token,
            name,
            extra,
        )
    }

    /// Writes `.kiln.yml` (and other files) and commits them on the current branch.
    fn commit_pipeline(&self, pipeline: &str) -> String {
        self.repo.write(".kiln.yml", pipeline);
        self.repo.commit("pipeline")
    }

    fn trigger(&self, request: TriggerBuild) -> TriggeredBuild {
        self.block_on(self.user.trigger_build(PROJECT, &request))
            .unwrap_or_else(|error| panic!("trigger {request:?}: {error}"))
    }

    fn trigger_main(&self) -> TriggeredBuild {
        self.trigger(TriggerBuild::default())
    }

    fn jobs(&self, run_id: &str) -> Vec<JobDto> {
        self.block_on(self.user.build_jobs(PROJECT, run_id))
            .unwrap()
            .jobs
    }

    fn job(&self, run_id: &str, step: &str) -> JobDto {
        self.jobs(run_id)
            .into_iter()
            .find(|job| job.step == step)
            .unwrap_or_else(|| panic!("build {run_id} has no step {step}"))
    }

    fn status(&self, run_id: &str) -> String {
        self.block_on(self.user.get_build(run_id)).unwrap().status
    }

    /// The whole log of a job, page by page.
    fn log(&self, run_id: &str, step: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        loop {
            let page = self
                .block_on(self.user.job_log(PROJECT, run_id, step, bytes.len() as i64))
                .unwrap();
            if page.bytes.is_empty() {
                return bytes;
            }
            bytes.extend_from_slice(&page.bytes);
        }
    }

    fn log_text(&self, run_id: &str, step: &str) -> String {
        String::from_utf8_lossy(&self.log(run_id, step)).into_owned()
    }

    fn events(&self, run_id: &str) -> Vec<Value> {
        self.block_on(self.user.build_events(run_id, 0, None))
            .unwrap()
            .events
    }

    /// Waits until the build has ended and returns its status.
    fn wait_for_build(&self, run_id: &str, timeout: Duration) -> String {
        wait_until(
            || format!("build {run_id} to end; its jobs: {:#?}", self.jobs(run_id)),
            timeout,
            || {
                let status = self.status(run_id);
                ["success", "failed", "cancelled", "stale"]
                    .contains(&status.as_str())
                    .then_some(status)
            },
        )
    }

    /// Waits until the step's job satisfies `done` and returns it.
    fn wait_for_job(
        &self,
        run_id: &str,
        step: &str,
        timeout: Duration,
        done: impl Fn(&JobDto) -> bool,
    ) -> JobDto {
        wait_until(
            || {
                format!(
                    "step {step} of {run_id}; now: {:#?}",
                    self.job(run_id, step)
                )
            },
            timeout,
            || Some(self.job(run_id, step)).filter(&done),
        )
    }

    /// Waits until the step's output has a line equal to `line`.
    fn wait_for_output(&self, run_id: &str, step: &str, line: &str, timeout: Duration) {
        wait_until(
            || {
                format!(
                    "'{line}' in the log of {step}: {}",
                    self.log_text(run_id, step)
                )
            },
            timeout,
            || {
                output_lines(&self.log_text(run_id, step))
                    .contains(&line.to_owned())
                    .then_some(())
            },
        )
    }

    /// Kills the server with SIGKILL and starts it again on the same port and data.
    fn kill_server(&mut self) -> u16 {
        let server = self.server.take().expect("the server runs");
        let port = server.port();
        server.kill_hard();
        port
    }

    fn start_server_again(&mut self, port: u16) {
        let flags: Vec<&str> = self.server_flags.iter().map(String::as_str).collect();
        let server = Server::start(&self.workspace.data(), port, &flags);
        // New clients: the old ones' pooled connections went down with the old server.
        self.admin = Client::new(&server.url, Some(ADMIN.into()));
        self.user = Client::new(&server.url, Some(self.user_token.clone()));
        self.server = Some(server);
    }
}

fn wait_until<T>(
    what: impl Fn() -> String,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One step of a `.kiln.yml`: `run` lists `commands` (one line each, so the agent's
/// `$ command` echo is one line too); `extra` holds more keys, indented by four spaces.
fn step(name: &str, commands: &[&str], extra: &str) -> String {
    let mut yaml = format!("  - name: {name}\n    run:\n");
    for command in commands {
        yaml.push_str(&format!("      - '{}'\n", command.replace('\'', "''")));
    }
    yaml.push_str(extra);
    yaml
}

fn pipeline(steps: &[String]) -> String {
    format!("steps:\n{}", steps.concat())
}

/// Log lines are `<24-character timestamp> <4-character tag> <text>`.
const LOG_PREFIX: usize = 24 + 1 + 4 + 1;

/// The text of the lines the step's commands wrote (tags `out ` and `err `), without
/// the script's echo of each command (`$ echo x`).
fn output_lines(log: &str) -> Vec<String> {
    tagged_lines(log, &["out ", "err "])
        .into_iter()
        .filter(|line| !line.starts_with("$ "))
        .collect()
}

/// The agent's own lines (tag `kiln`).
fn kiln_lines(log: &str) -> Vec<String> {
    tagged_lines(log, &["kiln"])
}

fn tagged_lines(log: &str, tags: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|line| line.len() >= LOG_PREFIX && line.is_char_boundary(LOG_PREFIX))
        .filter(|line| tags.contains(&&line[25..29]))
        .map(|line| line[LOG_PREFIX..].to_owned())
        .collect()
}

/// Milliseconds since the epoch of the API's `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn millis(timestamp: &str) -> i64 {
    assert_eq!(timestamp.len(), 24, "unexpected timestamp {timestamp}");
    let number = |range: std::ops::Range<usize>| timestamp[range].parse::<i64>().unwrap();
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    ((days * 24 + number(11..13)) * 60 + number(14..16)) * 60_000
        + number(17..19) * 1000
        + number(20..23)
}

/// How long a job ran, from the API's `startedAt` and `finishedAt`.
fn duration_ms(job: &JobDto) -> i64 {
    millis(job.finished_at.as_deref().expect("finished"))
        - millis(job.started_at.as_deref().expect("started"))
}

fn is_terminal(job: &JobDto) -> bool {
    ["passed", "failed", "cancelled", "skipped"].contains(&job.state.as_str())
}

/// Kills, by process id, the step processes an agent killed with SIGKILL left behind:
/// each such step wrote its shell's pid (its process group) to `file`.
struct Orphans {
    file: PathBuf,
}

impl Drop for Orphans {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(&self.file).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// Whether a test that needs an executor's tool should run. Such tests are listed as
/// ignored where the tool was missing when they were built (see
/// `build-support/prerequisites.rs`); this catches a tool gone since: `false` (after one
/// `skipped:` line), unless `KILN_REQUIRE_EXECUTORS=1` demands it.
fn available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("KILN_REQUIRE_EXECUTORS").as_deref() == Ok("1") {
        panic!("{what} is missing but KILN_REQUIRE_EXECUTORS=1 requires it");
    }
    eprintln!("skipped: {what} is missing");
    false
}

#[test]
fn a_killed_agent_is_requeued_and_finished_by_another() {
    let kiln = Kiln::start(&["--job-lease", "3"]);
    let orphans = Orphans {
        file: kiln.workspace.dir.path().join("orphan-pids"),
    };
    // Attempt 1 records its process group and sleeps "forever"; later attempts pass.
    let first_attempt_hangs = format!(
        "if [ \"$KILN_ATTEMPT\" = 1 ]; then echo $$ >> '{}'; exec sleep 600; fi",
        orphans.file.display()
    );
    let commands = [
        "echo \"attempt $KILN_ATTEMPT on $KILN_AGENT_NAME\"",
        first_attempt_hangs.as_str(),
        "echo done",
    ];
    let retried = kiln.commit_pipeline(&pipeline(&[step(
        "survive",
        &commands,
        "    retry:\n      automatic:\n        on: [agent_lost]\n        limit: 2\n",
    )]));
    let not_retried = kiln.commit_pipeline(&pipeline(&[step("fragile", &commands, "")]));
    let with_retry = kiln.trigger(TriggerBuild {
        commit: Some(retried),
        ..TriggerBuild::default()
    });
    let without_retry = kiln.trigger(TriggerBuild {
        commit: Some(not_retried),
        ..TriggerBuild::default()
    });

    let mut agent_a = kiln.agent("agent-a", &["--concurrency", "2"]);
    let timeout = Duration::from_secs(15);
    kiln.wait_for_output(
        &with_retry.run_id,
        "survive",
        "attempt 1 on agent-a",
        timeout,
    );
    kiln.wait_for_output(
        &without_retry.run_id,
        "fragile",
        "attempt 1 on agent-a",
        timeout,
    );
    agent_a.kill_hard();
    let killed_at = Instant::now();
    let _agent_b = kiln.agent("agent-b", &[]);

    // Without a retry rule the job fails once its lease (3 s) has expired.
    let fragile = kiln.wait_for_job(&without_retry.run_id, "fragile", timeout, is_terminal);
    let lost_after = killed_at.elapsed();
    assert_eq!(fragile.state, "failed");
    assert_eq!(fragile.reason.as_deref(), Some("agent_lost"));
    assert_eq!(fragile.attempt, 1);
    assert!(
        lost_after < Duration::from_secs(3 + 3),
        "the lost job failed {lost_after:?} after the kill; the lease is 3 s"
    );
    assert_eq!(
        kiln.wait_for_build(&without_retry.run_id, timeout),
        "failed"
    );

    // With one, it runs again on the agent still alive.
    assert_eq!(kiln.wait_for_build(&with_retry.run_id, timeout), "success");
    let survive = kiln.job(&with_retry.run_id, "survive");
    assert_eq!(survive.state, "passed");
    assert_eq!(survive.attempt, 2);
    assert_eq!(survive.agent.as_deref(), Some("agent-b"));
    assert_eq!(survive.exit_code, Some(0));
    let lines = output_lines(&kiln.log_text(&with_retry.run_id, "survive"));
    assert_eq!(
        lines,
        ["attempt 1 on agent-a", "attempt 2 on agent-b", "done"],
        "both attempts' output, in order"
    );

    let stage_failures = |run_id: &str| -> Vec<Value> {
        kiln.events(run_id)
            .into_iter()
            .filter(|event| event["event"] == "stage_failed")
            .map(|event| event["data"].clone())
            .collect()
    };
    let failures = stage_failures(&with_retry.run_id);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["reason"], "agent_lost");
    assert_eq!(failures[0]["attempt"], 1);
    let failures = stage_failures(&without_retry.run_id);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["reason"], "agent_lost");
    drop(orphans);
}

#[test]
fn a_kill_9_during_triggers_leaves_no_build_without_jobs_on_sqlite() {
    kill_9_during_triggers(&[]);
}

#[test]
#[cfg_attr(
    not(kiln_postgres_tests),
    ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
)]
fn a_kill_9_during_triggers_leaves_no_build_without_jobs_on_postgres() {
    if std::env::var(POSTGRES_URL_VAR).is_err() {
        eprintln!("skipped: PostgreSQL ({POSTGRES_URL_VAR} is not set)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let database = runtime.block_on(TestDatabase::create(Engine::Postgres));
    kill_9_during_triggers(&["--database-url", &database.url]);
}

/// Four clients trigger builds as fast as they can while the server is killed with
/// SIGKILL; after a restart on the same database every build has its jobs (a trigger is
/// one transaction: a crash cannot leave a queued build that nothing runs).
fn kill_9_during_triggers(flags: &[&str]) {
    let mut kiln = Kiln::start(flags);
    kiln.commit_pipeline(&pipeline(&[
        step("one", &["echo 1"], ""),
        step("two", &["echo 2"], "    depends_on: [one]\n"),
    ]));
    let url = kiln.url();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, token) = (url.clone(), kiln.user_token.clone());
            let answered = answered.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = Client::new(&url, Some(token));
                // Until the server is gone (a bounded loop: the kill comes within 30 s).
                for _ in 0..10_000 {
                    match runtime.block_on(client.trigger_build(PROJECT, &TriggerBuild::default()))
                    {
                        Ok(triggered) => {
                            assert_eq!(triggered.jobs.len(), 2, "{triggered:?}");
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Kill once some triggers were answered, so the kill lands inside the burst.
    let started = Instant::now();
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 10
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let port = kiln.kill_server();
    for client in clients {
        client.join().unwrap();
    }
    let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(answered >= 10, "only {answered} triggers were answered");
    kiln.start_server_again(port);

    let mut builds = Vec::new();
    let mut before = None;
    loop {
        let page = kiln
            .block_on(kiln.user.list_builds(&BuildQuery {
                project: Some(PROJECT.into()),
                limit: Some(100),
                before,
                ..BuildQuery::default()
            }))
            .unwrap();
        builds.extend(page.builds);
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert!(
        builds.len() >= answered,
        "{} builds stored, {answered} answered",
        builds.len()
    );
    for build in &builds {
        let jobs = kiln.jobs(&build.run_id);
        assert_eq!(
            jobs.len(),
            2,
            "build #{} ({:?}) has {} jobs after the restart",
            build.number,
            build.status,
            jobs.len()
        );
    }
}

#[test]
fn a_server_restart_does_not_kill_running_jobs() {
    let mut kiln = Kiln::start(&[]);
    kiln.commit_pipeline(&pipeline(&[step(
        "slow",
        &[
            "for i in 1 2 3 4 5; do echo \"tick $i\"; sleep 1; done",
            "echo \"last line of the step\"",
        ],
        "",
    )]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("steady", &[]);
    kiln.wait_for_output(&build.run_id, "slow", "tick 1", Duration::from_secs(15));

    let port = kiln.kill_server();
    // The step goes on printing while no server answers.
    std::thread::sleep(Duration::from_millis(1500));
    kiln.start_server_again(port);

    assert_eq!(
        kiln.wait_for_build(&build.run_id, Duration::from_secs(25)),
        "success"
    );
    let slow = kiln.job(&build.run_id, "slow");
    assert_eq!(slow.state, "passed");
    assert_eq!(slow.attempt, 1, "the job was not run again");
    assert_eq!(slow.agent.as_deref(), Some("steady"));
    let lines = output_lines(&kiln.log_text(&build.run_id, "slow"));
    assert_eq!(
        lines,
        [
            "tick 1",
            "tick 2",
            "tick 3",
            "tick 4",
            "tick 5",
            "last line of the step"
        ],
        "every line once, in order"
    );
}

#[test]
fn priorities_order_the_queue() {
    let kiln = Kiln::start(&[]);
    kiln.commit_pipeline("steps:\n  - name: only\n    run: echo \"build $KILN_BUILD_NUMBER\"\n");
    let builds: Vec<TriggeredBuild> = [9, 1, 5, 1]
        .into_iter()
        .map(|priority| {
            kiln.trigger(TriggerBuild {
                priority: Some(priority),
                ..TriggerBuild::default()
            })
        })
        .collect();

    let queue = kiln.block_on(kiln.user.queue()).unwrap().jobs;
    let waiting: Vec<(&str, i64)> = queue
        .iter()
        .map(|job| (job.run_id.as_str(), job.priority))
        .collect();
    let expected: Vec<(&str, i64)> = builds
        .iter()
        .map(|build| (build.run_id.as_str(), build.priority))
        .collect();
    assert_eq!(waiting, expected, "oldest first");
    assert_eq!(
        queue.iter().map(|job| job.priority).collect::<Vec<_>>(),
        [9, 1, 5, 1]
    );
    for job in &queue {
        assert_eq!(job.state, "queued");
        let why = job.waiting_for.as_deref().unwrap_or_default();
        assert!(why.starts_with("no matching agent"), "{why}");
    }

    let _agent = kiln.agent("solo", &["--concurrency", "1"]);
    for build in &builds {
        assert_eq!(
            kiln.wait_for_build(&build.run_id, Duration::from_secs(20)),
            "success"
        );
    }
    let mut started: Vec<(i64, String)> = builds
        .iter()
        .map(|build| {
            let job = kiln.job(&build.run_id, "only");
            (millis(job.started_at.as_deref().unwrap()), job.run_id)
        })
        .collect();
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, run_id)| run_id.as_str()).collect();
    assert_eq!(
        order,
        [
            builds[1].run_id.as_str(),
            builds[3].run_id.as_str(),
            builds[2].run_id.as_str(),
            builds[0].run_id.as_str()
        ],
        "p1, p1 (FIFO), p5, p9"
    );
}

#[test]
fn labels_route_steps_to_matching_agents() {
    let kiln = Kiln::start(&[]);
    kiln.commit_pipeline(
        "steps:\n  - name: render\n    run: echo rendering\n    agents: [gpu]\n  - name: lint\n    run: echo linting\n",
    );
    let build = kiln.trigger_main();
    let _plain = kiln.agent("plain", &["--labels", "linux"]);
    let timeout = Duration::from_secs(15);
    let lint = kiln.wait_for_job(&build.run_id, "lint", timeout, is_terminal);
    assert_eq!(lint.state, "passed");
    assert_eq!(lint.agent.as_deref(), Some("plain"));

    let queue = kiln.block_on(kiln.user.queue()).unwrap().jobs;
    let render = queue
        .iter()
        .find(|job| job.step == "render")
        .expect("render waits in the queue");
    assert_eq!(render.state, "queued");
    assert_eq!(render.labels, ["gpu"]);
    assert_eq!(
        render.waiting_for.as_deref(),
        Some("no matching agent: no connected agent has labels gpu")
    );

    let _gpu = kiln.agent("gpu", &["--labels", "linux,gpu"]);
    assert_eq!(kiln.wait_for_build(&build.run_id, timeout), "success");
    let render = kiln.job(&build.run_id, "render");
    assert_eq!(render.state, "passed");
    assert_eq!(render.agent.as_deref(), Some("gpu"));

    let mut agents: Vec<(String, Vec<String>, String)> = kiln
        .block_on(kiln.user.agents())
        .unwrap()
        .agents
        .into_iter()
        .map(|agent| (agent.name, agent.labels, agent.health))
        .collect();
    agents.sort();
    assert_eq!(
        agents,
        [
            (
                "gpu".to_owned(),
                vec!["linux".to_owned(), "gpu".to_owned()],
                "connected".to_owned()
            ),
            (
                "plain".to_owned(),
                vec!["linux".to_owned()],
                "connected".to_owned()
            ),
        ]
    );
}

/// `test_reports:` globs: the agent uploads the JUnit reports a failing step wrote (and
/// only those matching), and the build's test results show them.
#[test]
fn test_reports_of_a_step_become_the_build_test_results() {
    let kiln = Kiln::start(&[]);
    let report = |name: &str, failed: bool| {
        let failure = if failed {
            "<failure message=\"nope\">trace</failure>"
        } else {
            ""
        };
        format!(
            "<testsuite name=\"unit\"><testcase classname=\"calc\" name=\"{name}\" time=\"0.5\">{failure}</testcase></testsuite>"
        )
    };
    let commands = [
        "mkdir -p reports/unit reports/other".to_owned(),
        format!(
            "printf '%s' '{}' > reports/unit/junit-a.xml",
            report("adds", false)
        ),
        format!(
            "printf '%s' '{}' > reports/unit/junit-b.xml",
            report("divides", true)
        ),
        format!(
            "printf '%s' '{}' > reports/other/ignored.xml",
            report("ignored", true)
        ),
        "exit 1".to_owned(),
    ];
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    kiln.commit_pipeline(&pipeline(&[step(
        "test",
        &commands,
        "    test_reports:\n      - '**/junit-*.xml'\n",
    )]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("tester", &[]);
    assert_eq!(
        kiln.wait_for_build(&build.run_id, Duration::from_secs(30)),
        "failed"
    );
    let tests = kiln.block_on(kiln.user.build_tests(&build.run_id)).unwrap();
    assert_eq!(
        (
            tests.summary.total,
            tests.summary.passed,
            tests.summary.failed
        ),
        (2, 1, 1)
    );
    assert_eq!(tests.tests[0].key, "unit › calc › divides");
    assert_eq!(tests.tests[0].message.as_deref(), Some("nope"));
    let log = kiln.log_text(&build.run_id, "test");
    assert!(
        kiln_lines(&log).iter().any(|line| line
            .contains("test report reports/unit/junit-b.xml: 1 tests, 0 passed, 1 failed")),
        "{log}"
    );
}

#[test]
fn a_step_timeout_fails_it_with_reason_timeout() {
    let kiln = Kiln::start(&[]);
    kiln.commit_pipeline(&pipeline(&[step(
        "hang",
        &["echo start", "sleep 60"],
        "    timeout: 2s\n",
    )]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("timer", &["--grace-secs", "1"]);
    let hang = kiln.wait_for_job(&build.run_id, "hang", Duration::from_secs(15), is_terminal);
    assert_eq!(hang.state, "failed");
    assert_eq!(hang.reason.as_deref(), Some("timeout"));
    let ran = duration_ms(&hang);
    eprintln!("timed-out job ran {ran} ms");
    assert!(
        (2000..2000 + 1000 + 1500).contains(&ran),
        "ran {ran} ms: 2 s, plus at most the 1 s grace and the checkout"
    );
    assert_eq!(
        kiln.wait_for_build(&build.run_id, Duration::from_secs(5)),
        "failed"
    );
    let log = kiln.log_text(&build.run_id, "hang");
    assert_eq!(output_lines(&log), ["start"]);
    assert!(
        kiln_lines(&log)
            .iter()
            .any(|line| line.starts_with("step failed: timed out after 2s")),
        "{log}"
    );
}

#[test]
fn cancel_stops_the_step_within_two_seconds() {
    let kiln = Kiln::start(&[]);
    kiln.commit_pipeline(&pipeline(&[step(
        "loop",
        &[
            "trap 'echo got TERM; exit 143' TERM",
            "echo waiting",
            "while true; do sleep 0.1; done",
        ],
        "",
    )]));
    let build = kiln.trigger_main();
    // The default 10 s grace: only SIGTERM can end the step within 2 s.
    let _agent = kiln.agent("stopper", &[]);
    kiln.wait_for_output(&build.run_id, "loop", "waiting", Duration::from_secs(15));

    let cancelled_at = Instant::now();
    let answer = kiln
        .block_on(kiln.user.cancel_build(PROJECT, &build.run_id))
        .unwrap();
    assert_eq!(answer.status, "cancelled");
    assert_eq!(answer.stopping_jobs, 1);
    assert_eq!(kiln.status(&build.run_id), "cancelled");

    let job = kiln.wait_for_job(&build.run_id, "loop", Duration::from_secs(5), is_terminal);
    let stopped_after = cancelled_at.elapsed();
    eprintln!("cancelled job ended {stopped_after:?} after the cancel");
    assert_eq!(job.state, "cancelled");
    assert!(
        stopped_after < Duration::from_secs(2),
        "the step ended {stopped_after:?} after the cancel"
    );
    let lines = output_lines(&kiln.log_text(&build.run_id, "loop"));
    // The shell may also report, on standard error, the `sleep` that SIGTERM ended.
    let lines: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|line| *line != "Terminated")
        .collect();
    assert_eq!(lines, ["waiting", "got TERM"]);
    assert!(
        kiln.events(&build.run_id)
            .iter()
            .any(|event| event["event"] == "build_cancelled")
    );
    assert_eq!(kiln.status(&build.run_id), "cancelled");
}

#[test]
fn the_second_build_restores_the_cache_and_is_faster() {
    let kiln = Kiln::start(&[]);
    kiln.repo.write("deps.lock", "left-pad 1.3.0\n");
    kiln.commit_pipeline(&pipeline(&[step(
        "install",
        &[
            "if [ -d deps ]; then echo 'deps present'; else echo 'installing deps'; sleep 3; mkdir deps; echo left-pad > deps/left-pad; fi",
            "cat deps/left-pad",
        ],
        "    cache:\n      key_files: deps.lock\n      paths: deps\n",
    )]));
    let _agent = kiln.agent("cacher", &[]);
    let timeout = Duration::from_secs(20);

    let first = kiln.trigger_main();
    assert_eq!(kiln.wait_for_build(&first.run_id, timeout), "success");
    let second = kiln.trigger_main();
    assert_eq!(kiln.wait_for_build(&second.run_id, timeout), "success");

    let first_log = kiln.log_text(&first.run_id, "install");
    let second_log = kiln.log_text(&second.run_id, "install");
    assert_eq!(output_lines(&first_log), ["installing deps", "left-pad"]);
    assert_eq!(output_lines(&second_log), ["deps present", "left-pad"]);
    let said = |log: &str, prefix: &str| kiln_lines(log).iter().any(|l| l.starts_with(prefix));
    assert!(said(&first_log, "cache miss"), "{first_log}");
    assert!(said(&first_log, "cache saved"), "{first_log}");
    assert!(said(&second_log, "cache hit"), "{second_log}");

    let first_ms = duration_ms(&kiln.job(&first.run_id, "install"));
    let second_ms = duration_ms(&kiln.job(&second.run_id, "install"));
    eprintln!("cache: first build's install {first_ms} ms, second (cache hit) {second_ms} ms");
    assert!(
        second_ms < first_ms - 2000,
        "the second build took {second_ms} ms, the first {first_ms} ms"
    );
}

#[test]
fn logs_are_capped_and_binary_output_is_kept() {
    let kiln = Kiln::start(&["--job-log-cap-mib", "1"]);
    kiln.commit_pipeline(&pipeline(&[step(
        "noisy",
        &["head -c 5000000 /dev/urandom", "echo", "echo after"],
        "",
    )]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("noisy", &[]);
    assert_eq!(
        kiln.wait_for_build(&build.run_id, Duration::from_secs(25)),
        "success"
    );
    let job = kiln.job(&build.run_id, "noisy");
    assert_eq!(job.state, "passed");

    let log = kiln.log(&build.run_id, "noisy");
    assert_eq!(log.len() as i64, job.log_size);
    assert!(
        log.len() <= 1024 * 1024 + 4096,
        "the log is {} bytes",
        log.len()
    );
    assert!(log.len() > 1000 * 1000, "the log is {} bytes", log.len());
    assert!(
        String::from_utf8(log.clone()).is_err(),
        "the random bytes are stored as they came, not replaced"
    );
    let text = String::from_utf8_lossy(&log);
    let last = text.trim_end_matches('\n').rsplit('\n').next().unwrap();
    assert!(last.contains("log truncated"), "last line: {last}");
    assert!(!output_lines(&text).contains(&"after".to_owned()));

    let health = kiln.block_on(kiln.admin.healthz()).unwrap();
    assert_eq!(health.status, "ok", "{health:?}");
    assert_eq!(kiln.status(&build.run_id), "success");
}

#[test]
fn auto_build_branches_are_polled() {
    let kiln = Kiln::start(&["--branch-poll-interval", "1"]);
    kiln.commit_pipeline("steps:\n  - name: only\n    run: echo hi\n");
    let branch = kiln
        .block_on(kiln.admin.add_branch(PROJECT, "feature", Some(2), true))
        .unwrap();
    assert!(branch.auto_build);

    let feature_builds = || {
        let query = BuildQuery {
            project: Some(PROJECT.into()),
            branch: Some("feature".into()),
            ..BuildQuery::default()
        };
        kiln.block_on(kiln.user.list_builds(&query)).unwrap().builds
    };
    let timeout = Duration::from_secs(10);
    kiln.repo.git(&["checkout", "--quiet", "-b", "feature"]);
    kiln.repo.write("feature.txt", "one\n");
    let first_commit = kiln.repo.commit("feature one");
    let builds = wait_until(
        || format!("a build of feature: {:?}", feature_builds()),
        timeout,
        || Some(feature_builds()).filter(|builds| !builds.is_empty()),
    );
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0].branch.as_deref(), Some("feature"));
    assert_eq!(builds[0].commit.as_deref(), Some(first_commit.as_str()));
    let jobs = kiln.jobs(&builds[0].run_id);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].priority, 2, "the branch's priority");

    kiln.repo.write("feature.txt", "two\n");
    let second_commit = kiln.repo.commit("feature two");
    let builds = wait_until(
        || format!("a second build of feature: {:?}", feature_builds()),
        timeout,
        || Some(feature_builds()).filter(|builds| builds.len() >= 2),
    );
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0].commit.as_deref(), Some(second_commit.as_str()));

    // Three polls without a change queue nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(feature_builds().len(), 2);
    let all = kiln
        .block_on(kiln.user.list_builds(&BuildQuery {
            project: Some(PROJECT.into()),
            ..BuildQuery::default()
        }))
        .unwrap()
        .builds;
    assert_eq!(all.len(), 2, "main is not polled");
}

/// A listener on 127.0.0.1 that counts the connections made to it.
fn probe_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn connections(listener: &TcpListener) -> usize {
    let mut count = 0;
    while listener.accept().is_ok() {
        count += 1;
    }
    count
}

#[test]
#[cfg_attr(
    not(kiln_bwrap_tests),
    ignore = "bubblewrap skipped: apt-get install bubblewrap (eval \"$(bash .ci/executors.sh)\")"
)]
fn the_sandbox_executor_refuses_network() {
    let has_bwrap = Command::new("sh")
        .args(["-c", "command -v bwrap"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available("bwrap (bubblewrap)", has_bwrap) {
        return;
    }
    let kiln = Kiln::start(&[]);
    let (listener, port) = probe_listener();
    // `$((1+1))` makes the output differ from the agent's echo of the command.
    let probe =
        format!("bash -c 'echo probe > /dev/tcp/127.0.0.1/{port}' && echo \"reached $((1+1))\"");
    kiln.commit_pipeline(&pipeline(&[
        step("offline", &[&probe], ""),
        step("online", &[&probe], "    network: true\n"),
    ]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("boxed", &["--executor", "sandbox", "--concurrency", "2"]);
    assert_eq!(
        kiln.wait_for_build(&build.run_id, Duration::from_secs(20)),
        "failed"
    );

    let offline = kiln.job(&build.run_id, "offline");
    let offline_log = kiln.log_text(&build.run_id, "offline");
    assert_eq!(offline.state, "failed", "{offline_log}");
    assert_eq!(offline.reason.as_deref(), Some("exit_status"));
    assert!(!output_lines(&offline_log).contains(&"reached 2".to_owned()));

    let online = kiln.job(&build.run_id, "online");
    let online_log = kiln.log_text(&build.run_id, "online");
    assert_eq!(online.state, "passed", "{online_log}");
    assert_eq!(output_lines(&online_log), ["reached 2"]);
    assert_eq!(connections(&listener), 1, "only the online step connected");
}

#[test]
#[cfg_attr(
    not(kiln_docker_tests),
    ignore = "Docker API skipped: set KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE (eval \"$(bash .ci/executors.sh)\")"
)]
fn the_container_executor_runs_steps_through_the_docker_api() {
    let socket = std::env::var("KILN_TEST_DOCKER_SOCKET").ok();
    let image = std::env::var("KILN_TEST_DOCKER_IMAGE").ok();
    let (Some(socket), Some(image)) = (socket, image) else {
        available(
            "a Docker API (KILN_TEST_DOCKER_SOCKET and KILN_TEST_DOCKER_IMAGE)",
            false,
        );
        return;
    };
    let kiln = Kiln::start(&[]);
    kiln.repo.write("README", "read from the checkout\n");
    kiln.commit_pipeline(&pipeline(&[step(
        "boxed",
        &["echo in-container", "cat README"],
        &format!("    image: {image}\n"),
    )]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent(
        "docker",
        &["--executor", "container", "--docker-socket", &socket],
    );
    let status = kiln.wait_for_build(&build.run_id, Duration::from_secs(30));
    let log = kiln.log_text(&build.run_id, "boxed");
    assert_eq!(status, "success", "{log}");
    assert_eq!(
        output_lines(&log),
        ["in-container", "read from the checkout"]
    );
}

/// How long a job waited in the queue, from the API's `queuedAt` and `startedAt`.
fn queue_wait_ms(job: &JobDto) -> i64 {
    millis(job.started_at.as_deref().expect("started"))
        - millis(job.queued_at.as_deref().expect("queued"))
}

/// Agent recommendation (issue 17): while two agents wait for work, a step goes to the
/// one that runs it much faster, even when the slower one is woken first; when the fast
/// one is busy the slow one takes the step at once (nothing is held for a busy agent);
/// the queue API names the recommended agent of a waiting job, and why.
#[test]
fn the_faster_agent_gets_the_step_unless_it_is_busy() {
    let kiln = Kiln::start(&[]);
    kiln.repo.write("deps.lock", "left-pad 1.3.0\n");
    // `hog` (only the agent labelled fastlane may run it) keeps the fast agent busy.
    let hog = kiln.commit_pipeline(&pipeline(&[step(
        "hog",
        &["sleep 5"],
        "    agents: [fastlane]\n",
    )]));
    let work = kiln.commit_pipeline(&pipeline(&[step(
        "work",
        &[
            "if [ \"$KILN_AGENT_NAME\" = slow ]; then sleep 3; fi",
            "mkdir -p deps",
            "echo done",
        ],
        "    cache:\n      key_files: deps.lock\n      paths: deps\n",
    )]));
    let at = |commit: &str| TriggerBuild {
        commit: Some(commit.to_owned()),
        ..TriggerBuild::default()
    };
    let timeout = Duration::from_secs(30);
    let run = |commit: &str| {
        let build = kiln.trigger(at(commit));
        assert_eq!(kiln.wait_for_build(&build.run_id, timeout), "success");
        kiln.job(&build.run_id, "work")
    };

    // History: the slow agent alone runs the step once (3 s), then the fast one (≈ 0 s).
    let slow = kiln.agent("slow", &["--labels", "linux"]);
    assert_eq!(run(&work).agent.as_deref(), Some("slow"));
    drop(slow);
    let fast = kiln.agent("fast", &["--labels", "linux,fastlane"]);
    assert_eq!(run(&work).agent.as_deref(), Some("fast"));
    // Both wait for work now; the slow one, started last, is an older waiter after
    // each build (the fast one re-polls when its job ends), so the plain order would
    // hand it jobs.
    let _slow = kiln.agent("slow", &["--labels", "linux"]);
    wait_until(
        || "both agents connected".to_owned(),
        timeout,
        || {
            let agents = kiln.block_on(kiln.user.agents()).unwrap().agents;
            (agents.iter().filter(|a| a.health == "connected").count() == 2).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..4 {
        let job = run(&work);
        assert_eq!(
            job.agent.as_deref(),
            Some("fast"),
            "round {round}: the step went to the slow agent: {job:#?}"
        );
        assert!(
            queue_wait_ms(&job) < 2_000,
            "round {round}: waited {} ms",
            queue_wait_ms(&job)
        );
    }

    // The fast agent busy: the slow one takes the step at once.
    let hogging = kiln.trigger(at(&hog));
    kiln.wait_for_job(&hogging.run_id, "hog", timeout, |job| {
        job.state == "running"
    });
    let waiting_work = kiln.trigger(at(&work));
    let second_hog = kiln.trigger(at(&hog));
    let queued_hog = wait_until(
        || "the second hog in the queue".to_owned(),
        timeout,
        || {
            kiln.block_on(kiln.user.queue())
                .unwrap()
                .jobs
                .into_iter()
                .find(|job| job.run_id == second_hog.run_id && job.state == "queued")
        },
    );
    assert_eq!(queued_hog.recommended_agent.as_deref(), Some("fast"));
    let reason = queued_hog.recommendation.unwrap_or_default();
    assert!(
        reason.starts_with("fast: expected to finish in ")
            && reason.contains("busy (1 of 1 slots)"),
        "{reason}"
    );
    let job = kiln.wait_for_job(&waiting_work.run_id, "work", timeout, is_terminal);
    assert_eq!(job.state, "passed");
    assert_eq!(job.agent.as_deref(), Some("slow"), "{job:#?}");
    assert!(
        queue_wait_ms(&job) < 1_500,
        "held {} ms for a busy agent",
        queue_wait_ms(&job)
    );
    drop(fast);
}

/// `artifacts:` passed between steps, as a new user writes them: `install` makes
/// `node_modules`, `build` (depends on it) uses it and makes `dist`, `package` (depends on
/// build, so transitively on install) sees both; a step with `needs_artifacts: false`
/// gets none. The manifest's digests are those `sha256sum`, `md5sum` and `sha512sum` give
/// for the same bytes, and the files download byte for byte.
#[test]
fn artifacts_pass_between_steps_and_match_their_manifest() {
    let kiln = Kiln::start(&[]);
    kiln.commit_pipeline(&pipeline(&[
        step(
            "install",
            &[
                "mkdir -p node_modules/left-pad/bin",
                "printf 'module.exports = 1;\\n' > node_modules/left-pad/index.js",
                "printf '#!/bin/sh\\necho padded\\n' > node_modules/left-pad/bin/pad",
                "chmod 755 node_modules/left-pad/bin/pad",
            ],
            "    artifacts: [node_modules]\n",
        ),
        step(
            "build",
            &[
                "test -f node_modules/left-pad/index.js",
                "mkdir -p dist",
                "node_modules/left-pad/bin/pad > dist/app.txt",
                "head -c 300000 /dev/urandom > dist/blob.bin",
            ],
            "    depends_on: [install]\n    artifacts: ['dist/*.txt', 'dist/*.bin']\n",
        ),
        step(
            "package",
            &[
                "test -x node_modules/left-pad/bin/pad",
                "cat dist/app.txt",
                "sha256sum dist/blob.bin",
            ],
            "    depends_on: [build]\n",
        ),
        step(
            "isolated",
            &["test ! -e node_modules", "test ! -e dist"],
            "    depends_on: [build]\n    needs_artifacts: false\n    artifacts: [nothing-here]\n",
        ),
    ]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("builder", &[]);
    let status = kiln.wait_for_build(&build.run_id, Duration::from_secs(60));
    let log = kiln.log_text(&build.run_id, "package");
    assert_eq!(status, "success", "{log}");
    assert!(
        output_lines(&log).iter().any(|line| line == "padded"),
        "{log}"
    );
    assert!(
        kiln_lines(&log)
            .iter()
            .any(|line| line.contains("artifacts of build, install: 4 files")),
        "{log}"
    );
    let isolated = kiln.log_text(&build.run_id, "isolated");
    assert!(
        kiln_lines(&isolated)
            .iter()
            .any(|line| line.contains("warning: no file matched the artifacts globs nothing-here")),
        "{isolated}"
    );
    // MD5 and SHA-512 follow the upload within moments (the digester).
    let manifest = wait_until(
        || "the artifacts' MD5 and SHA-512".into(),
        Duration::from_secs(20),
        || {
            let manifest = kiln
                .block_on(kiln.user.artifact_manifest(&build.run_id))
                .unwrap();
            manifest
                .files
                .iter()
                .all(|f| f.md5.is_some() && f.sha512.is_some())
                .then_some(manifest)
        },
    );
    let paths: Vec<(&str, Option<&str>, u32)> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.step.as_deref(), f.mode))
        .collect();
    assert_eq!(
        paths,
        [
            ("dist/app.txt", Some("build"), 0o644),
            ("dist/blob.bin", Some("build"), 0o644),
            ("node_modules/left-pad/bin/pad", Some("install"), 0o755),
            ("node_modules/left-pad/index.js", Some("install"), 0o644),
        ]
    );
    // The bytes downloaded, and their digests as the standard tools compute them.
    let blob = manifest
        .files
        .iter()
        .find(|f| f.path == "dist/blob.bin")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob.bin");
    let written = kiln
        .block_on(kiln.user.download_artifact(
            &build.run_id,
            &blob.path,
            &local,
            Some(&blob.sha256),
        ))
        .unwrap();
    assert_eq!(written, 300_000);
    for (tool, expected) in [
        ("sha256sum", &blob.sha256),
        ("md5sum", blob.md5.as_ref().unwrap()),
        ("sha512sum", blob.sha512.as_ref().unwrap()),
    ] {
        let output = Command::new(tool).arg(&local).output().unwrap();
        let digest = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            digest.split_whitespace().next(),
            Some(expected.as_str()),
            "{tool}"
        );
    }
    let package_log = output_lines(&log).join("\n");
    assert!(
        package_log.contains(&blob.sha256),
        "the step saw the same bytes: {log}"
    );
    let verified = kiln
        .block_on(kiln.user.verify_artifacts(&build.run_id))
        .unwrap();
    assert!(verified.ok && verified.checked == 4, "{verified:?}");
}

/// A step whose `artifacts:` match nothing fails with `artifacts_required: true`.
#[test]
fn required_artifacts_that_are_missing_fail_the_step() {
    let kiln = Kiln::start(&[]);
    kiln.commit_pipeline(&pipeline(&[step(
        "build",
        &["echo built"],
        "    artifacts: [dist]\n    artifacts_required: true\n",
    )]));
    let build = kiln.trigger_main();
    let _agent = kiln.agent("builder", &[]);
    assert_eq!(
        kiln.wait_for_build(&build.run_id, Duration::from_secs(30)),
        "failed"
    );
    let jobs = kiln
        .block_on(kiln.user.build_jobs(PROJECT, &build.run_id))
        .unwrap();
    assert_eq!(
        jobs.jobs[0].reason.as_deref(),
        Some("artifacts"),
        "{jobs:?}"
    );
}

/// Rebuild to verify, end to end (one agent, so the rebuild is not held back for another):
/// a repository whose build writes the same bytes every time is reproducible (`kiln compare` exits 0); one that also writes the time
/// (`date +%s%N`) is not (`kiln compare` exits 1 and names the file that differs).
#[test]
fn a_reproducible_and_a_non_reproducible_repository_are_told_apart() {
    let kiln = Kiln::start(&[]);
    let _agent = kiln.agent("builder", &[]);
    let build_and_rebuild = |commands: &[&str]| {
        kiln.commit_pipeline(&pipeline(&[step(
            "build",
            commands,
            "    artifacts: [dist]\n",
        )]));
        let first = kiln.trigger_main();
        assert_eq!(
            kiln.wait_for_build(&first.run_id, Duration::from_secs(60)),
            "success"
        );
        let requested = kiln
            .block_on(kiln.user.rebuild_to_verify(&first.run_id))
            .unwrap();
        let rebuild = requested.rebuild_run_id.clone().unwrap();
        assert!(requested.comparison.is_none());
        assert_eq!(
            kiln.wait_for_build(&rebuild, Duration::from_secs(60)),
            "success"
        );
        // One agent: nothing is held back for another (there is none).
        let waited = queue_wait_ms(&kiln.job(&rebuild, "build"));
        assert!(
            waited < kiln_store::AVOIDED_AGENT_HOLD_MS,
            "a fleet of one rebuilds at once: waited {waited} ms"
        );
        let verification = kiln
            .block_on(kiln.user.verification(&first.run_id))
            .unwrap();
        assert_eq!(
            verification.rebuild_run_id.as_deref(),
            Some(rebuild.as_str())
        );
        assert_eq!(verification.rebuild_status.as_deref(), Some("success"));
        let comparison = verification.comparison.expect("compared once ended");
        let report = kiln.block_on(kiln.user.build_report(&rebuild)).unwrap();
        assert_eq!(report.trigger.cause, "verify");
        assert_eq!(
            report.trigger.retry_of.as_deref(),
            Some(first.run_id.as_str())
        );
        (first.run_id, rebuild, comparison)
    };

    let (a, b, same) = build_and_rebuild(&["mkdir -p dist", "printf 'hello\\n' > dist/app.txt"]);
    assert!(same.reproducible, "{same:?}");
    assert_eq!(same.identical, 1);
    let compared = output(
        kiln.workspace
            .kiln(&kiln.url(), &kiln.user_token)
            .args(["compare", &a, &b]),
    );
    assert_eq!(compared.status.code(), Some(0), "{}", stderr(&compared));
    assert!(
        stderr(&compared).contains(": reproducible"),
        "{}",
        stderr(&compared)
    );

    let (c, d, different) = build_and_rebuild(&[
        "mkdir -p dist",
        "printf 'hello\\n' > dist/app.txt",
        "date +%s%N > dist/stamp.txt",
    ]);
    assert!(!different.reproducible, "{different:?}");
    assert_eq!(different.verdict, "not_reproducible");
    let stamp = different
        .files
        .iter()
        .find(|file| file.path == "dist/stamp.txt")
        .unwrap();
    assert_eq!(stamp.status, "differs");
    let compared = output(
        kiln.workspace
            .kiln(&kiln.url(), &kiln.user_token)
            .args(["compare", &c, &d]),
    );
    assert_eq!(compared.status.code(), Some(1), "{}", stderr(&compared));
    assert!(
        stdout(&compared)
            .lines()
            .any(|line| line.starts_with("differs\tdist/stamp.txt\t")),
        "{}",
        stdout(&compared)
    );
    assert!(
        stdout(&compared)
            .lines()
            .any(|line| line.starts_with("identical\tdist/app.txt\t")),
        "{}",
        stdout(&compared)
    );
    let report = output(kiln.workspace.kiln(&kiln.url(), &kiln.user_token).args([
        "report",
        &d,
        "--markdown",
    ]));
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    assert!(
        stdout(&report).contains("## Artifacts"),
        "{}",
        stdout(&report)
    );
}

/// (status, content type, body) of a GET of a published site.
fn site_get(kiln: &Kiln, url: &str) -> (u16, String, String) {
    kiln.block_on(async {
        let response = reqwest::get(url).await.unwrap();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (
            response.status().as_u16(),
            kind,
            response.text().await.unwrap(),
        )
    })
}

/// Two builds of a pipeline whose `build` step publishes `dist` (an `index.html` saying
/// "hello from v1", then "v2", and a stylesheet) to production, each checked live and
/// served by an agent of the caller's; their run ids and site URLs.
fn deploy_two_site_versions(kiln: &Kiln) -> Vec<(String, String)> {
    let pipeline_of = |version: &str| {
        pipeline(&[
            step(
                "install",
                &[
                    "mkdir -p node_modules/greeter",
                    &format!("printf 'hello from {version}' > node_modules/greeter/text"),
                ],
                "    artifacts: [node_modules]\n",
            ),
            step(
                "build",
                &[
                    "mkdir -p dist/assets",
                    "cp node_modules/greeter/text dist/index.html",
                    "printf 'body {}' > dist/assets/site.css",
                ],
                "    depends_on: [install]\n    deploy: {environment: production, publish: dist}\n",
            ),
        ])
    };
    let get = |url: &str| site_get(kiln, url);
    let mut runs = Vec::new();
    for version in ["v1", "v2"] {
        kiln.commit_pipeline(&pipeline_of(version));
        let build = kiln.trigger_main();
        let status = kiln.wait_for_build(&build.run_id, Duration::from_secs(60));
        assert_eq!(
            status,
            "success",
            "{}",
            kiln.log_text(&build.run_id, "build")
        );
        let live = wait_until(
            || format!("{version} live on production"),
            Duration::from_secs(20),
            || {
                let environments = kiln.block_on(kiln.user.environments(PROJECT)).unwrap();
                let current = environments.environments.first()?.current.clone()?;
                (current.run_id == build.run_id && current.status == "deployed").then_some(current)
            },
        );
        let url = live.url.clone().expect("a published site has a URL");
        // Each server re-reads which deployment is live at most every 250 ms.
        let (status, kind, body) = wait_until(
            || format!("{url} to serve {version}"),
            Duration::from_secs(5),
            || {
                let answer = get(&url);
                (answer.2 == format!("hello from {version}")).then_some(answer)
            },
        );
        assert_eq!(status, 200, "{url}");
        assert!(kind.starts_with("text/html"), "{kind}");
        assert_eq!(body, format!("hello from {version}"));
        let (status, kind, _) = get(&format!("{url}assets/site.css"));
        assert_eq!(status, 200);
        assert!(kind.starts_with("text/css"), "{kind}");
        runs.push((build.run_id, url));
    }
    runs
}

/// A pipeline that installs (artifacts passed on), builds a site into `dist` and
/// publishes it (`deploy: {environment: production, publish: dist}`), run by a real
/// agent: the deployment goes live on the sites listener, a second build replaces it,
/// and a rollback brings the first build's files back without rebuilding.
#[test]
fn a_pipeline_publishes_its_site_and_rolls_back_to_the_last_good_build() {
    let kiln = Kiln::start(&["--sites-listen", "127.0.0.1:0"]);
    let _agent = kiln.agent("deployer", &[]);
    let runs = deploy_two_site_versions(&kiln);
    let get = |url: &str| site_get(&kiln, url);
    // Back to the first build: its files, at once, with no build.
    let rolled = kiln
        .block_on(kiln.user.rollback(PROJECT, "production", &runs[0].0))
        .unwrap();
    assert_eq!(
        (rolled.run_id.as_str(), rolled.status.as_str()),
        (runs[0].0.as_str(), "deployed")
    );
    assert!(rolled.rollback_of.is_some());
    wait_until(
        || "the rolled-back site".into(),
        Duration::from_secs(5),
        || (get(&runs[1].1).2 == "hello from v1").then_some(()),
    );
    let builds = kiln
        .block_on(kiln.user.list_builds(&BuildQuery::default()))
        .unwrap();
    assert_eq!(builds.builds.len(), 2, "a rollback builds nothing");
}

/// A crash during a rollback (the server killed with SIGKILL 0–21 ms after the request
/// was sent, eight times, back and forth between two published builds) leaves one whole
/// version live: after each restart the environment names a deployed build and the site
/// serves exactly that build's page, never a mix, never nothing, and no deployment is
/// left half-recorded.
#[test]
fn a_crash_during_a_rollback_leaves_one_whole_version_live() {
    let mut kiln = Kiln::start(&["--sites-listen", "127.0.0.1:0"]);
    let agent = kiln.agent("deployer", &[]);
    let runs = deploy_two_site_versions(&kiln);
    drop(agent);
    let version_of = |run_id: &str| {
        if run_id == runs[0].0 { "v1" } else { "v2" }
    };
    let mut switched = 0;
    for round in 0..8u64 {
        let before = kiln
            .block_on(kiln.user.environments(PROJECT))
            .unwrap()
            .environments[0]
            .current
            .clone()
            .expect("a live deployment");
        let to = if before.run_id == runs[0].0 {
            &runs[1].0
        } else {
            &runs[0].0
        };
        // The request is written whole, then the server dies without waiting for it.
        let address = kiln
            .server
            .as_ref()
            .unwrap()
            .url
            .trim_start_matches("http://")
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let body = format!("{{\"to\":\"{to}\"}}");
        let request = format!(
            "POST /api/v1/projects/{PROJECT}/environments/production/rollback HTTP/1.1\r\n\
             host: {address}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            kiln.user_token,
            body.len()
        );
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(round * 3));
        let port = kiln.kill_server();
        drop(stream);
        kiln.start_server_again(port);

        let live = kiln
            .block_on(kiln.user.environments(PROJECT))
            .unwrap()
            .environments[0]
            .current
            .clone()
            .expect("a live deployment after the crash");
        assert_eq!(live.status, "deployed", "{live:?}");
        assert!(
            live.run_id == runs[0].0 || live.run_id == runs[1].0,
            "{live:?}"
        );
        if live.run_id != before.run_id {
            switched += 1;
        }
        let url = live.url.clone().expect("a published site has a URL");
        let (status, _, page) = site_get(&kiln, &url);
        assert_eq!(status, 200, "{url} after round {round}");
        assert_eq!(page, format!("hello from {}", version_of(&live.run_id)));
        let deployments = kiln
            .block_on(kiln.user.deployments(PROJECT, Some("production"), 100))
            .unwrap()
            .deployments;
        for deployment in &deployments {
            assert!(
                ["deployed", "failed", "cancelled"].contains(&deployment.status.as_str()),
                "half-recorded after round {round}: {deployment:?}"
            );
        }
        assert_eq!(
            deployments.iter().filter(|d| d.current).count(),
            1,
            "one deployment is current"
        );
    }
    eprintln!("rollbacks that took effect before the kill: {switched} of 8");
}

/// A script deployment (`deploy: {environment: staging, url: …}`), run by a real agent:
/// each build's `build` step writes a marker (its run id) as an artifact, and the deploy
/// step writes that marker and the checkout's VERSION to a file outside the repository,
/// as a deploy script would write to a server. After two deploys, `kiln rollback` to the
/// first runs its deploy step again — in a build of its own, at the first build's commit,
/// with the first build's artifact — and the file holds the first marker again.
#[test]
fn a_script_deployment_rolls_back_by_running_its_deploy_step_again() {
    let kiln = Kiln::start(&[]);
    let target = kiln.workspace.dir.path().join("deployed-staging.txt");
    let pipeline_of = || {
        pipeline(&[
            step(
                "build",
                &[
                    "mkdir -p out",
                    "printf 'marker of %s' \"$KILN_RUN_ID\" > out/marker",
                ],
                "    artifacts: [out]\n",
            ),
            step(
                "deploy",
                &[&format!(
                    "printf '%s from %s' \"$(cat out/marker)\" \"$(cat VERSION)\" > '{}'",
                    target.display()
                )],
                "    depends_on: [build]\n    deploy: {environment: staging, url: 'https://staging.example.test/'}\n",
            ),
        ])
    };
    let _agent = kiln.agent("deployer", &[]);
    let deployed_file = || std::fs::read_to_string(&target).unwrap_or_default();
    let mut runs = Vec::new();
    for version in ["v1", "v2"] {
        kiln.repo.write("VERSION", version);
        kiln.commit_pipeline(&pipeline_of());
        let build = kiln.trigger_main();
        let status = kiln.wait_for_build(&build.run_id, Duration::from_secs(60));
        assert_eq!(
            status,
            "success",
            "{}",
            kiln.log_text(&build.run_id, "deploy")
        );
        wait_until(
            || format!("{version} live on staging"),
            Duration::from_secs(20),
            || {
                let environments = kiln.block_on(kiln.user.environments(PROJECT)).unwrap();
                let current = environments.environments.first()?.current.clone()?;
                (current.run_id == build.run_id && current.status == "deployed").then_some(())
            },
        );
        assert_eq!(
            deployed_file(),
            format!("marker of {} from {version}", build.run_id)
        );
        runs.push(build.run_id);
    }

    let rolled = output(
        kiln.workspace
            .kiln(&kiln.url(), &kiln.user_token)
            .args(["rollback", "staging", "--to", &runs[0]]),
    );
    assert_eq!(rolled.status.code(), Some(0), "{}", stderr(&rolled));
    assert!(
        stdout(&rolled).contains("rollback started:"),
        "{}",
        stdout(&rolled)
    );
    let history = kiln
        .block_on(kiln.user.deployments(PROJECT, Some("staging"), 10))
        .unwrap();
    let rollback = history.deployments[0].clone();
    assert_eq!(rollback.rollback_run_id.as_deref(), Some(runs[0].as_str()));
    assert!(!runs.contains(&rollback.run_id), "a build of its own");
    assert_eq!(
        kiln.wait_for_build(&rollback.run_id, Duration::from_secs(60)),
        "success",
        "{}",
        kiln.log_text(&rollback.run_id, "deploy")
    );
    let steps: Vec<String> = kiln
        .jobs(&rollback.run_id)
        .into_iter()
        .map(|job| job.step)
        .collect();
    assert_eq!(steps, ["deploy"], "only the deploy step runs again");
    wait_until(
        || "the rollback live on staging".into(),
        Duration::from_secs(20),
        || {
            let environments = kiln.block_on(kiln.user.environments(PROJECT)).unwrap();
            let current = environments.environments.first()?.current.clone()?;
            (current.id == rollback.id && current.status == "deployed").then_some(())
        },
    );
    assert_eq!(
        deployed_file(),
        format!("marker of {} from v1", runs[0]),
        "the first build's marker and commit, deployed again"
    );
}
