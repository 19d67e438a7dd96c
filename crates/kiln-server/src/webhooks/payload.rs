//! Webhook bodies (the `kiln` and `cdevents` formats) and their signatures.
//!
//! `kiln` is the seed's `{buildId, type, data, timestamp}` for any event. `cdevents` is a
//! CloudEvents 1.0 structured-mode JSON document whose `data` is a CDEvent (`context`
//! and `subject`, spec 0.4): builds are pipeline runs, stages are task runs; other
//! events have no CDEvents type and are not sent in that format.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use kiln_core::Millis;
use kiln_store::{StoredEvent, WebhookFormat};
use serde_json::{Value, json};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The event type of a "send test event" delivery.
pub(crate) const TEST_EVENT: &str = "webhook_test";

/// A new secret: `whsec_` and the base64 of 24 random bytes (Standard Webhooks).
pub(crate) fn generate_secret() -> String {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).expect("the operating system's random source is available");
    format!("whsec_{}", BASE64.encode(random))
}

/// The key bytes of a secret: the base64 after `whsec_` (the raw text if it is not).
fn secret_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    BASE64
        .decode(encoded)
        .unwrap_or_else(|_| secret.as_bytes().to_vec())
}

fn mac(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac =
        HmacSha256::new_from_slice(&secret_key(secret)).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` per
/// secret, space-separated (during a rotation's overlap the new secret's comes first).
pub(crate) fn standard_signature(
    secrets: &[&str],
    delivery_id: &str,
    timestamp: i64,
    body: &str,
) -> String {
    let signed = format!("{delivery_id}.{timestamp}.");
    secrets
        .iter()
        .map(|secret| {
            format!(
                "v1,{}",
                BASE64.encode(mac(secret, &[signed.as_bytes(), body.as_bytes()]))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The seed's `X-Webhook-Signature`: hex HMAC-SHA256 of the body (current secret).
pub(crate) fn body_signature(secret: &str, body: &str) -> String {
    hex::encode(mac(secret, &[body.as_bytes()]))
}

/// Whether `render` gives a body for this event in this format (without rendering it).
pub(crate) fn renders(format: WebhookFormat, event: &StoredEvent) -> bool {
    event.payload.get("runId").and_then(Value::as_str).is_some()
        && match format {
            WebhookFormat::Kiln => true,
            WebhookFormat::Cdevents => cdevent_kind(&event.event_type).is_some(),
        }
}

/// The CDEvents subject, predicate and outcome of a Kiln event type, for those that
/// have one.
fn cdevent_kind(event_type: &str) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    Some(match event_type {
        "build_queued" => ("pipelinerun", "queued", None),
        "build_started" => ("pipelinerun", "started", None),
        "build_completed" => ("pipelinerun", "finished", Some("success")),
        "build_failed" => ("pipelinerun", "finished", Some("failure")),
        "build_cancelled" => ("pipelinerun", "finished", Some("cancel")),
        "stage_started" => ("taskrun", "started", None),
        "stage_completed" => ("taskrun", "finished", Some("success")),
        "stage_failed" => ("taskrun", "finished", Some("failure")),
        _ => return None,
    })
}

/// A delivery's `webhook-id`: `msg_` and 32 hex digits derived from the instance's key,
/// the delivery's row and its creation time. Every attempt and redelivery of a delivery
/// carries the same one; another Kiln instance, or a delivery queued anew after a
/// restore from backup, gets another, so receivers can deduplicate by it.
pub(crate) fn message_id(
    key: &crate::secret_box::SecretKey,
    delivery_id: i64,
    created_at: Millis,
) -> String {
    let digest = key.derive(&format!("webhook-message:{delivery_id}:{}", created_at.0));
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// The body of one event for one endpoint, or `None` when the format has no
/// representation of it.
pub(crate) fn render(
    format: WebhookFormat,
    event: &StoredEvent,
    project_slug: &str,
    public_source: &str,
) -> Option<String> {
    let run_id = event.payload.get("runId").and_then(Value::as_str)?;
    let value = match format {
        WebhookFormat::Kiln => json!({
            "buildId": run_id,
            "type": event.event_type,
            "data": crate::api::event_json(event),
            "timestamp": event.received_at.to_rfc3339(),
        }),
        WebhookFormat::Cdevents => cdevent(event, run_id, project_slug, public_source)?,
    };
    Some(value.to_string())
}

/// The body of a "send test event" delivery.
pub(crate) fn test_body(format: WebhookFormat, project_slug: &str, now: Millis) -> String {
    let value = match format {
        WebhookFormat::Kiln => json!({
            "buildId": null,
            "type": TEST_EVENT,
            "data": {"project": project_slug, "message": "a test delivery from Kiln"},
            "timestamp": now.to_rfc3339(),
        }),
        WebhookFormat::Cdevents => json!({
            "specversion": "1.0",
            "id": format!("kiln-test-{}", now.0),
            "source": format!("/kiln/projects/{project_slug}"),
            "type": "dev.kiln.webhook.test.0.1.0",
            "time": now.to_rfc3339(),
            "datacontenttype": "application/json",
            "data": {"project": project_slug, "message": "a test delivery from Kiln"},
        }),
    };
    value.to_string()
}

fn cdevent(event: &StoredEvent, run_id: &str, project_slug: &str, source: &str) -> Option<Value> {
    let stage = event.payload.get("stage").and_then(Value::as_str);
    let (subject_kind, predicate, outcome) = cdevent_kind(&event.event_type)?;
    let cdevents_type = format!("dev.cdevents.{subject_kind}.{predicate}.0.2.0");
    let source = format!("{source}/projects/{project_slug}");
    let time = event.received_at.to_rfc3339();
    let id = format!("kiln-event-{}", event.id);
    let mut content = serde_json::Map::new();
    match subject_kind {
        "pipelinerun" => {
            content.insert("pipelineName".into(), project_slug.into());
        }
        _ => {
            content.insert("taskName".into(), stage.unwrap_or_default().into());
            content.insert(
                "pipelineRun".into(),
                json!({"id": run_id, "source": source}),
            );
        }
    }
    if let Some(outcome) = outcome {
        content.insert("outcome".into(), outcome.into());
    }
    let subject_id = match (subject_kind, stage) {
        ("taskrun", Some(stage)) => format!("{run_id}/{stage}"),
        _ => run_id.to_owned(),
    };
    Some(json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": cdevents_type,
        "time": time,
        "datacontenttype": "application/json",
        "data": {
            "context": {
                "version": "0.4.1",
                "id": id,
                "source": source,
                "type": cdevents_type,
                "timestamp": time,
            },
            "subject": {
                "id": subject_id,
                "source": source,
                "type": subject_kind,
                "content": content,
            },
            "customData": crate::api::event_json(event),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_signature() {
        // The example of the Standard Webhooks specification.
        let signature = standard_signature(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_24_random_bytes() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_key(&secret).len(), 24);
        assert_ne!(secret, generate_secret());
    }
}

#[cfg(test)]
mod message_id_tests {
    use super::*;
    use crate::secret_box::SecretKey;

    /// Stable for one delivery, different for another row, another creation time (a row
    /// number reused after a restore) or another instance's key.
    #[test]
    fn webhook_ids_are_stable_per_delivery_and_unique_across_instances() {
        let key = SecretKey::generate().unwrap();
        let id = message_id(&key, 7, Millis(1000));
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        assert_eq!(id, message_id(&key, 7, Millis(1000)));
        assert_ne!(id, message_id(&key, 8, Millis(1000)));
        assert_ne!(id, message_id(&key, 7, Millis(1001)));
        assert_ne!(
            id,
            message_id(&SecretKey::generate().unwrap(), 7, Millis(1000))
        );
    }
}
