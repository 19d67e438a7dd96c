//! The S3 blob store against a real S3-compatible server (moto, started by `.ci/s3.sh`,
//! which checks signatures and credentials): storing, sizes, full and ranged reads,
//! deletion, multipart uploads, and the errors of wrong credentials and of an endpoint
//! that does not answer. Skipped with a notice when `KILN_TEST_S3_ENDPOINT` is unset,
//! unless `KILN_REQUIRE_S3=1` (as in CI).

mod common;

use std::path::Path;

use futures_util::StreamExt;
use kiln_server::Secret;
use kiln_server::blobs::s3::{S3BlobStore, S3Config, S3Credentials};
use kiln_server::blobs::{BlobError, BlobStore, BlobStream};
use sha2::{Digest, Sha256};

/// The test server's settings, or `None` (after a notice) when there is none.
fn server() -> Option<(String, String, S3Credentials)> {
    let Ok(endpoint) = std::env::var("KILN_TEST_S3_ENDPOINT") else {
        if std::env::var("KILN_REQUIRE_S3").as_deref() == Ok("1") {
            panic!(
                "KILN_REQUIRE_S3=1 but KILN_TEST_S3_ENDPOINT is unset: run `eval \"$(bash .ci/s3.sh)\"`"
            );
        }
        eprintln!(
            "skipped: KILN_TEST_S3_ENDPOINT is unset (start a server with `eval \"$(bash .ci/s3.sh)\"`)"
        );
        return None;
    };
    let variable = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is unset"));
    let credentials = S3Credentials {
        access_key: variable("KILN_TEST_S3_ACCESS_KEY"),
        secret_key: Secret::new(variable("KILN_TEST_S3_SECRET_KEY")),
        region: std::env::var("KILN_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
    };
    Some((endpoint, variable("KILN_TEST_S3_BUCKET"), credentials))
}

/// A store under a prefix of its own, so tests never see each other's blobs.
fn store(endpoint: &str, bucket: &str, credentials: S3Credentials) -> S3BlobStore {
    let prefix = format!("tests/{}", uuid::Uuid::new_v4());
    let config = S3Config::from_url(
        &format!("s3://{bucket}/{prefix}"),
        Some(endpoint),
        credentials,
    )
    .unwrap();
    S3BlobStore::new(config).unwrap()
}

fn stage(dir: &Path, name: &str, bytes: &[u8]) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, hex::encode(Sha256::digest(bytes)))
}

async fn collect(mut stream: BlobStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn blobs_are_stored_read_by_range_and_deleted() {
    let Some((endpoint, bucket, credentials)) = server() else {
        return;
    };
    let store = store(&endpoint, &bucket, credentials);
    let dir = tempfile::tempdir().unwrap();
    let content = b"the quick brown fox jumps over the lazy dog";
    let (staged, digest) = stage(dir.path(), "upload", content);

    assert_eq!(store.size(&digest).await.unwrap(), None);
    store
        .put_file(&digest, &staged, content.len() as u64)
        .await
        .unwrap();
    assert!(!staged.exists(), "the staged file is consumed");
    assert_eq!(
        store.size(&digest).await.unwrap(),
        Some(content.len() as u64)
    );
    assert_eq!(
        collect(store.read(&digest, 0, None).await.unwrap()).await,
        content
    );
    assert_eq!(
        collect(store.read(&digest, 4, Some(5)).await.unwrap()).await,
        b"quick"
    );
    assert_eq!(
        collect(store.read(&digest, 40, None).await.unwrap()).await,
        b"dog"
    );
    assert_eq!(
        collect(store.read(&digest, 40, Some(100)).await.unwrap()).await,
        b"dog"
    );
    assert!(
        collect(store.read(&digest, 4, Some(0)).await.unwrap())
            .await
            .is_empty()
    );
    assert!(
        collect(store.read(&digest, 43, None).await.unwrap())
            .await
            .is_empty()
    );

    // Storing the same digest again is a no-op that still consumes the file (even one
    // whose bytes differ: the stored blob wins, it was verified when it went in).
    let (staged, _) = stage(dir.path(), "again", b"not read");
    store.put_file(&digest, &staged, 8).await.unwrap();
    assert!(!staged.exists());
    assert_eq!(
        collect(store.read(&digest, 0, None).await.unwrap()).await,
        content
    );

    store.delete(&digest).await.unwrap();
    store.delete(&digest).await.unwrap();
    assert_eq!(store.size(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn a_missing_blob_is_not_found() {
    let Some((endpoint, bucket, credentials)) = server() else {
        return;
    };
    let store = store(&endpoint, &bucket, credentials);
    let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(store.size(digest).await.unwrap(), None);
    assert!(matches!(
        store.read(digest, 0, None).await,
        Err(BlobError::NotFound(_))
    ));
    assert!(matches!(
        store.read(digest, 3, Some(0)).await,
        Err(BlobError::NotFound(_))
    ));
    store.delete(digest).await.unwrap();
    assert!(matches!(
        store.size("../../etc").await,
        Err(BlobError::NotFound(_))
    ));
}

/// The byte at `position` of the large test file: differs from part to part, so a part
/// sent twice or out of order shows, and is known without holding the file in memory.
fn pattern_byte(position: u64) -> u8 {
    let mixed = position.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed ^ (mixed >> 29)) >> 32) as u8
}

/// The process's peak resident memory (Linux), in bytes.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// 40 MiB and 12,345 bytes in parts of 8 MiB: six parts, the last one 12,345 bytes,
/// streamed both ways, so the process's peak memory grows by less than one part.
#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_reads_back_whole() {
    let Some((endpoint, bucket, credentials)) = server() else {
        return;
    };
    let part_size: u64 = 8 * 1024 * 1024;
    let mut store_config = store(&endpoint, &bucket, credentials).config().clone();
    store_config.part_size = part_size;
    let store = S3BlobStore::new(store_config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 40 * 1024 * 1024 + 12_345;
    let staged = dir.path().join("large");
    let mut hasher = Sha256::new();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&staged).unwrap());
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut position = 0;
        while position < size {
            chunk.clear();
            let end = (position + 64 * 1024).min(size);
            chunk.extend((position..end).map(pattern_byte));
            hasher.update(&chunk);
            std::io::Write::write_all(&mut file, &chunk).unwrap();
            position = end;
        }
        std::io::Write::flush(&mut file).unwrap();
    }
    let digest = hex::encode(hasher.finalize());

    let peak_before = peak_memory();
    store.put_file(&digest, &staged, size).await.unwrap();
    assert!(!staged.exists());
    assert_eq!(store.size(&digest).await.unwrap(), Some(size));

    // Read back whole, compared byte for byte as it streams, and by SHA-256.
    let mut stream = store.read(&digest, 0, None).await.unwrap();
    let mut hasher = Sha256::new();
    let mut position = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (index, byte) in chunk.iter().enumerate() {
            let at = position + index as u64;
            assert!(
                *byte == pattern_byte(at),
                "byte {at} differs from the one stored"
            );
        }
        hasher.update(&chunk);
        position += chunk.len() as u64;
    }
    assert_eq!(position, size);
    assert_eq!(hex::encode(hasher.finalize()), digest);
    if let (Some(before), Some(after)) = (peak_before, peak_memory()) {
        assert!(
            after.saturating_sub(before) < part_size,
            "peak memory grew by {} bytes while streaming parts of {part_size}",
            after - before
        );
    }

    // A range across the boundary of the first and second parts.
    let expected: Vec<u8> = (part_size - 10..part_size + 10).map(pattern_byte).collect();
    assert_eq!(
        collect(store.read(&digest, part_size - 10, Some(20)).await.unwrap()).await,
        expected
    );
    store.delete(&digest).await.unwrap();
}

#[tokio::test]
async fn wrong_credentials_fail_with_the_status_and_no_secret() {
    let Some((endpoint, bucket, credentials)) = server() else {
        return;
    };
    let good = store(&endpoint, &bucket, credentials.clone());
    let dir = tempfile::tempdir().unwrap();
    let (staged, digest) = stage(dir.path(), "upload", b"stored with the right key");
    good.put_file(&digest, &staged, 25).await.unwrap();

    let wrong_secret = "wrongwrongwrongwrongwrongwrongwrongwrong";
    let mut config = good.config().clone();
    config.credentials.secret_key = Secret::new(wrong_secret);
    let bad = S3BlobStore::new(config).unwrap();

    // HEAD answers carry no error document: the status says it.
    let (staged, _) = stage(dir.path(), "refused", b"stored with the right key");
    let error = bad.put_file(&digest, &staged, 25).await.unwrap_err();
    assert!(
        !staged.exists(),
        "the staged file is consumed on failure too"
    );
    let message = error.to_string();
    assert!(matches!(error, BlobError::Failed(_)), "{message}");
    assert!(
        message.contains("HEAD") && message.contains("403"),
        "{message}"
    );
    assert!(
        message.contains("access key or secret was refused"),
        "{message}"
    );
    assert!(!message.contains(wrong_secret), "{message}");

    // A GET's error document names S3's code.
    let message = match bad.read(&digest, 0, None).await {
        Err(error @ BlobError::Failed(_)) => error.to_string(),
        Err(error) => panic!("expected a failure, got {error}"),
        Ok(_) => panic!("a wrong secret read a blob"),
    };
    assert!(
        message.contains("GET") && message.contains("403"),
        "{message}"
    );
    assert!(message.contains("SignatureDoesNotMatch"), "{message}");
    assert!(!message.contains(wrong_secret), "{message}");

    // An unknown access key too.
    let mut config = good.config().clone();
    config.credentials.access_key = "AKIANOSUCHKEY0000000".into();
    let unknown = S3BlobStore::new(config).unwrap();
    let message = match unknown.read(&digest, 0, None).await {
        Err(error @ BlobError::Failed(_)) => error.to_string(),
        Err(error) => panic!("expected a failure, got {error}"),
        Ok(_) => panic!("an unknown key read a blob"),
    };
    assert!(
        message.contains("403") && message.contains("InvalidAccessKeyId"),
        "{message}"
    );
    good.delete(&digest).await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_fails_clearly() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let credentials = S3Credentials {
        access_key: "AKIAEXAMPLE".into(),
        secret_key: Secret::new("secret-never-shown"),
        region: "us-east-1".into(),
    };
    let config = S3Config::from_url(
        "s3://kiln/artifacts",
        Some(&format!("http://127.0.0.1:{port}")),
        credentials,
    )
    .unwrap();
    let store = S3BlobStore::new(config).unwrap();
    let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let message = store.size(digest).await.unwrap_err().to_string();
    assert!(message.contains("HEAD"), "{message}");
    assert!(message.to_lowercase().contains("connect"), "{message}");
    assert!(!message.contains("secret-never-shown"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let (staged, digest) = stage(dir.path(), "upload", b"abc");
    let error = store.put_file(&digest, &staged, 3).await.unwrap_err();
    assert!(matches!(error, BlobError::Failed(_)), "{error}");
    assert!(!staged.exists());
}

/// The artifact API on a server whose blob store is the S3 server: an upload goes into
/// the bucket, downloads and the archive come out of it, verify reads it back.
#[tokio::test]
async fn the_artifact_api_runs_on_an_s3_store() {
    let Some((endpoint, bucket, credentials)) = server() else {
        return;
    };
    let s3 = std::sync::Arc::new(store(&endpoint, &bucket, credentials));
    let database = std::sync::Arc::new(
        kiln_store::test_support::TestDatabase::create(kiln_store::Engine::Sqlite).await,
    );
    let staging = common::database_dir(&database, "s3-staging");
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let blobs: std::sync::Arc<dyn BlobStore> = s3.clone();
    let app = common::TestApp::spawn_configured(database, clock, move |config| {
        let mut artifacts = kiln_server::ArtifactConfig::local(&staging).unwrap();
        artifacts.blobs = blobs;
        config.artifacts = Some(artifacts);
    })
    .await;
    let (client, _) = app.project_client("web", &["ingest", "read"]).await;
    client
        .send_events(&[kiln_client::protocol::EventPayload {
            run_id: "s3-run".into(),
            event: "build_started".into(),
            ..Default::default()
        }])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (local, sha256) = stage(dir.path(), "site.bin", &content);
    let target = kiln_client::ArtifactTarget::Build {
        run_id: "s3-run".into(),
    };
    let stored = client
        .upload_artifact(&target, &local, "dist/site.bin", 0o644, None)
        .await
        .unwrap();
    assert_eq!(stored.sha256, sha256);
    assert_eq!(
        s3.size(&sha256).await.unwrap(),
        Some(3_000_000),
        "the blob is in the bucket"
    );
    let back = dir.path().join("back.bin");
    client
        .download_artifact("s3-run", "dist/site.bin", &back, Some(&sha256))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), content);
    let verified = client.verify_artifacts("s3-run").await.unwrap();
    assert!(verified.ok && verified.bytes == 3_000_000, "{verified:?}");
    // A blob gone from the bucket is named missing.
    s3.delete(&sha256).await.unwrap();
    let verified = client.verify_artifacts("s3-run").await.unwrap();
    assert_eq!(verified.mismatches[0].problem, "missing");
}
