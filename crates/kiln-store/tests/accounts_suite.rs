//! Users, sessions, memberships, user tokens and the audit log, on both engines.

use kiln_core::token::TokenKind;
use kiln_core::{Millis, ProjectSlug, Role};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(users_sessions_and_roles);

async fn users_sessions_and_roles(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = store
        .create_project(
            &ProjectSlug::parse("slug", "web").unwrap(),
            "Web",
            Millis(1),
        )
        .await
        .unwrap();
    let ada = store
        .create_user(
            "ada@example.com",
            "Ada",
            Some("$argon2id$x"),
            false,
            Millis(2),
        )
        .await
        .unwrap();
    let root = store
        .create_user("root@example.com", "Root", None, true, Millis(3))
        .await
        .unwrap();
    assert!(matches!(
        store.create_user("ada@example.com", "Again", None, false, Millis(4)).await,
        Err(StoreError::Conflict(message)) if message.contains("ada@example.com")
    ));
    assert_eq!(
        store.user_by_email("ada@example.com").await.unwrap(),
        Some(ada.clone())
    );
    assert!(
        store
            .user_by_id(root.id)
            .await
            .unwrap()
            .unwrap()
            .instance_admin
    );
    assert_eq!(store.list_users().await.unwrap().len(), 2);
    store.set_password(ada.id, "$argon2id$y").await.unwrap();
    assert_eq!(
        store
            .user_by_id(ada.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$y")
    );

    let session = store
        .create_session(ada.id, "session-hash", "csrf", Millis(10), Millis(1_000))
        .await
        .unwrap();
    assert_eq!(
        store.session_by_hash("session-hash").await.unwrap(),
        Some(session.clone())
    );
    store.revoke_session(session.id, Millis(20)).await.unwrap();
    assert_eq!(
        store
            .session_by_hash("session-hash")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(Millis(20))
    );

    store
        .set_membership(web.id, ada.id, Role::Viewer, Millis(30))
        .await
        .unwrap();
    assert_eq!(store.project_admins(web.id).await.unwrap(), vec![root.id]);
    let changed = store
        .set_membership(web.id, ada.id, Role::Admin, Millis(31))
        .await
        .unwrap();
    assert_eq!(changed.role, Role::Admin);
    assert_eq!(
        store.project_admins(web.id).await.unwrap(),
        vec![ada.id, root.id]
    );
    assert_eq!(store.memberships_of_user(ada.id).await.unwrap().len(), 1);
    assert_eq!(
        store.members_of_project(web.id).await.unwrap()[0].user_id,
        ada.id
    );
    store.remove_membership(web.id, ada.id).await.unwrap();
    assert!(matches!(
        store.remove_membership(web.id, ada.id).await,
        Err(StoreError::NotFound(_))
    ));

    let token = store
        .create_user_token(
            ada.id,
            &NewToken {
                project_id: None,
                kind: TokenKind::User,
                name: "laptop".into(),
                scopes: vec![],
                token_hash: "user-token-hash".into(),
                display_prefix: "kiln_abcd".into(),
            },
            Millis(40),
        )
        .await
        .unwrap();
    assert_eq!(token.kind, TokenKind::User);
    assert_eq!(token.user_id, Some(ada.id));
    assert_eq!(
        store
            .token_by_hash("user-token-hash")
            .await
            .unwrap()
            .unwrap()
            .user_id,
        Some(ada.id)
    );
    assert_eq!(store.user_tokens(ada.id).await.unwrap().len(), 1);
    assert!(matches!(
        store.revoke_user_token(root.id, token.id, Millis(41)).await,
        Err(StoreError::NotFound(_))
    ));
    let revoked = store
        .revoke_user_token(ada.id, token.id, Millis(42))
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(Millis(42)));

    store
        .append_audit(
            "user:1 root@example.com",
            "member.set",
            Some(web.id),
            Some("ada@example.com"),
            Some("admin"),
            Millis(50),
        )
        .await
        .unwrap();
    store
        .append_audit(
            "token:1",
            "agent_token.create",
            None,
            Some("pool"),
            None,
            Millis(51),
        )
        .await
        .unwrap();
    let all = store.audit_log(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].action, "agent_token.create", "newest first");
    let of_web = store.audit_log(Some(web.id), None, 10).await.unwrap();
    assert_eq!(of_web.len(), 1);
    assert_eq!(of_web[0].target.as_deref(), Some("ada@example.com"));
    assert_eq!(
        store
            .audit_log(None, Some(all[0].id), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
