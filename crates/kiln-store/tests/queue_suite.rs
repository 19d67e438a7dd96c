//! The job queue, agents, branches and job logs, against SQLite and PostgreSQL alike.

use std::collections::HashSet;
use std::sync::Arc;

use kiln_core::jobs::JobPlan;
use kiln_core::{EventType, JobState, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;
use serde_json::json;

engine_test!(claims_follow_priority_fifo_and_aging);
engine_test!(claims_respect_labels_and_concurrency);
engine_test!(leases_expire_and_old_attempts_are_refused);
engine_test!(blocked_jobs_advance_and_builds_cancel);
engine_test!(logs_append_idempotently_and_read_by_offset);
engine_test!(repos_branches_and_agents);
engine_test!(reported_jobs_hold_logs_and_stay_out_of_the_queue);
engine_test!(secrets_and_repo_credentials_keep_ciphertext);
engine_test!(concurrent_claims_on_two_stores_hand_out_each_job_once);
engine_test!(claim_hints_hold_young_jobs_and_prefer_recommended_steps);
engine_test!(step_runs_and_agent_caches_feed_the_recommendation);
engine_test!(a_job_avoids_its_agent_for_a_while);
engine_test!(claims_go_on_after_their_connection_is_cut);

const RULES: ClaimRules = ClaimRules {
    lease_ms: 60_000,
    aging_ms: 300_000,
};

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

/// A queued build with one job per `(step, depends_on, labels)`.
async fn queued_build(
    store: &dyn Store,
    project: &Project,
    run_id: &str,
    priority: i64,
    steps: &[(&str, &[&str], &[&str])],
    now: i64,
) -> BuildRecord {
    let event = NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", "build_queued").unwrap(),
    );
    let request = IngestRequest {
        project_id: project.id,
        events: vec![event],
        precondition: Precondition::None,
        jobs: None,
    };
    store
        .ingest(&[request], Millis(now))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let build = store.build_by_run_id(run_id).await.unwrap().unwrap();
    assert_eq!(build.state.status, kiln_core::BuildStatus::Queued);
    let plans: Vec<JobPlan> = steps
        .iter()
        .enumerate()
        .map(|(position, (step, depends_on, labels))| JobPlan {
            step: step.to_string(),
            position: position as i64,
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            state: if depends_on.is_empty() {
                JobState::Queued
            } else {
                JobState::Blocked
            },
            spec: json!({"commands": [format!("echo {step}")]}),
            avoid_agent_id: None,
        })
        .collect();
    store
        .create_jobs(build.id, project.id, priority, &plans, Millis(now))
        .await
        .unwrap();
    build
}

async fn agent(store: &dyn Store, name: &str, labels: &[&str], concurrency: i64) -> AgentRecord {
    store
        .register_agent(
            &NewAgent {
                name: name.into(),
                token_id: 1,
                labels: labels.iter().map(|s| s.to_string()).collect(),
                concurrency,
                executor: "process".into(),
                hostname: Some("host".into()),
                version: Some("0.1.0".into()),
            },
            Millis(10),
        )
        .await
        .unwrap()
}

async fn claim(store: &dyn Store, agent: &AgentRecord, now: i64) -> Option<JobRecord> {
    store.claim_job(agent, RULES, Millis(now)).await.unwrap()
}

fn passed() -> JobEnd {
    JobEnd {
        state: JobState::Passed,
        exit_code: Some(0),
        reason: None,
    }
}

async fn claims_follow_priority_fifo_and_aging(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    queued_build(&*store, &web, "low", 9, &[("a", &[], &[])], 1_000).await;
    queued_build(&*store, &web, "mid-1", 5, &[("a", &[], &[])], 2_000).await;
    queued_build(&*store, &web, "high", 1, &[("a", &[], &[])], 3_000).await;
    queued_build(&*store, &web, "mid-2", 5, &[("a", &[], &[])], 4_000).await;
    let worker = agent(&*store, "w", &[], 10).await;
    let mut order = Vec::new();
    while let Some(job) = claim(&*store, &worker, 5_000).await {
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.agent_id, Some(worker.id));
        assert_eq!(job.lease_expires_at, Some(Millis(65_000)));
        order.push(job.run_id);
    }
    assert_eq!(order, ["high", "mid-1", "mid-2", "low"]);

    // Aging: a priority-9 job that waited 8 aging periods (one level each) overtakes a
    // fresh priority-5 job; after 3 periods it does not.
    let aging = project(&*store, "aging").await;
    queued_build(&*store, &aging, "old-low", 9, &[("a", &[], &[])], 10_000).await;
    let now = 10_000 + 8 * RULES.aging_ms;
    queued_build(&*store, &aging, "new-mid", 5, &[("a", &[], &[])], now).await;
    assert_eq!(
        claim(&*store, &worker, now).await.unwrap().run_id,
        "old-low"
    );
    queued_build(&*store, &aging, "old-low-2", 9, &[("a", &[], &[])], now).await;
    let later = now + 3 * RULES.aging_ms;
    queued_build(&*store, &aging, "new-mid-2", 5, &[("a", &[], &[])], later).await;
    assert_eq!(
        claim(&*store, &worker, later).await.unwrap().run_id,
        "new-mid"
    );
    assert_eq!(
        claim(&*store, &worker, later).await.unwrap().run_id,
        "new-mid-2"
    );
    assert_eq!(
        claim(&*store, &worker, later).await.unwrap().run_id,
        "old-low-2"
    );
}

async fn claims_respect_labels_and_concurrency(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    queued_build(
        &*store,
        &web,
        "r1",
        5,
        &[("gpu-step", &[], &["gpu", "linux"]), ("any", &[], &[])],
        1_000,
    )
    .await;
    let plain = agent(&*store, "plain", &["linux"], 1).await;
    let gpu = agent(&*store, "gpu", &["linux", "gpu", "big"], 1).await;
    let job = claim(&*store, &plain, 2_000).await.unwrap();
    assert_eq!(job.step, "any", "the gpu step needs labels plain lacks");
    assert_eq!(job.agent_name.as_deref(), Some("plain"));
    assert!(
        claim(&*store, &plain, 2_000).await.is_none(),
        "concurrency 1"
    );
    assert_eq!(claim(&*store, &gpu, 2_000).await.unwrap().step, "gpu-step");

    // Per-project concurrency.
    let limited = project(&*store, "limited").await;
    store
        .set_project_repo(limited.id, None, "main", Some(1))
        .await
        .unwrap();
    queued_build(
        &*store,
        &limited,
        "l1",
        5,
        &[("a", &[], &[]), ("b", &[], &[])],
        3_000,
    )
    .await;
    let big = agent(&*store, "big", &[], 5).await;
    assert_eq!(claim(&*store, &big, 4_000).await.unwrap().run_id, "l1");
    assert!(
        claim(&*store, &big, 4_000).await.is_none(),
        "project limit 1"
    );
}

async fn leases_expire_and_old_attempts_are_refused(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    queued_build(&*store, &web, "r1", 5, &[("a", &[], &[])], 1_000).await;
    let first = agent(&*store, "first", &[], 1).await;
    let second = agent(&*store, "second", &[], 1).await;
    let job = claim(&*store, &first, 2_000).await.unwrap();
    assert_eq!(job.lease_expires_at, Some(Millis(62_000)));

    // A heartbeat early in the lease does not rewrite it; one after a third renews it.
    let held = store
        .renew_leases(first.id, &[job.id, 999], Millis(3_000), 60_000)
        .await
        .unwrap();
    assert_eq!(
        held,
        vec![
            HeldJob {
                job_id: job.id,
                held: true,
                cancel_requested: false
            },
            HeldJob {
                job_id: 999,
                held: false,
                cancel_requested: false
            }
        ]
    );
    let unchanged = store.job_by_id(job.id).await.unwrap().unwrap();
    assert_eq!(unchanged.lease_expires_at, Some(Millis(62_000)));
    store
        .renew_leases(first.id, &[job.id], Millis(30_000), 60_000)
        .await
        .unwrap();
    let renewed = store.job_by_id(job.id).await.unwrap().unwrap();
    assert_eq!(renewed.lease_expires_at, Some(Millis(90_000)));

    assert!(
        store
            .expired_leases(Millis(89_999), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let expired = store.expired_leases(Millis(90_001), 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert!(store.requeue_job(job.id, 1, Millis(90_001)).await.unwrap());
    assert!(
        !store.requeue_job(job.id, 1, Millis(90_001)).await.unwrap(),
        "requeued once"
    );
    let again = claim(&*store, &second, 91_000).await.unwrap();
    assert_eq!((again.id, again.attempt), (job.id, 2));
    // The first agent's late report of attempt 1 is refused; the holder's is taken.
    assert!(
        !store
            .finish_job(job.id, 1, Some(first.id), &passed(), Millis(92_000))
            .await
            .unwrap()
    );
    let held = store
        .renew_leases(first.id, &[job.id], Millis(92_000), 60_000)
        .await
        .unwrap();
    assert!(!held[0].held, "the first agent no longer holds it");
    assert!(
        store
            .finish_job(job.id, 2, Some(second.id), &passed(), Millis(93_000))
            .await
            .unwrap()
    );
    let done = store.job_by_id(job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Passed);
    assert_eq!(done.finished_at, Some(Millis(93_000)));
    assert_eq!(done.exit_code, Some(0));

    // A restarted server gives running jobs time to be reported again.
    queued_build(&*store, &web, "r2", 5, &[("a", &[], &[])], 100_000).await;
    let job = claim(&*store, &first, 100_000).await.unwrap();
    assert_eq!(store.extend_leases(Millis(500_000)).await.unwrap(), 1);
    let extended = store.job_by_id(job.id).await.unwrap().unwrap();
    assert_eq!(extended.lease_expires_at, Some(Millis(500_000)));
}

async fn blocked_jobs_advance_and_builds_cancel(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let build = queued_build(
        &*store,
        &web,
        "r1",
        5,
        &[("a", &[], &[]), ("b", &["a"], &[]), ("c", &["b"], &[])],
        1_000,
    )
    .await;
    let worker = agent(&*store, "w", &[], 4).await;
    let a = claim(&*store, &worker, 2_000).await.unwrap();
    assert_eq!(a.step, "a");
    assert!(
        claim(&*store, &worker, 2_000).await.is_none(),
        "b waits for a"
    );
    assert!(store.builds_to_advance(10).await.unwrap().is_empty());
    store
        .finish_job(a.id, 1, Some(worker.id), &passed(), Millis(3_000))
        .await
        .unwrap();
    assert_eq!(store.builds_to_advance(10).await.unwrap(), vec![build.id]);
    store
        .unblock_jobs(build.id, &["b".into()], &[], Millis(3_000))
        .await
        .unwrap();
    let jobs = store.jobs_of_build(build.id).await.unwrap();
    let states: Vec<JobState> = jobs.iter().map(|job| job.state).collect();
    assert_eq!(
        states,
        [JobState::Passed, JobState::Queued, JobState::Blocked]
    );
    assert_eq!(jobs[2].depends_on, vec!["b"]);
    let b = claim(&*store, &worker, 4_000).await.unwrap();
    assert_eq!(b.step, "b");

    assert_eq!(store.cancel_jobs(build.id, Millis(5_000)).await.unwrap(), 1);
    let jobs = store.jobs_of_build(build.id).await.unwrap();
    assert_eq!(jobs[2].state, JobState::Cancelled);
    assert!(jobs[1].cancel_requested);
    let held = store
        .renew_leases(worker.id, &[b.id], Millis(5_000), 60_000)
        .await
        .unwrap();
    assert!(held[0].held && held[0].cancel_requested);

    // Skipping.
    let other = queued_build(
        &*store,
        &web,
        "r2",
        5,
        &[("a", &[], &[]), ("b", &["a"], &[])],
        6_000,
    )
    .await;
    let a = claim(&*store, &worker, 6_000).await.unwrap();
    let failed = JobEnd {
        state: JobState::Failed,
        exit_code: Some(2),
        reason: Some("exit_status".into()),
    };
    store
        .finish_job(a.id, 1, Some(worker.id), &failed, Millis(7_000))
        .await
        .unwrap();
    store
        .unblock_jobs(other.id, &[], &["b".into()], Millis(7_000))
        .await
        .unwrap();
    let jobs = store.jobs_of_build(other.id).await.unwrap();
    assert_eq!(jobs[1].state, JobState::Skipped);
    assert_eq!(
        store.unfinished_jobs(100).await.unwrap().len(),
        1,
        "r1's b runs"
    );
}

async fn logs_append_idempotently_and_read_by_offset(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    queued_build(&*store, &web, "r1", 5, &[("a", &[], &[])], 1_000).await;
    let worker = agent(&*store, "w", &[], 1).await;
    let job = claim(&*store, &worker, 2_000).await.unwrap();
    let cap = 64;
    assert_eq!(
        store.append_log(job.id, 0, b"hello ", cap).await.unwrap(),
        LogAppend::Stored { size: 6 }
    );
    // Binary, ANSI and a retried chunk.
    let binary = [0u8, 159, 146, 150, 0x1b, b'[', b'3', b'1', b'm', b'\n'];
    assert_eq!(
        store.append_log(job.id, 6, &binary, cap).await.unwrap(),
        LogAppend::Stored { size: 16 }
    );
    assert_eq!(
        store.append_log(job.id, 6, &binary, cap).await.unwrap(),
        LogAppend::Stored { size: 16 },
        "a retry is acknowledged, not stored twice"
    );
    assert_eq!(
        store.append_log(job.id, 20, b"gap", cap).await.unwrap(),
        LogAppend::WrongOffset { size: 16 }
    );
    assert_eq!(
        store
            .append_log(job.id, 16, &[b'x'; 49], cap)
            .await
            .unwrap(),
        LogAppend::TooLarge { size: 16 }
    );
    let (all, size) = store.read_log(job.id, 0, 1_000).await.unwrap();
    assert_eq!(size, 16);
    assert_eq!(&all[..6], b"hello ");
    assert_eq!(&all[6..], &binary);
    let (middle, _) = store.read_log(job.id, 3, 5).await.unwrap();
    assert_eq!(middle, b"lo \0\x9f");
    let (tail, _) = store.read_log(job.id, 16, 100).await.unwrap();
    assert!(tail.is_empty());
    assert!(matches!(
        store.read_log(9_999, 0, 10).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn repos_branches_and_agents(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    assert_eq!(web.repo, None);
    assert_eq!(web.default_branch, "main");
    let updated = store
        .set_project_repo(web.id, Some("file:///tmp/repo"), "trunk", None)
        .await
        .unwrap();
    assert_eq!(updated.repo.as_deref(), Some("file:///tmp/repo"));
    assert_eq!(
        store
            .project_by_slug("web")
            .await
            .unwrap()
            .unwrap()
            .default_branch,
        "trunk"
    );
    let branch = store
        .upsert_branch(web.id, "release/1", Some(2), true, Millis(5))
        .await
        .unwrap();
    assert_eq!(branch.priority, Some(2));
    store
        .upsert_branch(web.id, "feature", None, false, Millis(6))
        .await
        .unwrap();
    let polled = store.auto_build_branches().await.unwrap();
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0].0.id, web.id);
    assert_eq!(polled[0].1.name, "release/1");
    assert!(
        store
            .advance_branch_commit(web.id, "release/1", None, "abc")
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_branch_commit(web.id, "release/1", None, "abc")
            .await
            .unwrap(),
        "a second poller with the same view loses"
    );
    let branches = store.list_branches(web.id).await.unwrap();
    assert_eq!(branches.len(), 2);
    assert_eq!(branches[1].last_commit.as_deref(), Some("abc"));
    store.delete_branch(web.id, "feature").await.unwrap();
    assert!(matches!(
        store.delete_branch(web.id, "feature").await,
        Err(StoreError::NotFound(_))
    ));

    let first = agent(&*store, "builder-1", &["linux"], 2).await;
    let again = agent(&*store, "builder-1", &["linux", "gpu"], 4).await;
    assert_eq!(first.id, again.id, "registering a name again updates it");
    assert_eq!(again.labels, vec!["linux", "gpu"]);
    store
        .touch_agent(again.id, Millis(50), Some(&json!({"cpuPercent": 12.5})))
        .await
        .unwrap();
    let listed = store.list_agents().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_seen_at, Millis(50));
    assert_eq!(listed[0].metrics, Some(json!({"cpuPercent": 12.5})));
    assert_eq!(
        store.agent_by_id(again.id).await.unwrap(),
        Some(listed[0].clone())
    );
}

async fn concurrent_claims_on_two_stores_hand_out_each_job_once(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let first: Arc<dyn Store> = database.open_dyn().await;
    let second: Arc<dyn Store> = database.open_dyn().await;
    let web = project(&*first, "web").await;
    let steps: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    let step_refs: Vec<(&str, &[&str], &[&str])> = steps
        .iter()
        .map(|s| (s.as_str(), &[][..], &[][..]))
        .collect();
    queued_build(&*first, &web, "r1", 5, &step_refs, 1_000).await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let worker = agent(&*store, &format!("w{n}"), &[], 100).await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = store
                .claim_job(&worker, RULES, Millis(2_000))
                .await
                .unwrap()
            {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 40, "every job claimed");
    assert_eq!(unique.len(), 40, "no job claimed twice");
}

async fn secrets_and_repo_credentials_keep_ciphertext(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    let first = store
        .set_project_secret(web.id, "DEPLOY_TOKEN", "kiln1:aa", Millis(10))
        .await
        .unwrap();
    assert_eq!(
        (first.created_at, first.updated_at),
        (Millis(10), Millis(10))
    );
    let replaced = store
        .set_project_secret(web.id, "DEPLOY_TOKEN", "kiln1:bb", Millis(20))
        .await
        .unwrap();
    assert_eq!(
        (replaced.created_at, replaced.updated_at),
        (Millis(10), Millis(20))
    );
    store
        .set_project_secret(web.id, "A_KEY", "kiln1:cc", Millis(30))
        .await
        .unwrap();
    store
        .set_project_secret(api.id, "DEPLOY_TOKEN", "kiln1:dd", Millis(30))
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_project_secrets(web.id)
        .await
        .unwrap()
        .into_iter()
        .map(|secret| secret.name)
        .collect();
    assert_eq!(names, ["A_KEY", "DEPLOY_TOKEN"]);
    assert_eq!(
        store.project_secret_values(web.id).await.unwrap(),
        [
            ("A_KEY".to_owned(), "kiln1:cc".to_owned()),
            ("DEPLOY_TOKEN".to_owned(), "kiln1:bb".to_owned())
        ]
    );
    assert!(store.delete_project_secret(web.id, "A_KEY").await.unwrap());
    assert!(!store.delete_project_secret(web.id, "A_KEY").await.unwrap());
    assert_eq!(store.project_secret_values(api.id).await.unwrap().len(), 1);

    store
        .set_repo_credentials(
            web.id,
            Some("https://git.example.com/x.git"),
            Some("kiln1:ee"),
        )
        .await
        .unwrap();
    let read = store.project_by_id(web.id).await.unwrap().unwrap();
    assert_eq!(read.repo.as_deref(), Some("https://git.example.com/x.git"));
    assert_eq!(read.repo_credentials.as_deref(), Some("kiln1:ee"));
    assert!(store.set_repo_credentials(9999, None, None).await.is_err());

    // A claimed job says whether its project holds credentials (the claim then reads
    // them; without, it reads nothing more), on both claim paths.
    queued_build(
        &*store,
        &web,
        "with-credentials",
        5,
        &[("a", &[], &[])],
        100,
    )
    .await;
    queued_build(&*store, &api, "without", 5, &[("a", &[], &[])], 200).await;
    let worker = agent(&*store, "w", &[], 2).await;
    let first = claim(&*store, &worker, 1_000).await.unwrap();
    assert_eq!(
        (first.run_id.as_str(), first.has_repo_credentials),
        ("with-credentials", true)
    );
    let second = store
        .claim_job_with(&worker, RULES, &ClaimHints::default(), Millis(1_001))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.run_id.as_str(), second.has_repo_credentials),
        ("without", false)
    );
    let listed = store.job_by_id(first.id).await.unwrap().unwrap();
    assert!(listed.has_repo_credentials, "every job read carries it");
}

/// Ingests one event of `kind` for `run_id` at `now`.
async fn report(store: &dyn Store, project: &Project, run_id: &str, kind: &str, now: i64) {
    let request = IngestRequest {
        project_id: project.id,
        events: vec![NewEvent::new(
            RunId::parse("runId", run_id).unwrap(),
            EventType::parse("event", kind).unwrap(),
        )],
        precondition: Precondition::None,
        jobs: None,
    };
    store
        .ingest(&[request], Millis(now))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
}

/// The jobs holding a `kiln run`'s log: made once per step, never claimed, never
/// counted against a project's concurrency, never advancing their build; ended by
/// their reporter or, once their build ended long enough ago, with it.
async fn reported_jobs_hold_logs_and_stay_out_of_the_queue(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    store
        .set_project_repo(web.id, None, "main", Some(1))
        .await
        .unwrap();
    report(&*store, &web, "ext", "build_started", 1_000).await;
    let ext = store.build_by_run_id("ext").await.unwrap().unwrap();
    let run = store
        .reported_job(ext.id, web.id, "run", Millis(1_100))
        .await
        .unwrap();
    assert!(run.reported);
    assert_eq!(
        (run.state, run.position, run.agent_id),
        (JobState::Running, 0, None)
    );
    let again = store
        .reported_job(ext.id, web.id, "run", Millis(1_200))
        .await
        .unwrap();
    assert_eq!(again.id, run.id, "one job per step");
    let build_step = store
        .reported_job(ext.id, web.id, "Build", Millis(1_300))
        .await
        .unwrap();
    assert_eq!(build_step.position, 1);
    assert_eq!(
        store
            .append_log(run.id, 0, b"hello\n", 1 << 20)
            .await
            .unwrap(),
        LogAppend::Stored { size: 6 }
    );

    // Its liveness is still its heartbeats: it goes stale like any reported build.
    let stale = store.stale_builds(Millis(1_000_000), 60, 10).await.unwrap();
    assert_eq!(
        stale
            .iter()
            .map(|b| b.state.run_id.as_str())
            .collect::<Vec<_>>(),
        ["ext"]
    );

    // A build Kiln runs in the same project (limit 1) is claimed all the same.
    let kiln_build = queued_build(&*store, &web, "k1", 5, &[("test", &[], &[])], 2_000).await;
    let unfinished = store.unfinished_jobs(100).await.unwrap();
    assert_eq!(
        unfinished
            .iter()
            .map(|job| job.run_id.as_str())
            .collect::<Vec<_>>(),
        ["k1"]
    );
    let worker = agent(&*store, "worker", &[], 4).await;
    let claimed = claim(&*store, &worker, 3_000).await.unwrap();
    assert_eq!(claimed.run_id, "k1");
    assert!(
        claim(&*store, &worker, 3_000).await.is_none(),
        "no reported job is claimed"
    );
    let expired = store
        .expired_leases(Millis(i64::MAX / 2), 100)
        .await
        .unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|job| job.run_id.as_str())
            .collect::<Vec<_>>(),
        ["k1"],
        "a reported job has no lease"
    );
    match store
        .reported_job(kiln_build.id, web.id, "test", Millis(3_000))
        .await
    {
        Err(StoreError::Conflict(message)) => assert!(message.contains("agents"), "{message}"),
        other => panic!("a step Kiln runs is not reported: {other:?}"),
    }

    // The reporter ends its step's log; the build is never advanced by the scheduler.
    assert!(
        store
            .end_reported_job(run.id, JobState::Failed, Some(3), Millis(4_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .end_reported_job(run.id, JobState::Passed, Some(0), Millis(4_001))
            .await
            .unwrap(),
        "ended once"
    );
    let run = store.job_by_id(run.id).await.unwrap().unwrap();
    assert_eq!((run.state, run.exit_code), (JobState::Failed, Some(3)));
    assert!(
        !store
            .builds_to_advance(100)
            .await
            .unwrap()
            .contains(&ext.id)
    );

    // A step whose reporter vanished ends with its build, after the grace.
    report(&*store, &web, "ext", "build_cancelled", 5_000).await;
    assert_eq!(
        store
            .end_orphaned_reported_jobs(Millis(5_000), Millis(5_500))
            .await
            .unwrap(),
        0,
        "still within the grace"
    );
    assert_eq!(
        store
            .end_orphaned_reported_jobs(Millis(5_001), Millis(6_000))
            .await
            .unwrap(),
        1
    );
    let build_step = store.job_by_id(build_step.id).await.unwrap().unwrap();
    assert_eq!(build_step.state, JobState::Cancelled);
    assert_eq!(build_step.finished_at, Some(Millis(6_000)));
    assert_eq!(build_step.reason.as_deref(), Some("reporter_gone"));
}

fn steps(project: &Project, names: &[&str]) -> Vec<(i64, String)> {
    names
        .iter()
        .map(|name| (project.id, (*name).to_owned()))
        .collect()
}

async fn claim_hinted(
    store: &dyn Store,
    agent: &AgentRecord,
    hints: &ClaimHints,
    now: i64,
) -> Option<(String, String)> {
    store
        .claim_job_with(agent, RULES, hints, Millis(now))
        .await
        .unwrap()
        .map(|job| (job.run_id, job.step))
}

async fn claim_hints_hold_young_jobs_and_prefer_recommended_steps(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let worker = agent(&*store, "w", &[], 10).await;

    // Preference: among equal aged priority, the preferred step first; never before a
    // better priority.
    queued_build(&*store, &web, "p1", 5, &[("a", &[], &[])], 1_000).await;
    queued_build(&*store, &web, "p2", 5, &[("b", &[], &[])], 1_000).await;
    queued_build(&*store, &web, "p3", 1, &[("c", &[], &[])], 1_000).await;
    let prefer_b = ClaimHints {
        preferred_steps: steps(&web, &["b"]),
        ..ClaimHints::default()
    };
    let mut order = Vec::new();
    while let Some((run_id, _)) = claim_hinted(&*store, &worker, &prefer_b, 2_000).await {
        order.push(run_id);
    }
    assert_eq!(order, ["p3", "p2", "p1"]);

    // Holding: a held step's job queued at or after the bound is passed over …
    queued_build(&*store, &web, "h1", 5, &[("a", &[], &[])], 10_000).await;
    queued_build(&*store, &web, "h2", 5, &[("b", &[], &[])], 10_000).await;
    let hold_a = |after: i64| ClaimHints {
        held_steps: steps(&web, &["a"]),
        hold_queued_after: Millis(after),
        preferred_steps: Vec::new(),
    };
    assert_eq!(
        claim_hinted(&*store, &worker, &hold_a(10_000), 11_000).await,
        Some(("h2".to_owned(), "b".to_owned()))
    );
    // … and when only held jobs are left, nothing is claimed …
    assert_eq!(
        claim_hinted(&*store, &worker, &hold_a(10_000), 11_000).await,
        None
    );
    // … until the job is older than the bound: then it is taken whatever the hint.
    assert_eq!(
        claim_hinted(&*store, &worker, &hold_a(10_001), 13_001).await,
        Some(("h1".to_owned(), "a".to_owned()))
    );
    // Without hints the claim is the plain one.
    queued_build(&*store, &web, "n1", 5, &[("a", &[], &[])], 20_000).await;
    assert_eq!(
        claim_hinted(&*store, &worker, &ClaimHints::default(), 20_000).await,
        Some(("n1".to_owned(), "a".to_owned()))
    );
}

async fn step_runs_and_agent_caches_feed_the_recommendation(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let fast = agent(&*store, "fast", &[], 1).await;
    let slow = agent(&*store, "slow", &[], 1).await;
    // (agent, claimed at, took, passed)
    let runs = [
        (&fast, 1_000, 2_000, true),
        (&slow, 1_000, 30_000, true),
        (&fast, 40_000, 3_000, true),
        (&slow, 40_000, 50_000, false),
        (&fast, 100_000, 4_000, true),
    ];
    for (n, (worker, at, took, ok)) in runs.iter().enumerate() {
        queued_build(
            &*store,
            &web,
            &format!("r{n}"),
            5,
            &[("test", &[], &[])],
            *at,
        )
        .await;
        let job = claim(&*store, worker, *at).await.expect("a job");
        let end = if *ok {
            passed()
        } else {
            JobEnd {
                state: JobState::Failed,
                exit_code: Some(1),
                reason: None,
            }
        };
        assert!(
            store
                .finish_job(
                    job.id,
                    job.attempt,
                    Some(worker.id),
                    &end,
                    Millis(at + took)
                )
                .await
                .unwrap()
        );
    }
    let mut all = store
        .step_runs(&steps(&web, &["test", "other"]), Millis(0), 20)
        .await
        .unwrap();
    all.sort_by_key(|run| (run.agent_id, run.duration_ms));
    let durations: Vec<(i64, i64)> = all.iter().map(|r| (r.agent_id, r.duration_ms)).collect();
    // The failed run is not history.
    assert_eq!(
        durations,
        [
            (fast.id, 2_000),
            (fast.id, 3_000),
            (fast.id, 4_000),
            (slow.id, 30_000)
        ]
    );
    assert!(
        all.iter()
            .all(|run| run.project_id == web.id && run.step == "test")
    );
    // The newest per agent only, and only since a time.
    let newest = store
        .step_runs(&steps(&web, &["test"]), Millis(0), 1)
        .await
        .unwrap();
    let mut newest: Vec<(i64, i64)> = newest.iter().map(|r| (r.agent_id, r.duration_ms)).collect();
    newest.sort();
    assert_eq!(newest, [(fast.id, 4_000), (slow.id, 30_000)]);
    let recent = store
        .step_runs(&steps(&web, &["test"]), Millis(43_000), 20)
        .await
        .unwrap();
    assert_eq!(recent.len(), 2, "{recent:?}");
    assert!(
        store
            .step_runs(&[], Millis(0), 20)
            .await
            .unwrap()
            .is_empty()
    );

    // Cache keys: recorded per agent, a repeat moves its time.
    store
        .record_agent_cache(fast.id, web.id, "test", "k1", Millis(5_000))
        .await
        .unwrap();
    store
        .record_agent_cache(slow.id, web.id, "test", "k0", Millis(6_000))
        .await
        .unwrap();
    store
        .record_agent_cache(fast.id, web.id, "test", "k1", Millis(9_000))
        .await
        .unwrap();
    store
        .record_agent_cache(fast.id, web.id, "lint", "k9", Millis(9_000))
        .await
        .unwrap();
    let caches = store
        .agent_caches(&steps(&web, &["test"]), Millis(0))
        .await
        .unwrap();
    let caches: Vec<(i64, &str, i64)> = caches
        .iter()
        .map(|c| (c.agent_id, c.cache_key.as_str(), c.used_at.0))
        .collect();
    assert_eq!(caches, [(fast.id, "k1", 9_000), (slow.id, "k0", 6_000)]);
    let recent = store
        .agent_caches(&steps(&web, &["test"]), Millis(7_000))
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].agent_id, fast.id);
}

/// A job that avoids an agent (a rebuild to verify avoids the agent that ran the step in
/// the original build): that agent's claims pass it over for `AVOIDED_AGENT_HOLD_MS`
/// from when it was queued, with or without hints, while another agent takes it at once;
/// once the hold is over the avoided agent takes it too.
async fn a_job_avoids_its_agent_for_a_while(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let first = agent(&*store, "first", &[], 10).await;
    let other = agent(&*store, "other", &[], 10).await;
    let avoiding = |run_id: &str, now: i64| {
        let store = store.clone();
        let web = web.clone();
        let run_id = run_id.to_owned();
        let avoided = first.id;
        async move {
            let event = NewEvent::new(
                RunId::parse("runId", &run_id).unwrap(),
                EventType::parse("event", "build_queued").unwrap(),
            );
            store
                .ingest(&[IngestRequest::events(web.id, vec![event])], Millis(now))
                .await
                .unwrap()
                .remove(0)
                .unwrap();
            let build = store.build_by_run_id(&run_id).await.unwrap().unwrap();
            let plan = JobPlan {
                step: "build".into(),
                position: 0,
                depends_on: Vec::new(),
                labels: Vec::new(),
                state: JobState::Queued,
                spec: json!({}),
                avoid_agent_id: Some(avoided),
            };
            store
                .create_jobs(build.id, web.id, 5, &[plan], Millis(now))
                .await
                .unwrap();
        }
    };
    let hold = AVOIDED_AGENT_HOLD_MS;
    avoiding("v1", 1_000).await;
    assert!(claim(&*store, &first, 1_000).await.is_none());
    let hinted = ClaimHints {
        preferred_steps: steps(&web, &["build"]),
        ..ClaimHints::default()
    };
    assert_eq!(
        claim_hinted(&*store, &first, &hinted, 1_000 + hold - 1).await,
        None,
        "hints do not lift the hold"
    );
    let taken = claim(&*store, &other, 1_500).await.expect("another agent");
    assert_eq!(
        (taken.run_id.as_str(), taken.agent_id),
        ("v1", Some(other.id))
    );

    // No other agent claims: the avoided one takes it once the hold is over.
    avoiding("v2", 10_000).await;
    assert!(claim(&*store, &first, 10_000 + hold - 1).await.is_none());
    let taken = claim(&*store, &first, 10_000 + hold)
        .await
        .expect("after the hold, any agent");
    assert_eq!(
        (taken.run_id.as_str(), taken.agent_id),
        ("v2", Some(first.id))
    );
    avoiding("v3", 100_000).await;
    assert_eq!(
        claim_hinted(&*store, &first, &hinted, 100_000 + hold).await,
        Some(("v3".to_owned(), "build".to_owned()))
    );
}

/// PostgreSQL claims run on a connection of their own (planned once): when the database
/// cuts it (a restart, `pg_terminate_backend`), that claim fails (503 to the agent),
/// nothing is taken, and the next claim connects again and takes the job.
async fn claims_go_on_after_their_connection_is_cut(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let runner = agent(&*store, "runner", &[], 10).await;
    queued_build(&*store, &web, "cut1", 5, &[("build", &[], &[])], 1_000).await;
    queued_build(&*store, &web, "cut2", 5, &[("build", &[], &[])], 1_001).await;
    let first = claim(&*store, &runner, 2_000).await.expect("the first job");
    assert_eq!(first.run_id, "cut1");
    if engine == Engine::Postgres {
        assert!(
            database.cut_connections().await >= 1,
            "the claim's connection was open"
        );
        let refused = store.claim_job(&runner, RULES, Millis(2_001)).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Unavailable(_) | StoreError::Database(_))
            ),
            "the cut connection's claim fails (a 503 to the agent): {refused:?}"
        );
    }
    // The pool's other connections were cut too, and a broken one fails the query it is
    // given (the agent retries on 503): within a few claims one connects again.
    let mut second = None;
    for attempt in 0..20 {
        match store.claim_job(&runner, RULES, Millis(2_002)).await {
            Ok(job) => {
                second = job;
                break;
            }
            Err(error) if engine == Engine::Postgres && attempt < 19 => {
                assert!(
                    matches!(error, StoreError::Unavailable(_) | StoreError::Database(_)),
                    "{error:?}"
                );
            }
            Err(error) => panic!("claim after the cut: {error:?}"),
        }
    }
    let second = second.expect("the second job");
    assert_eq!(second.run_id, "cut2");
    assert_eq!(second.state, JobState::Running);
    assert!(
        claim(&*store, &runner, 2_003).await.is_none(),
        "nothing else queued"
    );
}
