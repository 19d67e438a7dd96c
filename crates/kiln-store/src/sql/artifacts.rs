//! Artifact manifests on both engines: a file added with its blob's digests in one
//! transaction (a path, once written, keeps its content), and a build's files read back
//! with their digests.

use super::db::{self, Row};
use super::trusted;
use async_trait::async_trait;
use kiln_core::Millis;

use super::SqlStore;
use crate::{ArtifactAdded, ArtifactRecord, ArtifactStore, BlobRecord, StoreResult};

const SELECT: &str = "SELECT a.build_id, a.path, a.step, a.size, a.mode, a.sha256, a.created_at, \
     b.md5, b.sha512 FROM artifacts a JOIN artifact_blobs b ON b.sha256 = a.sha256";

fn record(row: &Row) -> StoreResult<ArtifactRecord> {
    Ok(ArtifactRecord {
        build_id: row.try_get("build_id")?,
        path: row.try_get("path")?,
        step: row.try_get("step")?,
        size: row.try_get::<i64, _>("size")?.max(0) as u64,
        mode: row.try_get::<i64, _>("mode")?.clamp(0, 0o7777) as u32,
        md5: row.try_get("md5")?,
        sha256: row.try_get("sha256")?,
        sha512: row.try_get("sha512")?,
        created_at: Millis(row.try_get("created_at")?),
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

#[async_trait]
impl ArtifactStore for SqlStore {
    async fn add_artifact(&self, record: &ArtifactRecord) -> StoreResult<ArtifactAdded> {
        let mut transaction = self.pool.begin().await?;
        db::query(
            "INSERT INTO artifact_blobs (sha256, size, md5, sha512, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(record.sha256.clone())
        .bind(record.size as i64)
        .bind(record.md5.clone())
        .bind(record.sha512.clone())
        .bind(record.created_at.0)
        .execute(&mut *transaction)
        .await?;
        let inserted = db::query(
            "INSERT INTO artifacts (build_id, path, step, size, mode, sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (build_id, path) DO NOTHING",
        )
        .bind(record.build_id)
        .bind(record.path.clone())
        .bind(record.step.clone())
        .bind(record.size as i64)
        .bind(i64::from(record.mode))
        .bind(record.sha256.clone())
        .bind(record.created_at.0)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        let outcome = if inserted == 1 {
            ArtifactAdded::Added
        } else {
            let existing: String =
                db::query("SELECT sha256 FROM artifacts WHERE build_id = $1 AND path = $2")
                    .bind(record.build_id)
                    .bind(record.path.clone())
                    .fetch_one(&mut *transaction)
                    .await?
                    .try_get("sha256")?;
            if existing == record.sha256 {
                ArtifactAdded::Unchanged
            } else {
                ArtifactAdded::Conflict(existing)
            }
        };
        transaction.commit().await?;
        Ok(outcome)
    }

    async fn remove_artifact(&self, build_id: i64, path: &str) -> StoreResult<bool> {
        let removed = db::query("DELETE FROM artifacts WHERE build_id = $1 AND path = $2")
            .bind(build_id)
            .bind(path.to_owned())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn build_artifacts(&self, build_id: i64) -> StoreResult<Vec<ArtifactRecord>> {
        let rows = db::query(trusted(format!(
            "{SELECT} WHERE a.build_id = $1 ORDER BY a.path"
        )))
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn build_artifact(
        &self,
        build_id: i64,
        path: &str,
    ) -> StoreResult<Option<ArtifactRecord>> {
        let row = db::query(trusted(format!(
            "{SELECT} WHERE a.build_id = $1 AND a.path = $2"
        )))
        .bind(build_id)
        .bind(path.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn build_artifact_by_sha256(
        &self,
        build_id: i64,
        sha256: &str,
    ) -> StoreResult<Option<ArtifactRecord>> {
        let row = db::query(trusted(format!(
            "{SELECT} WHERE a.sha256 = $1 AND a.build_id = $2 ORDER BY a.path LIMIT 1"
        )))
        .bind(sha256.to_owned())
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn build_artifact_totals(&self, build_id: i64) -> StoreResult<(u64, u64)> {
        let row = db::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
             FROM artifacts WHERE build_id = $1",
        )
        .bind(build_id)
        .fetch_one(&self.pool)
        .await?;
        let (count, bytes): (i64, i64) = (row.try_get("n")?, row.try_get("bytes")?);
        Ok((count.max(0) as u64, bytes.max(0) as u64))
    }

    async fn artifact_blob(&self, sha256: &str) -> StoreResult<Option<BlobRecord>> {
        let row =
            db::query("SELECT sha256, size, md5, sha512 FROM artifact_blobs WHERE sha256 = $1")
                .bind(sha256.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(blob).transpose()
    }

    async fn undigested_blobs(&self, limit: i64) -> StoreResult<Vec<BlobRecord>> {
        let rows = db::query(
            "SELECT sha256, size, md5, sha512 FROM artifact_blobs WHERE md5 IS NULL \
             ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(blob).collect()
    }

    async fn set_blob_digests(&self, sha256: &str, md5: &str, sha512: &str) -> StoreResult<()> {
        db::query("UPDATE artifact_blobs SET md5 = $1, sha512 = $2 WHERE sha256 = $3")
            .bind(md5.to_owned())
            .bind(sha512.to_owned())
            .bind(sha256.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
