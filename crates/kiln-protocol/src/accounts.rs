//! Users, sessions, personal tokens, project members and the audit log on the wire
//! (`/api/v1/session`, `/api/v1/me…`, `/api/v1/users…`, `…/members…`, `/api/v1/audit`).

use serde::{Deserialize, Serialize};

/// A user account as every route answers it (never with its password hash).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserDto {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub instance_admin: bool,
    pub created_at: String,
    /// Deactivated: cannot log in; sessions and personal tokens stopped working.
    pub disabled: bool,
}

/// `POST /api/v1/session`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Login {
    pub email: String,
    pub password: String,
}

/// The answer to a login: the user and the CSRF token that unsafe requests of the
/// session send in `X-CSRF-Token` (the session itself is the cookie).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub user: UserDto,
    pub csrf_token: String,
}

/// A project role of the caller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ProjectRole {
    pub project: String,
    /// `viewer`, `developer` or `admin`.
    pub role: String,
}

/// `GET /api/v1/me`: the caller's account, roles, and (for a session) its CSRF token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub user: UserDto,
    pub roles: Vec<ProjectRole>,
    pub csrf_token: Option<String>,
}

/// `POST /api/v1/me/password`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChangePassword {
    pub current: String,
    pub new: String,
}

/// `POST /api/v1/me/tokens` and `POST /api/v1/agent-tokens`: a token known by its name.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateNamedToken {
    pub name: String,
}

/// `POST /api/v1/users` (instance admin).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateUser {
    pub email: String,
    pub name: String,
    /// Without one, a one-time password is generated and answered once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `false` when absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_admin: Option<bool>,
}

/// `POST /api/v1/users/{user}/password` (instance admin); an empty body is `{}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResetPassword {
    /// Without one, a one-time password is generated and answered once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A user created, deactivated, reactivated or given a password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct UserAnswer {
    pub user: UserDto,
    /// A generated one-time password: present only when Kiln made it, shown only here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `GET /api/v1/users` (instance admin).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct UserList {
    pub users: Vec<UserDto>,
}

/// `PUT /api/v1/projects/{slug}/members/{user}`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SetMemberRole {
    /// `viewer`, `developer` or `admin`.
    pub role: String,
}

/// A member of a project with their role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MemberDto {
    pub user: UserDto,
    pub role: String,
}

/// `GET /api/v1/projects/{slug}/members`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MemberList {
    pub members: Vec<MemberDto>,
}

/// One administrative action, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryDto {
    pub id: i64,
    pub at: String,
    /// `user:ID` or `token:ID`.
    pub actor: String,
    /// The user's email or the token's name, while they exist.
    pub actor_name: Option<String>,
    /// `token.create`, `member.set`, `repo.set`, …
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<String>,
}

/// `GET /api/v1/audit`: newest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct AuditLog {
    pub entries: Vec<AuditEntryDto>,
}
