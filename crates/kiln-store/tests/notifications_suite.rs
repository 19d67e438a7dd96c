//! Notifications, mutes, the email outbox and the notifier cursor, on both engines.

use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, Role, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(notifications_once_per_user_and_event);
engine_test!(inbox_read_archive_and_stats);
engine_test!(mutes_silence_projects_and_kinds);
engine_test!(outbox_claims_retries_and_gives_up);
engine_test!(notifier_cursor_compare_and_set);

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

/// A build with one stored event; returns (build id, event id).
async fn build(store: &dyn Store, project: &Project, run_id: &str) -> (i64, i64) {
    let event = NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", "build_started").unwrap(),
    );
    let mut results = store
        .ingest(
            &[IngestRequest {
                project_id: project.id,
                events: vec![event],
                precondition: Precondition::None,
                jobs: None,
            }],
            Millis(10),
        )
        .await
        .unwrap();
    let event_id = results.remove(0).unwrap()[0].id.unwrap();
    let build = store.build_by_run_id(run_id).await.unwrap().unwrap();
    (build.id, event_id)
}

fn notification(
    project: &Project,
    (build_id, event_id): (i64, i64),
    run_id: &str,
    kind: NotificationKind,
    created_at: i64,
) -> NewNotification {
    NewNotification {
        project_id: project.id,
        build_id,
        run_id: run_id.into(),
        event_id,
        kind,
        title: format!("{} #1 {kind}", project.slug),
        body: "body".into(),
        created_at: Millis(created_at),
    }
}

async fn user(store: &dyn Store, email: &str) -> UserRecord {
    store
        .create_user(email, email, None, false, Millis(1))
        .await
        .unwrap()
}

fn inbox(user_id: i64) -> NotificationFilter {
    NotificationFilter {
        user_id,
        unread: None,
        archived: Some(false),
        before: None,
        limit: 100,
    }
}

async fn notifications_once_per_user_and_event(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let ada = user(&*store, "ada@example.com").await;
    let bob = user(&*store, "bob@example.com").await;
    let started = build(&*store, &web, "run-1").await;
    let new = notification(&web, started, "run-1", NotificationKind::BuildStarted, 100);

    let ids = store
        .insert_notifications(&new, &[ada.id, bob.id], Delivery::Inbox)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // A replay of the same event (a restart, another replica) inserts nothing.
    let again = store
        .insert_notifications(&new, &[ada.id, bob.id], Delivery::Inbox)
        .await
        .unwrap();
    assert!(again.is_empty());
    // A second build_started of the same build (another eventId) is not a second start.
    let mut second_start = new.clone();
    second_start.event_id += 1000;
    assert!(
        store
            .insert_notifications(&second_start, &[ada.id], Delivery::Inbox)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .insert_notifications(&new, &[], Delivery::Inbox)
            .await
            .unwrap()
            .is_empty()
    );

    let listed = store.list_notifications(&inbox(ada.id)).await.unwrap();
    assert_eq!(listed.len(), 1);
    let first = &listed[0];
    assert_eq!(first.user_id, ada.id);
    assert_eq!(first.project_slug, "web");
    assert_eq!(first.run_id, "run-1");
    assert_eq!(first.kind, NotificationKind::BuildStarted);
    assert_eq!(first.event_id, started.1);
    assert_eq!(first.created_at, Millis(100));
    assert_eq!(first.read_at, None);
    assert_eq!(first.archived_at, None);
    // Without email delivery the outbox stays empty.
    assert!(
        store
            .claim_due_emails(Millis(i64::MAX / 2), Millis(i64::MAX / 2), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn inbox_read_archive_and_stats(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let ada = user(&*store, "ada@example.com").await;
    let bob = user(&*store, "bob@example.com").await;
    let mut ids = Vec::new();
    for (index, kind) in [
        NotificationKind::BuildStarted,
        NotificationKind::BuildFailed,
        NotificationKind::BuildStale,
    ]
    .into_iter()
    .enumerate()
    {
        let run_id = format!("run-{index}");
        let built = build(&*store, &web, &run_id).await;
        let new = notification(&web, built, &run_id, kind, 100 + index as i64);
        ids.extend(
            store
                .insert_notifications(&new, &[ada.id], Delivery::Inbox)
                .await
                .unwrap(),
        );
    }
    let listed = store.list_notifications(&inbox(ada.id)).await.unwrap();
    assert_eq!(
        listed.iter().map(|n| n.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    let page = store
        .list_notifications(&NotificationFilter {
            before: Some(ids[2]),
            limit: 1,
            ..inbox(ada.id)
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, ids[1]);

    let stats = store.notification_stats(ada.id).await.unwrap();
    assert_eq!(stats.unread, 3);
    assert_eq!(
        stats.unread_by_kind,
        vec![
            (NotificationKind::BuildFailed, 1),
            (NotificationKind::BuildStale, 1),
            (NotificationKind::BuildStarted, 1),
        ]
    );

    // Another user's notification is "not found", and stays unread.
    assert!(matches!(
        store
            .mark_notification_read(bob.id, ids[0], Millis(200))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let read = store
        .mark_notification_read(ada.id, ids[0], Millis(200))
        .await
        .unwrap();
    assert_eq!(read.read_at, Some(Millis(200)));
    // Marking again keeps the first time.
    let read = store
        .mark_notification_read(ada.id, ids[0], Millis(300))
        .await
        .unwrap();
    assert_eq!(read.read_at, Some(Millis(200)));
    let unread = store
        .list_notifications(&NotificationFilter {
            unread: Some(true),
            ..inbox(ada.id)
        })
        .await
        .unwrap();
    assert_eq!(unread.len(), 2);
    let only_read = store
        .list_notifications(&NotificationFilter {
            unread: Some(false),
            ..inbox(ada.id)
        })
        .await
        .unwrap();
    assert_eq!(only_read.len(), 1);
    assert_eq!(store.notification_stats(ada.id).await.unwrap().unread, 2);

    let archived = store
        .archive_notification(ada.id, ids[1], Millis(400))
        .await
        .unwrap();
    assert_eq!(archived.archived_at, Some(Millis(400)));
    assert!(matches!(
        store
            .archive_notification(bob.id, ids[2], Millis(400))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .list_notifications(&inbox(ada.id))
            .await
            .unwrap()
            .len(),
        2
    );
    let in_archive = store
        .list_notifications(&NotificationFilter {
            archived: Some(true),
            ..inbox(ada.id)
        })
        .await
        .unwrap();
    assert_eq!(in_archive.len(), 1);
    assert_eq!(in_archive[0].id, ids[1]);
    // Archived notifications leave the unread count.
    let stats = store.notification_stats(ada.id).await.unwrap();
    assert_eq!(stats.unread, 1);
    assert_eq!(
        stats.unread_by_kind,
        vec![(NotificationKind::BuildStale, 1)]
    );

    // Read-all marks the inbox: it counts what the unread count showed (1), not the
    // archived unread one too.
    assert_eq!(
        store
            .mark_all_notifications_read(ada.id, Millis(500))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.notification_stats(ada.id).await.unwrap().unread, 0);

    // Auto-archive: only notifications created before the cutoff.
    assert_eq!(
        store
            .archive_notifications_before(Millis(102), Millis(600))
            .await
            .unwrap(),
        1
    );
    let remaining = store.list_notifications(&inbox(ada.id)).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].id, ids[2]);
    assert_eq!(
        store
            .archive_notifications_before(Millis(102), Millis(700))
            .await
            .unwrap(),
        0
    );
}

async fn mutes_silence_projects_and_kinds(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    let ada = user(&*store, "ada@example.com").await;
    let bob = user(&*store, "bob@example.com").await;
    store
        .set_membership(web.id, ada.id, Role::Admin, Millis(1))
        .await
        .unwrap();

    let web_mute = store
        .add_notification_mute(ada.id, Some(web.id), None, Millis(5))
        .await
        .unwrap();
    assert_eq!(web_mute.project_slug.as_deref(), Some("web"));
    assert_eq!(web_mute.kind, None);
    // Adding it again returns the same mute.
    assert_eq!(
        store
            .add_notification_mute(ada.id, Some(web.id), None, Millis(6))
            .await
            .unwrap(),
        web_mute
    );
    let failed_mute = store
        .add_notification_mute(ada.id, None, Some(NotificationKind::BuildFailed), Millis(7))
        .await
        .unwrap();
    let api_started_mute = store
        .add_notification_mute(
            bob.id,
            Some(api.id),
            Some(NotificationKind::BuildStarted),
            Millis(8),
        )
        .await
        .unwrap();
    assert_eq!(
        store.notification_mutes(ada.id).await.unwrap(),
        vec![web_mute.clone(), failed_mute.clone()]
    );
    assert_eq!(
        store.notification_mutes(bob.id).await.unwrap(),
        vec![api_started_mute]
    );

    let web_build = build(&*store, &web, "web-1").await;
    let api_build = build(&*store, &api, "api-1").await;
    let api_failed = build(&*store, &api, "api-2").await;
    let both = [ada.id, bob.id];
    let inserted = |new: NewNotification| {
        let store = store.clone();
        async move {
            store
                .insert_notifications(&new, &both, Delivery::Inbox)
                .await
                .unwrap()
                .len()
        }
    };
    // ada muted web: only bob.
    assert_eq!(
        inserted(notification(
            &web,
            web_build,
            "web-1",
            NotificationKind::BuildStarted,
            10
        ))
        .await,
        1
    );
    // bob muted api's starts: only ada.
    assert_eq!(
        inserted(notification(
            &api,
            api_build,
            "api-1",
            NotificationKind::BuildStarted,
            11
        ))
        .await,
        1
    );
    // ada muted failures everywhere: only bob.
    assert_eq!(
        inserted(notification(
            &api,
            api_failed,
            "api-2",
            NotificationKind::BuildFailed,
            12
        ))
        .await,
        1
    );
    let ada_kinds: Vec<_> = store
        .list_notifications(&inbox(ada.id))
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.project_slug, n.kind))
        .collect();
    assert_eq!(
        ada_kinds,
        vec![("api".into(), NotificationKind::BuildStarted)]
    );

    store
        .remove_notification_mute(ada.id, Some(web.id), None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .remove_notification_mute(ada.id, Some(web.id), None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // The project-wide mute is gone; the kind mute stays.
    assert_eq!(
        store.notification_mutes(ada.id).await.unwrap(),
        vec![failed_mute]
    );
    let web_second = build(&*store, &web, "web-2").await;
    assert_eq!(
        inserted(notification(
            &web,
            web_second,
            "web-2",
            NotificationKind::BuildCompleted,
            13
        ))
        .await,
        2
    );
}

async fn outbox_claims_retries_and_gives_up(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let ada = user(&*store, "ada@example.com").await;
    let bob = user(&*store, "bob@example.com").await;
    let built = build(&*store, &web, "run-1").await;
    let new = notification(&web, built, "run-1", NotificationKind::BuildStarted, 100);
    let ids = store
        .insert_notifications(&new, &[ada.id, bob.id], Delivery::InboxAndEmail)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // A replay queues no second email either.
    assert!(
        store
            .insert_notifications(&new, &[ada.id, bob.id], Delivery::InboxAndEmail)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_due_emails(Millis(99), Millis(1_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "not due before it was queued"
    );
    let claimed = store
        .claim_due_emails(Millis(100), Millis(1_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].recipient, "ada@example.com");
    assert_eq!(claimed[0].notification_id, ids[0]);
    assert_eq!(claimed[0].subject, new.title);
    assert_eq!(claimed[0].attempts, 1);
    // Claimed: not due again while the attempt runs.
    assert!(
        store
            .claim_due_emails(Millis(500), Millis(2_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.email_sent(claimed[0].id, Millis(150)).await.unwrap();
    store
        .email_failed(
            claimed[1].id,
            "connection refused",
            Some(Millis(300)),
            Millis(150),
        )
        .await
        .unwrap();
    let retried = store
        .claim_due_emails(Millis(300), Millis(1_300), 10)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].recipient, "bob@example.com");
    assert_eq!(retried[0].attempts, 2);
    store
        .email_failed(retried[0].id, "mailbox unavailable", None, Millis(310))
        .await
        .unwrap();
    // Sent and given-up emails are never claimed again, even after their lease.
    assert!(
        store
            .claim_due_emails(Millis(10_000), Millis(11_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn notifier_cursor_compare_and_set(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    assert_eq!(store.notifier_cursor().await.unwrap(), 0);
    assert!(store.advance_notifier_cursor(0, 5).await.unwrap());
    assert!(!store.advance_notifier_cursor(0, 7).await.unwrap());
    assert_eq!(store.notifier_cursor().await.unwrap(), 5);
    assert!(store.advance_notifier_cursor(5, 9).await.unwrap());
    assert_eq!(store.notifier_cursor().await.unwrap(), 9);
    drop(store);
    // Reopening (migrations run again) keeps the cursor.
    let store = database.open_dyn().await;
    assert_eq!(store.notifier_cursor().await.unwrap(), 9);
}
