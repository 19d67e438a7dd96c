//! The artifact lifecycle on both engines: retention rules, pins, the protected builds,
//! a project's builds with artifacts, manifests deleted in one transaction and blob rows
//! forgotten only while no manifest row names them, verification rebuilds.

use async_trait::async_trait;
use kiln_core::Millis;

use super::db::{self, Row};
use super::{SqlStore, trusted};
use crate::{
    ArtifactLifecycleStore, BlobRecord, BuildArtifactUsage, PinRecord, RetentionRecord,
    StoreResult, VerificationRecord,
};

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(value: Option<i64>) -> Option<u32> {
    value.map(|v| v.clamp(0, i64::from(u32::MAX)) as u32)
}

fn retention(row: &Row) -> StoreResult<RetentionRecord> {
    Ok(RetentionRecord {
        project_id: row.try_get("project_id")?,
        keep_builds: count(row.try_get("keep_builds")?),
        keep_days: count(row.try_get("keep_days")?),
        updated_at: Millis(row.try_get("updated_at")?),
    })
}

fn blob(row: &Row) -> StoreResult<BlobRecord> {
    Ok(BlobRecord {
        sha256: row.try_get("sha256")?,
        size: row.try_get::<i64, _>("size")?.max(0) as u64,
        md5: row.try_get("md5")?,
        sha512: row.try_get("sha512")?,
    })
}

const RETENTION_SELECT: &str =
    "SELECT project_id, keep_builds, keep_days, updated_at FROM artifact_retention";

#[async_trait]
impl ArtifactLifecycleStore for SqlStore {
    async fn artifact_retention(&self, project_id: i64) -> StoreResult<Option<RetentionRecord>> {
        let row = db::query(trusted(format!("{RETENTION_SELECT} WHERE project_id = $1")))
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(retention).transpose()
    }

    async fn set_artifact_retention(
        &self,
        project_id: i64,
        keep_builds: Option<u32>,
        keep_days: Option<u32>,
        now: Millis,
    ) -> StoreResult<RetentionRecord> {
        db::query(
            "INSERT INTO artifact_retention (project_id, keep_builds, keep_days, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (project_id) DO UPDATE SET \
             keep_builds = excluded.keep_builds, keep_days = excluded.keep_days, \
             updated_at = excluded.updated_at",
        )
        .bind(project_id)
        .bind(keep_builds.map(i64::from))
        .bind(keep_days.map(i64::from))
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        Ok(RetentionRecord {
            project_id,
            keep_builds,
            keep_days,
            updated_at: now,
        })
    }

    async fn retention_rules(&self) -> StoreResult<Vec<RetentionRecord>> {
        let rows = db::query(trusted(format!(
            "{RETENTION_SELECT} WHERE keep_builds IS NOT NULL OR keep_days IS NOT NULL \
             ORDER BY project_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(retention).collect()
    }

    async fn pin_build(&self, build_id: i64, pinned_by: &str, now: Millis) -> StoreResult<bool> {
        let inserted = db::query(
            "INSERT INTO build_pins (build_id, pinned_by, pinned_at) VALUES ($1, $2, $3) \
             ON CONFLICT (build_id) DO NOTHING",
        )
        .bind(build_id)
        .bind(pinned_by.to_owned())
        .bind(now.0)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn unpin_build(&self, build_id: i64) -> StoreResult<bool> {
        let deleted = db::query("DELETE FROM build_pins WHERE build_id = $1")
            .bind(build_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted == 1)
    }

    async fn build_pin(&self, build_id: i64) -> StoreResult<Option<PinRecord>> {
        let row =
            db::query("SELECT build_id, pinned_by, pinned_at FROM build_pins WHERE build_id = $1")
                .bind(build_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(PinRecord {
                build_id: row.try_get("build_id")?,
                pinned_by: row.try_get("pinned_by")?,
                pinned_at: Millis(row.try_get("pinned_at")?),
            })
        })
        .transpose()
    }

    async fn protected_builds(&self, project_id: i64) -> StoreResult<Vec<i64>> {
        // Pinned builds, the newest successful build of each branch, the build each
        // environment serves now, the two newest deployed builds of each environment
        // (the last known good one stays ready for a rollback), and the earlier build
        // whose deploy step a script rollback re-runs with its artifacts, while that
        // rollback runs or is live.
        let rows = db::query(
            "SELECT p.build_id AS id FROM build_pins p JOIN builds b ON b.id = p.build_id \
             WHERE b.project_id = $1 \
             UNION \
             SELECT b.id AS id FROM builds b JOIN ( \
                 SELECT COALESCE(branch, '') AS branch, MAX(number) AS number FROM builds \
                 WHERE project_id = $1 AND status = 'success' GROUP BY COALESCE(branch, '') \
             ) last ON last.branch = COALESCE(b.branch, '') AND last.number = b.number \
             WHERE b.project_id = $1 AND b.status = 'success' \
             UNION \
             SELECT d.build_id AS id FROM environments e \
             JOIN deployments d ON d.id = e.current_deployment_id WHERE e.project_id = $1 \
             UNION \
             SELECT x.build_id AS id FROM ( \
                 SELECT build_id, ROW_NUMBER() OVER (PARTITION BY environment_id ORDER BY id DESC) AS n \
                 FROM deployments WHERE project_id = $1 AND status = 'deployed' \
             ) x WHERE x.n <= 2 \
             UNION \
             SELECT o.build_id AS id FROM deployments r JOIN deployments o ON o.id = r.rollback_of \
             WHERE r.project_id = $1 AND r.follows_build = 1 AND r.rollback_of IS NOT NULL \
               AND (r.status IN ('queued', 'cloning', 'building', 'uploading') \
                 OR r.id IN (SELECT current_deployment_id FROM environments WHERE project_id = $1)) \
             ORDER BY id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| row.try_get::<i64, _>("id")).collect()
    }

    async fn builds_with_artifacts(&self, project_id: i64) -> StoreResult<Vec<BuildArtifactUsage>> {
        let rows = db::query(
            "SELECT b.id, b.run_id, b.number, b.branch, b.status, b.ended_at, \
             CAST(COUNT(*) AS BIGINT) AS files, CAST(SUM(a.size) AS BIGINT) AS bytes \
             FROM builds b JOIN artifacts a ON a.build_id = b.id WHERE b.project_id = $1 \
             GROUP BY b.id, b.run_id, b.number, b.branch, b.status, b.ended_at ORDER BY b.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BuildArtifactUsage {
                    build_id: row.try_get("id")?,
                    run_id: row.try_get("run_id")?,
                    number: row.try_get("number")?,
                    branch: row.try_get("branch")?,
                    status: row.try_get("status")?,
                    ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(Millis),
                    files: row.try_get::<i64, _>("files")?.max(0) as u64,
                    bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn blobs_only_named_by(&self, build_ids: &[i64]) -> StoreResult<Vec<BlobRecord>> {
        if build_ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = placeholders(1, build_ids.len());
        let statement = format!(
            "SELECT b.sha256, b.size, b.md5, b.sha512 FROM artifact_blobs b \
             WHERE EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256 AND a.build_id IN ({list})) \
             AND NOT EXISTS (SELECT 1 FROM artifacts o WHERE o.sha256 = b.sha256 AND o.build_id NOT IN ({list})) \
             ORDER BY b.sha256"
        );
        let mut query = db::query(trusted(statement));
        for id in build_ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(blob).collect()
    }

    async fn delete_build_artifacts(&self, build_ids: &[i64]) -> StoreResult<u64> {
        if build_ids.is_empty() {
            return Ok(0);
        }
        let statement = format!(
            "DELETE FROM artifacts WHERE build_id IN ({})",
            placeholders(1, build_ids.len())
        );
        let mut query = db::query(trusted(statement));
        for id in build_ids {
            query = query.bind(*id);
        }
        let mut transaction = self.pool.begin().await?;
        let deleted = query.execute(&mut *transaction).await?.rows_affected();
        transaction.commit().await?;
        Ok(deleted)
    }

    async fn unreferenced_blobs(&self, limit: i64) -> StoreResult<Vec<BlobRecord>> {
        let rows = db::query(
            "SELECT b.sha256, b.size, b.md5, b.sha512 FROM artifact_blobs b \
             WHERE NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256) \
             ORDER BY b.created_at, b.sha256 LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(blob).collect()
    }

    async fn forget_blob(&self, sha256: &str) -> StoreResult<bool> {
        let deleted = db::query(
            "DELETE FROM artifact_blobs WHERE sha256 = $1 \
             AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = $1)",
        )
        .bind(sha256.to_owned())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted == 1)
    }

    async fn record_verification(
        &self,
        build_id: i64,
        rebuild_id: i64,
        now: Millis,
    ) -> StoreResult<()> {
        db::query(
            "INSERT INTO build_verifications (build_id, rebuild_id, requested_at) \
             VALUES ($1, $2, $3) ON CONFLICT (build_id, rebuild_id) DO NOTHING",
        )
        .bind(build_id)
        .bind(rebuild_id)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn latest_verification(&self, build_id: i64) -> StoreResult<Option<VerificationRecord>> {
        let row = db::query(
            "SELECT v.build_id, v.rebuild_id, b.run_id, v.requested_at FROM build_verifications v \
             JOIN builds b ON b.id = v.rebuild_id WHERE v.build_id = $1 \
             ORDER BY v.rebuild_id DESC LIMIT 1",
        )
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(VerificationRecord {
                build_id: row.try_get("build_id")?,
                rebuild_id: row.try_get("rebuild_id")?,
                rebuild_run_id: row.try_get("run_id")?,
                requested_at: Millis(row.try_get("requested_at")?),
            })
        })
        .transpose()
    }
}
