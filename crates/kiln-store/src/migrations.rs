//! Forward-only, versioned migrations, one list per engine, applied at start-up.
//!
//! On PostgreSQL an advisory lock makes concurrent replicas start safely: the first
//! applies, the others wait and find nothing left to do.

use crate::sql::db::{self, Conn};
use crate::sql::trusted;

use crate::{Engine, StoreResult};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    // Every event rewrites the row of its build; with last_event_at in an index, each of
    // those writes also moved an index entry. The stale-build scan needs only the
    // running builds, which an index on status finds. (Migration files hold no comments:
    // they are split on semicolons.)
    Migration {
        version: 2,
        name: "build_status_index",
        sql: include_str!("../migrations/sqlite/0002_build_status_index.sql"),
    },
    // Builds that Kiln runs: repositories and branches of projects, agents, the job
    // queue and job logs (append-only chunks keyed by byte offset).
    Migration {
        version: 3,
        name: "jobs",
        sql: include_str!("../migrations/sqlite/0003_jobs.sql"),
    },
    // Accounts: users, dashboard sessions, per-project roles, user tokens, the audit log.
    Migration {
        version: 4,
        name: "users",
        sql: include_str!("../migrations/sqlite/0004_users.sql"),
    },
    // Notifications of build events for users, their mutes, the email outbox, and the
    // notifier's cursor (starting at the current last event: no notifications of the past).
    Migration {
        version: 5,
        name: "notifications",
        sql: include_str!("../migrations/sqlite/0005_notifications.sql"),
    },
    // Outbound webhooks: endpoints of projects, one delivery per (endpoint, event) with
    // its attempts, and the webhook consumer's cursor (starting at the current last event).
    Migration {
        version: 6,
        name: "webhooks",
        sql: include_str!("../migrations/sqlite/0006_webhooks.sql"),
    },
    // Inbound hooks: the secret GitHub signs a project's push webhooks with.
    Migration {
        version: 7,
        name: "inbound_hooks",
        sql: include_str!("../migrations/sqlite/0007_inbound_hooks.sql"),
    },
    // The webhook claim's indexes: each endpoint's pending deliveries in id order (its
    // head), and its attempted pending ones (in flight or waiting for a retry), so a claim
    // costs per active endpoint rather than per pending delivery.
    Migration {
        version: 8,
        name: "webhook_claim",
        sql: include_str!("../migrations/sqlite/0008_webhook_claim.sql"),
    },
    // Project secrets (encrypted by the server; the store sees only ciphertext) and a
    // repository's credentials, kept apart from its URL and encrypted the same way.
    Migration {
        version: 9,
        name: "project_secrets",
        sql: include_str!("../migrations/sqlite/0009_project_secrets.sql"),
    },
    // Deliveries of a disabled endpoint are held (up to a cap) instead of skipped; the
    // events past the cap are counted here.
    Migration {
        version: 10,
        name: "webhook_held",
        sql: include_str!("../migrations/sqlite/0010_webhook_held.sql"),
    },
    // Jobs `kiln run` reports: a wrapped command's output as the build's log.
    Migration {
        version: 11,
        name: "reported_jobs",
        sql: include_str!("../migrations/sqlite/0011_reported_jobs.sql"),
    },
    // Analytics and prediction read builds by project and start time.
    Migration {
        version: 12,
        name: "analytics",
        sql: include_str!("../migrations/sqlite/0012_analytics.sql"),
    },
    // A project's public status page and badges, off until its admin turns them on.
    Migration {
        version: 13,
        name: "public_status",
        sql: include_str!("../migrations/sqlite/0013_public_status.sql"),
    },
    // Test results from JUnit reports.
    Migration {
        version: 14,
        name: "test_results",
        sql: include_str!("../migrations/sqlite/0014_test_results.sql"),
    },
    // Build artifacts: manifests and the blobs they name.
    Migration {
        version: 15,
        name: "artifacts",
        sql: include_str!("../migrations/sqlite/0015_artifacts.sql"),
    },
    // Agent recommendation: the cache keys
    // agents hold, and an index for an agent's history of a step.
    Migration {
        version: 16,
        name: "agent_recommendation",
        sql: include_str!("../migrations/sqlite/0016_agent_recommendation.sql"),
    },
    // Deployments: environments with the deployment each serves, and deployments of
    // builds and rollbacks, each naming what it replaced.
    Migration {
        version: 17,
        name: "deployments",
        sql: include_str!("../migrations/sqlite/0017_deployments.sql"),
    },
    // Artifact lifecycle: retention rules per project, pinned builds, rebuilds made to
    // verify a build.
    Migration {
        version: 18,
        name: "artifact_lifecycle",
        sql: include_str!("../migrations/sqlite/0018_artifact_lifecycle.sql"),
    },
    // Analytics of closed days: one project's builds of one UTC day, encoded, and the
    // event id after which a change to one of them makes the row stale.
    Migration {
        version: 19,
        name: "analytics_days",
        sql: include_str!("../migrations/sqlite/0019_analytics_days.sql"),
    },
    // Script deployments rolled back by re-running an earlier build's deploy step (the
    // deployments that follow their build told from the rollbacks that switch a site), and
    // jobs that avoid an agent for a while (rebuilds to verify).
    Migration {
        version: 20,
        name: "rollback_reruns",
        sql: include_str!("../migrations/sqlite/0020_rollback_reruns.sql"),
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/postgres/0001_init.sql"),
    },
    // As on SQLite; on PostgreSQL it matters more: no update of a build could be HOT
    // (heap-only) while last_event_at was indexed, so each added an entry to every index
    // of builds and left a dead tuple that run_id lookups waded through until vacuum.
    // Free space per page (fillfactor) lets the new row version stay on its page.
    Migration {
        version: 2,
        name: "build_status_index",
        sql: include_str!("../migrations/postgres/0002_build_status_index.sql"),
    },
    // Builds that Kiln runs: repositories and branches of projects, agents, the job
    // queue and job logs (append-only chunks keyed by byte offset).
    Migration {
        version: 3,
        name: "jobs",
        sql: include_str!("../migrations/postgres/0003_jobs.sql"),
    },
    // Accounts: users, dashboard sessions, per-project roles, user tokens, the audit log.
    Migration {
        version: 4,
        name: "users",
        sql: include_str!("../migrations/postgres/0004_users.sql"),
    },
    // Notifications of build events for users, their mutes, the email outbox, and the
    // notifier's cursor (starting at the current last event: no notifications of the past).
    Migration {
        version: 5,
        name: "notifications",
        sql: include_str!("../migrations/postgres/0005_notifications.sql"),
    },
    // Outbound webhooks: endpoints of projects, one delivery per (endpoint, event) with
    // its attempts, and the webhook consumer's cursor (starting at the current last event).
    Migration {
        version: 6,
        name: "webhooks",
        sql: include_str!("../migrations/postgres/0006_webhooks.sql"),
    },
    // Inbound hooks: the secret GitHub signs a project's push webhooks with.
    Migration {
        version: 7,
        name: "inbound_hooks",
        sql: include_str!("../migrations/postgres/0007_inbound_hooks.sql"),
    },
    // The webhook claim's indexes: each endpoint's pending deliveries in id order (its
    // head), and its attempted pending ones (in flight or waiting for a retry), so a claim
    // costs per active endpoint rather than per pending delivery.
    Migration {
        version: 8,
        name: "webhook_claim",
        sql: include_str!("../migrations/postgres/0008_webhook_claim.sql"),
    },
    // Project secrets (encrypted by the server; the store sees only ciphertext) and a
    // repository's credentials, kept apart from its URL and encrypted the same way.
    Migration {
        version: 9,
        name: "project_secrets",
        sql: include_str!("../migrations/postgres/0009_project_secrets.sql"),
    },
    // Deliveries of a disabled endpoint are held (up to a cap) instead of skipped; the
    // events past the cap are counted here.
    Migration {
        version: 10,
        name: "webhook_held",
        sql: include_str!("../migrations/postgres/0010_webhook_held.sql"),
    },
    // Jobs `kiln run` reports: a wrapped command's output as the build's log.
    Migration {
        version: 11,
        name: "reported_jobs",
        sql: include_str!("../migrations/postgres/0011_reported_jobs.sql"),
    },
    // Analytics and prediction read builds by project and start time.
    Migration {
        version: 12,
        name: "analytics",
        sql: include_str!("../migrations/postgres/0012_analytics.sql"),
    },
    // A project's public status page and badges, off until its admin turns them on.
    Migration {
        version: 13,
        name: "public_status",
        sql: include_str!("../migrations/postgres/0013_public_status.sql"),
    },
    // Test results from JUnit reports.
    Migration {
        version: 14,
        name: "test_results",
        sql: include_str!("../migrations/postgres/0014_test_results.sql"),
    },
    // Build artifacts: manifests and the blobs they name.
    Migration {
        version: 15,
        name: "artifacts",
        sql: include_str!("../migrations/postgres/0015_artifacts.sql"),
    },
    // Agent recommendation: the cache keys
    // agents hold, and an index for an agent's history of a step.
    Migration {
        version: 16,
        name: "agent_recommendation",
        sql: include_str!("../migrations/postgres/0016_agent_recommendation.sql"),
    },
    // Deployments: environments with the deployment each serves, and deployments of
    // builds and rollbacks, each naming what it replaced.
    Migration {
        version: 17,
        name: "deployments",
        sql: include_str!("../migrations/postgres/0017_deployments.sql"),
    },
    // Artifact lifecycle: retention rules per project, pinned builds, rebuilds made to
    // verify a build.
    Migration {
        version: 18,
        name: "artifact_lifecycle",
        sql: include_str!("../migrations/postgres/0018_artifact_lifecycle.sql"),
    },
    // Analytics of closed days: one project's builds of one UTC day, encoded, and the
    // event id after which a change to one of them makes the row stale.
    Migration {
        version: 19,
        name: "analytics_days",
        sql: include_str!("../migrations/postgres/0019_analytics_days.sql"),
    },
    // Script deployments rolled back by re-running an earlier build's deploy step (the
    // deployments that follow their build told from the rollbacks that switch a site), and
    // jobs that avoid an agent for a while (rebuilds to verify).
    Migration {
        version: 20,
        name: "rollback_reruns",
        sql: include_str!("../migrations/postgres/0020_rollback_reruns.sql"),
    },
];

/// An arbitrary constant naming Kiln's migration lock.
const POSTGRES_MIGRATION_LOCK: i64 = 0x6b696c6e;

/// The newest migration of an engine's list.
pub(crate) fn latest_version(engine: Engine) -> i64 {
    let all = match engine {
        Engine::Sqlite => SQLITE,
        Engine::Postgres => POSTGRES,
    };
    all.last().map_or(0, |migration| migration.version)
}

pub(crate) async fn run(connection: &mut Conn, engine: Engine) -> StoreResult<()> {
    run_up_to(connection, engine, i64::MAX).await
}

/// Applies the migrations up to `last_version` (tests build an earlier release's schema
/// with it, to check the upgrade from there).
pub(crate) async fn run_up_to(
    connection: &mut Conn,
    engine: Engine,
    last_version: i64,
) -> StoreResult<()> {
    let all = match engine {
        Engine::Sqlite => SQLITE,
        Engine::Postgres => POSTGRES,
    };
    let count = all
        .iter()
        .take_while(|migration| migration.version <= last_version)
        .count();
    let migrations = &all[..count];
    if engine == Engine::Postgres {
        db::query("SELECT pg_advisory_lock($1)")
            .bind(POSTGRES_MIGRATION_LOCK)
            .execute(&mut *connection)
            .await?;
    }
    let result = apply_pending(connection, engine, migrations).await;
    if engine == Engine::Postgres {
        db::query("SELECT pg_advisory_unlock($1)")
            .bind(POSTGRES_MIGRATION_LOCK)
            .execute(&mut *connection)
            .await?;
    }
    result
}

async fn apply_pending(
    connection: &mut Conn,
    engine: Engine,
    migrations: &[Migration],
) -> StoreResult<()> {
    db::query(
        "CREATE TABLE IF NOT EXISTS kiln_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *connection)
    .await?;
    let applied: Vec<i64> = db::query_scalar("SELECT version FROM kiln_migrations")
        .fetch_all(&mut *connection)
        .await?;
    for migration in migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        let begin = match engine {
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        };
        // A failed statement leaves the transaction open: the session (SQLite) or the
        // connection (PostgreSQL) is dropped with the error, which rolls it back.
        db::query(begin).execute(&mut *connection).await?;
        for statement in migration
            .sql
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            db::query(trusted(statement.to_owned()))
                .unprepared()
                .execute(&mut *connection)
                .await?;
        }
        db::query("INSERT INTO kiln_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(crate::sql::wall_clock_ms())
            .execute(&mut *connection)
            .await?;
        db::query("COMMIT").execute(&mut *connection).await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            engine = engine.as_str(),
            "applied migration"
        );
    }
    Ok(())
}
