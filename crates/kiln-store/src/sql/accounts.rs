//! Accounts in SQL: users, sessions, memberships, user tokens and the audit log.

use crate::AccountStore;
use async_trait::async_trait;
use kiln_core::token::Scope;
use kiln_core::{Millis, Role};

use super::db::{self, Row};
use super::{SqlStore, rows, trusted};
use crate::accounts::*;
use crate::records::{NewToken, TokenRecord};
use crate::{StoreError, StoreResult};

const USER_COLUMNS: &str =
    "id, email, name, password_hash, instance_admin, created_at, disabled_at";
const SESSION_COLUMNS: &str = "id, user_id, csrf_token, created_at, expires_at, revoked_at";

fn user_from_row(row: &Row) -> StoreResult<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        instance_admin: row.try_get::<i64, _>("instance_admin")? != 0,
        created_at: Millis(row.try_get("created_at")?),
        disabled_at: row.try_get::<Option<i64>, _>("disabled_at")?.map(Millis),
    })
}

fn session_from_row(row: &Row) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        csrf_token: row.try_get("csrf_token")?,
        created_at: Millis(row.try_get("created_at")?),
        expires_at: Millis(row.try_get("expires_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Millis),
    })
}

fn membership_from_row(row: &Row) -> StoreResult<Membership> {
    let role: String = row.try_get("role")?;
    Ok(Membership {
        project_id: row.try_get("project_id")?,
        user_id: row.try_get("user_id")?,
        role: Role::parse("role", &role)
            .map_err(|e| StoreError::Unavailable(format!("corrupt membership row: {e}")))?,
        created_at: Millis(row.try_get("created_at")?),
    })
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user(
        &self,
        email: &str,
        name: &str,
        password_hash: Option<&str>,
        instance_admin: bool,
        now: Millis,
    ) -> StoreResult<UserRecord> {
        let row = db::query(trusted(format!(
            "INSERT INTO users (email, name, password_hash, instance_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        )))
        .bind(email)
        .bind(name)
        .bind(password_hash)
        .bind(i64::from(instance_admin))
        .bind(now.0)
        .fetch_one(&self.pool)
        .await
        .map_err(|error| match error {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a user with email '{email}' exists already"))
            }
            other => other,
        })?;
        user_from_row(&row)
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let row = db::query(trusted(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        )))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<UserRecord>> {
        let row = db::query(trusted(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows = db::query(trusted(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY email"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_password(&self, user_id: i64, password_hash: &str) -> StoreResult<()> {
        let done = db::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("user"));
        }
        Ok(())
    }

    async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf_token: &str,
        now: Millis,
        expires_at: Millis,
    ) -> StoreResult<SessionRecord> {
        let row = db::query(trusted(format!(
            "INSERT INTO sessions (user_id, token_hash, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {SESSION_COLUMNS}"
        )))
        .bind(user_id)
        .bind(token_hash)
        .bind(csrf_token)
        .bind(now.0)
        .bind(expires_at.0)
        .fetch_one(&self.pool)
        .await?;
        session_from_row(&row)
    }

    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let row = db::query(trusted(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1"
        )))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn set_user_disabled(
        &self,
        user_id: i64,
        disabled_at: Option<Millis>,
    ) -> StoreResult<UserRecord> {
        // A user deactivated twice keeps the first time.
        let row = db::query(trusted(format!(
            "UPDATE users SET disabled_at = CASE WHEN $1 IS NULL THEN NULL \
             ELSE COALESCE(disabled_at, $1) END WHERE id = $2 RETURNING {USER_COLUMNS}"
        )))
        .bind(disabled_at.map(|at| at.0))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => user_from_row(&row),
            None => Err(StoreError::NotFound("user")),
        }
    }

    async fn revoke_user_sessions(&self, user_id: i64, now: Millis) -> StoreResult<Vec<i64>> {
        let rows = db::query(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING id",
        )
        .bind(now.0)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| row.try_get::<i64, _>("id")).collect()
    }

    async fn revoke_session(&self, id: i64, now: Millis) -> StoreResult<()> {
        db::query("UPDATE sessions SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(now.0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_membership(
        &self,
        project_id: i64,
        user_id: i64,
        role: Role,
        now: Millis,
    ) -> StoreResult<Membership> {
        let row = db::query(
            "INSERT INTO memberships (project_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role \
             RETURNING project_id, user_id, role, created_at",
        )
        .bind(project_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        membership_from_row(&row)
    }

    async fn remove_membership(&self, project_id: i64, user_id: i64) -> StoreResult<()> {
        let done = db::query("DELETE FROM memberships WHERE project_id = $1 AND user_id = $2")
            .bind(project_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("member"));
        }
        Ok(())
    }

    async fn memberships_of_user(&self, user_id: i64) -> StoreResult<Vec<Membership>> {
        let rows = db::query(
            "SELECT project_id, user_id, role, created_at FROM memberships WHERE user_id = $1 ORDER BY project_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(membership_from_row).collect()
    }

    async fn members_of_project(&self, project_id: i64) -> StoreResult<Vec<Membership>> {
        let rows = db::query(
            "SELECT project_id, user_id, role, created_at FROM memberships WHERE project_id = $1 ORDER BY user_id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(membership_from_row).collect()
    }

    async fn project_admins(&self, project_id: i64) -> StoreResult<Vec<i64>> {
        let rows = db::query(
            "SELECT id FROM users WHERE disabled_at IS NULL AND (instance_admin = 1 OR id IN \
             (SELECT user_id FROM memberships WHERE project_id = $1 AND role = 'admin')) ORDER BY id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| row.try_get::<i64, _>(0)).collect()
    }

    async fn create_user_token(
        &self,
        user_id: i64,
        token: &NewToken,
        now: Millis,
    ) -> StoreResult<TokenRecord> {
        let row = db::query(trusted(format!(
            "INSERT INTO tokens (project_id, kind, name, scopes, token_hash, display_prefix, created_at, user_id) \
             VALUES (NULL, 'user', $1, $2, $3, $4, $5, $6) RETURNING {}",
            rows::TOKEN_COLUMNS
        )))
        .bind(&token.name)
        .bind(Scope::join(&token.scopes))
        .bind(&token.token_hash)
        .bind(&token.display_prefix)
        .bind(now.0)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        rows::token_from_row(&row)
    }

    async fn user_tokens(&self, user_id: i64) -> StoreResult<Vec<TokenRecord>> {
        let rows = db::query(trusted(format!(
            "SELECT {} FROM tokens WHERE user_id = $1 ORDER BY id",
            rows::TOKEN_COLUMNS
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::token_from_row).collect()
    }

    async fn revoke_user_token(
        &self,
        user_id: i64,
        token_id: i64,
        now: Millis,
    ) -> StoreResult<TokenRecord> {
        let row = db::query(trusted(format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND user_id = $3 RETURNING {}",
            rows::TOKEN_COLUMNS
        )))
        .bind(now.0)
        .bind(token_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(rows::token_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("token"))
    }

    async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        project_id: Option<i64>,
        target: Option<&str>,
        detail: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        db::query(
            "INSERT INTO audit_log (at, actor, action, project_id, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now.0)
        .bind(actor)
        .bind(action)
        .bind(project_id)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_log(
        &self,
        project_id: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows = db::query(
            "SELECT id, at, actor, action, project_id, target, detail FROM audit_log \
             WHERE ($1 IS NULL OR project_id = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(project_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: Millis(row.try_get("at")?),
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    project_id: row.try_get("project_id")?,
                    target: row.try_get("target")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}
