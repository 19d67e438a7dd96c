//! Outbound webhooks: endpoints, the delivery outbox (once per endpoint and event, in
//! order per endpoint), attempts, retries, 410, redelivery, status and the cursor, on
//! both engines.

use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(endpoints_crud_and_rotation);
engine_test!(deliveries_once_in_order_with_retries);
engine_test!(gone_disables_and_redelivery_requeues);
engine_test!(reactivation_can_discard_what_was_held);
engine_test!(endpoints_of_the_previous_release_upgrade);
engine_test!(webhook_cursor_compare_and_set);
engine_test!(queued_page_renders_at_first_attempt);

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

async fn endpoint(store: &dyn Store, project: &Project, url: &str) -> WebhookEndpoint {
    store
        .create_webhook_endpoint(&NewWebhookEndpoint {
            project_id: project.id,
            url: url.into(),
            secret: "whsec_AAAA".into(),
            events: vec!["build_*".into()],
            format: WebhookFormat::Kiln,
            active: true,
            created_at: Millis(5),
        })
        .await
        .unwrap()
}

fn delivery(endpoint: &WebhookEndpoint, event_id: i64) -> NewWebhookDelivery {
    NewWebhookDelivery {
        endpoint_id: endpoint.id,
        event_id: Some(event_id),
        event_type: "build_started".into(),
        body: format!("{{\"event\":{event_id}}}"),
        created_at: Millis(100),
    }
}

fn attempt(number: i64, status: Option<i64>) -> WebhookAttempt {
    WebhookAttempt {
        attempt: number,
        started_at: Millis(100),
        status_code: status,
        latency_ms: 7,
        request_headers: "{}".into(),
        response_excerpt: Some("ok".into()),
        error: None,
    }
}

async fn endpoints_crud_and_rotation(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    let created = endpoint(&*store, &web, "https://example.com/hook").await;
    assert!(created.active);
    assert_eq!(created.events, vec!["build_*".to_string()]);
    assert!(created.wants("build_failed"));
    assert!(!created.wants("stage_failed"));
    assert_eq!(
        store.webhook_endpoints(Some(web.id)).await.unwrap().len(),
        1
    );
    assert!(
        store
            .webhook_endpoints(Some(api.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.webhook_endpoint(api.id, created.id).await,
        Err(StoreError::NotFound(_))
    ));

    let patched = store
        .update_webhook_endpoint(
            web.id,
            created.id,
            &WebhookEndpointPatch {
                events: Some(vec![]),
                format: Some(WebhookFormat::Cdevents),
                active: Some(false),
                ..Default::default()
            },
            Millis(6),
        )
        .await
        .unwrap();
    assert!(!patched.active);
    assert!(patched.wants("anything"));
    assert_eq!(patched.format, WebhookFormat::Cdevents);
    assert_eq!(patched.url, created.url);

    let rotated = store
        .rotate_webhook_secret(web.id, created.id, "whsec_BBBB", Millis(1_000), Millis(7))
        .await
        .unwrap();
    assert_eq!(rotated.secret, "whsec_BBBB");
    assert_eq!(rotated.previous_secret.as_deref(), Some("whsec_AAAA"));
    assert_eq!(
        rotated.signing_secrets(Millis(999)),
        vec!["whsec_BBBB", "whsec_AAAA"]
    );
    assert_eq!(rotated.signing_secrets(Millis(1_000)), vec!["whsec_BBBB"]);

    store
        .insert_webhook_delivery(&delivery(&created, 1))
        .await
        .unwrap();
    store
        .delete_webhook_endpoint(web.id, created.id)
        .await
        .unwrap();
    assert!(store.webhook_endpoints(None).await.unwrap().is_empty());
    assert!(matches!(
        store.delete_webhook_endpoint(web.id, created.id).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn deliveries_once_in_order_with_retries(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let first = endpoint(&*store, &web, "https://a.example/hook").await;
    let second = endpoint(&*store, &web, "https://b.example/hook").await;
    for event_id in [1, 2] {
        assert!(
            store
                .insert_webhook_delivery(&delivery(&first, event_id))
                .await
                .unwrap()
                .is_some()
        );
    }
    // A replay queues nothing twice.
    assert!(
        store
            .insert_webhook_delivery(&delivery(&first, 1))
            .await
            .unwrap()
            .is_none()
    );
    store
        .insert_webhook_delivery(&delivery(&second, 1))
        .await
        .unwrap();

    // One delivery per endpoint at a time: event 1 of each.
    let claimed = store
        .claim_due_webhook_deliveries(Millis(100), Millis(200), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].delivery.event_id, Some(1));
    assert_eq!(claimed[0].delivery.attempts, 1);
    assert_eq!(claimed[0].endpoint.id, first.id);
    assert_eq!(claimed[1].endpoint.id, second.id);
    // In flight: nothing more is due, not even event 2 of the first endpoint.
    assert!(
        store
            .claim_due_webhook_deliveries(Millis(150), Millis(250), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let first_delivery = claimed[0].delivery.id;
    store
        .finish_webhook_attempt(
            first_delivery,
            "{\"sent\":true}",
            &attempt(1, Some(500)),
            &WebhookOutcome::RetryAt(Millis(300)),
            Millis(120),
        )
        .await
        .unwrap();
    store
        .finish_webhook_attempt(
            claimed[1].delivery.id,
            "{\"sent\":true}",
            &attempt(1, Some(204)),
            &WebhookOutcome::Delivered,
            Millis(120),
        )
        .await
        .unwrap();
    // Event 2 waits while event 1 retries.
    assert!(
        store
            .claim_due_webhook_deliveries(Millis(299), Millis(400), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retried = store
        .claim_due_webhook_deliveries(Millis(300), Millis(400), 10)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].delivery.id, first_delivery);
    assert_eq!(retried[0].delivery.attempts, 2);
    // A stale report (of attempt 1) is ignored.
    store
        .finish_webhook_attempt(
            first_delivery,
            "{\"sent\":true}",
            &attempt(1, Some(200)),
            &WebhookOutcome::Delivered,
            Millis(310),
        )
        .await
        .unwrap();
    store
        .finish_webhook_attempt(
            first_delivery,
            "{\"sent\":true}",
            &attempt(2, Some(200)),
            &WebhookOutcome::Delivered,
            Millis(310),
        )
        .await
        .unwrap();
    let next = store
        .claim_due_webhook_deliveries(Millis(310), Millis(400), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].delivery.event_id, Some(2));

    let log = store.webhook_deliveries(first.id, 10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].state, WebhookDeliveryState::Delivered);
    assert_eq!(log[1].attempt_log.len(), 2);
    assert_eq!(log[1].attempt_log[0].status_code, Some(500));
    assert_eq!(log[1].last_status, Some(200));

    let status = store.webhook_status(Some(web.id)).await.unwrap();
    assert_eq!(status.len(), 2);
    assert_eq!(status[0].delivered, 1);
    assert_eq!(status[0].pending, 1);
    assert_eq!(status[0].successful_attempts, 1);
    assert_eq!(status[0].total_attempts, 2);
    assert_eq!(status[0].p50_latency_ms, Some(7));
    assert_eq!(status[0].oldest_pending_at, Some(Millis(100)));
    assert_eq!(status[1].delivered, 1);
    assert_eq!(status[1].oldest_pending_at, None);

    // Event 1 redelivered while event 2 is in flight: it waits, so the endpoint never
    // has two deliveries in flight; once event 2 reports, event 1 goes.
    store
        .redeliver_webhook(first.id, first_delivery, Millis(311))
        .await
        .unwrap();
    assert!(
        store
            .claim_due_webhook_deliveries(Millis(320), Millis(500), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .finish_webhook_attempt(
            next[0].delivery.id,
            "{\"sent\":true}",
            &attempt(1, Some(200)),
            &WebhookOutcome::Delivered,
            Millis(330),
        )
        .await
        .unwrap();
    let again = store
        .claim_due_webhook_deliveries(Millis(330), Millis(500), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, first_delivery);
    assert_eq!(again[0].delivery.attempts, 3);
    store
        .finish_webhook_attempt(
            first_delivery,
            "{\"sent\":true}",
            &attempt(3, Some(200)),
            &WebhookOutcome::Delivered,
            Millis(340),
        )
        .await
        .unwrap();
}

async fn gone_disables_and_redelivery_requeues(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let gone = endpoint(&*store, &web, "https://gone.example/hook").await;
    store
        .insert_webhook_delivery(&delivery(&gone, 1))
        .await
        .unwrap();
    store
        .insert_webhook_delivery(&delivery(&gone, 2))
        .await
        .unwrap();
    let claimed = store
        .claim_due_webhook_deliveries(Millis(100), Millis(200), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let delivery_id = claimed[0].delivery.id;
    assert!(matches!(
        store
            .redeliver_webhook(gone.id, delivery_id, Millis(101))
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .finish_webhook_attempt(
            delivery_id,
            "{\"sent\":true}",
            &attempt(1, Some(410)),
            &WebhookOutcome::FailedAndDisable,
            Millis(110),
        )
        .await
        .unwrap();
    let disabled = store.webhook_endpoint(web.id, gone.id).await.unwrap();
    assert!(!disabled.active);
    assert!(disabled.disabled_reason.is_some());
    // Nothing is sent to an inactive endpoint.
    assert!(
        store
            .claim_due_webhook_deliveries(Millis(500), Millis(600), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Reactivated and redelivered: the failed delivery goes again, first.
    store
        .update_webhook_endpoint(
            web.id,
            gone.id,
            &WebhookEndpointPatch {
                active: Some(true),
                ..Default::default()
            },
            Millis(600),
        )
        .await
        .unwrap();
    let requeued = store
        .redeliver_webhook(gone.id, delivery_id, Millis(600))
        .await
        .unwrap();
    assert_eq!(requeued.state, WebhookDeliveryState::Pending);
    let claimed = store
        .claim_due_webhook_deliveries(Millis(600), Millis(700), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].delivery.id, delivery_id);
    assert_eq!(claimed[0].delivery.attempts, 2);
    assert!(matches!(
        store.redeliver_webhook(gone.id, 9_999, Millis(600)).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Re-activating with `discard_held` marks the deliveries held while disabled failed
/// (kept for manual redelivery); without it they stay pending and go out. Only a
/// re-activation discards: the flag on an active endpoint changes nothing.
async fn reactivation_can_discard_what_was_held(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let hook = endpoint(&*store, &web, "https://held.example/hook").await;
    let other = endpoint(&*store, &web, "https://other.example/hook").await;
    let patch = |active| WebhookEndpointPatch {
        active: Some(active),
        discard_held: active,
        ..Default::default()
    };
    store
        .insert_webhook_delivery(&delivery(&other, 1))
        .await
        .unwrap();
    // Active: the flag discards nothing.
    store
        .update_webhook_endpoint(web.id, other.id, &patch(true), Millis(150))
        .await
        .unwrap();
    assert_eq!(store.pending_webhook_deliveries(other.id).await.unwrap(), 1);

    store
        .update_webhook_endpoint(web.id, hook.id, &patch(false), Millis(200))
        .await
        .unwrap();
    for event in 1..=3 {
        store
            .insert_webhook_delivery(&delivery(&hook, event))
            .await
            .unwrap();
    }
    assert_eq!(store.pending_webhook_deliveries(hook.id).await.unwrap(), 3);
    let reactivated = store
        .update_webhook_endpoint(web.id, hook.id, &patch(true), Millis(300))
        .await
        .unwrap();
    assert!(reactivated.active);
    assert_eq!(store.pending_webhook_deliveries(hook.id).await.unwrap(), 0);
    let log = store.webhook_deliveries(hook.id, 10).await.unwrap();
    assert_eq!(log.len(), 3);
    for held in &log {
        assert_eq!(held.state, WebhookDeliveryState::Failed);
        assert_eq!(held.finished_at, Some(Millis(300)));
        assert_eq!(
            held.last_error.as_deref(),
            Some("discarded when the endpoint was re-activated")
        );
    }
    // The other endpoint's delivery is untouched; a discarded one can be redelivered.
    assert_eq!(store.pending_webhook_deliveries(other.id).await.unwrap(), 1);
    let again = store
        .redeliver_webhook(hook.id, log[0].id, Millis(400))
        .await
        .unwrap();
    assert_eq!(again.state, WebhookDeliveryState::Pending);
}

/// A database of the previous release (schema 9): its disabled endpoint and the delivery
/// it holds read as before, with nothing dropped, and the new counter works.
async fn endpoints_of_the_previous_release_upgrade(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    database
        .at_schema_version(
            9,
            &[
                "INSERT INTO projects (slug, name, created_at) VALUES ('old', 'Old', 1)",
                "INSERT INTO webhook_endpoints (project_id, url, secret, events, format, active, \
                 disabled_reason, created_at, updated_at) SELECT id, 'https://old.example/hook', \
                 'whsec_OLD', '[]', 'kiln', 0, 'the receiver answered 410 Gone', 2, 2 \
                 FROM projects WHERE slug = 'old'",
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, state, \
                 attempts, next_attempt_at, created_at) SELECT id, 7, 'build_started', '', \
                 'pending', 0, 3, 3 FROM webhook_endpoints",
            ],
        )
        .await;
    let store = database.open_dyn().await;
    let old = store.project_by_slug("old").await.unwrap().unwrap();
    let endpoints = store.webhook_endpoints(Some(old.id)).await.unwrap();
    assert_eq!(endpoints.len(), 1);
    let hook = &endpoints[0];
    assert!(!hook.active);
    assert_eq!(hook.dropped_while_disabled, 0);
    assert_eq!(store.pending_webhook_deliveries(hook.id).await.unwrap(), 1);
    let cursor = store.webhook_cursor().await.unwrap();
    store
        .queue_webhook_deliveries(
            &[],
            &[DroppedWebhookEvents {
                endpoint_id: hook.id,
                events: 3,
            }],
            cursor,
            cursor + 1,
        )
        .await
        .unwrap();
    let status = store.webhook_status(Some(old.id)).await.unwrap();
    assert_eq!(
        (status[0].pending, status[0].dropped_while_disabled),
        (1, 3)
    );
}

async fn webhook_cursor_compare_and_set(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let start = store.webhook_cursor().await.unwrap();
    assert_eq!(start, 0);
    assert!(store.advance_webhook_cursor(0, 5).await.unwrap());
    assert!(!store.advance_webhook_cursor(0, 7).await.unwrap());
    assert_eq!(store.webhook_cursor().await.unwrap(), 5);
}

/// The consumer's page: deliveries queued without bodies and the cursor moved in one
/// transaction (nothing twice on a replay, the cursor by compare-and-set); the first
/// claim hands out the event to render, the recorded body is kept for every retry.
async fn queued_page_renders_at_first_attempt(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let first = endpoint(&*store, &web, "https://one.example/hook").await;
    let second = endpoint(&*store, &web, "https://two.example/hook").await;
    let mut results = store
        .ingest(
            &[IngestRequest {
                project_id: web.id,
                events: vec![NewEvent::new(
                    RunId::parse("runId", "r-1").unwrap(),
                    EventType::parse("event", "build_started").unwrap(),
                )],
                precondition: Precondition::None,
                jobs: None,
            }],
            Millis(10),
        )
        .await
        .unwrap();
    let event_id = results.remove(0).unwrap()[0].id.unwrap();
    let cursor = store.webhook_cursor().await.unwrap();
    let page: Vec<NewWebhookDelivery> = [&first, &second]
        .iter()
        .map(|endpoint| NewWebhookDelivery {
            body: String::new(),
            ..delivery(endpoint, event_id)
        })
        .collect();
    // Two events were not queued for `second` (as if it were disabled and full).
    let dropped = [DroppedWebhookEvents {
        endpoint_id: second.id,
        events: 2,
    }];
    let done = store
        .queue_webhook_deliveries(&page, &dropped, cursor, event_id)
        .await
        .unwrap();
    assert_eq!(
        done,
        QueuedWebhookDeliveries {
            queued: 2,
            cursor_moved: true
        }
    );
    assert_eq!(store.webhook_cursor().await.unwrap(), event_id);
    // A replay (another replica with the old cursor): nothing queued twice, cursor kept,
    // the drops not counted twice.
    let again = store
        .queue_webhook_deliveries(&page, &dropped, cursor, event_id)
        .await
        .unwrap();
    assert_eq!(
        again,
        QueuedWebhookDeliveries {
            queued: 0,
            cursor_moved: false
        }
    );
    let dropped_counts: Vec<(i64, i64)> = store
        .webhook_status(Some(web.id))
        .await
        .unwrap()
        .iter()
        .map(|status| (status.endpoint_id, status.dropped_while_disabled))
        .collect();
    assert_eq!(dropped_counts, vec![(first.id, 0), (second.id, 2)]);
    assert_eq!(store.pending_webhook_deliveries(first.id).await.unwrap(), 1);
    assert_eq!(
        store
            .webhook_endpoint(web.id, second.id)
            .await
            .unwrap()
            .dropped_while_disabled,
        2
    );

    let claimed = store
        .claim_due_webhook_deliveries(Millis(100), Millis(200), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for one in &claimed {
        assert_eq!(one.delivery.body, "");
        let event = one.event.as_ref().expect("the event to render");
        assert_eq!(
            (event.id, event.event_type.as_str()),
            (event_id, "build_started")
        );
    }
    // Both attempts recorded in one call: one delivered, one to retry.
    store
        .finish_webhook_attempts(&[
            FinishedWebhookAttempt {
                delivery_id: claimed[0].delivery.id,
                body: "{\"rendered\":1}".into(),
                attempt: attempt(1, Some(200)),
                outcome: WebhookOutcome::Delivered,
                finished_at: Millis(110),
            },
            FinishedWebhookAttempt {
                delivery_id: claimed[1].delivery.id,
                body: "{\"rendered\":2}".into(),
                attempt: attempt(1, Some(500)),
                outcome: WebhookOutcome::RetryAt(Millis(300)),
                finished_at: Millis(110),
            },
        ])
        .await
        .unwrap();
    let retried = store
        .claim_due_webhook_deliveries(Millis(300), Millis(400), 10)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].delivery.id, claimed[1].delivery.id);
    assert_eq!(retried[0].delivery.body, "{\"rendered\":2}");
    assert!(
        retried[0].event.is_none(),
        "a stored body is not rendered again"
    );
    let log = store
        .webhook_deliveries(claimed[0].endpoint.id, 10)
        .await
        .unwrap();
    assert_eq!(log[0].body, "{\"rendered\":1}");
    assert_eq!(log[0].state, WebhookDeliveryState::Delivered);
}
