//! What a hostile client can do to a real `kiln serve` process, and what holds: a burst
//! of concurrent bad logins (memory stays bounded and returns), slow and idle
//! connections (closed by the header and idle timeouts, while a quiet live stream stays
//! open), the connection cap and one address's share of it (another address is still
//! served), and the open-files limit (raised to the hard limit at start; at a hard
//! limit, accept backs off and recovers).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN, KILN, Server, Workspace};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn address(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// Whether the server closed `stream` within `within` (a read answers end of file or
/// an error); the stream must not expect an answer.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_burst_of_bad_logins_keeps_memory_bounded() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let pid = server.child.id();
    let runtime = runtime();
    kiln_client::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = server.url.clone();
    let created = runtime.block_on(async {
        http.post(format!("{url}/api/v1/users"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"email": "ada@example.com", "name": "Ada"}))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(created.status().as_u16(), 201);
    let before = rss_mib(pid);

    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let statuses: Vec<u16> = runtime.block_on(async {
        let logins: Vec<_> = (0..100)
            .map(|n| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    http.post(format!("{url}/api/v1/session"))
                        .json(&serde_json::json!({"email": format!("user{n}@example.com"), "password": "wrong password"}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for login in logins {
            statuses.push(login.await.unwrap());
        }
        statuses
    });
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    let checked = statuses.iter().filter(|status| **status == 401).count();
    assert!(
        statuses
            .iter()
            .all(|status| [401, 429, 503].contains(status)),
        "{statuses:?}"
    );
    assert!(
        checked <= 20,
        "at most the address's 20 failures are checked, in flight or not: {checked} were"
    );
    assert!(
        statuses.contains(&429),
        "the rest are refused: {statuses:?}"
    );
    // Memory returns (allocator arenas may keep a few argon2 blocks).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = rss_mib(pid);
    while after > 150.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_mib(pid);
    }
    eprintln!("RSS: {before:.1} MiB before, peak {peak:.1} MiB, {after:.1} MiB after");
    assert!(
        peak <= 150.0 + before,
        "peak {peak:.1} MiB (before {before:.1})"
    );
    assert!(after <= 150.0, "{after:.1} MiB 10 s after the burst");
}

#[test]
fn slow_and_idle_connections_are_closed_but_quiet_streams_stay() {
    let workspace = Workspace::new();
    let server = Server::start(
        &workspace.data(),
        0,
        &["--header-read-timeout", "1", "--idle-timeout", "2"],
    );
    let address = address(&server);

    // Slowloris: a head trickling in, a byte every 200 ms, is cut at the header timeout.
    let mut slow = TcpStream::connect(address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n")
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(5) {
        if slow.write_all(b"X").is_err() || closed_within(&mut slow, Duration::from_millis(200)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow head was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        started.elapsed()
    );

    // A connection that sends nothing, and one idle after its answer, are closed at the
    // idle timeout, not before.
    let mut silent = TcpStream::connect(address).unwrap();
    let mut kept = TcpStream::connect(address).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let read = kept.read(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"));
    assert!(
        !closed_within(&mut silent, Duration::from_millis(1200)),
        "closed too early"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)),
        "the silent connection stayed"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(2)),
        "the idle keep-alive stayed"
    );

    // A live stream with nothing to say for longer than the idle timeout stays open:
    // a request is in flight.
    let token = common::project_token(&workspace, &server);
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /api/v1/stream?project=web HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let read = stream.read(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    assert!(
        !closed_within(&mut stream, Duration::from_secs(4)),
        "a quiet stream was closed as idle"
    );
}

#[test]
fn one_address_cannot_take_every_connection() {
    let workspace = Workspace::new();
    let server = Server::start(
        &workspace.data(),
        0,
        &[
            "--max-connections",
            "100",
            "--max-connections-per-address",
            "40",
            "--idle-timeout",
            "60",
        ],
    );
    let address = address(&server);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect(address).unwrap());
        // One at a time, so "idle longest" has an order.
        std::thread::sleep(Duration::from_millis(5));
    }
    // Give the server a moment to accept them all.
    std::thread::sleep(Duration::from_millis(500));
    let closed: Vec<bool> = held
        .iter_mut()
        .map(|stream| closed_within(stream, Duration::from_millis(50)))
        .collect();
    assert_eq!(
        closed.iter().filter(|closed| **closed).count(),
        20,
        "past the address's share of 40, each new connection takes an idle one's place"
    );
    assert!(
        closed[..20].iter().all(|closed| *closed) && closed[20..].iter().all(|closed| !*closed),
        "the connections idle longest are the ones closed: {closed:?}"
    );

    // Another client address is still served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let answered = runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut other = socket.connect(address).await.unwrap();
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        other.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[test]
fn at_the_connection_cap_idle_connections_make_room_for_new_clients() {
    let workspace = Workspace::new();
    let server = Server::start(
        &workspace.data(),
        0,
        &[
            "--max-connections",
            "50",
            "--max-connections-per-address",
            "50",
            "--idle-timeout",
            "60",
        ],
    );
    let address = address(&server);
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Every slot is held by an idle connection; a new client is still answered.
    for _ in 0..5 {
        let mut client = TcpStream::connect(address).unwrap();
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let closed = idle
        .iter_mut()
        .filter_map(|stream| closed_within(stream, Duration::from_millis(50)).then_some(()))
        .count();
    // The first client took an idle connection's place; once it and its victim have
    // left, a slot is free for the next (unless they connect before the server has
    // counted both out, when each takes another idle one's place): never more than one
    // idle connection per new client.
    assert!(
        (1..=5).contains(&closed),
        "{closed} idle connections closed for 5 new clients"
    );
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let workspace = Workspace::new();
    // The server inherits a soft limit of 256 from this shell.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && exec '{KILN}' serve --listen 127.0.0.1:0 --data-dir '{}'",
            workspace.data().display()
        ))
        .env("KILN_ADMIN_TOKEN", ADMIN)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut logged = Vec::new();
    loop {
        let line = lines.next().expect("kiln serve exited early").unwrap();
        if line.starts_with("kiln listening on ") {
            break;
        }
        logged.push(line);
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft raised to hard: {line}");
    assert_ne!(numbers[0], "256", "{line}");
    // A hard limit below the default cap lowers it, and says so.
    if numbers[1].parse::<u64>().is_ok_and(|hard| hard < 10_256) {
        assert!(
            logged
                .iter()
                .any(|line| line.contains("--max-connections lowered")),
            "{logged:?}"
        );
    }
}

/// CPU time a process has used (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start at state, field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports these in USER_HZ, 100 per second.
    Duration::from_millis(ticks * 10)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Out of file descriptors for real: `kiln serve` under an open-files limit of 96 (soft
/// and hard, so it cannot raise it) is sent connections until `accept` fails with EMFILE.
/// The server says so once, backs off (5 ms doubling to 1 s) instead of spinning — its
/// CPU time stays low over two seconds at the limit — keeps serving the connections it
/// has, and once the clients go it accepts and answers a new one.
#[test]
fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    const LIMIT: usize = 96;
    let workspace = Workspace::new();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -S -n {LIMIT} && ulimit -H -n {LIMIT} && exec '{KILN}' serve --listen 127.0.0.1:0 --data-dir '{}'",
            workspace.data().display()
        ))
        .env("KILN_ADMIN_TOKEN", ADMIN)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (lines_sender, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let url = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("kiln serve starts");
        if let Some(url) = line.strip_prefix("kiln listening on ") {
            break url.trim().to_owned();
        }
    };
    let server: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(|line| line.starts_with("Max open files")
            && line.split_whitespace().skip(3).take(2).all(|n| n == "96")),
        "{limits}"
    );
    let healthz = |stream: &mut TcpStream| -> Option<String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
            .ok()?;
        let mut answer = [0u8; 256];
        let read = stream.read(&mut answer).ok()?;
        Some(String::from_utf8_lossy(&answer[..read]).into_owned())
    };

    // Connections past what the descriptors allow: the kernel completes them into the
    // listen backlog, where the server cannot accept them.
    let before = open_descriptors(pid);
    let mut clients: Vec<TcpStream> = (0..(LIMIT - before) + 40)
        .map(|_| TcpStream::connect(server).unwrap())
        .collect();
    let opened = Instant::now();
    let (warning, failed_after) = loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("cannot accept connections") => {
                break (line, opened.elapsed());
            }
            Ok(_) => continue,
            Err(error) => panic!("no accept error logged within 10 s: {error}"),
        }
    };
    assert!(
        warning.contains("Too many open files"),
        "EMFILE is what stopped accept: {warning}"
    );
    let descriptors = open_descriptors(pid);
    assert!(
        descriptors >= LIMIT - 2,
        "the server holds {descriptors} of its {LIMIT} descriptors"
    );

    // At the limit: alive, not spinning, still serving the connections it holds.
    let cpu_before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu_used = cpu_time(pid) - cpu_before;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server is alive out of descriptors"
    );
    assert!(
        cpu_used < Duration::from_millis(300),
        "two seconds out of descriptors used {cpu_used:?} of CPU (a spinning accept loop uses all of it)"
    );
    let answer = healthz(&mut clients[0]).expect("an accepted connection is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    println!(
        "open-files limit {LIMIT}: {} connections, accept failed (logged {failed_after:.1?} after they were opened), {descriptors} descriptors open, {cpu_used:?} CPU over 2 s out of descriptors",
        clients.len(),
    );

    // The clients go: the server accepts again (within its back-off of at most 1 s)
    // and answers a new connection.
    clients.clear();
    let closed = Instant::now();
    let answer = loop {
        let mut stream = TcpStream::connect(server).unwrap();
        if let Some(answer) = healthz(&mut stream).filter(|answer| !answer.is_empty()) {
            break answer;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "no answer within 10 s of the clients leaving"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    println!(
        "a new connection answered {:?} after the clients closed theirs",
        closed.elapsed()
    );
    assert!(child.try_wait().unwrap().is_none());
    let _ = child.kill();
    let _ = child.wait();
}
