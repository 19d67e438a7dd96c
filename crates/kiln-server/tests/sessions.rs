//! Logins and sessions through the real server: cookies, CSRF, logout, expiry, limits.

mod common;

use kiln_store::{AccountStore, engine_test};

use common::{ADMIN_TOKEN, TestApp};
use kiln_store::Engine;
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(sessions_need_csrf_expire_and_log_out);
engine_test!(behind_a_trusted_proxy_each_client_has_its_own_login_limit);
engine_test!(user_routes_tell_a_token_how_to_get_a_user_token);
engine_test!(password_hashing_at_its_limit_answers_503_and_recovers);

async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Option<String>, Value) {
    let response = app
        .http
        .post(format!("{}/api/v1/session", app.base_url))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, cookie, response.json().await.unwrap_or(Value::Null))
}

async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> u16 {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.base_url))
        .header("cookie", cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn sessions_need_csrf_expire_and_log_out(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (status, created) = app
        .raw(
            Method::POST,
            "/api/v1/users",
            Some(ADMIN_TOKEN),
            Some(serde_json::to_vec(&json!({"email": "Ada@Example.com", "name": "Ada", "password": "correct horse"})).unwrap()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(
        created.get("password").is_none(),
        "a given password is not echoed"
    );
    assert_eq!(
        created["user"]["email"], "ada@example.com",
        "emails are case-insensitive"
    );

    let (status, cookie, answer) = login(&app, "ada@example.com", "wrong horse").await;
    assert_eq!(status, 401);
    assert!(cookie.is_none());
    assert_eq!(answer["error"]["message"], "wrong email or password");
    let (status, _, unknown) = login(&app, "nobody@example.com", "wrong horse").await;
    assert_eq!(status, 401);
    assert_eq!(
        unknown["error"]["message"], answer["error"]["message"],
        "no hint whether the account exists"
    );

    let (status, cookie, answer) = login(&app, "ADA@example.com", "correct horse").await;
    assert_eq!(status, 200, "{answer}");
    let set_cookie = cookie.unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "plain http");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = answer["csrfToken"].as_str().unwrap().to_owned();

    assert_eq!(
        with_cookie(&app, Method::GET, "/api/v1/me", &cookie, None, None).await,
        200
    );
    // Unsafe requests need the CSRF token.
    let body = Some(json!({"name": "laptop"}));
    assert_eq!(
        with_cookie(
            &app,
            Method::POST,
            "/api/v1/me/tokens",
            &cookie,
            None,
            body.clone()
        )
        .await,
        403
    );
    assert_eq!(
        with_cookie(
            &app,
            Method::POST,
            "/api/v1/me/tokens",
            &cookie,
            Some("wrong"),
            body.clone()
        )
        .await,
        403
    );
    assert_eq!(
        with_cookie(
            &app,
            Method::POST,
            "/api/v1/me/tokens",
            &cookie,
            Some(&csrf),
            body
        )
        .await,
        201
    );

    // Logout ends the session.
    assert_eq!(
        with_cookie(
            &app,
            Method::DELETE,
            "/api/v1/session",
            &cookie,
            Some(&csrf),
            None
        )
        .await,
        204
    );
    assert_eq!(
        with_cookie(&app, Method::GET, "/api/v1/me", &cookie, None, None).await,
        401
    );

    // Sessions expire after 12 hours.
    let (_, cookie, _) = login(&app, "ada@example.com", "correct horse").await;
    let cookie = cookie.unwrap().split(';').next().unwrap().to_owned();
    assert_eq!(
        with_cookie(&app, Method::GET, "/api/v1/me", &cookie, None, None).await,
        200
    );
    app.clock.advance_ms(12 * 3600 * 1000 + 1);
    assert_eq!(
        with_cookie(&app, Method::GET, "/api/v1/me", &cookie, None, None).await,
        401
    );

    // Five failures lock the account for a while (the right password too).
    for _ in 0..5 {
        assert_eq!(login(&app, "ada@example.com", "guess guess").await.0, 401);
    }
    let (status, _, answer) = login(&app, "ada@example.com", "correct horse").await;
    assert_eq!(status, 429);
    assert_eq!(answer["error"]["code"], "rate_limited");

    // Bad input.
    for (body, field) in [
        (json!({"email": "no-at-sign", "password": "x"}), "email"),
        (json!({"email": "a@b.c"}), "password"),
    ] {
        let (status, answer) = app
            .raw(
                Method::POST,
                "/api/v1/session",
                None,
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["field"], field);
    }
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/users",
            Some(ADMIN_TOKEN),
            Some(
                serde_json::to_vec(&json!({"email": "b@x.io", "name": "B", "password": "short"}))
                    .unwrap(),
            ),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "password");
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/users",
            Some(ADMIN_TOKEN),
            Some(serde_json::to_vec(&json!({"email": "ada@example.com", "name": "Dup"})).unwrap()),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(answer["error"]["code"], "user_exists");
    app.stop().await;
}

async fn login_from(app: &TestApp, forwarded_for: &str, email: &str) -> u16 {
    app.http
        .post(format!("{}/api/v1/session", app.base_url))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": email, "password": "wrong password"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// With `--trusted-proxies` naming the proxy (here the tests' 127.0.0.1), the login
/// limit counts each forwarded client on its own; without it, a forged
/// `X-Forwarded-For` changes nothing.
async fn behind_a_trusted_proxy_each_client_has_its_own_login_limit(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let proxied = TestApp::spawn_configured(database.clone(), clock.clone(), |config| {
        config.connections.trusted_proxies =
            vec![kiln_core::net::Cidr::parse("127.0.0.1").unwrap()];
    })
    .await;
    for n in 0..20 {
        assert_eq!(
            login_from(&proxied, "203.0.113.1", &format!("u{n}@x.io")).await,
            401
        );
    }
    assert_eq!(
        login_from(&proxied, "203.0.113.1", "new@x.io").await,
        429,
        "client 1 is over its limit"
    );
    assert_eq!(
        login_from(&proxied, "203.0.113.2", "new@x.io").await,
        401,
        "client 2 has its own limit"
    );
    proxied.stop().await;

    let direct = TestApp::spawn_configured(database, clock, |_| {}).await;
    for n in 0..20 {
        login_from(&direct, &format!("203.0.113.{n}"), &format!("d{n}@x.io")).await;
    }
    assert_eq!(
        login_from(&direct, "203.0.113.99", "new@x.io").await,
        429,
        "a forged header from an untrusted peer does not buy a fresh limit"
    );
    direct.stop().await;
}

/// The 403 of a user-only route names commands that exist.
async fn user_routes_tell_a_token_how_to_get_a_user_token(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (_, token) = app.project_client("web", &["read"]).await;
    let (status, answer) = app.raw(Method::GET, "/api/v1/me", Some(&token), None).await;
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("`kiln login`"), "{message}");
    assert!(!message.contains("kiln user token create"), "{message}");
    app.stop().await;
}

/// An argon2id hash of `password` whose parameters make one check take at least
/// `at_least` here (time cost doubled until it does), and the time one check took.
fn slow_hash(password: &str, at_least: std::time::Duration) -> (String, std::time::Duration) {
    use argon2::password_hash::PasswordHasher;
    let mut time_cost = 2;
    loop {
        let params = argon2::Params::new(19_456, time_cost, 1, None).unwrap();
        let argon2 =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let started = std::time::Instant::now();
        let hash = argon2
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string();
        let took = started.elapsed();
        if took >= at_least {
            return (hash, took);
        }
        time_cost *= 2;
    }
}

/// Password hashing at its limit: one slot and a 100 ms wait. While a login whose hash
/// takes over 600 ms holds the slot, six logins sent at once each wait 100 ms and get
/// 503 `unavailable` with `Retry-After` and Kiln's JSON error; the slow login then gets
/// its 200, and the server logs users in again afterwards.
async fn password_hashing_at_its_limit_answers_503_and_recovers(engine: Engine) {
    let app = TestApp::spawn_with(engine, |config| {
        config.passwords = kiln_server::PasswordConfig {
            slots: 1,
            queue_wait: std::time::Duration::from_millis(100),
        };
    })
    .await;
    for email in ["slow@example.com", "quick@example.com"] {
        let (status, created) = app
            .raw(
                Method::POST,
                "/api/v1/users",
                Some(ADMIN_TOKEN),
                Some(
                    serde_json::to_vec(
                        &json!({"email": email, "name": email, "password": "correct horse"}),
                    )
                    .unwrap(),
                ),
            )
            .await;
        assert_eq!(status, 201, "{created}");
    }
    // The slow account's hash is stored with costlier parameters (Kiln verifies with
    // the parameters the hash names), so its check holds the one slot long enough.
    let (slow, took) = tokio::task::spawn_blocking(|| {
        slow_hash("correct horse", std::time::Duration::from_millis(600))
    })
    .await
    .unwrap();
    let store = app.database.open().await;
    let user = store
        .user_by_email("slow@example.com")
        .await
        .unwrap()
        .unwrap();
    store.set_password(user.id, &slow).await.unwrap();

    let holder = {
        let app_url = app.base_url.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let status = reqwest::Client::new()
                .post(format!("{app_url}/api/v1/session"))
                .json(&json!({"email": "slow@example.com", "password": "correct horse"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            (status, started.elapsed())
        })
    };
    // The slow check has the slot well before this, and holds it for `took` (≥ 600 ms).
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let crowd: Vec<_> = (0..6)
        .map(|_| {
            let app_url = app.base_url.clone();
            tokio::spawn(async move {
                // A client each: six connections, six requests at once.
                let response = reqwest::Client::new()
                    .post(format!("{app_url}/api/v1/session"))
                    .json(&json!({"email": "quick@example.com", "password": "correct horse"}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_owned());
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, retry_after, body)
            })
        })
        .collect();
    for answer in crowd {
        let (status, retry_after, body) = answer.await.unwrap();
        assert_eq!(status, 503, "the slot was taken past the wait: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("busy checking other passwords"),
            "{body}"
        );
    }
    let (status, slow_took) = holder.await.unwrap();
    assert_eq!(status, 200, "the login holding the slot is answered");
    println!(
        "password slots 1, wait 100 ms: 6 of 6 concurrent logins answered 503 while one check took {slow_took:?} (its hash alone {took:?})"
    );
    let (status, _, answer) = login(&app, "quick@example.com", "correct horse").await;
    assert_eq!(status, 200, "served again once the slot is free: {answer}");
    app.stop().await;
}
