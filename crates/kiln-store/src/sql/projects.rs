//! Projects in SQL: projects, their tokens, and the secret a project's GitHub webhooks
//! are signed with (kept as is: verifying an HMAC needs the key itself).

use async_trait::async_trait;
use kiln_core::token::Scope;
use kiln_core::{Millis, ProjectSlug};
use sqlx::Connection;

use super::db;
use super::rows::{project_from_row, token_from_row};
use super::{SqlStore, rows, trusted};
use crate::records::*;
use crate::{Engine, ProjectStore, StoreError, StoreResult};

/// How long each step of the PostgreSQL readiness check (connect, ping) may take.
const HEALTH_STEP: std::time::Duration = std::time::Duration::from_secs(3);

fn health_timeout() -> StoreError {
    StoreError::Unavailable("the database did not answer within 3 s".into())
}

#[async_trait]
impl ProjectStore for SqlStore {
    fn engine(&self) -> Engine {
        self.engine
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.engine == Engine::Sqlite {
            db::query("SELECT 1").execute(&self.pool).await?;
            return Ok(());
        }
        // PostgreSQL: the check's own connection, each step bounded, so a database that
        // stopped answering is told within seconds. A kept connection that fails (the
        // database restarted since) is replaced at once and the check made again.
        let mut health = self.health.lock().await;
        if let Some(connection) = health.as_mut() {
            match tokio::time::timeout(HEALTH_STEP, connection.ping()).await {
                Ok(Ok(())) => return Ok(()),
                _ => *health = None,
            }
        }
        let options: sqlx::postgres::PgConnectOptions = self
            .database_url
            .parse()
            .map_err(|error: sqlx::Error| StoreError::from(error))?;
        let mut connection =
            tokio::time::timeout(HEALTH_STEP, sqlx::PgConnection::connect_with(&options))
                .await
                .map_err(|_| health_timeout())??;
        tokio::time::timeout(HEALTH_STEP, connection.ping())
            .await
            .map_err(|_| health_timeout())??;
        *health = Some(connection);
        Ok(())
    }

    async fn create_project(
        &self,
        slug: &ProjectSlug,
        name: &str,
        now: Millis,
    ) -> StoreResult<Project> {
        let row = db::query(trusted(format!(
            "INSERT INTO projects (slug, name, created_at) VALUES ($1, $2, $3) RETURNING {}",
            rows::PROJECT_COLUMNS
        )))
        .bind(slug.as_str())
        .bind(name)
        .bind(now.0)
        .fetch_one(&self.pool)
        .await
        .map_err(|error| match error {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a project with slug '{slug}' exists already"))
            }
            other => other,
        })?;
        project_from_row(&row)
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let rows = db::query(trusted(format!(
            "SELECT {} FROM projects ORDER BY slug",
            rows::PROJECT_COLUMNS
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project_from_row).collect()
    }

    async fn project_by_slug(&self, slug: &str) -> StoreResult<Option<Project>> {
        let row = db::query(trusted(format!(
            "SELECT {} FROM projects WHERE slug = $1",
            rows::PROJECT_COLUMNS
        )))
        .bind(slug)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn project_by_id(&self, id: i64) -> StoreResult<Option<Project>> {
        let row = db::query(trusted(format!(
            "SELECT {} FROM projects WHERE id = $1",
            rows::PROJECT_COLUMNS
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn create_token(&self, token: &NewToken, now: Millis) -> StoreResult<TokenRecord> {
        let row = db::query(trusted(format!(
            "INSERT INTO tokens (project_id, kind, name, scopes, token_hash, display_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {}",
            rows::TOKEN_COLUMNS
        )))
        .bind(token.project_id)
        .bind(token.kind.as_str())
        .bind(&token.name)
        .bind(Scope::join(&token.scopes))
        .bind(&token.token_hash)
        .bind(&token.display_prefix)
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        token_from_row(&row)
    }

    async fn ensure_token(&self, token: &NewToken, now: Millis) -> StoreResult<TokenRecord> {
        db::query(
            "INSERT INTO tokens (project_id, kind, name, scopes, token_hash, display_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token.project_id)
        .bind(token.kind.as_str())
        .bind(&token.name)
        .bind(Scope::join(&token.scopes))
        .bind(&token.token_hash)
        .bind(&token.display_prefix)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        self.token_by_hash(&token.token_hash)
            .await?
            .ok_or(StoreError::NotFound("token"))
    }

    async fn list_tokens(&self, project_id: Option<i64>) -> StoreResult<Vec<TokenRecord>> {
        let rows = match project_id {
            Some(project_id) => {
                db::query(trusted(format!(
                    "SELECT {} FROM tokens WHERE project_id = $1 ORDER BY id",
                    rows::TOKEN_COLUMNS
                )))
                .bind(project_id)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                db::query(trusted(format!(
                    "SELECT {} FROM tokens WHERE project_id IS NULL ORDER BY id",
                    rows::TOKEN_COLUMNS
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>> {
        let row = db::query(trusted(format!(
            "SELECT {} FROM tokens WHERE token_hash = $1",
            rows::TOKEN_COLUMNS
        )))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn revoke_token(
        &self,
        project_id: Option<i64>,
        token_id: i64,
        now: Millis,
    ) -> StoreResult<TokenRecord> {
        // Instance tokens have no project; -1 stands for "none" so one statement serves both.
        let row = db::query(trusted(format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND COALESCE(project_id, -1) = $3 RETURNING {}",
            rows::TOKEN_COLUMNS
        )))
        .bind(now.0)
        .bind(token_id)
        .bind(project_id.unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(token_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("token"))
    }

    async fn touch_token(&self, token_id: i64, now: Millis) -> StoreResult<()> {
        db::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(token_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_github_secret(&self, project_id: i64, secret: Option<&str>) -> StoreResult<()> {
        let done = db::query("UPDATE projects SET github_secret = $1 WHERE id = $2")
            .bind(secret)
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("project"));
        }
        Ok(())
    }

    async fn github_secret(&self, project_id: i64) -> StoreResult<Option<String>> {
        let row = db::query("SELECT github_secret FROM projects WHERE id = $1")
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.try_get(0)?),
            None => Err(StoreError::NotFound("project")),
        }
    }
}
