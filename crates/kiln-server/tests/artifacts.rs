//! Artifacts against the real server: uploads checked against their declared SHA-256
//! and resumed after a break, content stored once, manifests whose digests are those of
//! `sha256sum`/`md5sum`/`sha512sum`, downloads with `ETag` and ranges, the whole build
//! as a `.tar.gz` that `tar` unpacks, verification finding corrupted and missing blobs,
//! and bad input refused with the field named.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TestApp, assert_error, database_dir};
use kiln_client::protocol::{ArtifactManifest, ArtifactUpload, ArtifactVerification, EventPayload};
use kiln_client::{ArtifactTarget, Client};
use kiln_store::{Engine, engine_test};
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(uploads_are_checked_stored_once_and_served_with_ranges);
engine_test!(a_broken_upload_resumes_and_a_wrong_checksum_stores_nothing);
engine_test!(an_upload_without_a_sha256_is_confirmed_by_its_last_put);
engine_test!(an_upload_may_be_confirmed_by_its_crc32);
engine_test!(bad_paths_and_limits_are_refused_naming_the_field);
engine_test!(verify_names_corrupted_and_missing_blobs);
engine_test!(a_failing_store_answers_503_and_publishes_nothing);

fn digest(tool: &str, path: &std::path::Path) -> String {
    let output = Command::new(tool).arg(path).output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Pseudo-random bytes (no two 1 KiB blocks alike).
fn bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// The build's manifest once the digester filled in every file's MD5 and SHA-512.
async fn digested(client: &Client, run_id: &str) -> ArtifactManifest {
    for _ in 0..400 {
        let manifest = client.artifact_manifest(run_id).await.unwrap();
        if manifest
            .files
            .iter()
            .all(|f| f.md5.is_some() && f.sha512.is_some())
        {
            return manifest;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the digester did not fill in {run_id}'s MD5 and SHA-512 within 10 s");
}

async fn started(app: &TestApp, slug: &str, run_id: &str) -> (Client, String) {
    let (client, token) = app.project_client(slug, &["ingest", "read"]).await;
    client
        .send_events(&[EventPayload {
            run_id: run_id.into(),
            event: "build_started".into(),
            ..EventPayload::default()
        }])
        .await
        .unwrap();
    (client, token)
}

async fn declare(app: &TestApp, token: &str, run_id: &str, body: Value) -> (u16, Value) {
    app.raw(
        Method::POST,
        &format!("/api/v1/builds/{run_id}/artifacts"),
        Some(token),
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn send(
    app: &TestApp,
    token: &str,
    run_id: &str,
    upload_id: &str,
    offset: u64,
    body: Vec<u8>,
) -> (u16, Value) {
    send_query(
        app,
        token,
        run_id,
        upload_id,
        &format!("offset={offset}"),
        body,
    )
    .await
}

/// `send` confirming the file's SHA-256 (`&sha256=…`).
async fn send_confirming(
    app: &TestApp,
    token: &str,
    run_id: &str,
    upload_id: &str,
    offset: u64,
    sha256: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let query = format!("offset={offset}&sha256={sha256}");
    send_query(app, token, run_id, upload_id, &query, body).await
}

async fn send_query(
    app: &TestApp,
    token: &str,
    run_id: &str,
    upload_id: &str,
    query: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let response = app
        .http
        .put(format!(
            "{}/api/v1/builds/{run_id}/artifacts/uploads/{upload_id}?{query}",
            app.base_url
        ))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn uploads_are_checked_stored_once_and_served_with_ranges(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = started(&app, "web", "r1").await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("app.bin");
    let content = bytes(700_000, 1);
    std::fs::write(&local, &content).unwrap();
    let target = ArtifactTarget::Build {
        run_id: "r1".into(),
    };
    let stored = client
        .upload_artifact(&target, &local, "dist/app.bin", 0o640, Some("build"))
        .await
        .unwrap();
    assert_eq!(stored.size, 700_000);
    assert_eq!(stored.sha256, digest("sha256sum", &local));
    // MD5 and SHA-512 are computed off the upload's path, moments later.
    let manifest = digested(&client, "r1").await;
    assert_eq!(
        manifest.files[0].md5.as_deref(),
        Some(digest("md5sum", &local).as_str())
    );
    assert_eq!(
        manifest.files[0].sha512.as_deref(),
        Some(digest("sha512sum", &local).as_str())
    );
    assert_eq!(
        (stored.mode, stored.step.as_deref()),
        (0o640, Some("build"))
    );

    // The same content again needs no bytes: same path, or another path or build.
    let declaration = json!({"path": "dist/app.bin", "size": 700_000, "sha256": stored.sha256});
    let (status, body) = declare(&app, &token, "r1", declaration).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    let (status, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "copy/app.bin", "size": 700_000, "sha256": stored.sha256}),
    )
    .await;
    assert_eq!(
        (status, body["complete"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_eq!(body["offset"], 700_000);
    // One path, one content: manifests do not change.
    let other = sha256_hex(b"other");
    let (status, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "dist/app.bin", "size": 5, "sha256": other}),
    )
    .await;
    assert_eq!(status, 409);
    assert_error(&body, "artifact_exists", Some("path"));

    let manifest: ArtifactManifest = client.artifact_manifest("r1").await.unwrap();
    assert_eq!(manifest.count, 2);
    assert_eq!(manifest.total_bytes, 1_400_000);
    assert_eq!(manifest.files[0].path, "copy/app.bin");

    // Downloads: whole, conditional, ranged, past the end.
    let url = format!(
        "{}/api/v1/builds/r1/artifacts/files/dist/app.bin",
        app.base_url
    );
    let whole = app.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", stored.sha256));
    assert_eq!(whole.headers()["x-checksum-sha256"], stored.sha256.as_str());
    assert_eq!(whole.headers()["content-type"], "application/octet-stream");
    assert!(
        whole.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(whole.bytes().await.unwrap().as_ref(), content.as_slice());
    let cached = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    let part = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 1000-1999/700000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &content[1000..2000]);
    let past = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("range", "bytes=700000-")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    // Like every 4xx, with the error body (the OpenAPI document's Error).
    assert_eq!(past.headers()["content-range"], "bytes */700000");
    assert_error(
        &past.json::<Value>().await.unwrap(),
        "range_not_satisfiable",
        Some("Range"),
    );
    let (status, body) = app
        .raw(
            Method::GET,
            "/api/v1/builds/r1/artifacts/files/nope.txt",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Another project's token sees nothing of it.
    let (_, stranger) = app.project_client("api", &["ingest", "read"]).await;
    let (status, _) = app
        .raw(
            Method::GET,
            "/api/v1/builds/r1/artifacts",
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = declare(
        &app,
        &stranger,
        "r1",
        json!({"path": "x", "size": 1, "sha256": sha256_hex(b"x")}),
    )
    .await;
    assert_eq!(status, 404);

    // The whole build as a .tar.gz that tar unpacks, modes kept.
    let archive = dir.path().join("all.tar.gz");
    client
        .download_artifact_archive("r1", &archive)
        .await
        .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(out.join("dist/app.bin")).unwrap(), content);
    assert_eq!(std::fs::read(out.join("copy/app.bin")).unwrap(), content);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("dist/app.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

async fn a_broken_upload_resumes_and_a_wrong_checksum_stores_nothing(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = started(&app, "web", "r1").await;
    let content = bytes(1000, 2);
    let sha256 = sha256_hex(&content);
    let declaration = json!({"path": "big.bin", "size": 1000, "sha256": sha256});
    let (status, body) = declare(&app, &token, "r1", declaration.clone()).await;
    assert_eq!(status, 200, "{body}");
    let upload: ArtifactUpload = serde_json::from_value(body).unwrap();
    assert_eq!((upload.offset, upload.complete), (0, false));
    // The first 400 bytes arrive, then the connection "breaks".
    let (status, body) = send(
        &app,
        &token,
        "r1",
        &upload.upload_id,
        0,
        content[..400].to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["offset"].clone(), body["complete"].clone()),
        (200, json!(400), json!(false))
    );
    // Nothing is published half: the manifest has no file yet.
    assert_eq!(client.artifact_manifest("r1").await.unwrap().count, 0);
    // A client that lost track sends from the wrong offset: told where to resume.
    let (status, body) = send(&app, &token, "r1", &upload.upload_id, 0, content.clone()).await;
    assert_eq!(status, 409);
    assert_error(&body, "upload_offset", Some("offset"));
    assert!(body["error"]["message"].as_str().unwrap().contains("400"));
    // Declaring again answers the same upload at its offset.
    let (_, body) = declare(&app, &token, "r1", declaration).await;
    assert_eq!(
        (body["uploadId"].clone(), body["offset"].clone()),
        (json!(upload.upload_id), json!(400))
    );
    // More than declared is refused, keeping nothing of that request.
    let (status, body) = send(&app, &token, "r1", &upload.upload_id, 400, bytes(700, 3)).await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_field", Some("body"));
    let (status, body) = send(
        &app,
        &token,
        "r1",
        &upload.upload_id,
        400,
        content[400..].to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    assert_eq!(body["artifact"]["sha256"], sha256.as_str());

    // Bytes that are not the declared ones: refused, nothing stored, start again.
    let lie = json!({"path": "lie.bin", "size": 1000, "sha256": sha256_hex(b"something else")});
    let (_, body) = declare(&app, &token, "r1", lie.clone()).await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) = send(&app, &token, "r1", &id, 0, content.clone()).await;
    assert_eq!(status, 422);
    assert_error(&body, "checksum_mismatch", Some("sha256"));
    let manifest = client.artifact_manifest("r1").await.unwrap();
    assert_eq!(
        manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["big.bin"]
    );
    let (_, body) = declare(&app, &token, "r1", lie).await;
    assert_eq!(body["offset"], 0, "the wrong bytes were dropped");
    // An upload id that is not one is 404.
    let (status, _) = send(
        &app,
        &token,
        "r1",
        "0123456789abcdef0123456789abcdef",
        0,
        vec![1],
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(&app, &token, "r1", "../../etc", 0, vec![1]).await;
    assert_eq!(status, 404);
}

async fn bad_paths_and_limits_are_refused_naming_the_field(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let artifacts = database_dir(&database, "artifacts-limited");
    let app = TestApp::spawn_configured(database, clock, |config| {
        let mut limited = kiln_server::ArtifactConfig::local(&artifacts).unwrap();
        limited.max_file_bytes = 1000;
        limited.max_build_bytes = 1500;
        config.artifacts = Some(limited);
    })
    .await;
    let (_, token) = started(&app, "web", "r1").await;
    let sha = sha256_hex(b"x");
    for (body, field) in [
        (json!({"path": "../x", "size": 1, "sha256": sha}), "path"),
        (
            json!({"path": "/etc/passwd", "size": 1, "sha256": sha}),
            "path",
        ),
        (json!({"path": "a//b", "size": 1, "sha256": sha}), "path"),
        (json!({"path": "a/./b", "size": 1, "sha256": sha}), "path"),
        (json!({"path": "a\\b", "size": 1, "sha256": sha}), "path"),
        (json!({"path": "a\u{0}b", "size": 1, "sha256": sha}), "path"),
        (json!({"path": "", "size": 1, "sha256": sha}), "path"),
        (json!({"path": "a", "size": 1, "sha256": "XYZ"}), "sha256"),
        (
            json!({"path": "a", "size": 1, "sha256": sha.to_uppercase()}),
            "sha256",
        ),
        (json!({"path": "a", "size": -1, "sha256": sha}), "size"),
        (
            json!({"path": "a", "size": 1, "sha256": sha, "mode": 4096}),
            "mode",
        ),
        (
            json!({"path": "a", "size": 1, "sha256": sha, "step": "  "}),
            "step",
        ),
        (
            json!({"path": "a", "size": 1, "sha256": sha, "colour": "red"}),
            "colour",
        ),
        (json!({"size": 1, "sha256": sha}), "path"),
    ] {
        let (status, answer) = declare(&app, &token, "r1", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    // Limits: a file over the per-file limit, a build over the per-build limit.
    let (status, answer) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "a", "size": 1001, "sha256": sha}),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--artifact-max-file-bytes")
    );
    let content = bytes(900, 4);
    let (_, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "a", "size": 900, "sha256": sha256_hex(&content)}),
    )
    .await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, _) = send(&app, &token, "r1", &id, 0, content).await;
    assert_eq!(status, 200);
    let (status, answer) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "b", "size": 700, "sha256": sha}),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--artifact-max-build-bytes")
    );
    // Uploads being sent count too: 300 declared beside the 900 stored fit, 400 more do
    // not; declaring the first again is a resume, not a second upload.
    let c = json!({"path": "c", "size": 300, "sha256": sha});
    assert_eq!(declare(&app, &token, "r1", c.clone()).await.0, 200);
    let d = json!({"path": "d", "size": 400, "sha256": sha256_hex(b"d")});
    let (status, answer) = declare(&app, &token, "r1", d).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300 being uploaded"),
        "{answer}"
    );
    assert_eq!(declare(&app, &token, "r1", c).await.0, 200);
    // An unknown build, and a read token, are refused.
    let (status, _) = declare(
        &app,
        &token,
        "nope",
        json!({"path": "a", "size": 1, "sha256": sha}),
    )
    .await;
    assert_eq!(status, 404);
    let (_, reader) = app.project_client("web", &["read"]).await;
    let (status, _) = declare(
        &app,
        &reader,
        "r1",
        json!({"path": "a", "size": 1, "sha256": sha}),
    )
    .await;
    assert_eq!(status, 403);
}

async fn verify_names_corrupted_and_missing_blobs(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = started(&app, "web", "r1").await;
    let dir = tempfile::tempdir().unwrap();
    let target = ArtifactTarget::Build {
        run_id: "r1".into(),
    };
    let mut stored = Vec::new();
    for (name, seed) in [("a.bin", 5), ("b.bin", 6), ("c.bin", 7)] {
        let local = dir.path().join(name);
        std::fs::write(&local, bytes(50_000, seed)).unwrap();
        stored.push(
            client
                .upload_artifact(&target, &local, name, 0o644, None)
                .await
                .unwrap(),
        );
    }
    digested(&client, "r1").await;
    let verified: ArtifactVerification = client.verify_artifacts("r1").await.unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!((verified.checked, verified.bytes), (3, 150_000));
    // Flip a byte of one stored blob, remove another.
    let blob_of = |sha256: &str| {
        database_dir(&app.database, "artifacts")
            .join("blobs")
            .join(&sha256[..2])
            .join(&sha256[2..4])
            .join(sha256)
    };
    let corrupted = blob_of(&stored[0].sha256);
    let mut content = std::fs::read(&corrupted).unwrap();
    content[100] ^= 0xff;
    std::fs::write(&corrupted, content).unwrap();
    std::fs::remove_file(blob_of(&stored[2].sha256)).unwrap();
    let verified = client.verify_artifacts("r1").await.unwrap();
    assert!(!verified.ok);
    let problems: Vec<(&str, &str)> = verified
        .mismatches
        .iter()
        .map(|m| (m.path.as_str(), m.problem.as_str()))
        .collect();
    assert_eq!(
        problems,
        [
            ("a.bin", "md5"),
            ("a.bin", "sha256"),
            ("a.bin", "sha512"),
            ("c.bin", "missing")
        ]
    );
    // Viewers may not make the server re-hash a build; developers (and ingest tokens) may.
    let (_, reader) = app.project_client("web", &["read"]).await;
    let (status, _) = app
        .raw(
            Method::POST,
            "/api/v1/builds/r1/artifacts/verify",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .raw(
            Method::POST,
            "/api/v1/builds/r1/artifacts/verify",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
}

/// A blob store that fails (here an object store nobody answers for): the upload is
/// answered 503 with the reason, and the manifest names nothing.
async fn a_failing_store_answers_503_and_publishes_nothing(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let staging = database_dir(&database, "artifacts-failing");
    let app = TestApp::spawn_configured(database, clock, |config| {
        use kiln_server::blobs::s3::{S3BlobStore, S3Config, S3Credentials};
        let credentials = S3Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: kiln_server::Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1".into(),
        };
        let unreachable = S3Config::from_url(
            "s3://kiln/artifacts",
            Some("http://127.0.0.1:1"),
            credentials,
        )
        .unwrap();
        let mut artifacts = kiln_server::ArtifactConfig::local(&staging).unwrap();
        artifacts.blobs = std::sync::Arc::new(S3BlobStore::new(unreachable).unwrap());
        config.artifacts = Some(artifacts);
    })
    .await;
    let (client, token) = started(&app, "web", "r1").await;
    let content = bytes(2000, 9);
    let (status, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "a.bin", "size": 2000, "sha256": sha256_hex(&content)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) = send(&app, &token, "r1", &id, 0, content).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("artifact storage failed")
    );
    assert_eq!(client.artifact_manifest("r1").await.unwrap().count, 0);
}

/// An upload may leave the SHA-256 out of its declaration (the client checks while it
/// sends): the last bytes wait for it, a `PUT` carrying `?sha256=` completes or refuses
/// the file, and it resumes like any upload. `kiln`'s client does this for large files.
async fn an_upload_without_a_sha256_is_confirmed_by_its_last_put(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = started(&app, "web", "r1").await;
    let content = bytes(3000, 7);
    let sha256 = sha256_hex(&content);
    let declaration = json!({"path": "streamed.bin", "size": 3000});
    let (status, body) = declare(&app, &token, "r1", declaration.clone()).await;
    assert_eq!(status, 200, "{body}");
    let upload: ArtifactUpload = serde_json::from_value(body).unwrap();
    assert_eq!(
        (upload.offset, upload.complete, upload.awaiting_sha256),
        (0, false, false)
    );
    // Part, then (after a break, declared again: the same upload) the rest.
    let (status, body) = send(
        &app,
        &token,
        "r1",
        &upload.upload_id,
        0,
        content[..1200].to_vec(),
    )
    .await;
    assert_eq!((status, body["offset"].clone()), (200, json!(1200)));
    let (_, body) = declare(&app, &token, "r1", declaration.clone()).await;
    assert_eq!(
        (body["uploadId"].clone(), body["offset"].clone()),
        (json!(upload.upload_id), json!(1200))
    );
    let (status, body) = send(
        &app,
        &token,
        "r1",
        &upload.upload_id,
        1200,
        content[1200..].to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["offset"].clone(),
            body["complete"].clone(),
            body["awaitingSha256"].clone()
        ),
        (json!(3000), json!(false), json!(true)),
        "every byte is there; the SHA-256 is awaited"
    );
    assert_eq!(
        client.artifact_manifest("r1").await.unwrap().count,
        0,
        "nothing published yet"
    );
    // A confirmation that is not a SHA-256 is refused naming the field, and changes nothing.
    let (status, body) = send_confirming(
        &app,
        &token,
        "r1",
        &upload.upload_id,
        3000,
        "xyz",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_field", Some("sha256"));
    // The right SHA-256 with an empty body completes it.
    let (status, body) = send_confirming(
        &app,
        &token,
        "r1",
        &upload.upload_id,
        3000,
        &sha256,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    assert_eq!(body["artifact"]["sha256"], sha256.as_str());
    assert_eq!(body["artifact"]["size"], 3000);
    // Declared again without a SHA-256 once stored: the server cannot know the content
    // yet, so the bytes come again; the same content is accepted at the confirmation.
    let (_, body) = declare(&app, &token, "r1", declaration).await;
    assert_eq!(
        (body["complete"].clone(), body["offset"].clone()),
        (json!(false), json!(0)),
        "{body}"
    );
    let again = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) =
        send_confirming(&app, &token, "r1", &again, 0, &sha256, content.clone()).await;
    assert_eq!(
        (status, body["complete"].clone()),
        (200, json!(true)),
        "{body}"
    );

    // A wrong SHA-256: refused, nothing stored, the bytes dropped.
    let wrong = json!({"path": "wrong.bin", "size": 3000});
    let (_, body) = declare(&app, &token, "r1", wrong.clone()).await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) = send(&app, &token, "r1", &id, 0, content.clone()).await;
    assert_eq!((status, body["awaitingSha256"].clone()), (200, json!(true)));
    let (status, body) = send_confirming(
        &app,
        &token,
        "r1",
        &id,
        3000,
        &sha256_hex(b"other"),
        Vec::new(),
    )
    .await;
    assert_eq!(status, 422);
    assert_error(&body, "checksum_mismatch", Some("sha256"));
    let (_, body) = declare(&app, &token, "r1", wrong).await;
    assert_eq!(body["offset"], 0, "the refused bytes were dropped");

    // The SHA-256 may also come with the last bytes themselves.
    let (_, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "at-once.bin", "size": 3000}),
    )
    .await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) =
        send_confirming(&app, &token, "r1", &id, 0, &sha256, content.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);

    // An upload that declared its SHA-256 refuses a confirmation of another.
    let (_, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "declared.bin", "size": 3000, "sha256": sha256_hex(&bytes(3000, 8))}),
    )
    .await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) =
        send_confirming(&app, &token, "r1", &id, 0, &sha256, content.clone()).await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_field", Some("sha256"));
    let (_, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "declared.bin", "size": 3000, "sha256": sha256_hex(&bytes(3000, 8))}),
    )
    .await;
    assert_eq!(body["offset"], 0, "nothing of the refused request was kept");

    // The same path with other content, undeclared: refused at the confirmation.
    let other = bytes(3000, 9);
    let (_, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "streamed.bin", "size": 3000}),
    )
    .await;
    assert_eq!(body["complete"], false, "content not known yet: {body}");
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (_, _) = send(&app, &token, "r1", &id, 0, other.clone()).await;
    let (status, body) = send_confirming(
        &app,
        &token,
        "r1",
        &id,
        3000,
        &sha256_hex(&other),
        Vec::new(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "artifact_exists", Some("path"));

    // The client sums a CRC-32 while sending from its threshold up; the file is the same.
    let dir = tempfile::tempdir().unwrap();
    let large = bytes(kiln_client::HASH_WHILE_SENDING_FROM as usize + 4096, 10);
    client_round_trip(&client, dir.path(), "large.bin", &large).await;
    let manifest = digested(&client, "r1").await;
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["at-once.bin", "large.bin", "streamed.bin"]);
    app.stop().await;
}

/// `kiln`'s client uploads `content` as `name` of build `r1` (from a file in `dir`), the
/// answer names its SHA-256 and size, and a download gives the same bytes back.
async fn client_round_trip(client: &Client, dir: &Path, name: &str, content: &[u8]) {
    let local = dir.join(name);
    std::fs::write(&local, content).unwrap();
    let target = ArtifactTarget::Build {
        run_id: "r1".into(),
    };
    let stored = client
        .upload_artifact(&target, &local, name, 0o644, None)
        .await
        .unwrap();
    assert_eq!(stored.sha256, sha256_hex(content));
    assert_eq!(stored.size, content.len() as u64);
    let fetched = dir.join("fetched.bin");
    client
        .download_artifact("r1", name, &fetched, Some(&stored.sha256))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), content);
}

/// The last `PUT` may confirm an upload declared without a SHA-256 by its CRC-32 instead
/// (`?crc32=`): the manifest takes the SHA-256 the server computed. A malformed one is
/// refused naming `crc32`, a wrong one drops the bytes; beside a SHA-256 it is checked too.
/// `kiln`'s client sums what it sends this way, also when it resumes an upload the server
/// holds part of.
async fn an_upload_may_be_confirmed_by_its_crc32(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = started(&app, "web", "r1").await;
    let content = bytes(5000, 3);
    let crc32 = format!("{:08x}", crc32fast::hash(&content));
    let wrong_crc32 = format!("{:08x}", crc32fast::hash(b"other"));
    let declaration = json!({"path": "summed.bin", "size": 5000});
    let (_, body) = declare(&app, &token, "r1", declaration.clone()).await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) = send(&app, &token, "r1", &id, 0, content.clone()).await;
    assert_eq!((status, body["awaitingSha256"].clone()), (200, json!(true)));
    for malformed in ["xyz", "0123456", "0123456789", "g1234567"] {
        let query = format!("offset=5000&crc32={malformed}");
        let (status, body) = send_query(&app, &token, "r1", &id, &query, Vec::new()).await;
        assert_eq!(status, 400, "{malformed}: {body}");
        assert_error(&body, "invalid_field", Some("crc32"));
    }
    let query = format!("offset=5000&crc32={wrong_crc32}");
    let (status, body) = send_query(&app, &token, "r1", &id, &query, Vec::new()).await;
    assert_eq!(status, 422, "{body}");
    assert_error(&body, "checksum_mismatch", Some("crc32"));
    let (_, body) = declare(&app, &token, "r1", declaration.clone()).await;
    assert_eq!(body["offset"], 0, "the refused bytes were dropped");
    assert_eq!(client.artifact_manifest("r1").await.unwrap().count, 0);
    // Sent again, confirmed with the right CRC-32 (either case) with the last bytes.
    let (status, body) = send(&app, &token, "r1", &id, 0, content[..4000].to_vec()).await;
    assert_eq!((status, body["offset"].clone()), (200, json!(4000)));
    let query = format!("offset=4000&crc32={}", crc32.to_uppercase());
    let (status, body) =
        send_query(&app, &token, "r1", &id, &query, content[4000..].to_vec()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    assert_eq!(body["artifact"]["sha256"], sha256_hex(&content).as_str());
    assert_eq!(body["artifact"]["size"], 5000);

    // Beside a SHA-256 (declared, or confirmed with it) a wrong CRC-32 still refuses.
    // (Content the server does not hold yet, or the declaration would link it at once.)
    let fresh = bytes(5000, 4);
    for (path, declare_sha256) in [("both.bin", false), ("declared.bin", true)] {
        let mut declaration = json!({"path": path, "size": 5000});
        if declare_sha256 {
            declaration["sha256"] = json!(sha256_hex(&fresh));
        }
        let (_, body) = declare(&app, &token, "r1", declaration).await;
        let id = body["uploadId"].as_str().unwrap().to_owned();
        let query = format!("offset=0&sha256={}&crc32={wrong_crc32}", sha256_hex(&fresh));
        let (status, body) = send_query(&app, &token, "r1", &id, &query, fresh.clone()).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_error(&body, "checksum_mismatch", Some("crc32"));
    }
    assert_eq!(client.artifact_manifest("r1").await.unwrap().count, 1);

    // The client, resuming an upload the server already holds the first MiB of: the CRC-32
    // covers the held bytes (read again) and the ones it sends.
    let dir = tempfile::tempdir().unwrap();
    let large = bytes(kiln_client::HASH_WHILE_SENDING_FROM as usize + 12_345, 11);
    let (_, body) = declare(
        &app,
        &token,
        "r1",
        json!({"path": "large.bin", "size": large.len()}),
    )
    .await;
    let id = body["uploadId"].as_str().unwrap().to_owned();
    let (status, body) = send(&app, &token, "r1", &id, 0, large[..1 << 20].to_vec()).await;
    assert_eq!((status, body["offset"].clone()), (200, json!(1 << 20)));
    client_round_trip(&client, dir.path(), "large.bin", &large).await;
    app.stop().await;
}
