//! `loadgen fleet`: the fleet load of bench/fleet/run.sh (issue 19) — BUILDS builds each
//! sending RATE events/s, SUBSCRIBERS live SSE subscribers spread over the builds, AGENTS
//! simulated agents claiming the jobs of builds triggered at TRIGGERS/s, for SECS
//! seconds, against one URL or several, comma-separated (load balancers in front of
//! replicas, or one server); clients are spread over them. Prints one
//! `RESULT` line: ingest p99 (POST → 201), fan-out p99 (sent → received on a subscriber's
//! stream), claim p99 (job queued → claim answered), errors by kind, and each server
//! process's peak RSS and CPU. bench/fleet/run.sh runs two: one holding the subscribers
//! (RATE, AGENTS and TRIGGERS 0), one sending events and running agents (SUBSCRIBERS
//! 0), so neither's scheduling delays the other's measurements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Api, Res, agent_token, claim, cpu_secs, finish, register, rfc3339_ms, trigger, wall_us};

/// Latencies in a log-scale histogram (2 % buckets from 10 µs), shared without locks.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max_us: AtomicU64,
}

const BASE_US: f64 = 10.0;
const GROWTH: f64 = 1.02;
const BUCKETS: usize = 800; // 10 µs × 1.02^800 ≈ 77 min

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub fn record_us(&self, us: f64) {
        let us = us.max(0.0);
        let index = if us <= BASE_US { 0 } else { ((us / BASE_US).ln() / GROWTH.ln()) as usize + 1 };
        self.buckets[index.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us as u64, Ordering::Relaxed);
    }

    /// The q-quantile (0–1) in ms (the bucket's upper edge).
    fn quantile_ms(&self, q: f64) -> f64 {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return f64::NAN;
        }
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return BASE_US * GROWTH.powi(index as i32) / 1000.0;
            }
        }
        self.max_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn summary(&self) -> Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "n": self.count.load(Ordering::Relaxed),
            "p50": r(self.quantile_ms(0.50)),
            "p95": r(self.quantile_ms(0.95)),
            "p99": r(self.quantile_ms(0.99)),
            "max": r(self.max_us.load(Ordering::Relaxed) as f64 / 1000.0),
        })
    }
}

#[derive(Default)]
struct Errors(Mutex<HashMap<String, u64>>);

impl Errors {
    fn add(&self, kind: impl Into<String>) {
        *self.0.lock().unwrap().entry(kind.into()).or_insert(0) += 1;
    }
    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
    fn json(&self) -> Value {
        json!(*self.0.lock().unwrap())
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One SSE subscriber of one build for as long as the run lasts: reconnects with
/// `Last-Event-ID` when its stream ends or is dropped, and records each tick's fan-out
/// latency (its `sentUs` to now).
async fn subscriber(api: Api, token: String, run_id: String, fanout: Arc<Histogram>, errors: Arc<Errors>, stop: Arc<AtomicBool>, connected: Arc<AtomicU64>) {
    let mut last_id: Option<u64> = None;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut request = api
            .client
            .get(format!("{}/api/v1/builds/{run_id}/stream", api.url))
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let mut response = match request.send().await {
            Ok(response) if response.status().as_u16() == 200 => response,
            Ok(response) => {
                errors.add(format!("sse {}", response.status().as_u16()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => {
                errors.add("sse connect");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if first {
            connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        } else {
            errors.add("sse reconnect");
        }
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            let Ok(Some(chunk)) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if let Some(id) = line.strip_prefix(b"id: ") {
                    last_id = std::str::from_utf8(id).ok().and_then(|id| id.trim().parse().ok()).or(last_id);
                } else if line.starts_with(b"event: dropped") {
                    errors.add("sse dropped (slow consumer)");
                } else if line.starts_with(b"data: ") {
                    if let Some(at) = find(&line, b"\"sentUs\":") {
                        let digits: String = line[at + 9..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
                        if let Ok(sent) = digits.parse::<f64>() {
                            fanout.record_us(wall_us() - sent);
                        }
                    }
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[allow(clippy::too_many_arguments)]
pub async fn fleet(apis: &[Api], admin: &str, slug: &str, repo: &str, commit: &str, builds: usize, rate: f64, subscribers: usize, agents: usize, triggers: f64, secs: f64, pids: Vec<u32>) -> Res<()> {
    let api = &apis[0];
    // Set-up: the project with its repository, an ingest token, read tokens (each user's
    // streams count against their token: 25 tokens, ≤ 400 streams each), agents.
    let (status, body) = api.json("POST", "/api/v1/projects", admin, json!({"slug": slug, "name": slug})).await?;
    if status != 201 && status != 409 {
        return Err(format!("create project → {status}: {body}"));
    }
    api.ok("PUT", &format!("/api/v1/projects/{slug}/repo"), admin, json!({"repo": repo})).await?;
    let ingest = api.ok("POST", &format!("/api/v1/projects/{slug}/tokens"), admin, json!({"name": "fleet-ingest", "scopes": ["ingest", "read"]})).await?["token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    let mut readers = Vec::new();
    for i in 0..25 {
        let token = api.ok("POST", &format!("/api/v1/projects/{slug}/tokens"), admin, json!({"name": format!("reader-{i}"), "scopes": ["read"]})).await?["token"]
            .as_str()
            .ok_or("no token")?
            .to_owned();
        readers.push(token);
    }
    let run_ids: Vec<String> = (0..builds).map(|i| format!("fleet-{i:05}")).collect();
    for chunk in run_ids.chunks(500) {
        let events: Vec<Value> = chunk.iter().map(|run| json!({"runId": run, "eventId": "start", "event": "build_started", "heartbeatTimeout": 3600})).collect();
        api.ok("POST", "/api/v1/events", &ingest, json!(events)).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let ingest_latency = Arc::new(Histogram::new());
    let fanout = Arc::new(Histogram::new());
    let claim_latency = Arc::new(Histogram::new());
    let sent = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Subscribers, opened at 1,000/s.
    eprintln!("fleet: opening {subscribers} subscribers");
    for i in 0..subscribers {
        let run = run_ids[i % builds].clone();
        let token = readers[i % readers.len()].clone();
        tasks.push(tokio::spawn(subscriber(apis[i % apis.len()].clone(), token, run, fanout.clone(), errors.clone(), stop.clone(), connected.clone())));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..600 {
        if connected.load(Ordering::Relaxed) as usize >= subscribers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("fleet: {} subscribers connected", connected.load(Ordering::Relaxed));

    // Agents: claim, finish at once.
    let claimed: Arc<Mutex<HashMap<i64, f64>>> = Default::default();
    let agent_token = if agents > 0 { agent_token(api, admin, &format!("{slug}-fleet")).await? } else { String::new() };
    for i in 0..agents {
        let agent = register(api, &agent_token, &format!("fleet-{i}")).await?;
        let api = &apis[i % apis.len()];
        let (api, stop, claimed, errors) = (api.clone(), stop.clone(), claimed.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match claim(&api, &agent, 5).await {
                    Ok(Some(job)) => {
                        claimed.lock().unwrap().insert(job["jobId"].as_i64().unwrap_or(0), wall_us());
                        if finish(&api, &agent, &job).await.is_err() {
                            errors.add("finish");
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        errors.add(format!("claim: {}", error.chars().take(60).collect::<String>()));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }

    // Builds sending RATE events/s each, phases spread over the period (none with RATE 0:
    // a process that only subscribes).
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-9));
    let started = tokio::time::Instant::now();
    for (i, run) in run_ids.iter().enumerate().filter(|_| rate > 0.0) {
        let (api, ingest, run, stop, errors, latency, sent) = (apis[i % apis.len()].clone(), ingest.clone(), run.clone(), stop.clone(), errors.clone(), ingest_latency.clone(), sent.clone());
        let phase = period.mul_f64(i as f64 / builds as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(started + phase, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                n += 1;
                let event = json!({"runId": run, "eventId": format!("t{n}"), "event": "fleet_tick", "data": {"sentUs": wall_us() as u64}});
                let began = Instant::now();
                match api.json("POST", "/api/v1/events", &ingest, event).await {
                    Ok((201 | 200, _)) => {
                        latency.record_us(began.elapsed().as_micros() as f64);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, _)) => errors.add(format!("ingest {status}")),
                    Err(_) => errors.add("ingest connection"),
                }
            }
        }));
    }

    // Triggers for the agents.
    let queued: Arc<Mutex<HashMap<i64, f64>>> = Default::default();
    if triggers > 0.0 {
        let (api, admin, slug, commit, stop, errors, queued) = (api.clone(), admin.to_owned(), slug.to_owned(), commit.to_owned(), stop.clone(), errors.clone(), queued.clone());
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / triggers));
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                match trigger(&api, &admin, &slug, json!({"commit": commit})).await {
                    Ok(build) => {
                        let job = &build["jobs"][0];
                        if let Some(at) = job["queuedAt"].as_str().and_then(rfc3339_ms) {
                            queued.lock().unwrap().insert(job["id"].as_i64().unwrap_or(0), at);
                        }
                    }
                    Err(_) => errors.add("trigger"),
                }
            }
        }));
    }

    // Sample memory and CPU while it runs.
    let cpu_start: Vec<f64> = pids.iter().map(|pid| cpu_secs(*pid)).collect();
    let mut peak: Vec<u64> = vec![0; pids.len()];
    let began = Instant::now();
    let mut next_report = 30.0;
    while began.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (index, pid) in pids.iter().enumerate() {
            peak[index] = peak[index].max(rss_kib(*pid));
        }
        if began.elapsed().as_secs_f64() >= next_report {
            next_report += 30.0;
            eprintln!(
                "fleet: {:.0} s, {} events acknowledged, ingest p99 {:.1} ms, fan-out p99 {:.1} ms, {} errors",
                began.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                ingest_latency.quantile_ms(0.99),
                fanout.quantile_ms(0.99),
                errors.total()
            );
        }
    }
    let wall = began.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids.iter().zip(&cpu_start).map(|(pid, start)| ((cpu_secs(*pid) - start) / wall * 100.0).round() / 100.0).collect();
    let rss_end: Vec<u64> = pids.iter().map(|pid| rss_kib(*pid)).collect();
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for task in &tasks {
        task.abort();
    }
    {
        let claimed = claimed.lock().unwrap();
        for (id, queued_at) in queued.lock().unwrap().iter() {
            if let Some(claimed_at) = claimed.get(id) {
                claim_latency.record_us((claimed_at / 1000.0 - queued_at) * 1000.0);
            }
        }
    }
    crate::result(
        "fleet",
        json!({
            "builds": builds, "rate": rate, "subscribers": subscribers, "subscribers_connected": connected.load(Ordering::Relaxed),
            "agents": agents, "triggers_per_s": triggers, "secs": wall,
            "events_acknowledged": sent.load(Ordering::Relaxed),
            "events_per_s": (sent.load(Ordering::Relaxed) as f64 / wall).round(),
            "ingest": ingest_latency.summary(),
            "fanout": fanout.summary(),
            "claims": claim_latency.summary(),
            "jobs_triggered": queued.lock().unwrap().len(),
            "errors": errors.json(), "errors_total": errors.total(),
            "server_pids": pids, "rss_peak_mib": peak.iter().map(|k| k / 1024).collect::<Vec<_>>(),
            "rss_end_mib": rss_end.iter().map(|k| k / 1024).collect::<Vec<_>>(), "server_cores": cpu,
        }),
    );
    Ok(())
}
