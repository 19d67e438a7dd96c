//! Inbound hooks in SQL: the secret a project's GitHub webhooks are signed with (kept as
//! is: verifying an HMAC needs the key itself).

use sqlx::Row;

use super::SqlStore;
use crate::{StoreError, StoreResult};

impl SqlStore {
    pub(super) async fn q_set_github_secret(
        &self,
        project_id: i64,
        secret: Option<&str>,
    ) -> StoreResult<()> {
        let done = sqlx::query("UPDATE projects SET github_secret = $1 WHERE id = $2")
            .bind(secret)
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("project"));
        }
        Ok(())
    }

    pub(super) async fn q_github_secret(&self, project_id: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT github_secret FROM projects WHERE id = $1")
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.try_get(0)?),
            None => Err(StoreError::NotFound("project")),
        }
    }
}
