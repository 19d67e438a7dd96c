//! A project's outbound webhooks: endpoints, secrets, test events, the delivery log,
//! redelivery and the delivery status (`kiln webhook`).

use kiln_protocol::*;
use reqwest::Method;

use super::{Client, ClientError, encode};

impl Client {
    fn webhooks_path(project: &str) -> String {
        format!("/api/v1/projects/{}/webhooks", encode(project))
    }

    /// Creates an endpoint; the answer carries its secret, shown only this once.
    pub async fn create_webhook(
        &self,
        project: &str,
        request: &CreateWebhook,
    ) -> Result<WebhookWithSecret, ClientError> {
        self.call(Method::POST, &Self::webhooks_path(project), Some(request))
            .await
    }

    pub async fn list_webhooks(&self, project: &str) -> Result<WebhookList, ClientError> {
        self.get(&Self::webhooks_path(project)).await
    }

    pub async fn get_webhook(&self, project: &str, id: i64) -> Result<WebhookDto, ClientError> {
        self.get(&format!("{}/{id}", Self::webhooks_path(project)))
            .await
    }

    pub async fn update_webhook(
        &self,
        project: &str,
        id: i64,
        patch: &UpdateWebhook,
    ) -> Result<WebhookDto, ClientError> {
        self.call(
            Method::PATCH,
            &format!("{}/{id}", Self::webhooks_path(project)),
            Some(patch),
        )
        .await
    }

    /// Deletes an endpoint with its deliveries.
    pub async fn delete_webhook(&self, project: &str, id: i64) -> Result<(), ClientError> {
        self.send_for::<(), serde_json::Value>(
            Method::DELETE,
            &format!("{}/{id}", Self::webhooks_path(project)),
            None,
            None,
        )
        .await?;
        Ok(())
    }

    /// A new secret, shown only this once; the previous one keeps signing for the
    /// server's overlap window.
    pub async fn rotate_webhook_secret(
        &self,
        project: &str,
        id: i64,
    ) -> Result<WebhookWithSecret, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("{}/{id}/rotate-secret", Self::webhooks_path(project)),
            None,
        )
        .await
    }

    /// Queues a `webhook_test` delivery to the endpoint.
    pub async fn test_webhook(
        &self,
        project: &str,
        id: i64,
    ) -> Result<WebhookTestQueued, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("{}/{id}/test", Self::webhooks_path(project)),
            None,
        )
        .await
    }

    /// The endpoint's newest deliveries (at most 100), newest first, with their attempts.
    pub async fn webhook_deliveries(
        &self,
        project: &str,
        id: i64,
    ) -> Result<WebhookDeliveryList, ClientError> {
        self.get(&format!("{}/{id}/deliveries", Self::webhooks_path(project)))
            .await
    }

    /// Queues a delivered or failed delivery for one more attempt.
    pub async fn redeliver_webhook(
        &self,
        project: &str,
        id: i64,
        delivery_id: i64,
    ) -> Result<WebhookDeliveryDto, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!(
                "{}/{id}/deliveries/{delivery_id}/redeliver",
                Self::webhooks_path(project)
            ),
            None,
        )
        .await
    }

    /// Delivery totals and per-endpoint health: of one project, or of every project the
    /// caller may read.
    pub async fn webhook_status(
        &self,
        project: Option<&str>,
    ) -> Result<WebhookStatusDto, ClientError> {
        let query = project
            .map(|project| format!("?project={}", encode(project)))
            .unwrap_or_default();
        self.get(&format!("/api/v1/webhooks/status{query}")).await
    }
}
