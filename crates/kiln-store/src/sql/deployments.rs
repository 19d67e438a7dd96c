//! Deployments on both engines: environments created on first use, deployments that
//! follow a build recorded once per (build, environment) (`follows_build`, which a
//! switching rollback is not), statuses moved by compare-and-set, and the switch of
//! an environment's served deployment as one row update in the transaction that marks
//! the deployment deployed (or records the rollback). Every transaction's first statement
//! writes, so SQLite takes its write lock at once.

use super::db::{self, Row};
use super::trusted;
use async_trait::async_trait;
use kiln_core::Millis;

use super::SqlStore;
use crate::{
    DeploymentRecord, DeploymentStore, EnvironmentRecord, NewDeployment, ServedRelease, StoreResult,
};

const SELECT: &str = "SELECT d.id, d.project_id, d.environment_id, e.name AS environment, \
     d.build_id, b.run_id, b.number, b.branch, b.commit_sha, d.step, d.publish_dir, d.url, \
     d.status, d.message, d.requested_by, d.rollback_of, d.replaces, d.created_at, \
     d.finished_at, ob.run_id AS rollback_run_id, ob.number AS rollback_build_number \
     FROM deployments d JOIN environments e ON e.id = d.environment_id \
     JOIN builds b ON b.id = d.build_id \
     LEFT JOIN deployments o ON o.id = d.rollback_of LEFT JOIN builds ob ON ob.id = o.build_id";

fn deployment(row: &Row) -> StoreResult<DeploymentRecord> {
    Ok(DeploymentRecord {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        environment_id: row.try_get("environment_id")?,
        environment: row.try_get("environment")?,
        build_id: row.try_get("build_id")?,
        run_id: row.try_get("run_id")?,
        build_number: row.try_get("number")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        step: row.try_get("step")?,
        publish_dir: row.try_get("publish_dir")?,
        url: row.try_get("url")?,
        status: row.try_get("status")?,
        message: row.try_get("message")?,
        requested_by: row.try_get("requested_by")?,
        rollback_of: row.try_get("rollback_of")?,
        replaces: row.try_get("replaces")?,
        created_at: Millis(row.try_get("created_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(Millis),
        rollback_run_id: row.try_get("rollback_run_id")?,
        rollback_build_number: row.try_get("rollback_build_number")?,
    })
}

fn environment(row: &Row) -> StoreResult<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        current_deployment_id: row.try_get("current_deployment_id")?,
        version: row.try_get("version")?,
        created_at: Millis(row.try_get("created_at")?),
    })
}

impl SqlStore {
    async fn environment_id(
        connection: &mut db::Conn,
        project_id: i64,
        name: &str,
        now: Millis,
    ) -> StoreResult<i64> {
        db::query(
            "INSERT INTO environments (project_id, name, current_deployment_id, version, created_at) \
             VALUES ($1, $2, NULL, 0, $3) ON CONFLICT (project_id, name) DO NOTHING",
        )
        .bind(project_id)
        .bind(name.to_owned())
        .bind(now.0)
        .execute(&mut *connection)
        .await?;
        db::query("SELECT id FROM environments WHERE project_id = $1 AND name = $2")
            .bind(project_id)
            .bind(name.to_owned())
            .fetch_one(&mut *connection)
            .await?
            .try_get("id")
    }
}

#[async_trait]
impl DeploymentStore for SqlStore {
    async fn ensure_deployment(
        &self,
        new: &NewDeployment,
        now: Millis,
    ) -> StoreResult<DeploymentRecord> {
        let mut transaction = self.pool.begin().await?;
        let environment_id =
            Self::environment_id(&mut transaction, new.project_id, &new.environment, now).await?;
        db::query(
            "INSERT INTO deployments (project_id, environment_id, build_id, step, publish_dir, \
             url, status, requested_by, rollback_of, created_at, follows_build) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) ON CONFLICT DO NOTHING",
        )
        .bind(new.project_id)
        .bind(environment_id)
        .bind(new.build_id)
        .bind(new.step.clone())
        .bind(new.publish_dir.clone())
        .bind(new.url.clone())
        .bind(new.status.clone())
        .bind(new.requested_by.clone())
        .bind(new.rollback_of)
        .bind(now.0)
        .execute(&mut *transaction)
        .await?;
        // Whoever asked is known to the trigger's call; another (a claim, the periodic
        // pass) may have recorded the deployment first without it.
        if let Some(requested_by) = &new.requested_by {
            db::query(
                "UPDATE deployments SET requested_by = $1 WHERE build_id = $2 \
                 AND environment_id = $3 AND follows_build = 1 AND requested_by IS NULL",
            )
            .bind(requested_by.clone())
            .bind(new.build_id)
            .bind(environment_id)
            .execute(&mut *transaction)
            .await?;
        }
        let row = db::query(trusted(format!(
            "{SELECT} WHERE d.build_id = $1 AND d.environment_id = $2 AND d.follows_build = 1"
        )))
        .bind(new.build_id)
        .bind(environment_id)
        .fetch_one(&mut *transaction)
        .await?;
        let record = deployment(&row)?;
        transaction.commit().await?;
        Ok(record)
    }

    async fn set_deployment_status(
        &self,
        id: i64,
        from: &str,
        to: &str,
        message: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        let terminal = matches!(to, "failed" | "cancelled" | "deployed");
        let changed = db::query(
            "UPDATE deployments SET status = $1, message = COALESCE($2, message), \
             finished_at = CASE WHEN $3 = 1 THEN $4 ELSE finished_at END \
             WHERE id = $5 AND status = $6",
        )
        .bind(to.to_owned())
        .bind(message.map(str::to_owned))
        .bind(i64::from(terminal))
        .bind(now.0)
        .bind(id)
        .bind(from.to_owned())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn publish_deployment(&self, id: i64, from: &str, now: Millis) -> StoreResult<bool> {
        let mut transaction = self.pool.begin().await?;
        let changed = db::query(
            "UPDATE deployments SET status = 'deployed', finished_at = $1, \
             replaces = (SELECT e.current_deployment_id FROM environments e \
                         WHERE e.id = deployments.environment_id) \
             WHERE id = $2 AND status = $3",
        )
        .bind(now.0)
        .bind(id)
        .bind(from.to_owned())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if changed != 1 {
            transaction.rollback().await?;
            return Ok(false);
        }
        db::query(
            "UPDATE environments SET current_deployment_id = $1, version = version + 1 \
             WHERE id = (SELECT environment_id FROM deployments WHERE id = $1)",
        )
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    async fn roll_back(
        &self,
        new: &NewDeployment,
        expected_current: Option<i64>,
        now: Millis,
    ) -> StoreResult<Option<DeploymentRecord>> {
        let mut transaction = self.pool.begin().await?;
        // Taking the environment row first (a write) orders concurrent rollbacks and
        // publishes; the compare on the current deployment refuses a stale request.
        let held = db::query(
            "UPDATE environments SET version = version + 1 WHERE project_id = $1 AND name = $2 \
             AND COALESCE(current_deployment_id, 0) = $3",
        )
        .bind(new.project_id)
        .bind(new.environment.clone())
        .bind(expected_current.unwrap_or(0))
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if held != 1 {
            transaction.rollback().await?;
            return Ok(None);
        }
        let environment_id: i64 =
            db::query("SELECT id FROM environments WHERE project_id = $1 AND name = $2")
                .bind(new.project_id)
                .bind(new.environment.clone())
                .fetch_one(&mut *transaction)
                .await?
                .try_get("id")?;
        let id: i64 = db::query(
            "INSERT INTO deployments (project_id, environment_id, build_id, step, publish_dir, \
             url, status, requested_by, rollback_of, replaces, created_at, finished_at, \
             follows_build) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 0) RETURNING id",
        )
        .bind(new.project_id)
        .bind(environment_id)
        .bind(new.build_id)
        .bind(new.step.clone())
        .bind(new.publish_dir.clone())
        .bind(new.url.clone())
        .bind(new.status.clone())
        .bind(new.requested_by.clone())
        .bind(new.rollback_of)
        .bind(expected_current)
        .bind(now.0)
        .fetch_one(&mut *transaction)
        .await?
        .try_get("id")?;
        if new.status == "deployed" {
            db::query("UPDATE environments SET current_deployment_id = $1 WHERE id = $2")
                .bind(id)
                .bind(environment_id)
                .execute(&mut *transaction)
                .await?;
        }
        let row = db::query(trusted(format!("{SELECT} WHERE d.id = $1")))
            .bind(id)
            .fetch_one(&mut *transaction)
            .await?;
        let record = deployment(&row)?;
        transaction.commit().await?;
        Ok(Some(record))
    }

    async fn deployment(&self, id: i64) -> StoreResult<Option<DeploymentRecord>> {
        let row = db::query(trusted(format!("{SELECT} WHERE d.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(deployment).transpose()
    }

    async fn deployments_of_build(&self, build_id: i64) -> StoreResult<Vec<DeploymentRecord>> {
        let rows = db::query(trusted(format!(
            "{SELECT} WHERE d.build_id = $1 AND d.follows_build = 1 ORDER BY d.id"
        )))
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment).collect()
    }

    async fn builds_with_active_deployments(&self, limit: i64) -> StoreResult<Vec<i64>> {
        let rows = db::query(
            "SELECT DISTINCT build_id FROM deployments \
             WHERE status IN ('queued', 'cloning', 'building', 'uploading') \
             ORDER BY build_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| row.try_get("build_id")).collect()
    }

    async fn list_deployments(
        &self,
        project_id: i64,
        environment: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<DeploymentRecord>> {
        let rows = db::query(trusted(format!(
            "{SELECT} WHERE d.project_id = $1 AND ($2 = '' OR e.name = $2) AND d.id < $3 \
             ORDER BY d.id DESC LIMIT $4"
        )))
        .bind(project_id)
        .bind(environment.unwrap_or("").to_owned())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment).collect()
    }

    async fn list_environments(&self, project_id: i64) -> StoreResult<Vec<EnvironmentRecord>> {
        let rows = db::query(
            "SELECT id, project_id, name, current_deployment_id, version, created_at \
             FROM environments WHERE project_id = $1 ORDER BY name",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(environment).collect()
    }

    async fn environment(
        &self,
        project_id: i64,
        name: &str,
    ) -> StoreResult<Option<EnvironmentRecord>> {
        let row = db::query(
            "SELECT id, project_id, name, current_deployment_id, version, created_at \
             FROM environments WHERE project_id = $1 AND name = $2",
        )
        .bind(project_id)
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(environment).transpose()
    }

    async fn served_release(
        &self,
        project_slug: &str,
        environment: &str,
    ) -> StoreResult<Option<ServedRelease>> {
        let row = db::query(
            "SELECT e.id AS environment_id, e.version, d.id AS deployment_id, d.build_id, \
             d.publish_dir FROM projects p \
             JOIN environments e ON e.project_id = p.id AND e.name = $2 \
             JOIN deployments d ON d.id = e.current_deployment_id \
             WHERE p.slug = $1 AND d.publish_dir IS NOT NULL",
        )
        .bind(project_slug.to_owned())
        .bind(environment.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ServedRelease {
                environment_id: row.try_get("environment_id")?,
                version: row.try_get("version")?,
                deployment_id: row.try_get("deployment_id")?,
                build_id: row.try_get("build_id")?,
                publish_dir: row.try_get("publish_dir")?,
            })
        })
        .transpose()
    }
}
