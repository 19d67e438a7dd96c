//! Deployments against SQLite and PostgreSQL alike: recorded once per build and
//! environment, statuses by compare-and-set, the switch of the served deployment, and
//! rollbacks refused when the environment moved on; a script deployment's rollback (a
//! build of its own re-running the step) recorded once and going live like a deploy; the
//! upgrade from schema 18.

use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(deployments_publish_switch_and_roll_back);
engine_test!(a_script_rollback_follows_its_own_build_once);
engine_test!(deployments_of_the_previous_release_upgrade);

async fn build(store: &dyn Store, project: &Project, run_id: &str, commit: &str) -> i64 {
    let mut started = NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", "build_started").unwrap(),
    );
    started.branch = Some("main".into());
    started.commit = Some(commit.into());
    let mut results = store
        .ingest(
            &[IngestRequest {
                project_id: project.id,
                events: vec![started],
                precondition: Precondition::None,
                jobs: None,
            }],
            Millis(10),
        )
        .await
        .unwrap();
    results.remove(0).expect("accepted");
    store.build_by_run_id(run_id).await.unwrap().unwrap().id
}

fn new(project: &Project, build_id: i64) -> NewDeployment {
    NewDeployment {
        project_id: project.id,
        environment: "production".into(),
        build_id,
        step: "publish".into(),
        publish_dir: Some("dist".into()),
        url: None,
        status: "queued".into(),
        requested_by: Some("dev@example.com".into()),
        rollback_of: None,
    }
}

async fn deployments_publish_switch_and_roll_back(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let project = store
        .create_project(
            &ProjectSlug::parse("slug", "web").unwrap(),
            "web",
            Millis(1),
        )
        .await
        .unwrap();
    let first_build = build(&*store, &project, "r1", "aaa").await;
    let second_build = build(&*store, &project, "r2", "bbb").await;

    // Recorded first by a pass that does not know who asked (a claim), then by the
    // trigger that does: who asked is kept.
    let anonymous = NewDeployment {
        requested_by: None,
        ..new(&project, first_build)
    };
    let unknown = store
        .ensure_deployment(&anonymous, Millis(20))
        .await
        .unwrap();
    assert_eq!(unknown.requested_by, None);
    let first = store
        .ensure_deployment(&new(&project, first_build), Millis(20))
        .await
        .unwrap();
    assert_eq!(first.requested_by.as_deref(), Some("dev@example.com"));
    let again = store
        .ensure_deployment(&anonymous, Millis(21))
        .await
        .unwrap();
    assert_eq!(first, again, "one deployment per build and environment");
    assert_eq!(first.status, "queued");
    assert_eq!(first.run_id, "r1");
    assert_eq!(first.commit.as_deref(), Some("aaa"));
    assert_eq!(first.environment, "production");
    assert_eq!(
        store.builds_with_active_deployments(10).await.unwrap(),
        [first_build]
    );
    assert!(
        store
            .served_release("web", "production")
            .await
            .unwrap()
            .is_none()
    );

    assert!(
        store
            .set_deployment_status(first.id, "queued", "building", None, Millis(30))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_deployment_status(first.id, "queued", "cloning", None, Millis(31))
            .await
            .unwrap()
    );
    assert!(
        !store
            .publish_deployment(first.id, "queued", Millis(40))
            .await
            .unwrap()
    );
    assert!(
        store
            .publish_deployment(first.id, "building", Millis(40))
            .await
            .unwrap()
    );
    let served = store
        .served_release("web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            served.deployment_id,
            served.build_id,
            served.publish_dir.as_str()
        ),
        (first.id, first_build, "dist")
    );
    assert!(
        store
            .builds_with_active_deployments(10)
            .await
            .unwrap()
            .is_empty()
    );

    let second = store
        .ensure_deployment(&new(&project, second_build), Millis(50))
        .await
        .unwrap();
    assert!(
        store
            .publish_deployment(second.id, "queued", Millis(60))
            .await
            .unwrap()
    );
    let second = store.deployment(second.id).await.unwrap().unwrap();
    assert_eq!(second.replaces, Some(first.id));
    assert_eq!(second.finished_at, Some(Millis(60)));
    let environment = store
        .environment(project.id, "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(environment.current_deployment_id, Some(second.id));
    assert_eq!(environment.version, 2);

    let rollback = NewDeployment {
        status: "deployed".into(),
        rollback_of: Some(first.id),
        ..new(&project, first_build)
    };
    assert!(
        store
            .roll_back(&rollback, Some(first.id), Millis(70))
            .await
            .unwrap()
            .is_none(),
        "refused: the environment serves another deployment"
    );
    let rolled = store
        .roll_back(&rollback, Some(second.id), Millis(70))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rolled.rollback_of, rolled.replaces),
        (Some(first.id), Some(second.id))
    );
    assert_eq!(rolled.status, "deployed");
    let served = store
        .served_release("web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (served.deployment_id, served.build_id),
        (rolled.id, first_build)
    );
    assert!(served.version > environment.version);

    let listed = store
        .list_deployments(project.id, Some("production"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        [rolled.id, second.id, first.id]
    );
    assert!(
        store
            .list_deployments(project.id, Some("staging"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_deployments(project.id, None, Some(rolled.id), 1)
            .await
            .unwrap()[0]
            .id,
        second.id
    );
    assert_eq!(
        store.deployments_of_build(first_build).await.unwrap().len(),
        1
    );
    let environments = store.list_environments(project.id).await.unwrap();
    assert_eq!(environments.len(), 1);

    let failed = store
        .ensure_deployment(
            &NewDeployment {
                environment: "staging".into(),
                url: Some("https://s.test".into()),
                publish_dir: None,
                ..new(&project, second_build)
            },
            Millis(80),
        )
        .await
        .unwrap();
    assert!(
        store
            .set_deployment_status(
                failed.id,
                "queued",
                "failed",
                Some("build failed"),
                Millis(90)
            )
            .await
            .unwrap()
    );
    let failed = store.deployment(failed.id).await.unwrap().unwrap();
    assert_eq!(
        (
            failed.status.as_str(),
            failed.message.as_deref(),
            failed.finished_at
        ),
        ("failed", Some("build failed"), Some(Millis(90)))
    );
    assert_eq!(store.list_environments(project.id).await.unwrap().len(), 2);
}

fn script(project: &Project, build_id: i64, rollback_of: Option<i64>) -> NewDeployment {
    NewDeployment {
        environment: "staging".into(),
        step: "deploy".into(),
        publish_dir: None,
        url: Some("https://staging.example.test/".into()),
        rollback_of,
        ..new(project, build_id)
    }
}

/// A script deployment's rollback is the deployment of a build of its own (the re-run
/// of the step), naming the earlier deployment: recorded once however often the deployer
/// looks, moved by its build, live (replacing what was) when its step succeeds; the
/// earlier build's artifacts stay protected while the rollback runs or is live.
async fn a_script_rollback_follows_its_own_build_once(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let project = store
        .create_project(
            &ProjectSlug::parse("slug", "web").unwrap(),
            "web",
            Millis(1),
        )
        .await
        .unwrap();
    let first_build = build(&*store, &project, "r1", "aaa").await;
    let second_build = build(&*store, &project, "r2", "bbb").await;
    let rerun_build = build(&*store, &project, "r3", "aaa").await;
    let mut deployed = Vec::new();
    for build_id in [first_build, second_build] {
        let record = store
            .ensure_deployment(&script(&project, build_id, None), Millis(20))
            .await
            .unwrap();
        assert!(
            store
                .publish_deployment(record.id, "queued", Millis(30))
                .await
                .unwrap()
        );
        deployed.push(record.id);
    }
    let rerun = script(&project, rerun_build, Some(deployed[0]));
    let recorded = store.ensure_deployment(&rerun, Millis(40)).await.unwrap();
    let again = store
        .ensure_deployment(
            &NewDeployment {
                requested_by: None,
                ..rerun.clone()
            },
            Millis(41),
        )
        .await
        .unwrap();
    assert_eq!(recorded, again, "recorded once");
    assert_eq!(
        (
            recorded.rollback_of,
            recorded.run_id.as_str(),
            recorded.rollback_run_id.as_deref(),
            recorded.rollback_build_number,
            recorded.status.as_str(),
        ),
        (Some(deployed[0]), "r3", Some("r1"), Some(1), "queued")
    );
    assert_eq!(
        store.deployments_of_build(rerun_build).await.unwrap(),
        std::slice::from_ref(&recorded)
    );
    assert_eq!(
        store
            .deployments_of_build(first_build)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [deployed[0]]
    );
    assert_eq!(
        store.builds_with_active_deployments(10).await.unwrap(),
        [rerun_build]
    );
    let protected = store.protected_builds(project.id).await.unwrap();
    assert!(protected.contains(&first_build), "{protected:?}");
    let environment = store
        .environment(project.id, "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(environment.current_deployment_id, Some(deployed[1]));

    assert!(
        store
            .set_deployment_status(recorded.id, "queued", "building", None, Millis(50))
            .await
            .unwrap()
    );
    assert!(
        store
            .publish_deployment(recorded.id, "building", Millis(60))
            .await
            .unwrap()
    );
    let live = store.deployment(recorded.id).await.unwrap().unwrap();
    assert_eq!(
        (live.status.as_str(), live.replaces),
        ("deployed", Some(deployed[1]))
    );
    let environment = store
        .environment(project.id, "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(environment.current_deployment_id, Some(recorded.id));
    assert!(
        store
            .protected_builds(project.id)
            .await
            .unwrap()
            .contains(&first_build),
        "the live rollback's artifacts came from build r1"
    );
}

/// A database of schema 18 (deployments, one of them a site's rollback, and a queued
/// job) upgrades: the rollback is still not one of its build's own deployments, the
/// build's deployment is still recorded once, and the job is claimable by any agent.
async fn deployments_of_the_previous_release_upgrade(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    database
        .at_schema_version(
            18,
            &[
                "INSERT INTO projects (id, slug, name, created_at, default_branch) \
                 VALUES (7, 'old', 'Old', 1, 'main')",
                "INSERT INTO builds (id, project_id, run_id, number, status, created_at, \
                 started_at, last_event_at, last_event_id, last_seq) \
                 VALUES (70, 7, 'old-run', 1, 'success', 1, 1, 1, 0, 0)",
                "INSERT INTO builds (id, project_id, run_id, number, status, created_at, \
                 started_at, last_event_at, last_event_id, last_seq) \
                 VALUES (71, 7, 'queued-run', 2, 'queued', 1, 1, 1, 0, 0)",
                "INSERT INTO environments (id, project_id, name, current_deployment_id, \
                 version, created_at) VALUES (5, 7, 'production', 501, 2, 1)",
                "INSERT INTO deployments (id, project_id, environment_id, build_id, step, \
                 publish_dir, status, created_at, finished_at) \
                 VALUES (500, 7, 5, 70, 'publish', 'dist', 'deployed', 1, 2)",
                "INSERT INTO deployments (id, project_id, environment_id, build_id, step, \
                 publish_dir, status, rollback_of, replaces, created_at, finished_at) \
                 VALUES (501, 7, 5, 70, 'publish', 'dist', 'deployed', 500, 500, 3, 3)",
                "INSERT INTO jobs (id, build_id, project_id, step, position, state, priority, \
                 depends_on, labels, spec, created_at, queued_at) \
                 VALUES (700, 71, 7, 'test', 0, 'queued', 5, '[]', '[]', '{}', 1, 1)",
            ],
        )
        .await;
    let store = database.open_dyn().await;
    let own = store.deployments_of_build(70).await.unwrap();
    assert_eq!(own.iter().map(|d| d.id).collect::<Vec<_>>(), [500]);
    let rollback = store.deployment(501).await.unwrap().unwrap();
    assert_eq!(
        (rollback.rollback_of, rollback.rollback_run_id.as_deref()),
        (Some(500), Some("old-run"))
    );
    let project = store.project_by_slug("old").await.unwrap().unwrap();
    let recorded = store
        .ensure_deployment(
            &NewDeployment {
                environment: "production".into(),
                ..new(&project, 70)
            },
            Millis(10),
        )
        .await
        .unwrap();
    assert_eq!(recorded.id, 500, "still recorded once");
    let agent = store
        .register_agent(
            &NewAgent {
                name: "a".into(),
                token_id: 1,
                labels: Vec::new(),
                concurrency: 1,
                executor: "process".into(),
                hostname: None,
                version: None,
            },
            Millis(10),
        )
        .await
        .unwrap();
    let claimed = store
        .claim_job(
            &agent,
            ClaimRules {
                lease_ms: 60_000,
                aging_ms: 300_000,
            },
            Millis(20),
        )
        .await
        .unwrap()
        .expect("the old job is anyone's");
    assert_eq!(claimed.id, 700);
}
