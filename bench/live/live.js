// Live delivery benchmark orchestrator (Node 20, socket.io@4 / socket.io-client@4.8 only).
// Starts kiln (and B9), seeds builds, forks subscriber workers, ingests at a fixed rate,
// measures commit(ack)->subscriber latency on the shared CLOCK_MONOTONIC, stops all it starts.
'use strict';
const http = require('http');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawn, fork } = require('child_process');

const E = process.env;
const KILN = E.LIVE_KILN || path.resolve(__dirname, '../../target/release/kiln');
const PORT = Number(E.LIVE_PORT || 18590);
const B9PORT = Number(E.LIVE_B9_PORT || 18591);
const SSE_BUILDS = Number(E.LIVE_SSE_BUILDS || 1000);
const PER_BUILD = Number(E.LIVE_PER_BUILD || 10);
const RATE = Number(E.LIVE_RATE || 2000);
const DUR = Number(E.LIVE_DURATION || 10);
const WORKERS = Number(E.LIVE_WORKERS || 2);
const SIO_BUILDS = Number(E.LIVE_SIO_BUILDS || 100);
const SIO_RATES = (E.LIVE_SIO_RATES || '500,1000,2000').split(',').map(Number);
const POLL_BUILDS = Number(E.LIVE_POLL_BUILDS || 100);
const POLL_INTERVAL = Number(E.LIVE_POLL_INTERVAL_MS || 1000);
const POLL_RATE = Number(E.LIVE_POLL_RATE || 200);
const STORM_BUILDS = Number(E.LIVE_STORM_BUILDS || 10);
const STORM_CLIENTS = Number(E.LIVE_STORM_CLIENTS || 1000);
const STORM_BEHIND = Number(E.LIVE_STORM_BEHIND || 1000);
const STORM_TIMEOUT = Number(E.LIVE_STORM_TIMEOUT_MS || 60000);
const PHASES = (E.LIVE_PHASES || 'sse,poll,sio,storm').split(',');
const OUT = E.LIVE_OUT || path.resolve(__dirname, '../results/live-latest.json');
// Nothing waits forever: a request, a worker call and the settling of an ingest run each
// have a deadline; a run that misses one is reported as failed and the next one starts.
const REQUEST_TIMEOUT = Number(E.LIVE_REQUEST_TIMEOUT_MS || 10000);
const CALL_TIMEOUT = Number(E.LIVE_CALL_TIMEOUT_MS || 120000);
const SETTLE_TIMEOUT = Number(E.LIVE_SETTLE_TIMEOUT_MS || 20000);

const now = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const children = [];
process.on('exit', () => { for (const c of children) try { c.kill('SIGKILL'); } catch {} });
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(130));

// Connections the ingester may use. With 32, a commit stretched to 35 ms by a busy disk
// capped ingest near 900 events/s (requests queue in the agent, so group commit could not
// absorb more); 1,000 live builds would each hold their own connection anyway.
const INGEST_CONNS = Number(E.LIVE_INGEST_CONNS || 128);
const agent = new http.Agent({ keepAlive: true, maxSockets: INGEST_CONNS });
function request(port, method, p, body, token, timeoutMs = REQUEST_TIMEOUT) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = { 'content-type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (data) headers['content-length'] = data.length;
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const t = now();
        const txt = Buffer.concat(chunks).toString();
        let json = null; try { json = JSON.parse(txt); } catch {}
        resolve({ status: res.statusCode, json, t });
      });
    });
    req.on('error', reject);
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`${method} ${p}: no answer in ${timeoutMs} ms`), { timeout: true })));
    if (data) req.write(data);
    req.end();
  });
}

function rss(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return Number(m[1]) * 1024;
  } catch { return null; } // the process has gone; the report says so
}
function cpuTicks(pid) {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return Number(f[11]) + Number(f[12]); // utime + stime (clock ticks, 100/s)
  } catch { return 0; }
}
function totalCpu() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6] + f[7], all: f.reduce((a, b) => a + b, 0) };
}

function startProc(cmd, args, env, re) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(p);
    let err = '';
    const to = setTimeout(() => reject(new Error(`${cmd} did not start: ${err.slice(-500)}`)), 20000);
    p.stderr.on('data', (d) => { err += d; if (re.test(err)) { clearTimeout(to); resolve(p); } if (err.length > 100000) err = err.slice(-5000); });
    p.on('exit', (c) => { clearTimeout(to); reject(new Error(`${cmd} exited ${c}: ${err.slice(-500)}`)); });
  });
}

async function checked(port, method, p, body, token) {
  const r = await request(port, method, p, body, token);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.json)}`);
  return r;
}

async function startKiln() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-live-'));
  const p = await startProc(KILN, ['serve', '--listen', `127.0.0.1:${PORT}`, '--data-dir', dir, '--max-streams-per-token', '40000', '--max-connections', '100000', '--max-connections-per-address', '100000'],
    { KILN_ADMIN_TOKEN: 'kiln_benchadmin', RUST_LOG: 'warn' }, /kiln listening on/);
  const adm = 'kiln_benchadmin';
  await checked(PORT, 'POST', '/api/v1/projects', { slug: 'bench', name: 'Bench' }, adm);
  const t = await checked(PORT, 'POST', '/api/v1/projects/bench/tokens', { name: 'live', scopes: ['ingest', 'read'] }, adm);
  return { proc: p, dir, token: t.json.token };
}

async function seed(port, token, runIds) {
  for (let i = 0; i < runIds.length; i += 1000) {
    const r = await request(port, 'POST', '/api/v1/events', runIds.slice(i, i + 1000).map((runId) => ({ runId, event: 'build_started' })), token);
    if (r.status >= 300) throw new Error(`seed: ${r.status} ${JSON.stringify(r.json)}`);
  }
}

// Workers answer each call with one message, in order. A call fails (instead of waiting
// forever) when its worker exits or does not answer within `timeoutMs`; the error names
// the exit code or signal and the worker's last stderr lines.
function forkWorkers(count) {
  const ws = [];
  for (let i = 0; i < count; i++) {
    const w = fork(path.join(__dirname, 'worker.js'), [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
    children.push(w);
    const q = [];
    let stderr = '';
    let exited = null;
    w.stderr.on('data', (d) => { process.stderr.write(d); stderr = (stderr + d).slice(-2000); });
    const failAll = (why) => { while (q.length) q.shift().reject(new Error(`worker ${i} (pid ${w.pid}) ${why}${stderr ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`)); };
    w.on('message', (m) => { const c = q.shift(); if (c) c.resolve(m); });
    w.on('exit', (code, signal) => { exited = signal || `code ${code}`; failAll(`exited (${exited}) before answering`); });
    w.on('error', (e) => failAll(`failed: ${e.message}`));
    w.call = (msg, timeoutMs = CALL_TIMEOUT) => new Promise((resolve, reject) => {
      if (exited) { reject(new Error(`worker ${i} (pid ${w.pid}) had exited (${exited})`)); return; }
      const to = setTimeout(() => { const j = q.indexOf(c); if (j >= 0) q.splice(j, 1); reject(new Error(`worker ${i} (pid ${w.pid}) did not answer '${msg.cmd}' in ${timeoutMs / 1000} s`)); }, timeoutMs);
      const c = { resolve: (m) => { clearTimeout(to); resolve(m); }, reject: (e) => { clearTimeout(to); reject(e); } };
      q.push(c);
      w.send(msg);
    });
    ws.push(w);
  }
  return ws;
}
function endWorkers(ws) { for (const w of ws) { try { w.disconnect(); } catch {} setTimeout(() => { try { w.kill('SIGKILL'); } catch {} }, 2000).unref(); } }
function split(list, n) { const o = Array.from({ length: n }, () => []); list.forEach((x, i) => o[i % n].push(x)); return o; }

// open-loop ingest of `log_line` events round-robin over runIds, one event per POST
async function ingest(port, token, runIds, rate, seconds, kBase) {
  const sent = [], acked = [];
  let k = 0, inflight = 0, skipped = 0, bad = 0, timedOut = 0, unsettled = 0;
  const badStatus = {};
  const t0 = now();
  const total = Math.round(rate * seconds);
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((now() - t0) / 1000) * rate));
      while (k < due) {
        if (inflight > 512) { skipped += due - k; k = due; break; }
        const kk = kBase + k; const idx = k;
        const ts = now();
        sent[idx] = ts;
        inflight++;
        request(port, 'POST', '/api/v1/events', { runId: runIds[k % runIds.length], event: 'log_line', data: { k: kk, sentAt: ts } }, token)
          .then((r) => { inflight--; if (r.status < 300) acked[idx] = r.t; else { bad++; badStatus[r.status] = (badStatus[r.status] || 0) + 1; } })
          .catch((e) => { inflight--; bad++; if (e.timeout) timedOut++; });
        k++;
      }
      if (k >= total) {
        const until = now() + SETTLE_TIMEOUT;
        const w = () => {
          if (inflight === 0) resolve();
          else if (now() > until) { unsettled = inflight; resolve(); }
          else setTimeout(w, 5);
        };
        w();
      } else setTimeout(tick, 2);
    };
    tick();
  });
  const el = (now() - t0) / 1000;
  const ackLat = [];
  for (let i = 0; i < total; i++) if (acked[i] !== undefined) ackLat.push(acked[i] - sent[i]);
  return { sent, acked, total, skipped, bad, timedOut, unsettled, badStatus, seconds: el, ackedCount: ackLat.length, ingestP50: pct(ackLat, 50), ingestP99: pct(ackLat, 99) };
}

function pct(arr, p) {
  if (!arr.length) return null;
  const a = Float64Array.from(arr).sort();
  return a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))];
}

function analyse(results, ing, kBase, expectedPer) {
  const fromAck = [], fromSent = [];
  let deliveries = 0, gaps = 0, dups = 0, errors = 0, connected = 0, failed = 0, closedEarly = 0, firstT = Infinity, lastT = 0;
  for (const r of results) {
    gaps += r.gaps; dups += r.dups; errors += r.errors; connected += r.connected; failed += r.failed; closedEarly += r.closedEarly;
    for (let i = 0; i < r.ks.length; i++) {
      const idx = r.ks[i] - kBase;
      if (idx < 0 || idx >= ing.total) continue;
      deliveries++;
      const t = r.ts[i];
      if (t < firstT) firstT = t; if (t > lastT) lastT = t;
      if (ing.acked[idx] !== undefined) fromAck.push(t - ing.acked[idx]);
      fromSent.push(t - ing.sent[idx]);
    }
  }
  const expected = ing.ackedCount * expectedPer;
  return {
    connected, failed, deliveries, expected, missing: expected - deliveries, gaps, dups, errors, closedEarly,
    deliveriesPerSec: deliveries / ing.seconds,
    ackP50: pct(fromAck, 50), ackP99: pct(fromAck, 99), ackMax: pct(fromAck, 100),
    sentP50: pct(fromSent, 50), sentP99: pct(fromSent, 99),
    ingestP50: ing.ingestP50, ingestP99: ing.ingestP99, eventsAcked: ing.ackedCount, eventsSkipped: ing.skipped, ingestErrors: ing.bad,
    ingestTimeouts: ing.timedOut, ingestUnsettled: ing.unsettled, ingestBadStatus: ing.badStatus,
    eventsPerSec: ing.ackedCount / ing.seconds,
  };
}

function cpuSnap(pids) { return { t: now(), tot: totalCpu(), per: pids.map(cpuTicks) }; }
function cpuDiff(a, b, names) {
  const s = (b.t - a.t) / 1000;
  const o = {};
  names.forEach((n, i) => { o[n] = +((b.per[i] - a.per[i]) / 100 / s).toFixed(2); });
  o.machine = +((b.tot.busy - a.tot.busy) / (b.tot.all - a.tot.all) * os.cpus().length).toFixed(2);
  return o;
}

// one live run: fork workers, subscribe, ingest at `rate` for DUR s, collect
async function liveRun(args) {
  const ws = forkWorkers(WORKERS);
  try { return await liveRunWith(ws, args); } finally { endWorkers(ws); }
}
async function liveRunWith(ws, { kind, port, token, runIds, perBuild, rate, seconds, kBase, serverPid, extra = {} }) {
  const parts = split(runIds, WORKERS);
  const rssBefore = serverPid ? rss(serverPid) : null;
  const tc = now();
  const readies = await Promise.all(ws.map((w, i) => w.call({ cmd: 'start', cfg: { kind, port, token, builds: parts[i], perBuild, ...extra } })));
  const connectS = (now() - tc) / 1000;
  const conn = readies.reduce((a, r) => a + r.connected, 0), fail = readies.reduce((a, r) => a + r.failed, 0);
  log(`${kind}: ${conn} subscribers connected (${fail} failed) in ${connectS.toFixed(1)} s`);
  await sleep(kind === 'poll' ? POLL_INTERVAL + 500 : 3000);
  const rssWith = serverPid ? rss(serverPid) : null;
  await Promise.all(ws.map((w) => w.call({ cmd: 'reset' })));
  const pids = [serverPid || 0, process.pid, ...ws.map((w) => w.pid)];
  const c0 = cpuSnap(pids);
  const ing = await ingest(port, token, runIds, rate, seconds, kBase);
  await sleep(kind === 'poll' ? POLL_INTERVAL * 2 + 1000 : 2000);
  const c1 = cpuSnap(pids);
  const results = await Promise.all(ws.map((w) => w.call({ cmd: 'stop' }, 60000)));
  const cpu = cpuDiff(c0, c1, ['server', 'ingester', ...ws.map((_, i) => `client${i}`)]);
  const a = analyse(results, ing, kBase, perBuild);
  return { kind, subscribers: conn, subscribeFailed: fail, connectS, rate, seconds, rssBefore, rssWith,
    perSubscriberBytes: serverPid && conn ? (rssWith - rssBefore) / conn : null, cpu, ...a };
}

const fmt = (x, d = 2) => (x === null || x === undefined ? 'n/a' : Number(x).toFixed(d));

// Runs one measurement; a failure becomes a row of the report (with its reason) and the
// benchmark goes on with the next run instead of hanging or losing what it measured.
async function attempt(report, kind, system, fn) {
  try {
    const r = await fn();
    r.system = system;
    report.runs.push(r); log(JSON.stringify(r));
  } catch (e) {
    const r = { kind, system, failed: true, error: String(e && e.message || e) };
    report.runs.push(r); log(`FAILED ${system}: ${r.error}`);
  }
}

async function storm(tk, kiln) {
  // backlog: STORM_BEHIND log_line events per build, then STORM_CLIENTS reconnect with
  // Last-Event-ID = the build's build_started id (so STORM_BEHIND events behind each)
  const ids = Array.from({ length: STORM_BUILDS }, (_, i) => `storm-${i}`);
  const first = {};
  for (const id of ids) {
    const r = await checked(PORT, 'POST', '/api/v1/events', [{ runId: id, event: 'build_started' }], tk);
    first[id] = r.json.events[0].id;
  }
  for (let j = 0; j < STORM_BEHIND; j += 100) {
    const batch = [];
    for (const id of ids) for (let q = j; q < Math.min(STORM_BEHIND, j + 100); q++) batch.push({ runId: id, event: 'log_line', data: { storm: q } });
    for (let i = 0; i < batch.length; i += 1000) await checked(PORT, 'POST', '/api/v1/events', batch.slice(i, i + 1000), tk);
  }
  const jobs = [];
  for (let c = 0; c < STORM_CLIENTS; c++) { const id = ids[c % ids.length]; jobs.push({ runId: id, lastEventId: first[id], until: STORM_BEHIND + 1 }); }
  const ws = forkWorkers(WORKERS);
  try {
    const parts = split(jobs, WORKERS);
    const c0 = cpuSnap([kiln.proc.pid, ...ws.map((w) => w.pid)]);
    const t0 = now();
    await Promise.all(ws.map((w, i) => w.call({ cmd: 'start', cfg: { kind: 'storm', port: PORT, token: tk, builds: parts[i], perBuild: 1, timeoutMs: STORM_TIMEOUT } }, STORM_TIMEOUT + 60000)));
    const totalS = (now() - t0) / 1000;
    const c1 = cpuSnap([kiln.proc.pid, ...ws.map((w) => w.pid)]);
    const res = await Promise.all(ws.map((w) => w.call({ cmd: 'stop' }, 60000)));
    const done = res.reduce((a, r) => a + r.doneTimes.length, 0);
    const times = [].concat(...res.map((r) => Array.from(r.doneTimes)));
    return { kind: 'storm', clients: STORM_CLIENTS, behind: STORM_BEHIND, completed: done, gaps: res.reduce((a, r) => a + r.gaps, 0), dups: res.reduce((a, r) => a + r.dups, 0),
      failed: res.reduce((a, r) => a + r.failed, 0), errors: res.reduce((a, r) => a + r.errors, 0), closedEarly: res.reduce((a, r) => a + r.closedEarly, 0), resumed: res.reduce((a, r) => a + (r.resumed || 0), 0),
      totalS, clientP50s: pct(times, 50) / 1000, clientP99s: pct(times, 99) / 1000, eventsReplayed: done * STORM_BEHIND,
      cpu: cpuDiff(c0, c1, ['server', ...ws.map((_, i) => `client${i}`)]), rssAfter: rss(kiln.proc.pid) };
  } finally { endWorkers(ws); }
}

function renderReport(report) {
  const L = [];
  if (report.partial) L.push(`**Partial report**: ${report.partial}`, '');
  L.push(`Kiln idle RSS ${fmt(report.kilnRssIdle / 1048576, 1)} MiB; ${report.cores} cores; loadavg at start ${report.loadavgStart.map((x) => x.toFixed(2)).join(' ')}`);
  L.push('');
  L.push('| system | subscribers | events/s acked | deliveries/s | delivered / expected | gaps | ack→sub p50 ms | ack→sub p99 ms | POST→sub p99 ms | server RSS idle → with subs | per subscriber | cores: server / ingester / clients / machine |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const r of report.runs) {
    if (r.kind === 'storm') continue;
    if (r.failed) { L.push(`| ${r.system} | **failed**: ${r.error.replace(/\|/g, '/')} |||||||||||`); continue; }
    const cl = Object.entries(r.cpu).filter(([k]) => k.startsWith('client')).reduce((a, [, v]) => a + v, 0);
    L.push(`| ${r.system} | ${r.subscribers} | ${fmt(r.eventsPerSec, 0)} | ${fmt(r.deliveriesPerSec, 0)} | ${r.deliveries} / ${r.expected} | ${r.gaps} | ${fmt(r.ackP50)} | ${fmt(r.ackP99)} | ${fmt(r.sentP99)} | ${fmt(r.rssBefore / 1048576, 1)} → ${fmt(r.rssWith / 1048576, 1)} MiB | ${r.perSubscriberBytes === null ? 'n/a' : fmt(r.perSubscriberBytes / 1024, 1) + ' KiB'} | ${r.cpu.server} / ${r.cpu.ingester} / ${cl.toFixed(2)} / ${r.cpu.machine} |`);
  }
  const notes = report.runs.filter((r) => !r.failed && r.kind !== 'storm' && (r.eventsSkipped || r.ingestErrors || r.ingestUnsettled || r.failed || r.subscribeFailed || r.errors || r.closedEarly || r.dups));
  for (const r of notes) {
    L.push('', `${r.system}: ${r.eventsSkipped} events skipped (more than 512 in flight), ${r.ingestErrors} ingest errors (${r.ingestTimeouts} timed out, statuses ${JSON.stringify(r.ingestBadStatus)}), ${r.ingestUnsettled} unanswered at the deadline; ${r.subscribeFailed} subscriptions refused, ${r.errors} subscriber errors, ${r.closedEarly} streams closed early, ${r.dups} duplicates`);
  }
  for (const r of report.runs) {
    if (r.kind !== 'storm') continue;
    L.push('');
    if (r.failed) { L.push(`Replay storm **failed**: ${r.error}`); continue; }
    L.push(`Replay storm: ${r.completed}/${r.clients} clients completed ${r.behind} events each in ${fmt(r.totalS)} s (per client p50 ${fmt(r.clientP50s)} s, p99 ${fmt(r.clientP99s)} s); gaps ${r.gaps}, duplicates ${r.dups}, failed ${r.failed}, errors ${r.errors}, closed early ${r.closedEarly}, dropped as slow and resumed by Last-Event-ID ${r.resumed || 0}; cores server ${r.cpu.server}, machine ${r.cpu.machine}`);
  }
  if (report.loadavgEnd) L.push('', `loadavg at end ${report.loadavgEnd.map((x) => x.toFixed(2)).join(' ')}`);
  return L.join('\n');
}

function writeReport(report) {
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, JSON.stringify(report, null, 1));
  const md = renderReport(report);
  fs.writeFileSync(OUT.replace(/\.json$/, '.md'), md + '\n');
  return md;
}

async function main() {
  const report = { startedAt: new Date().toISOString(), host: os.hostname(), cores: os.cpus().length, loadavgStart: os.loadavg(),
    kiln: KILN, config: { INGEST_CONNS, SSE_BUILDS, PER_BUILD, RATE, DUR, WORKERS, SIO_BUILDS, SIO_RATES, POLL_BUILDS, POLL_INTERVAL, POLL_RATE, STORM_BUILDS, STORM_CLIENTS, STORM_BEHIND, PHASES }, runs: [] };
  // run.sh's `timeout` (or ^C) ends us with SIGTERM/SIGINT: keep what was measured.
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.removeAllListeners(sig);
    process.on(sig, () => { report.partial = `interrupted by ${sig} at ${new Date().toISOString()}`; report.loadavgEnd = os.loadavg(); try { console.log(writeReport(report)); } catch {} process.exit(130); });
  }
  let kBase = 0;
  const kiln = await startKiln();
  log(`kiln pid ${kiln.proc.pid}, data ${kiln.dir}`);
  kiln.proc.on('exit', (code, signal) => { if (!report.loadavgEnd) { report.kilnExited = signal || code; log(`kiln exited (${signal || code})`); } });
  const tk = kiln.token;
  report.kilnRssIdle = rss(kiln.proc.pid);

  if (PHASES.includes('sse')) {
    const scale = (E.LIVE_SSE_SCALE || `100,${SSE_BUILDS}`).split(',').map(Number);
    for (const nb of scale) {
      await attempt(report, 'sse', `Kiln SSE, ${nb} builds × ${PER_BUILD}`, async () => {
        const ids = Array.from({ length: nb }, (_, i) => `sse-${nb}-${i}`);
        await seed(PORT, tk, ids);
        await sleep(1000);
        return liveRun({ kind: 'sse', port: PORT, token: tk, runIds: ids, perBuild: PER_BUILD, rate: RATE, seconds: DUR, kBase, serverPid: kiln.proc.pid });
      });
      kBase += 10_000_000;
      await sleep(2000);
    }
  }
  if (PHASES.includes('poll')) {
    await attempt(report, 'poll', `Seed polling every ${POLL_INTERVAL / 1000} s on Kiln, ${POLL_BUILDS} builds × ${PER_BUILD}`, async () => {
      const ids = Array.from({ length: POLL_BUILDS }, (_, i) => `poll-${i}`);
      await seed(PORT, tk, ids);
      return liveRun({ kind: 'poll', port: PORT, token: tk, runIds: ids, perBuild: PER_BUILD, rate: POLL_RATE, seconds: DUR, kBase, serverPid: kiln.proc.pid, extra: { intervalMs: POLL_INTERVAL, cursor: 0 } });
    });
    kBase += 10_000_000;
  }
  if (PHASES.includes('sio')) {
    let b9 = null;
    try {
      b9 = await startProc('node', [path.join(__dirname, 'b9-server.js'), String(B9PORT)], {}, /b9 listening/);
      log(`b9 pid ${b9.pid}`);
    } catch (e) {
      report.runs.push({ kind: 'sio', system: 'B9 Node socket.io@4', failed: true, error: `B9 did not start: ${e.message}` });
    }
    for (const rate of SIO_RATES) {
      for (const [name, port, proc] of [['B9 Node socket.io@4', B9PORT, b9], ['Kiln Socket.IO', PORT, kiln.proc]]) {
        if (!proc) continue;
        await attempt(report, 'sio', `${name}, ${SIO_BUILDS} builds × ${PER_BUILD}`, async () => {
          const ids = Array.from({ length: SIO_BUILDS }, (_, i) => `sio-${rate}-${i}`);
          await seed(port, tk, ids);
          return liveRun({ kind: 'sio', port, token: tk, runIds: ids, perBuild: PER_BUILD, rate, seconds: DUR, kBase, serverPid: proc.pid });
        });
        kBase += 10_000_000;
        await sleep(1000);
      }
    }
    if (b9) b9.kill('SIGTERM');
  }
  if (PHASES.includes('storm')) {
    await attempt(report, 'storm', `Kiln SSE replay storm: ${STORM_CLIENTS} clients, ${STORM_BEHIND} events behind, ${STORM_BUILDS} builds`, () => storm(tk, kiln));
  }
  report.kilnRssEnd = rss(kiln.proc.pid);
  report.loadavgEnd = os.loadavg();
  kiln.proc.kill('SIGTERM');
  await sleep(500);
  fs.rmSync(kiln.dir, { recursive: true, force: true });
  console.log(writeReport(report));
  process.exit(report.runs.some((r) => r.failed) ? 2 : 0);
}
main().catch((e) => { console.error(e); process.exit(1); });
