//! Project secrets: set (write-only), list by name, delete.

use kiln_protocol::{SecretDto, SecretList, SetSecret};
use reqwest::Method;

use super::{Client, ClientError, encode};

impl Client {
    fn secrets_path(project: &str) -> String {
        format!("/api/v1/projects/{}/secrets", encode(project))
    }

    /// Creates or replaces a secret; the answer never holds the value.
    pub async fn set_secret(
        &self,
        project: &str,
        name: &str,
        value: &str,
    ) -> Result<SecretDto, ClientError> {
        self.call(
            Method::PUT,
            &format!("{}/{}", Self::secrets_path(project), encode(name)),
            Some(&SetSecret {
                value: value.to_owned(),
            }),
        )
        .await
    }

    pub async fn list_secrets(&self, project: &str) -> Result<SecretList, ClientError> {
        self.call::<(), _>(Method::GET, &Self::secrets_path(project), None)
            .await
    }

    pub async fn delete_secret(&self, project: &str, name: &str) -> Result<(), ClientError> {
        self.send_for::<(), serde_json::Value>(
            Method::DELETE,
            &format!("{}/{}", Self::secrets_path(project), encode(name)),
            None,
            None,
        )
        .await?;
        Ok(())
    }
}
