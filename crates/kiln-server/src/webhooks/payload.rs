//! Webhook bodies (the `kiln` and `cdevents` formats) and their signatures.
//!
//! `kiln` is the seed's `{buildId, type, data, timestamp}` for any event. `cdevents` is a
//! CloudEvents 1.0 structured-mode JSON document (`application/cloudevents+json`) whose
//! `data` is a CDEvent (`context` and `subject`, spec 0.4.1): builds are pipeline runs,
//! stages are task runs; other events have no CDEvents type and are not sent in that
//! format.

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

/// The CDEvents subject (as in the event type, and as `subject.type`), predicate and
/// outcome of a Kiln event type, for those that have one.
struct CdeventKind {
    /// In the type: `dev.cdevents.{subject}.{predicate}.0.2.0`.
    subject: &'static str,
    /// `subject.type` (camel case, as the 0.4.1 schemas' enums have it).
    subject_type: &'static str,
    predicate: &'static str,
    outcome: Option<&'static str>,
}

fn cdevent_kind(event_type: &str) -> Option<CdeventKind> {
    let (subject, subject_type) = if event_type.starts_with("build_") {
        ("pipelinerun", "pipelineRun")
    } else {
        ("taskrun", "taskRun")
    };
    let (predicate, outcome) = match event_type {
        "build_queued" => ("queued", None),
        "build_started" | "stage_started" => ("started", None),
        "build_completed" | "stage_completed" => ("finished", Some("success")),
        "build_failed" | "stage_failed" => ("finished", Some("failure")),
        "build_cancelled" => ("finished", Some("cancel")),
        _ => return None,
    };
    Some(CdeventKind {
        subject,
        subject_type,
        predicate,
        outcome,
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
/// representation of it. `public_url` is the dashboard's address (`--public-url`, no
/// trailing slash), or empty: CDEvents then link to the build by its path alone.
pub(crate) fn render(
    format: WebhookFormat,
    event: &StoredEvent,
    project_slug: &str,
    public_url: &str,
) -> Option<String> {
    let run_id = event.payload.get("runId").and_then(Value::as_str)?;
    let value = match format {
        WebhookFormat::Kiln => json!({
            "buildId": run_id,
            "type": event.event_type,
            "data": crate::wire::event_json(event),
            "timestamp": event.received_at.to_rfc3339(),
        }),
        WebhookFormat::Cdevents => cdevent(event, run_id, project_slug, public_url)?,
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
            "source": format!("{SOURCE}/projects/{project_slug}"),
            "type": "dev.kiln.webhook.test.0.1.0",
            "time": now.to_rfc3339(),
            "datacontenttype": "application/json",
            "data": {"project": project_slug, "message": "a test delivery from Kiln"},
        }),
    };
    value.to_string()
}

/// The source of Kiln's CloudEvents and CDEvents: a URI reference naming the project.
const SOURCE: &str = "/kiln";

/// A CDEvent (spec 0.4.1) in a CloudEvents 1.0 structured-mode envelope: the envelope's
/// `id`, `source`, `type` and `time` are the CDEvent context's, and its `subject` is the
/// CDEvent subject's `id`, as the CDEvents CloudEvents binding requires.
fn cdevent(
    event: &StoredEvent,
    run_id: &str,
    project_slug: &str,
    public_url: &str,
) -> Option<Value> {
    let stage = event.payload.get("stage").and_then(Value::as_str);
    let kind = cdevent_kind(&event.event_type)?;
    let cdevents_type = format!("dev.cdevents.{}.{}.0.2.0", kind.subject, kind.predicate);
    let source = format!("{SOURCE}/projects/{project_slug}");
    let time = event.received_at.to_rfc3339();
    let id = format!("kiln-event-{}", event.id);
    // Run ids hold only URL-safe characters (`RunId::parse`).
    let build_url = format!("{public_url}/builds/{run_id}");
    let mut content = serde_json::Map::new();
    if kind.subject == "pipelinerun" {
        content.insert("pipelineName".into(), project_slug.into());
    } else {
        content.insert("taskName".into(), stage.unwrap_or_default().into());
        content.insert(
            "pipelineRun".into(),
            json!({"id": run_id, "source": source}),
        );
    }
    content.insert("url".into(), build_url.into());
    if let Some(outcome) = kind.outcome {
        content.insert("outcome".into(), outcome.into());
        if outcome == "failure"
            && let Some(error) = failure_text(event)
        {
            content.insert("errors".into(), error.into());
        }
    }
    let subject_id = match stage {
        Some(stage) if kind.subject == "taskrun" => format!("{run_id}/{stage}"),
        _ => run_id.to_owned(),
    };
    Some(json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": cdevents_type,
        "subject": subject_id,
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
                "type": kind.subject_type,
                "content": content,
            },
            "customData": crate::wire::event_json(event),
        },
    }))
}

/// What a failure event says went wrong (its `error` or `message`), if it says.
fn failure_text(event: &StoredEvent) -> Option<String> {
    ["error", "message"].iter().find_map(|key| {
        event
            .payload
            .get(*key)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    })
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
mod cdevents_tests {
    use super::*;

    /// Every Kiln event type the cdevents format sends, with what the CDEvents 0.4.1
    /// schema of its type requires of `subject.type` (its enum) and `subject.id`.
    const SENT: &[(&str, &str, &str, &str)] = &[
        (
            "build_queued",
            "dev.cdevents.pipelinerun.queued.0.2.0",
            "pipelineRun",
            "run-1",
        ),
        (
            "build_started",
            "dev.cdevents.pipelinerun.started.0.2.0",
            "pipelineRun",
            "run-1",
        ),
        (
            "build_completed",
            "dev.cdevents.pipelinerun.finished.0.2.0",
            "pipelineRun",
            "run-1",
        ),
        (
            "build_failed",
            "dev.cdevents.pipelinerun.finished.0.2.0",
            "pipelineRun",
            "run-1",
        ),
        (
            "build_cancelled",
            "dev.cdevents.pipelinerun.finished.0.2.0",
            "pipelineRun",
            "run-1",
        ),
        (
            "stage_started",
            "dev.cdevents.taskrun.started.0.2.0",
            "taskRun",
            "run-1/Unit tests",
        ),
        (
            "stage_completed",
            "dev.cdevents.taskrun.finished.0.2.0",
            "taskRun",
            "run-1/Unit tests",
        ),
        (
            "stage_failed",
            "dev.cdevents.taskrun.finished.0.2.0",
            "taskRun",
            "run-1/Unit tests",
        ),
    ];

    fn stored(event_type: &str) -> StoredEvent {
        let mut payload = json!({"runId": "run-1", "event": event_type, "eventId": "e1"});
        if event_type.starts_with("stage_") {
            payload["stage"] = "Unit tests".into();
        }
        if event_type.ends_with("_failed") {
            payload["error"] = "exit status 2".into();
        }
        StoredEvent {
            id: 42,
            seq: 3,
            build_id: 7,
            project_id: 1,
            event_type: event_type.into(),
            received_at: Millis(1_800_000_000_000),
            payload,
        }
    }

    /// Each body is a CloudEvent the CloudEvents SDK parses (structured JSON format), its
    /// `subject` attribute is the CDEvent's `subject.id`, and its data is a CDEvent that
    /// the CDEvents SDK (generated from the 0.4.1 schemas; it refuses unknown and missing
    /// required fields) accepts as the spec's type; `subject.type`, which that SDK does
    /// not check, is the schema's enum value.
    #[test]
    fn every_cdevent_conforms_to_the_cloudevents_binding_and_the_0_4_1_schemas() {
        use cloudevents::AttributesReader;
        for public_url in ["", "https://kiln.example.com"] {
            for (kiln_type, cdevents_type, subject_type, subject_id) in SENT {
                let event = stored(kiln_type);
                assert!(renders(WebhookFormat::Cdevents, &event), "{kiln_type}");
                let body = render(WebhookFormat::Cdevents, &event, "web", public_url).unwrap();
                let cloud: cloudevents::Event = serde_json::from_str(&body)
                    .unwrap_or_else(|error| panic!("{kiln_type}: not a CloudEvent: {error}"));
                assert_eq!(cloud.specversion(), cloudevents::event::SpecVersion::V10);
                assert_eq!(cloud.ty(), *cdevents_type);
                assert_eq!(cloud.subject(), Some(*subject_id), "{kiln_type}");
                assert_eq!(cloud.datacontenttype(), Some("application/json"));
                let cdevent = cdevents_sdk::CDEvent::try_from(cloud.clone())
                    .unwrap_or_else(|error| panic!("{kiln_type}: not a CDEvent 0.4.1: {error}"));
                assert_eq!(cdevent.ty(), *cdevents_type);
                assert_eq!(cdevent.version(), "0.4.1");
                assert_eq!(cdevent.id().as_str(), cloud.id());
                assert_eq!(cdevent.source().as_str(), cloud.source().as_str());
                assert_eq!(cdevent.subject().id().as_str(), *subject_id);
                let raw: Value = serde_json::from_str(&body).unwrap();
                let subject = &raw["data"]["subject"];
                assert_eq!(subject["type"], *subject_type, "{kiln_type}");
                assert_eq!(
                    subject["content"]["url"],
                    format!("{public_url}/builds/run-1"),
                    "{kiln_type}"
                );
                if kiln_type.ends_with("_failed") {
                    assert_eq!(subject["content"]["errors"], "exit status 2");
                    assert_eq!(subject["content"]["outcome"], "failure");
                }
                if kiln_type.starts_with("stage_") {
                    assert_eq!(subject["content"]["taskName"], "Unit tests");
                    assert_eq!(subject["content"]["pipelineRun"]["id"], "run-1");
                }
            }
        }
        // Other events have no CDEvents type: not sent in this format.
        for other in ["heartbeat", "build_progress", "custom_thing"] {
            assert!(!renders(WebhookFormat::Cdevents, &stored(other)), "{other}");
            assert!(render(WebhookFormat::Cdevents, &stored(other), "web", "").is_none());
        }
    }

    /// The CDEvents SDK refuses what Kiln used to send (no `url` on a started pipeline
    /// run), so the check above can fail.
    #[test]
    fn the_checker_refuses_a_started_pipeline_run_without_url() {
        let body = render(WebhookFormat::Cdevents, &stored("build_started"), "web", "").unwrap();
        let mut raw: Value = serde_json::from_str(&body).unwrap();
        raw["data"]["subject"]["content"]
            .as_object_mut()
            .unwrap()
            .remove("url");
        let cloud: cloudevents::Event = serde_json::from_value(raw).unwrap();
        assert!(cdevents_sdk::CDEvent::try_from(cloud).is_err());
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
