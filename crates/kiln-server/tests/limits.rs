//! Every limit of docs/operations.md's limits table checked at the limit and one past it,
//! against the real server on a loopback port with a real HTTP client (raw TCP where the
//! exact bytes or the connection itself matter): connections in total and per address,
//! idle and slow-head timeouts, request heads and bodies, page sizes, log chunks and a
//! job log's cap, artifact files, bytes, file counts and paths, secrets. Limits tested
//! elsewhere are named in the table.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{ADMIN_TOKEN, TestApp};
use kiln_client::protocol::EventPayload;
use kiln_store::test_support::TestDatabase;
use kiln_store::{Engine, engine_test};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

engine_test!(connections_are_capped_in_total_and_per_address);
engine_test!(idle_connections_and_slow_heads_are_closed_after_their_timeouts);
engine_test!(request_heads_and_json_bodies_are_read_up_to_their_limits);
engine_test!(a_body_past_its_limit_is_drained_so_a_client_that_sends_it_all_reads_the_413);
engine_test!(log_chunks_and_a_job_log_are_capped);
engine_test!(artifact_files_bytes_counts_and_paths_are_capped);
engine_test!(secrets_are_capped_in_size_and_number);
engine_test!(signed_payloads_and_test_reports_are_read_up_to_their_route_limits);
engine_test!(the_agent_protocol_limits_hold_at_and_past_them);
engine_test!(repository_trigger_and_body_rules_hold_at_and_past_their_limits);

async fn spawn(engine: Engine, configure: impl FnOnce(&mut kiln_server::ServerConfig)) -> TestApp {
    let database = std::sync::Arc::new(TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    TestApp::spawn_configured(database, clock, configure).await
}

fn address(app: &TestApp) -> SocketAddr {
    app.base_url.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to the server from the loopback address `source` (127.0.0.x).
async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n";

/// Writes `request` and reads one response: its status and body, or `None` when the
/// server closed the connection instead of answering.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Option<(u16, Vec<u8>)> {
    if stream.write_all(request).await.is_err() {
        return None;
    }
    read_response(stream).await
}

async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<(u16, Vec<u8>)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => panic!("no answer and no close within 10 s"),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = received[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&buffer[..read]);
    }
    Some((status, body))
}

/// The status and the text of an answer (413s must carry Kiln's JSON error too).
async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let response = app
        .http
        .request(method, format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Sends a request with a `length`-byte body from a task of its own while reading the
/// answer: a body past the limit is answered once the server has read one byte past it,
/// while the client may still be sending (a server that closes a connection with unread
/// bytes resets it, so the answer must be read as it arrives, not after the last write).
async fn send_whole(app: &TestApp, path: &str, token: &str, length: usize) -> (u16, String) {
    let stream = connect_from([127, 0, 0, 1], address(app)).await;
    let (mut reader, mut writer) = stream.into_split();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + length, b' ');
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let (status, body) = read_response(&mut reader)
        .await
        .expect("an answer before the connection closed");
    drop(sender.await);
    (status, String::from_utf8(body).unwrap())
}

fn code(text: &str) -> String {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|_| panic!("not Kiln's JSON error: {text}"));
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `--max-connections 4`, `--max-connections-per-address 2`: two connections from one
/// address are served; past that share a new one takes the place of the address's
/// connection idle longest, and is closed on arrival when every one of them has a request
/// in flight; the same at the total cap, whatever the address.
async fn connections_are_capped_in_total_and_per_address(engine: Engine) {
    let app = spawn(engine, |config| {
        config.connections.max_connections = 4;
        config.connections.max_connections_per_address = 2;
        // The test client's pooled connection (from the health check) is closed first.
        config.connections.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let (_, token) = app.project_client("web", &["ingest", "read"]).await;
    let server = address(&app);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let event = br#"{"runId":"conn","event":"heartbeat"}"#;
    // A request in flight: its head sent, its body not yet.
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        event.len()
    );
    async fn busy(stream: &mut TcpStream, head: &str) {
        stream.write_all(head.as_bytes()).await.unwrap();
    }
    let settle = || tokio::time::sleep(Duration::from_millis(150));

    // One address's share: two served; a third takes the place of the idle longest.
    let mut c1 = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(exchange(&mut c1, HEALTHZ).await.map(|a| a.0), Some(200));
    let mut c2 = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(exchange(&mut c2, HEALTHZ).await.map(|a| a.0), Some(200));
    let mut c3 = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(
        exchange(&mut c3, HEALTHZ).await.map(|a| a.0),
        Some(200),
        "past the share, a new connection is served"
    );
    assert_eq!(
        exchange(&mut c1, HEALTHZ).await,
        None,
        "in place of the idle longest"
    );
    assert_eq!(exchange(&mut c2, HEALTHZ).await.map(|a| a.0), Some(200));
    // With both of the address's connections busy, a third is closed on arrival.
    busy(&mut c2, &head).await;
    busy(&mut c3, &head).await;
    settle().await;
    let mut c4 = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(
        exchange(&mut c4, HEALTHZ).await,
        None,
        "every connection of the address busy: closed"
    );

    // The total: two more from another address fill the cap of 4, all busy.
    let mut d1 = connect_from([127, 0, 0, 2], server).await;
    busy(&mut d1, &head).await;
    let mut d2 = connect_from([127, 0, 0, 2], server).await;
    busy(&mut d2, &head).await;
    settle().await;
    let mut e1 = connect_from([127, 0, 0, 3], server).await;
    assert_eq!(
        exchange(&mut e1, HEALTHZ).await,
        None,
        "at the total cap with every connection busy: closed"
    );
    // One ends its request and is idle: a new connection from anywhere takes its place.
    assert_eq!(exchange(&mut d1, event).await.map(|a| a.0), Some(201));
    let mut e2 = connect_from([127, 0, 0, 3], server).await;
    assert_eq!(
        exchange(&mut e2, HEALTHZ).await.map(|a| a.0),
        Some(200),
        "at the total cap, a new connection takes an idle one's place"
    );
    assert_eq!(
        exchange(&mut d1, HEALTHZ).await,
        None,
        "the idle one was closed"
    );
    // The busy ones were never touched.
    for stream in [&mut c2, &mut c3, &mut d2] {
        assert_eq!(exchange(stream, event).await.map(|a| a.0), Some(201));
    }
    app.stop().await;
}

/// `--idle-timeout 1`, `--header-read-timeout 1`: a keep-alive connection used again
/// within the second is served, one idle past it is closed; a head completed within the
/// second of its first byte is answered, one still incomplete past it is closed.
async fn idle_connections_and_slow_heads_are_closed_after_their_timeouts(engine: Engine) {
    let app = spawn(engine, |config| {
        config.connections.idle_timeout = Duration::from_secs(1);
        config.connections.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let server = address(&app);
    let mut stream = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(exchange(&mut stream, HEALTHZ).await.map(|a| a.0), Some(200));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        exchange(&mut stream, HEALTHZ).await.map(|a| a.0),
        Some(200),
        "idle less than the timeout: still open"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        exchange(&mut stream, HEALTHZ).await,
        None,
        "idle past it: closed"
    );

    let (start, rest) = HEALTHZ.split_at(10);
    let mut slow = connect_from([127, 0, 0, 1], server).await;
    slow.write_all(start).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        exchange(&mut slow, rest).await.map(|a| a.0),
        Some(200),
        "a head completed within the timeout is answered"
    );
    let mut slower = connect_from([127, 0, 0, 1], server).await;
    slower.write_all(start).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        exchange(&mut slower, rest).await,
        None,
        "a head still incomplete past the timeout: closed"
    );
    app.stop().await;
}

/// A request head of exactly 8 KiB is answered and one byte more gets 431; a JSON body of
/// exactly 1 MiB is read and one byte more gets 413 `body_too_large`; 1,000 builds per
/// page are listed and 1,001 refused.
async fn request_heads_and_json_bodies_are_read_up_to_their_limits(engine: Engine) {
    let app = spawn(engine, |_| {}).await;
    let server = address(&app);
    let head = |total: usize| {
        let fixed = "GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Pad: \r\n\r\n".len();
        format!(
            "GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(total - fixed)
        )
        .into_bytes()
    };
    let limit = kiln_server::MAX_REQUEST_HEAD_BYTES;
    assert_eq!(head(limit).len(), limit);
    let mut stream = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(
        exchange(&mut stream, &head(limit)).await.map(|a| a.0),
        Some(200),
        "a head of exactly {limit} bytes"
    );
    let mut stream = connect_from([127, 0, 0, 1], server).await;
    assert_eq!(
        exchange(&mut stream, &head(limit + 1)).await.map(|a| a.0),
        Some(431),
        "a head of {} bytes",
        limit + 1
    );

    let (_, token) = app.project_client("web", &["ingest", "read"]).await;
    let body = |total: usize| {
        let mut body = br#"{"runId":"body-limit","event":"heartbeat"}"#.to_vec();
        body.resize(total, b' ');
        body
    };
    let limit = kiln_core::limits::MAX_BODY_BYTES;
    let (status, text) = send(
        &app,
        reqwest::Method::POST,
        "/api/v1/events",
        &token,
        "application/json",
        body(limit),
    )
    .await;
    assert_eq!(status, 201, "a body of exactly {limit} bytes: {text}");
    let (status, text) = send_whole(&app, "/api/v1/events", &token, limit + 1).await;
    assert_eq!(
        (status, code(&text)),
        (413, "body_too_large".into()),
        "{text}"
    );

    // Routes whose body may be empty read it raw: the same limit and error.
    let admin_body = |size: usize| {
        let mut body = b"{}".to_vec();
        body.resize(size, b' ');
        body
    };
    app.admin.create_project("other", "other").await.unwrap();
    let (status, text) = send_whole(
        &app,
        "/api/v1/projects/other/builds",
        ADMIN_TOKEN,
        limit + 1,
    )
    .await;
    assert_eq!(
        (status, code(&text)),
        (413, "body_too_large".into()),
        "{text}"
    );
    let (status, text) = send(
        &app,
        reqwest::Method::POST,
        "/api/v1/projects/other/builds",
        ADMIN_TOKEN,
        "application/json",
        admin_body(limit),
    )
    .await;
    assert_ne!(
        status, 413,
        "a trigger body of exactly {limit} bytes is read: {text}"
    );

    let (status, _) = app
        .raw(
            reqwest::Method::GET,
            "/api/v1/builds?limit=1000",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, answer) = app
        .raw(
            reqwest::Method::GET,
            "/api/v1/builds?limit=1001",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "limit", "{answer}");
    app.stop().await;
}

/// A client that writes its whole body before reading (as most HTTP clients do) gets the
/// 413 when the body is 1 MiB past the limit: the server reads the rest and throws it
/// away before answering, instead of closing on unread bytes (which resets the
/// connection: the client's next write fails and the answer is lost). Drained to its
/// end, the connection stays usable.
async fn a_body_past_its_limit_is_drained_so_a_client_that_sends_it_all_reads_the_413(
    engine: Engine,
) {
    let app = spawn(engine, |_| {}).await;
    let (_, token) = app.project_client("drain", &["ingest", "read"]).await;
    app.admin.create_project("other", "other").await.unwrap();
    let limit = kiln_core::limits::MAX_BODY_BYTES;
    let length = limit + (1 << 20);
    for (path, token) in [
        ("/api/v1/events", token.as_str()),
        ("/api/v1/projects/other/builds", ADMIN_TOKEN),
    ] {
        let mut stream = connect_from([127, 0, 0, 1], address(&app)).await;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        .into_bytes();
        let head = request.len();
        request.resize(head + length, b' ');
        request[head] = b'{';
        let started = std::time::Instant::now();
        // In pieces, as a client on a real network sends it: still sending when the
        // server has seen the limit passed.
        for piece in request.chunks(64 << 10) {
            stream
                .write_all(piece)
                .await
                .unwrap_or_else(|error| panic!("{path}: the whole body was taken: {error}"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (status, body) = read_response(&mut stream)
            .await
            .unwrap_or_else(|| panic!("{path}: the 413 arrives after the whole body was sent"));
        let text = String::from_utf8(body).unwrap();
        assert_eq!(
            (status, code(&text)),
            (413, "body_too_large".into()),
            "{path}: {text}"
        );
        println!(
            "{path}: {length} bytes sent whole, the 413 read {:?} after the first byte",
            started.elapsed()
        );
        assert_eq!(
            exchange(&mut stream, HEALTHZ).await.map(|answer| answer.0),
            Some(200),
            "{path}: the drained connection serves the next request"
        );
    }
    app.stop().await;
}

/// A log chunk of exactly 1 MiB is stored and one byte more (or far more) gets 413
/// `body_too_large`; a log page reads at most 1 MiB; a job's log takes its cap plus 4 KiB for the marker line, and a byte
/// past that gets 413.
async fn log_chunks_and_a_job_log_are_capped(engine: Engine) {
    const CAP: u64 = 2 * 1024 * 1024;
    let app = spawn(engine, |config| config.scheduler.log_cap_bytes = CAP).await;
    let (client, token) = app.project_client("web", &["ingest", "read"]).await;
    client
        .send_events(&[EventPayload {
            run_id: "logs".into(),
            event: "build_started".into(),
            ..EventPayload::default()
        }])
        .await
        .unwrap();
    let chunk = kiln_core::limits::MAX_LOG_CHUNK_BYTES;
    let append = |step: &'static str, offset: usize, size: usize| {
        let app = &app;
        let token = token.clone();
        async move {
            send(
                app,
                reqwest::Method::POST,
                &format!("/api/v1/builds/logs/log?step={step}&offset={offset}"),
                &token,
                "application/octet-stream",
                vec![b'x'; size],
            )
            .await
        }
    };
    let (status, text) = append("chunks", 0, chunk).await;
    assert_eq!(status, 200, "a chunk of exactly {chunk} bytes: {text}");
    for size in [chunk + 1, 3 * chunk] {
        let (status, text) = send_whole(
            &app,
            &format!("/api/v1/builds/logs/log?step=chunks&offset={chunk}"),
            &token,
            size,
        )
        .await;
        assert_eq!(
            (status, code(&text)),
            (413, "body_too_large".into()),
            "a chunk of {size} bytes: {text}"
        );
    }
    // A log page is at most 1 MiB: read at the limit, refused past it.
    let page = |limit: usize| {
        let app = &app;
        let token = token.clone();
        async move {
            let response = app
                .http
                .get(format!(
                    "{}/api/v1/projects/web/builds/logs/jobs/chunks/log?offset=0&limit={limit}",
                    app.base_url
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.bytes().await.unwrap())
        }
    };
    let (status, bytes) = page(chunk).await;
    assert_eq!((status, bytes.len()), (200, chunk));
    let (status, bytes) = page(chunk + 1).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&bytes));
    // The cap: 1 MiB + 1 MiB + 4 KiB (the marker line's room) fill it exactly.
    let full = CAP as usize + 4096;
    assert_eq!(append("capped", 0, chunk).await.0, 200);
    assert_eq!(append("capped", chunk, chunk).await.0, 200);
    let (status, text) = append("capped", 2 * chunk, full - 2 * chunk).await;
    assert_eq!(status, 200, "up to the cap: {text}");
    let (status, text) = append("capped", full, 1).await;
    assert_eq!(
        (status, code(&text)),
        (413, "body_too_large".into()),
        "{text}"
    );
    assert!(text.contains("capped at"), "{text}");
    app.stop().await;
}

/// Per file, per build, files per build (lowered to 3 here) and path length: at the
/// limit accepted, one past it refused with 413 `body_too_large` (the path: 400
/// `invalid_field`).
async fn artifact_files_bytes_counts_and_paths_are_capped(engine: Engine) {
    let database = std::sync::Arc::new(TestDatabase::create(engine).await);
    let artifacts = common::database_dir(&database, "artifacts-limits");
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        let mut limited = kiln_server::ArtifactConfig::local(&artifacts).unwrap();
        limited.max_file_bytes = 1000;
        limited.max_build_bytes = 1500;
        limited.max_files_per_build = 3;
        config.artifacts = Some(limited);
    })
    .await;
    let (client, token) = app.project_client("web", &["ingest", "read"]).await;
    for run_id in ["sizes", "counts"] {
        client
            .send_events(&[EventPayload {
                run_id: run_id.into(),
                event: "build_started".into(),
                ..EventPayload::default()
            }])
            .await
            .unwrap();
    }
    let declare = |run_id: &'static str, path: String, content: Vec<u8>| {
        let app = &app;
        let token = token.clone();
        async move {
            let sha256 = hex::encode(sha2::Sha256::digest(&content));
            let body = json!({"path": path, "size": content.len(), "sha256": sha256});
            let (status, text) = send(
                app,
                reqwest::Method::POST,
                &format!("/api/v1/builds/{run_id}/artifacts"),
                &token,
                "application/json",
                body.to_string().into_bytes(),
            )
            .await;
            let answer: Value = serde_json::from_str(&text).unwrap();
            if status == 200 && answer["artifact"].is_null() {
                let id = answer["uploadId"].as_str().unwrap();
                let (sent, text) = send(
                    app,
                    reqwest::Method::PUT,
                    &format!("/api/v1/builds/{run_id}/artifacts/uploads/{id}?offset=0"),
                    &token,
                    "application/octet-stream",
                    content,
                )
                .await;
                assert_eq!(sent, 200, "{text}");
            }
            (status, answer)
        }
    };
    // Per file: 1,000 bytes stored, 1,001 refused naming the flag.
    let (status, answer) = declare("sizes", "a".into(), vec![1; 1000]).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = declare("sizes", "b".into(), vec![2; 1001]).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--artifact-max-file-bytes")
    );
    // Per build: 1,000 + 500 = 1,500 fits exactly, one byte more does not.
    let (status, answer) = declare("sizes", "c".into(), vec![3; 500]).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = declare("sizes", "d".into(), vec![4; 1]).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "body_too_large");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--artifact-max-build-bytes")
    );
    // Files per build: three small files, then a fourth is refused.
    for n in 0..3 {
        let (status, answer) = declare("counts", format!("f{n}"), vec![n; 10]).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = declare("counts", "f3".into(), vec![9; 10]).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the most one build may hold")
    );
    // Paths: 1,024 bytes accepted (declared only), 1,025 refused (segments of at most
    // 255 bytes).
    let max = kiln_core::artifacts::MAX_PATH_BYTES;
    let path_of = |length: usize| {
        let mut path = String::new();
        while path.len() < length {
            if !path.is_empty() {
                path.push('/');
            }
            let segment = (length - path.len()).min(200);
            path.push_str(&"p".repeat(segment));
        }
        assert_eq!(path.len(), length);
        path
    };
    let (status, answer) = app
        .raw(
            reqwest::Method::POST,
            "/api/v1/builds/sizes/artifacts",
            Some(&token),
            Some(json!({"path": path_of(max), "size": 0, "sha256": hex::encode(sha2::Sha256::digest(b""))}).to_string().into_bytes()),
        )
        .await;
    assert!(
        status == 200 || status == 413,
        "a {max}-byte path is a path: {answer}"
    );
    assert_ne!(answer["error"]["field"], "path", "{answer}");
    let (status, answer) = app
        .raw(
            reqwest::Method::POST,
            "/api/v1/builds/sizes/artifacts",
            Some(&token),
            Some(json!({"path": path_of(max + 1), "size": 0, "sha256": hex::encode(sha2::Sha256::digest(b""))}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "path", "{answer}");
    app.stop().await;
}

/// A secret's value up to 64 KiB is stored and one byte more refused; a project holds 200
/// secrets and the 201st is refused with 409 `too_many_secrets` (replacing one still works).
async fn secrets_are_capped_in_size_and_number(engine: Engine) {
    let app = spawn(engine, |_| {}).await;
    app.admin.create_project("web", "web").await.unwrap();
    let put = |name: String, value: String| {
        let app = &app;
        async move {
            app.raw(
                reqwest::Method::PUT,
                &format!("/api/v1/projects/web/secrets/{name}"),
                Some(ADMIN_TOKEN),
                Some(json!({"value": value}).to_string().into_bytes()),
            )
            .await
        }
    };
    let max = kiln_core::limits::MAX_SECRET_VALUE_BYTES;
    let (status, answer) = put("BIG".into(), "v".repeat(max)).await;
    assert!(status < 300, "a value of exactly {max} bytes: {answer}");
    let (status, answer) = put("BIGGER".into(), "v".repeat(max + 1)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "value", "{answer}");
    let limit = kiln_core::limits::MAX_SECRETS_PER_PROJECT;
    for n in 1..limit {
        let (status, answer) = put(format!("S{n}"), "x".into()).await;
        assert!(status < 300, "secret {n}: {answer}");
    }
    let (status, answer) = put("ONE_TOO_MANY".into(), "x".into()).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_secrets");
    let (status, answer) = put("S1".into(), "replaced".into()).await;
    assert!(status < 300, "replacing a secret at the limit: {answer}");
    app.stop().await;
}

/// The routes with larger bodies: a GitHub payload of exactly 5 MiB and a test report of
/// exactly 25 MiB are read (and then judged on what they hold), one byte more is 413
/// `body_too_large`.
async fn signed_payloads_and_test_reports_are_read_up_to_their_route_limits(engine: Engine) {
    let app = spawn(engine, |_| {}).await;
    let (client, token) = app.project_client("web", &["ingest", "read"]).await;
    client
        .send_events(&[EventPayload {
            run_id: "reports".into(),
            event: "build_started".into(),
            ..EventPayload::default()
        }])
        .await
        .unwrap();
    for (path, limit) in [
        ("/api/v1/hooks/github/web", 5 * 1024 * 1024),
        ("/api/v1/builds/reports/tests", 25 * 1024 * 1024),
    ] {
        let (status, text) = send_whole(&app, path, &token, limit).await;
        assert_ne!(
            status, 413,
            "{path}: a body of exactly {limit} bytes is read: {text}"
        );
        assert!(status >= 400, "{path}: spaces are no payload: {text}");
        let (status, text) = send_whole(&app, path, &token, limit + 1).await;
        assert_eq!(
            (status, code(&text)),
            (413, "body_too_large".into()),
            "{path}: {text}"
        );
    }
    app.stop().await;
}

/// An agent's name (128), labels (50, each 64 characters), concurrency (64), claim wait
/// (30 s) and heartbeat metrics (4 KiB): at the limit accepted, one past it 400
/// `invalid_field` naming the field.
async fn the_agent_protocol_limits_hold_at_and_past_them(engine: Engine) {
    let app = spawn(engine, |_| {}).await;
    let token = app.admin.create_agent_token("limits").await.unwrap().token;
    let call = |path: &'static str, body: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            let response = app
                .http
                .post(format!("{}{path}", app.base_url))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let register = |name: String, labels: Vec<String>, concurrency: i64| json!({"name": name, "labels": labels, "concurrency": concurrency, "executor": "process"});
    let label = |n: usize| format!("l{n}");
    let at_limit = register(
        "a".repeat(kiln_core::limits::MAX_AGENT_NAME_LEN),
        (0..kiln_core::limits::MAX_AGENT_LABELS - 1)
            .map(label)
            .chain(["x".repeat(kiln_core::limits::MAX_AGENT_LABEL_LEN)])
            .collect(),
        kiln_core::limits::MAX_AGENT_CONCURRENCY,
    );
    let (status, registered) = call("/api/v1/agent/register", at_limit).await;
    assert_eq!(status, 200, "every field at its limit: {registered}");
    let agent_id = registered["agentId"].as_i64().unwrap();
    for (body, field) in [
        (
            register(
                "a".repeat(kiln_core::limits::MAX_AGENT_NAME_LEN + 1),
                vec![],
                1,
            ),
            "name",
        ),
        (
            register(
                "a".into(),
                (0..=kiln_core::limits::MAX_AGENT_LABELS)
                    .map(label)
                    .collect(),
                1,
            ),
            "labels",
        ),
        (
            register(
                "a".into(),
                vec!["x".repeat(kiln_core::limits::MAX_AGENT_LABEL_LEN + 1)],
                1,
            ),
            "labels[0]",
        ),
        (
            register(
                "a".into(),
                vec![],
                kiln_core::limits::MAX_AGENT_CONCURRENCY + 1,
            ),
            "concurrency",
        ),
    ] {
        let (status, answer) = call("/api/v1/agent/register", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // A claim may wait 30 s: it is still waiting after a second (a refusal is at once).
    let waiting = tokio::time::timeout(
        Duration::from_secs(1),
        call(
            "/api/v1/agent/claim",
            json!({"agentId": agent_id, "waitSecs": kiln_core::limits::MAX_CLAIM_WAIT_SECS}),
        ),
    )
    .await;
    assert!(waiting.is_err(), "a 30 s claim is accepted: {waiting:?}");
    let (status, answer) = call(
        "/api/v1/agent/claim",
        json!({"agentId": agent_id, "waitSecs": kiln_core::limits::MAX_CLAIM_WAIT_SECS + 1}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "waitSecs", "{answer}");
    // Heartbeat metrics: an object of exactly 4,096 bytes as JSON, then one more.
    let metrics = |size: usize| {
        let fixed = json!({"pad": ""}).to_string().len();
        json!({"pad": "m".repeat(size - fixed)})
    };
    assert_eq!(metrics(4096).to_string().len(), 4096);
    let (status, answer) = call(
        "/api/v1/agent/heartbeat",
        json!({"agentId": agent_id, "jobs": [], "metrics": metrics(4096)}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(
        "/api/v1/agent/heartbeat",
        json!({"agentId": agent_id, "jobs": [], "metrics": metrics(4097)}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "metrics", "{answer}");
    app.stop().await;
}

/// A JSON request with raw text (so numbers beyond 64 bits reach the server as written).
async fn raw_json(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, Value) {
    app.raw(method, path, Some(token), Some(body.as_bytes().to_vec()))
        .await
}

/// The repository URL (≤ 2,048 characters), a trigger's branch (≤ 255), commit (40 hex
/// digits) and priority (1–10), U+0000 anywhere in a body or `%00` in a URL, and integer
/// literals within 64 bits: each at its limit (not refused for it) and one past it (400
/// naming the field).
async fn repository_trigger_and_body_rules_hold_at_and_past_their_limits(engine: Engine) {
    use common::{assert_error, git};
    use reqwest::Method;
    let app = spawn(engine, |_| {}).await;
    let (_, token) = app.project_client("web", &["ingest", "read"]).await;

    // Repository URL: 2,048 characters is read (then judged by the policy), 2,049 is not.
    let base = format!("{}/", std::env::temp_dir().display());
    let at_limit = format!("{base}{}", "r".repeat(2048 - base.len()));
    let past = format!("{at_limit}r");
    let (status, body) = raw_json(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        ADMIN_TOKEN,
        &json!({"repo": at_limit}).to_string(),
    )
    .await;
    assert_ne!(
        body["error"]["code"], "invalid_field",
        "2,048 characters: {status} {body}"
    );
    let (status, body) = raw_json(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        ADMIN_TOKEN,
        &json!({"repo": past}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_field", Some("repo"));

    // A real repository for the triggers.
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(
        repo.path().join(".kiln.yml"),
        "steps:\n  - name: a\n    run: 'true'\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "a"]);
    let (status, body) = raw_json(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        ADMIN_TOKEN,
        &json!({"repo": repo.path().display().to_string()}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let trigger = |body: Value| {
        let app = &app;
        async move {
            raw_json(
                app,
                Method::POST,
                "/api/v1/projects/web/builds",
                ADMIN_TOKEN,
                &body.to_string(),
            )
            .await
        }
    };

    // Branch: 255 characters is a name (unknown here: 422), 256 is refused.
    let (status, body) = trigger(json!({"branch": "b".repeat(255)})).await;
    assert_eq!(status, 422, "{body}");
    assert_error(&body, "unprocessable", Some("branch"));
    let (status, body) = trigger(json!({"branch": "b".repeat(256)})).await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_field", Some("branch"));

    // Commit: 40 hex digits is a commit (unknown here: 422); 39 and 41 are refused.
    let (status, body) = trigger(json!({"commit": "0".repeat(40)})).await;
    assert_eq!(status, 422, "{body}");
    assert_error(&body, "unprocessable", Some("commit"));
    for length in [39, 41] {
        let (status, body) = trigger(json!({"commit": "0".repeat(length)})).await;
        assert_eq!(status, 400, "{length}: {body}");
        assert_error(&body, "invalid_field", Some("commit"));
    }

    // Priority: 1 and 10 queue builds, 0 and 11 are refused.
    for priority in [1, 10] {
        let (status, body) = trigger(json!({"priority": priority})).await;
        assert_eq!(status, 201, "{priority}: {body}");
    }
    for priority in [0, 11] {
        let (status, body) = trigger(json!({"priority": priority})).await;
        assert_eq!(status, 400, "{priority}: {body}");
        assert_error(&body, "invalid_field", Some("priority"));
    }

    // U+0000: U+0001 is stored, U+0000 refused with the field's path; %00 in a URL refused.
    let (status, body) = raw_json(
        &app,
        Method::POST,
        "/api/v1/events",
        &token,
        r#"{"runId": "nul", "eventId": "a", "event": "build_started", "data": {"k": "a\u0001"}}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = raw_json(
        &app,
        Method::POST,
        "/api/v1/events",
        &token,
        r#"{"runId": "nul", "eventId": "b", "event": "note", "data": {"k": "a\u0000"}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_field", Some("data.k"));
    let (status, body) = app
        .raw(Method::GET, "/api/v1/builds/nul%00", Some(&token), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_url", Some("url"));

    // Integers: 2^64 − 1 and −2^63 are stored; one past either end is refused.
    for (id, literal) in [
        ("max", "18446744073709551615"),
        ("min", "-9223372036854775808"),
    ] {
        let (status, body) = raw_json(&app, Method::POST, "/api/v1/events", &token, &format!(r#"{{"runId": "big", "eventId": "{id}", "event": "note", "data": {{"big": {literal}}}}}"#)).await;
        assert_eq!(status, 201, "{literal}: {body}");
    }
    for literal in ["18446744073709551616", "-9223372036854775809"] {
        let (status, body) = raw_json(&app, Method::POST, "/api/v1/events", &token, &format!(r#"{{"runId": "big", "eventId": "x{literal}", "event": "note", "data": {{"big": {literal}}}}}"#)).await;
        assert_eq!(status, 400, "{literal}: {body}");
        assert_error(&body, "invalid_field", Some("data.big"));
    }
    app.stop().await;
}
