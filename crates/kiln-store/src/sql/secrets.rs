//! Project secrets and repository credentials: ciphertext in, ciphertext out. The server
//! encrypts and decrypts; this module never sees a secret's value.

use crate::SecretStore;
use async_trait::async_trait;
use kiln_core::Millis;

use super::SqlStore;
use super::db;
use crate::records::SecretRecord;
use crate::{StoreError, StoreResult};

#[async_trait]
impl SecretStore for SqlStore {
    async fn set_project_secret(
        &self,
        project_id: i64,
        name: &str,
        ciphertext: &str,
        now: Millis,
    ) -> StoreResult<SecretRecord> {
        let row = db::query(
            "INSERT INTO project_secrets (project_id, name, ciphertext, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (project_id, name) DO UPDATE SET \
             ciphertext = excluded.ciphertext, updated_at = excluded.updated_at \
             RETURNING name, created_at, updated_at",
        )
        .bind(project_id)
        .bind(name)
        .bind(ciphertext)
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(SecretRecord {
            name: row.try_get(0)?,
            created_at: Millis(row.try_get(1)?),
            updated_at: Millis(row.try_get(2)?),
        })
    }

    async fn list_project_secrets(&self, project_id: i64) -> StoreResult<Vec<SecretRecord>> {
        let rows = db::query(
            "SELECT name, created_at, updated_at FROM project_secrets WHERE project_id = $1 ORDER BY name",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SecretRecord {
                    name: row.try_get(0)?,
                    created_at: Millis(row.try_get(1)?),
                    updated_at: Millis(row.try_get(2)?),
                })
            })
            .collect()
    }

    async fn project_secret_values(&self, project_id: i64) -> StoreResult<Vec<(String, String)>> {
        let rows = db::query(
            "SELECT name, ciphertext FROM project_secrets WHERE project_id = $1 ORDER BY name",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn delete_project_secret(&self, project_id: i64, name: &str) -> StoreResult<bool> {
        let done = db::query("DELETE FROM project_secrets WHERE project_id = $1 AND name = $2")
            .bind(project_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_repo_credentials(
        &self,
        project_id: i64,
        repo: Option<&str>,
        ciphertext: Option<&str>,
    ) -> StoreResult<()> {
        let done = db::query("UPDATE projects SET repo = $1, repo_credentials = $2 WHERE id = $3")
            .bind(repo)
            .bind(ciphertext)
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("project"));
        }
        Ok(())
    }
}
