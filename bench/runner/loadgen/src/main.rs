//! Load generator for Kiln's "running builds" benchmarks (bench/runner/run.sh).
//!
//! It speaks the user API (trigger, SSE streams) and the agent protocol (register, claim,
//! log, finish) over loopback HTTP/1.1, and prints one `RESULT {json}` line per
//! measurement; `report` turns those lines into the markdown table.
//!
//!   loadgen setup      URL ADMIN SLUG REPO            → prints an agent token
//!   loadgen first-step URL ADMIN SLUG BUILDS           (a real `kiln agent` must run)
//!   loadgen claims     URL ADMIN SLUG COMMIT AGENTS RATE SECS SERVER_PID
//!   loadgen dispatch   URL ADMIN SLUG COMMIT BUILDS AGENTS SERVER_PID
//!   loadgen tail       URL ADMIN SLUG COMMIT CHUNKS TAILERS INTERVAL_MS
//!   loadgen report     RESULTS_FILE
//!   loadgen fleet      URL ADMIN SLUG REPO COMMIT BUILDS RATE SUBSCRIBERS AGENTS TRIGGERS SECS PIDS
//!                      (bench/fleet/run.sh; see fleet.rs)
//!
//! All times are taken in this one process: `Instant` for intervals it sees both ends
//! of, the wall clock (µs) where one end is a server timestamp (same machine, same clock).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

mod fleet;

type Res<T> = Result<T, String>;

fn wall_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `2026-11-24T22:40:01.123Z` → ms since the epoch.
fn rfc3339_ms(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (y, mo, d) = (num(&text[0..4])?, num(&text[5..7])?, num(&text[8..10])?);
    let (h, mi, s) = (num(&text[11..13])?, num(&text[14..16])?, num(&text[17..19])?);
    let mut frac_ms = 0.0;
    if b[19] == b'.' {
        let digits: String = text[20..].chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            frac_ms = format!("0.{digits}").parse::<f64>().ok()? * 1000.0;
        }
    }
    // days from civil (Howard Hinnant)
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) as f64 + frac_ms)
}

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    fn new(url: &str) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        Api {
            client,
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Vec<u8>>) -> Res<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{}", self.url, path))
            .timeout(Duration::from_secs(60));
        if !token.is_empty() {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| format!("{path}: {e}"))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, value))
    }

    async fn json(&self, method: &str, path: &str, token: &str, body: Value) -> Res<(u16, Value)> {
        self.call(method, path, token, Some(serde_json::to_vec(&body).unwrap())).await
    }

    /// A 2xx answer's body, or an error naming the call.
    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Res<Value> {
        let (status, value) = self.json(method, path, token, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!("{method} {path} → {status}: {value}"));
        }
        Ok(value)
    }

    async fn sse(&self, path: &str, token: &str) -> Res<Sse> {
        let response = self
            .client
            .get(format!("{}{}", self.url, path))
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        if response.status().as_u16() != 200 {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(format!("GET {path} → {status}: {body}"));
        }
        Ok(Sse {
            response,
            buf: Vec::new(),
        })
    }
}

struct Sse {
    response: reqwest::Response,
    buf: Vec<u8>,
}

struct SseEvent {
    event: String,
    data: String,
}

impl Sse {
    /// The next event (comments skipped), or None when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let mut event = String::from("message");
                let mut data: Vec<&str> = Vec::new();
                for line in text.lines() {
                    if let Some(rest) = line.strip_prefix("event:") {
                        event = rest.trim_start().to_owned();
                    } else if let Some(rest) = line.strip_prefix("data:") {
                        data.push(rest.strip_prefix(' ').unwrap_or(rest));
                    }
                }
                if data.is_empty() && event == "message" {
                    continue;
                }
                return Some(SseEvent {
                    event,
                    data: data.join("\n"),
                });
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

// ------------------------------------------------------------------ statistics

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "n": values.len(),
        "p50": r(pct(&values, 50.0)),
        "p95": r(pct(&values, 95.0)),
        "p99": r(pct(&values, 99.0)),
        "max": r(values.last().copied().unwrap_or(f64::NAN)),
        "mean": r(mean),
    })
}

fn result(name: &str, value: Value) {
    println!("RESULT {}", json!({"name": name, "value": value}));
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let after = &stat[stat.rfind(')').unwrap_or(0) + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is the state (field 3); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    (utime + stime) / 100.0 // USER_HZ is 100 on Linux
}

/// CPU of the whole machine (busy, total) in jiffies, from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

struct CpuWindow {
    pid: u32,
    server: f64,
    machine: (f64, f64),
    start: Instant,
}

impl CpuWindow {
    fn start(pid: u32) -> Self {
        CpuWindow {
            pid,
            server: cpu_secs(pid),
            machine: machine_cpu(),
            start: Instant::now(),
        }
    }
    /// (server cores, whole-machine cores busy, wall seconds)
    fn end(&self) -> (f64, f64, f64) {
        let wall = self.start.elapsed().as_secs_f64();
        let server = (cpu_secs(self.pid) - self.server) / wall;
        let (busy, total) = machine_cpu();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let machine = (busy - self.machine.0) / (total - self.machine.1).max(1.0) * cores;
        (server, machine, wall)
    }
}

/// Sequential `GET /healthz` round trips: the plain HTTP baseline.
async fn healthz_rtts(api: &Api, count: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        if api.call("GET", "/healthz", "", None).await.is_ok() {
            out.push(ms(t.elapsed()));
        }
    }
    out
}

// ------------------------------------------------------------------ agent protocol

struct Agent {
    id: i64,
    token: String,
}

async fn agent_token(api: &Api, admin: &str, name: &str) -> Res<String> {
    let body = api.ok("POST", "/api/v1/agent-tokens", admin, json!({"name": name})).await?;
    body["token"].as_str().map(str::to_owned).ok_or("no token".into())
}

async fn register(api: &Api, token: &str, name: &str) -> Res<Agent> {
    let body = api
        .ok(
            "POST",
            "/api/v1/agent/register",
            token,
            json!({"name": name, "labels": [], "concurrency": 1, "executor": "process", "hostname": "bench", "version": "bench"}),
        )
        .await?;
    Ok(Agent {
        id: body["agentId"].as_i64().ok_or("no agentId")?,
        token: token.to_owned(),
    })
}

/// One claim: Some(job) on 200, None on 204.
async fn claim(api: &Api, agent: &Agent, wait_secs: u64) -> Res<Option<Value>> {
    let (status, body) = api
        .json("POST", "/api/v1/agent/claim", &agent.token, json!({"agentId": agent.id, "waitSecs": wait_secs}))
        .await?;
    match status {
        200 => Ok(Some(body)),
        204 => Ok(None),
        _ => Err(format!("claim → {status}: {body}")),
    }
}

async fn finish(api: &Api, agent: &Agent, job: &Value) -> Res<()> {
    let id = job["jobId"].as_i64().unwrap_or(0);
    api.ok(
        "POST",
        &format!("/api/v1/agent/jobs/{id}/finish"),
        &agent.token,
        json!({"agentId": agent.id, "attempt": job["attempt"], "state": "passed", "exitCode": 0, "durationMs": 1}),
    )
    .await
    .map(|_| ())
}

async fn trigger(api: &Api, admin: &str, slug: &str, body: Value) -> Res<Value> {
    api.ok("POST", &format!("/api/v1/projects/{slug}/builds"), admin, body).await
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ------------------------------------------------------------------ modes

async fn setup(api: &Api, admin: &str, slug: &str, repo: &str) -> Res<()> {
    let (status, body) = api
        .json("POST", "/api/v1/projects", admin, json!({"slug": slug, "name": slug}))
        .await?;
    if status != 201 && status != 200 && status != 409 {
        return Err(format!("create project → {status}: {body}"));
    }
    api.ok("PUT", &format!("/api/v1/projects/{slug}/repo"), admin, json!({"repo": repo}))
        .await?;
    println!("{}", agent_token(api, admin, &format!("{slug}-agents")).await?);
    Ok(())
}

/// Target 1: trigger → first step running, with a real agent process.
async fn first_step(api: &Api, admin: &str, slug: &str, builds: usize) -> Res<()> {
    let mut project = api.sse(&format!("/api/v1/stream?project={slug}"), admin).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, Instant)>();
    tokio::spawn(async move {
        while let Some(event) = project.next().await {
            let run = serde_json::from_str::<Value>(&event.data)
                .ok()
                .and_then(|v| v["runId"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if tx.send((event.event, run, Instant::now())).is_err() {
                return;
            }
        }
    });
    let warmup = 2;
    let (mut http, mut started, mut agent_line, mut step_out, mut step_tail, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..builds + warmup {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let t0_wall_ms = wall_us() / 1000.0;
        let build = trigger(api, admin, slug, json!({})).await?;
        let t_http = ms(t0.elapsed());
        let run = build["runId"].as_str().ok_or("no runId")?.to_owned();
        // The job's log tail: first `kiln` line (agent has the job) and first `out` line.
        let mut tail = api
            .sse(&format!("/api/v1/projects/{slug}/builds/{run}/jobs/build/log/stream?offset=0"), admin)
            .await?;
        let tail_task = tokio::spawn(async move {
            let (mut kiln_ts, mut out) = (None, None);
            while let Some(event) = tail.next().await {
                if event.event != "log" {
                    break;
                }
                for line in event.data.lines() {
                    let tag = line.get(25..29).unwrap_or("");
                    let stamp = line.get(..24).and_then(rfc3339_ms);
                    if tag == "kiln" && kiln_ts.is_none() {
                        kiln_ts = stamp;
                    }
                    if tag == "out " && line.contains("kiln-bench-step") && out.is_none() {
                        out = Some((stamp, Instant::now()));
                    }
                }
                if out.is_some() {
                    break;
                }
            }
            (kiln_ts, out)
        });
        let mut t_started = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done = false;
        while !done {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((event, event_run, at))) if event_run == run => match event.as_str() {
                    "stage_started" if t_started.is_none() => t_started = Some(ms(at - t0)),
                    "build_completed" | "build_failed" | "build_cancelled" => {
                        if event != "build_completed" {
                            return Err(format!("build {run} ended with {event}"));
                        }
                        done = true;
                    }
                    _ => {}
                },
                Ok(Some(_)) => {}
                _ => return Err(format!("build {run} did not end within 60 s")),
            }
        }
        let t_done = ms(t0.elapsed());
        let (kiln_ts, out) = tokio::time::timeout(Duration::from_secs(10), tail_task)
            .await
            .map_err(|_| "the log tail saw no step output".to_string())?
            .map_err(|e| e.to_string())?;
        let (out_ts, out_at) = out.ok_or("no step output line in the log")?;
        if i < warmup {
            continue;
        }
        http.push(t_http);
        started.push(t_started.ok_or("no stage_started")?);
        agent_line.push(kiln_ts.ok_or("no kiln line")? - t0_wall_ms);
        step_out.push(out_ts.ok_or("bad timestamp")? - t0_wall_ms);
        step_tail.push(ms(out_at - t0));
        total.push(t_done);
    }
    let health = healthz_rtts(api, 200).await;
    result(
        "first_step",
        json!({
            "trigger_http": summary(http),
            "to_stage_started": summary(started),
            "to_agent_first_line": summary(agent_line),
            "to_step_output": summary(step_out),
            "to_step_output_on_tail": summary(step_tail),
            "to_build_completed": summary(total),
            "healthz": summary(health),
        }),
    );
    Ok(())
}

/// Target 2: claim latency with AGENTS simulated agents long-polling.
async fn claims(api: &Api, admin: &str, slug: &str, commit: &str, agents: usize, rate: f64, secs: f64, pid: u32) -> Res<()> {
    let idle_health = healthz_rtts(api, 300).await;
    let token = agent_token(api, admin, &format!("{slug}-sim")).await?;
    let mut registered = Vec::new();
    for i in 0..agents {
        registered.push(Arc::new(register(api, &token, &format!("sim-{i}")).await?));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // job id → (claim answered, wall µs)
    let claimed: Arc<std::sync::Mutex<HashMap<i64, f64>>> = Default::default();
    let errors = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for agent in registered {
        let (api, stop, claimed, errors, polls) = (api.clone(), stop.clone(), claimed.clone(), errors.clone(), polls.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                polls.fetch_add(1, Ordering::Relaxed);
                match claim(&api, &agent, 2).await {
                    Ok(Some(job)) => {
                        let at = wall_us();
                        claimed.lock().unwrap().insert(job["jobId"].as_i64().unwrap_or(0), at);
                        if finish(&api, &agent, &job).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // every agent waiting in a claim
    let prober_stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (api, prober_stop) = (api.clone(), prober_stop.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            while !prober_stop.load(Ordering::Relaxed) {
                out.extend(healthz_rtts(&api, 1).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out
        })
    };
    let cpu = CpuWindow::start(pid);
    let queued: Arc<std::sync::Mutex<HashMap<i64, f64>>> = Default::default();
    let trigger_http: Arc<std::sync::Mutex<Vec<f64>>> = Default::default();
    let total = (rate * secs) as usize;
    let begin = tokio::time::Instant::now();
    let mut feeders = Vec::new();
    for k in 0..total {
        tokio::time::sleep_until(begin + Duration::from_secs_f64(k as f64 / rate)).await;
        let (api, admin, slug, commit, queued, trigger_http) =
            (api.clone(), admin.to_owned(), slug.to_owned(), commit.to_owned(), queued.clone(), trigger_http.clone());
        feeders.push(tokio::spawn(async move {
            let t = Instant::now();
            let build = trigger(&api, &admin, &slug, json!({"commit": commit})).await?;
            trigger_http.lock().unwrap().push(ms(t.elapsed()));
            let job = &build["jobs"][0];
            let at = job["queuedAt"].as_str().and_then(rfc3339_ms).ok_or("no queuedAt")?;
            queued.lock().unwrap().insert(job["id"].as_i64().unwrap_or(0), at);
            Ok::<(), String>(())
        }));
    }
    for feeder in feeders {
        feeder.await.map_err(|e| e.to_string())??;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while claimed.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (server_cores, machine_cores, wall) = cpu.end();
    stop.store(true, Ordering::Relaxed);
    prober_stop.store(true, Ordering::Relaxed);
    let loaded_health = prober.await.map_err(|e| e.to_string())?;
    for task in tasks {
        let _ = task.await;
    }
    let claimed = claimed.lock().unwrap();
    let queued = queued.lock().unwrap();
    let latencies: Vec<f64> = queued
        .iter()
        .filter_map(|(id, q)| claimed.get(id).map(|c| c / 1000.0 - q))
        .collect();
    result(
        "claims",
        json!({
            "agents": agents, "rate": rate, "secs": secs,
            "fed": total, "claimed": latencies.len(),
            "errors": errors.load(Ordering::Relaxed), "claim_requests": polls.load(Ordering::Relaxed),
            "queued_to_claimed": summary(latencies),
            "trigger_http": summary(trigger_http.lock().unwrap().clone()),
            "healthz_idle": summary(idle_health),
            "healthz_under_load": summary(loaded_health),
            "server_cores": server_cores, "machine_cores": machine_cores, "wall": wall,
        }),
    );
    Ok(())
}

/// Target 3: BUILDS queued with random priorities, then dispatched to AGENTS agents.
async fn dispatch(api: &Api, admin: &str, slug: &str, commit: &str, builds: usize, agents: usize, pid: u32) -> Res<()> {
    let token = agent_token(api, admin, &format!("{slug}-dispatch")).await?;
    let mut registered = Vec::new();
    for i in 0..agents {
        registered.push(Arc::new(register(api, &token, &format!("dispatch-{i}")).await?));
    }
    // Queue them, 4 triggers at a time.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let priorities: Vec<i64> = (0..builds).map(|_| (rng.next() % 10) as i64 + 1).collect();
    let priority_of: Arc<std::sync::Mutex<HashMap<i64, i64>>> = Default::default();
    let queue_cpu = CpuWindow::start(pid);
    let next = Arc::new(AtomicU64::new(0));
    let mut queuers = Vec::new();
    for _ in 0..4 {
        let (api, admin, slug, commit, next, priorities, priority_of) = (
            api.clone(), admin.to_owned(), slug.to_owned(), commit.to_owned(), next.clone(), priorities.clone(), priority_of.clone(),
        );
        queuers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                if k >= priorities.len() {
                    return Ok::<(), String>(());
                }
                let build = trigger(&api, &admin, &slug, json!({"commit": commit, "priority": priorities[k]})).await?;
                let job = &build["jobs"][0];
                if job["priority"].as_i64() != Some(priorities[k]) {
                    return Err(format!("job priority {} != requested {}", job["priority"], priorities[k]));
                }
                priority_of.lock().unwrap().insert(job["id"].as_i64().unwrap_or(0), priorities[k]);
            }
        }));
    }
    for queuer in queuers {
        queuer.await.map_err(|e| e.to_string())??;
    }
    let (queue_cores, _, queue_wall) = queue_cpu.end();
    let health = healthz_rtts(api, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Dispatch: each agent claims (job waiting → immediate answer), finishes at once.
    let cpu = CpuWindow::start(pid);
    let epoch = Instant::now();
    // (sent, answered, job id) in µs since epoch
    let log: Arc<std::sync::Mutex<Vec<(f64, f64, i64, f64)>>> = Default::default();
    // The first SOLO claims by one agent alone (the claim handler's round trip without
    // queueing behind other agents), then every agent at once.
    let solo = builds.min(100);
    let mut tasks = Vec::new();
    for (index, agent) in registered.into_iter().enumerate() {
        let (api, log) = (api.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            if index == 0 {
                for _ in 0..solo {
                    let sent = Instant::now();
                    let Some(job) = claim(&api, &agent, 0).await? else { break };
                    let answered = Instant::now();
                    log.lock().unwrap().push((ms(sent - epoch), ms(answered - epoch), job["jobId"].as_i64().unwrap_or(0), -ms(answered - sent)));
                    finish(&api, &agent, &job).await?;
                }
            } else {
                while log.lock().unwrap().len() < solo {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            loop {
                let sent = Instant::now();
                match claim(&api, &agent, 0).await? {
                    Some(job) => {
                        let answered = Instant::now();
                        log.lock().unwrap().push((
                            ms(sent - epoch),
                            ms(answered - epoch),
                            job["jobId"].as_i64().unwrap_or(0),
                            ms(answered - sent),
                        ));
                        finish(&api, &agent, &job).await?;
                    }
                    None => return Ok::<(), String>(()),
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let (server_cores, machine_cores, wall) = cpu.end();
    let mut log = log.lock().unwrap().clone();
    let priority_of = priority_of.lock().unwrap();
    let claimed_total = log.len();
    log.retain(|e| priority_of.contains_key(&e.2)); // leftovers of earlier phases, if any
    let foreign = claimed_total - log.len();
    log.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    // A violation: a claim sent after another claim was answered got a better (lower)
    // priority than that one — every job was queued before the first claim, so the
    // server passed over a better job.
    let answered: Vec<(f64, i64)> = log.iter().map(|e| (e.1, priority_of[&e.2])).collect();
    let mut prefix_max = Vec::with_capacity(answered.len());
    let mut worst = 0;
    for (_, p) in &answered {
        worst = worst.max(*p);
        prefix_max.push(worst);
    }
    let mut violations = 0;
    let mut adjacent_inversions = 0;
    for (k, e) in log.iter().enumerate() {
        let p = priority_of[&e.2];
        let before = answered.partition_point(|(a, _)| *a < e.0);
        if before > 0 && prefix_max[before - 1] > p {
            violations += 1;
        }
        if k > 0 && answered[k - 1].1 > p {
            adjacent_inversions += 1;
        }
    }
    let rtts: Vec<f64> = log.iter().filter(|e| e.3 >= 0.0).map(|e| e.3).collect();
    let solo_rtts: Vec<f64> = log.iter().filter(|e| e.3 < 0.0).map(|e| -e.3).collect();
    result(
        "dispatch",
        json!({
            "builds": builds, "agents": agents, "dispatched": log.len(), "foreign": foreign,
            "builds_per_sec": claimed_total as f64 / wall,
            "server_cores": server_cores, "machine_cores": machine_cores, "wall": wall,
            "server_cpu_ms_per_build": server_cores * wall * 1000.0 / log.len().max(1) as f64,
            "order_violations": violations, "adjacent_inversions": adjacent_inversions,
            "claim_rtt": summary(rtts), "claim_rtt_solo": summary(solo_rtts),
            "healthz": summary(health),
            "queue_builds_per_sec": builds as f64 / queue_wall, "queue_server_cores": queue_cores,
        }),
    );
    Ok(())
}

/// Target 4: log chunk → live tail, and the build-event SSE baseline.
async fn tail(api: &Api, admin: &str, slug: &str, commit: &str, chunks: usize, tailers: usize, interval: u64) -> Res<()> {
    let epoch = Instant::now();
    let now_us = move || (epoch.elapsed().as_nanos() / 1000) as u64;
    // A running job held by a simulated agent.
    let token = agent_token(api, admin, &format!("{slug}-tail")).await?;
    let agent = register(api, &token, "tail-agent").await?;
    let build = trigger(api, admin, slug, json!({"commit": commit, "priority": 1})).await?;
    let run = build["runId"].as_str().ok_or("no runId")?.to_owned();
    let job = loop {
        match claim(api, &agent, 5).await? {
            Some(job) if job["runId"].as_str() == Some(&run) => break job,
            Some(other) => finish(api, &agent, &other).await?,
            None => return Err("the tail job was not claimed".into()),
        }
    };
    let job_id = job["jobId"].as_i64().unwrap_or(0);
    let attempt = job["attempt"].as_i64().unwrap_or(1);
    let log_path = format!("/api/v1/projects/{slug}/builds/{run}/jobs/{job_id}/log/stream?offset=0");
    let mut receivers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..tailers {
        let mut sse = api.sse(&log_path, admin).await?;
        let ready_tx = ready_tx.clone();
        receivers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(event) = sse.next().await {
                if event.event == "end" {
                    break;
                }
                let at = now_us();
                for line in event.data.lines() {
                    if line.starts_with("kiln-bench-ready") {
                        let _ = ready_tx.send(());
                    }
                    if let Some(rest) = line.strip_prefix("kiln-bench-chunk ") {
                        if let Some(sent) = rest.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
                            lat.push((at - sent) as f64 / 1000.0);
                        }
                    }
                }
            }
            lat
        }));
    }
    let append = |offset: i64, text: String| {
        let api = api.clone();
        let token = agent.token.clone();
        let agent_id = agent.id;
        async move {
            let path = format!("/api/v1/agent/jobs/{job_id}/log?agentId={agent_id}&attempt={attempt}&offset={offset}");
            let mut request = api.client.post(format!("{}{}", api.url, path)).header("Authorization", format!("Bearer {token}"));
            request = request.body(text.into_bytes());
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!("log append → {status}: {body}"));
            }
            Ok::<(), String>(())
        }
    };
    let mut offset = 0i64;
    let ready = "kiln-bench-ready\n".to_string();
    append(offset, ready.clone()).await?;
    offset += ready.len() as i64;
    for _ in 0..tailers {
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .map_err(|_| "tailers not ready".to_string())?;
    }
    let mut post_rtt = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..chunks {
        ticker.tick().await;
        // ~ one agent log line: 30-byte prefix + text, padded to 120 bytes.
        let sent = now_us();
        let mut text = format!("kiln-bench-chunk {seq} {sent} ");
        while text.len() < 119 {
            text.push('.');
        }
        text.push('\n');
        let len = text.len() as i64;
        let t = Instant::now();
        append(offset, text).await?;
        post_rtt.push(ms(t.elapsed()));
        offset += len;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    finish(api, &agent, &job).await?;
    let mut log_lat = Vec::new();
    for receiver in receivers {
        match tokio::time::timeout(Duration::from_secs(10), receiver).await {
            Ok(Ok(lat)) => log_lat.extend(lat),
            _ => return Err("a log tail did not end".into()),
        }
    }

    // Baseline: a self-reported build's events on the build SSE stream, same cadence.
    let ingest = api
        .ok("POST", &format!("/api/v1/projects/{slug}/tokens"), admin, json!({"name": format!("tail-{tailers}"), "scopes": ["ingest"]}))
        .await?["token"]
        .as_str()
        .ok_or("no ingest token")?
        .to_owned();
    let event_run = format!("bench-tail-{}-{}", tailers, std::process::id());
    let post_event = |body: Value| {
        let (api, ingest) = (api.clone(), ingest.clone());
        async move { api.ok("POST", "/api/v1/events", &ingest, body).await.map(|_| ()) }
    };
    post_event(json!({"runId": event_run, "event": "build_started", "eventId": "start"})).await?;
    let mut receivers = Vec::new();
    for _ in 0..tailers {
        let mut sse = api.sse(&format!("/api/v1/builds/{event_run}/stream"), admin).await?;
        let ready_tx = ready_tx.clone();
        receivers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(event) = sse.next().await {
                if event.event == "end" || event.event == "build_completed" {
                    break;
                }
                let at = now_us();
                if event.event == "build_started" {
                    let _ = ready_tx.send(());
                }
                if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
                    if let Some(rest) = v["message"].as_str().and_then(|m| m.strip_prefix("kiln-bench-chunk ")) {
                        if let Some(sent) = rest.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
                            lat.push((at - sent) as f64 / 1000.0);
                        }
                    }
                }
            }
            lat
        }));
    }
    for _ in 0..tailers {
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .map_err(|_| "event subscribers not ready".to_string())?;
    }
    let mut event_rtt = Vec::new();
    for seq in 0..chunks {
        ticker.tick().await;
        let sent = now_us();
        let t = Instant::now();
        post_event(json!({"runId": event_run, "event": "build_progress", "eventId": format!("p{seq}"),
                          "progress": (seq * 100 / chunks) as f64, "message": format!("kiln-bench-chunk {seq} {sent}")}))
        .await?;
        event_rtt.push(ms(t.elapsed()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_event(json!({"runId": event_run, "event": "build_completed", "eventId": "end"})).await?;
    let mut event_lat = Vec::new();
    for receiver in receivers {
        match tokio::time::timeout(Duration::from_secs(10), receiver).await {
            Ok(Ok(lat)) => event_lat.extend(lat),
            _ => return Err("an event stream did not end".into()),
        }
    }
    result(
        &format!("tail_{tailers}"),
        json!({
            "tailers": tailers, "chunks": chunks, "interval_ms": interval,
            "expected": chunks * tailers,
            "log_post_to_tail": summary(log_lat),
            "log_post_rtt": summary(post_rtt),
            "event_post_to_stream": summary(event_lat),
            "event_post_rtt": summary(event_rtt),
        }),
    );
    Ok(())
}

// ------------------------------------------------------------------ report

fn report(path: &str) -> Res<()> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut sections: Vec<(String, Value)> = Vec::new();
    let mut current = String::from("?");
    for line in text.lines() {
        if let Some(engine) = line.strip_prefix("ENGINE ") {
            current = engine.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("RESULT ") {
            if let Ok(v) = serde_json::from_str::<Value>(rest) {
                sections.push((current.clone(), v));
            }
        }
    }
    let f = |v: &Value| match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    };
    let s = |v: &Value| format!("{} / {} / {}", f(&v["p50"]), f(&v["p95"]), f(&v["p99"]));
    println!("| engine | measurement | p50 / p95 / p99 ms (n) | baseline in the same run | target |");
    println!("|---|---|---|---|---|");
    for (engine, r) in &sections {
        let v = &r["value"];
        let row = |what: &str, m: &Value, base: &str, target: &str| {
            println!("| {engine} | {what} | {} ({}) | {base} | {target} |", s(m), m["n"]);
        };
        match r["name"].as_str().unwrap_or("") {
            "first_step" => {
                let hz = format!("`/healthz` RTT p50 {} ms", f(&v["healthz"]["p50"]));
                row("1. trigger HTTP (POST → 201)", &v["trigger_http"], &hz, "");
                row("1. trigger → `stage_started` on the project SSE (claimed)", &v["to_stage_started"], "", "");
                row("1. trigger → agent's first log line (checkout starts)", &v["to_agent_first_line"], "", "");
                row("1. **trigger → first step running** (step's first output line, agent timestamp)", &v["to_step_output"], "", "≤ 300 ms");
                row("1. trigger → that line on the live log tail", &v["to_step_output_on_tail"], "", "");
                row("1. trigger → `build_completed`", &v["to_build_completed"], "", "");
            }
            "claims" => {
                let base = format!(
                    "`/healthz` RTT idle p50/p99 {} / {} ms; under this load {} / {} ms",
                    f(&v["healthz_idle"]["p50"]), f(&v["healthz_idle"]["p99"]),
                    f(&v["healthz_under_load"]["p50"]), f(&v["healthz_under_load"]["p99"])
                );
                row(
                    &format!("2. **job queued → claim answered**, {} agents long-polling, {} builds/s for {} s ({} claimed of {}; server {:.2} cores, machine {:.2})",
                        v["agents"], v["rate"], v["secs"], v["claimed"], v["fed"], v["server_cores"].as_f64().unwrap_or(0.0), v["machine_cores"].as_f64().unwrap_or(0.0)),
                    &v["queued_to_claimed"], &base, "p99 ≤ 5 ms",
                );
                row("2. trigger HTTP during that load", &v["trigger_http"], "", "");
            }
            "dispatch" => {
                let hz = format!("`/healthz` RTT p50/p99 {} / {} ms", f(&v["healthz"]["p50"]), f(&v["healthz"]["p99"]));
                row("3. **claim RTT, job waiting, one agent alone** (claim handler + HTTP)", &v["claim_rtt_solo"], &hz, "p99 ≤ 5 ms");
                row(
                    &format!("3. claim RTT, job waiting, {} agents claiming + finishing at once (queues behind the others' work)", v["agents"]),
                    &v["claim_rtt"], "", "",
                );
                println!(
                    "| {engine} | 3. **dispatch of {} queued builds**, {} agents | {:.0} builds/s, server **{:.2} cores** ({:.1} ms CPU/build), machine {:.2} cores; priority-order violations **{}** (adjacent inversions from concurrency {}) | queueing them: {:.0} builds/s at {:.2} server cores | < 1 core, in priority order |",
                    v["dispatched"], v["agents"], v["builds_per_sec"].as_f64().unwrap_or(0.0),
                    v["server_cores"].as_f64().unwrap_or(0.0), v["server_cpu_ms_per_build"].as_f64().unwrap_or(0.0),
                    v["machine_cores"].as_f64().unwrap_or(0.0), v["order_violations"], v["adjacent_inversions"],
                    v["queue_builds_per_sec"].as_f64().unwrap_or(0.0), v["queue_server_cores"].as_f64().unwrap_or(0.0)
                );
            }
            name if name.starts_with("tail_") => {
                let base = format!(
                    "build-event SSE (ingested event → subscriber) {} (n {})",
                    s(&v["event_post_to_stream"]), v["event_post_to_stream"]["n"]
                );
                row(
                    &format!("4. **log chunk POST → live tail**, {} tail client(s), a chunk every {} ms (expected n {})", v["tailers"], v["interval_ms"], v["expected"]),
                    &v["log_post_to_tail"], &base, "p99 ≤ 100 ms",
                );
                row("4. log append HTTP RTT (the agent's POST)", &v["log_post_rtt"], &format!("event POST RTT {}", s(&v["event_post_rtt"])), "");
            }
            _ => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let n = |i: usize| a(i).parse::<f64>().unwrap_or_else(|_| panic!("argument {i} must be a number"));
    let mode = a(1);
    if mode == "report" {
        if let Err(e) = report(&a(2)) {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
        return;
    }
    let api = Api::new(a(2).split(',').next().unwrap_or_default());
    let (admin, slug) = (a(3), a(4));
    let outcome = match mode.as_str() {
        "setup" => setup(&api, &admin, &slug, &a(5)).await,
        "first-step" => first_step(&api, &admin, &slug, n(5) as usize).await,
        "claims" => claims(&api, &admin, &slug, &a(5), n(6) as usize, n(7), n(8), n(9) as u32).await,
        "dispatch" => dispatch(&api, &admin, &slug, &a(5), n(6) as usize, n(7) as usize, n(8) as u32).await,
        "fleet" => {
            let pids = a(13).split(',').filter_map(|pid| pid.parse().ok()).collect();
            let apis: Vec<Api> = a(2).split(',').map(Api::new).collect();
            fleet::fleet(&apis, &admin, &slug, &a(5), &a(6), n(7) as usize, n(8), n(9) as usize, n(10) as usize, n(11), n(12), pids).await
        }
        "tail" => tail(&api, &admin, &slug, &a(5), n(6) as usize, n(7) as usize, n(8) as u64).await,
        _ => Err(format!("unknown mode '{mode}'; see the top of bench/runner/loadgen/src/main.rs")),
    };
    if let Err(e) = outcome {
        eprintln!("loadgen {mode}: {e}");
        std::process::exit(1);
    }
}
