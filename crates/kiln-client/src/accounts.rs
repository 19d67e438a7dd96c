//! Users (instance admin), project members and the audit log.

use kiln_protocol::{
    AuditLog, CreateUser, MemberDto, MemberList, ResetPassword, SetMemberRole, UserAnswer, UserList,
};
use reqwest::Method;

use super::{Client, ClientError, encode};

impl Client {
    /// Creates a user; without a password the answer holds a one-time one.
    pub async fn create_user(&self, request: &CreateUser) -> Result<UserAnswer, ClientError> {
        self.call(Method::POST, "/api/v1/users", Some(request))
            .await
    }

    pub async fn list_users(&self) -> Result<UserList, ClientError> {
        self.get("/api/v1/users").await
    }

    /// Deactivates (`true`) or reactivates a user named by id or email.
    pub async fn set_user_disabled(
        &self,
        user: &str,
        disabled: bool,
    ) -> Result<UserAnswer, ClientError> {
        let action = if disabled { "disable" } else { "enable" };
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/users/{}/{action}", encode(user)),
            None,
        )
        .await
    }

    /// Sets a user's password (`None`: a one-time one, in the answer) and ends their
    /// sessions.
    pub async fn reset_user_password(
        &self,
        user: &str,
        password: Option<String>,
    ) -> Result<UserAnswer, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/users/{}/password", encode(user)),
            Some(&ResetPassword { password }),
        )
        .await
    }

    fn members_path(project: &str) -> String {
        format!("/api/v1/projects/{}/members", encode(project))
    }

    pub async fn list_members(&self, project: &str) -> Result<MemberList, ClientError> {
        self.get(&Self::members_path(project)).await
    }

    /// Gives a user (id or email) a role in the project.
    pub async fn set_member(
        &self,
        project: &str,
        user: &str,
        role: &str,
    ) -> Result<MemberDto, ClientError> {
        self.call(
            Method::PUT,
            &format!("{}/{}", Self::members_path(project), encode(user)),
            Some(&SetMemberRole { role: role.into() }),
        )
        .await
    }

    pub async fn remove_member(&self, project: &str, user: &str) -> Result<(), ClientError> {
        self.send_for::<(), serde_json::Value>(
            Method::DELETE,
            &format!("{}/{}", Self::members_path(project), encode(user)),
            None,
            None,
        )
        .await?;
        Ok(())
    }

    /// The newest `limit` audit entries, of one project or (instance admin) all.
    pub async fn audit_log(
        &self,
        project: Option<&str>,
        limit: i64,
    ) -> Result<AuditLog, ClientError> {
        let mut path = format!("/api/v1/audit?limit={limit}");
        if let Some(project) = project {
            path.push_str(&format!("&project={}", encode(project)));
        }
        self.get(&path).await
    }
}
