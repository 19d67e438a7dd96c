//! Records of accounts: users, dashboard sessions, project memberships, the audit log.

use kiln_core::{Millis, Role};

#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub id: i64,
    pub email: String,
    pub name: String,
    /// The argon2id PHC string; `None` for users who cannot log in with a password.
    pub password_hash: Option<String>,
    pub instance_admin: bool,
    pub created_at: Millis,
    pub disabled_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: i64,
    pub user_id: i64,
    /// The value forms and scripts send back in `X-CSRF-Token`.
    pub csrf_token: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Membership {
    pub project_id: i64,
    pub user_id: i64,
    pub role: Role,
    pub created_at: Millis,
}

/// One audited admin action.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Millis,
    /// Who: `user:ID <email>` or `token:ID`.
    pub actor: String,
    /// What: `token.create`, `member.set`, `repo.set`, …
    pub action: String,
    pub project_id: Option<i64>,
    pub target: Option<String>,
    pub detail: Option<String>,
}
