// Subscriber worker, forked by live.js (IPC, advanced serialization).
// kinds: sse (raw http + tiny SSE parser), sio (socket.io-client), poll (GET …/events
// every interval), storm (SSE with Last-Event-ID, reads until `until` seq, then closes).
// Records every delivery of a benchmark event (data.k ≥ 0) as (k, arrival ms on the
// shared CLOCK_MONOTONIC), counts seq gaps per connection.
'use strict';
const http = require('http');
const now = () => Number(process.hrtime.bigint()) / 1e6;

let cfg;
let cap = 1 << 20;
let ks = new Int32Array(cap);
let ts = new Float64Array(cap);
let n = 0;
let gaps = 0, dups = 0, errors = 0, connected = 0, failed = 0, closedEarly = 0, resumed = 0;
const conns = [];
const doneTimes = [];

function record(k, t) {
  if (n === cap) {
    cap *= 2;
    const k2 = new Int32Array(cap); k2.set(ks); ks = k2;
    const t2 = new Float64Array(cap); t2.set(ts); ts = t2;
  }
  ks[n] = k; ts[n] = t; n++;
}

function onEvent(st, ev, t) {
  if (ev.seq !== undefined) {
    if (st.seq !== null && ev.seq !== st.seq + 1) { if (ev.seq <= st.seq) dups++; else gaps += ev.seq - st.seq - 1; }
    st.seq = ev.seq;
  }
  const k = ev.data && ev.data.k;
  if (typeof k === 'number' && k >= 0) record(k, t);
}

const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function sseOpen(runId, lastEventId, until, onDone) {
  const st = { seq: null, req: null, done: false, t0: now(), lastId: lastEventId };
  if (until !== undefined) st.seq = 1; // storm: cursor = the build_started (seq 1)
  conns.push(st);
  return new Promise((resolve) => sseConnect(st, runId, until, onDone, resolve));
}

// One HTTP stream of `st`; a storm client that the server drops as a slow consumer
// (`event: dropped`) reconnects with Last-Event-ID = the last id it received, as
// EventSource does, and continues (gap and duplicate checks span the reconnection).
function sseConnect(st, runId, until, onDone, resolve) {
  const headers = { Authorization: `Bearer ${cfg.token}`, Accept: 'text/event-stream' };
  if (st.lastId !== undefined) headers['Last-Event-ID'] = String(st.lastId);
  const req = http.get({ host: '127.0.0.1', port: cfg.port, path: `/api/v1/builds/${encodeURIComponent(runId)}/stream`, headers, agent });
  st.req = req;
  req.on('response', (res) => {
    if (res.statusCode !== 200) { failed++; res.resume(); resolve(st); return; }
    connected++;
    resolve(st);
    res.setEncoding('utf8');
    let buf = '';
    res.on('data', (chunk) => {
      const t = now();
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let type = 'message', data = null, id = null;
        for (const line of block.split('\n')) {
          if (line.startsWith('data: ')) data = line.slice(6);
          else if (line.startsWith('event: ')) type = line.slice(7);
          else if (line.startsWith('id: ')) id = line.slice(4);
        }
        if (data === null) continue;
        if (type === 'dropped' && until !== undefined && !st.done) {
          resumed++;
          req.destroy();
          sseConnect(st, runId, until, onDone, () => {});
          return;
        }
        if (type === 'dropped' || type === 'shutdown' || type === 'end') { closedEarly++; continue; }
        if (id !== null) st.lastId = id;
        const ev = JSON.parse(data);
        onEvent(st, ev, t);
        if (until !== undefined && !st.done && ev.seq >= until) {
          st.done = true;
          doneTimes.push(t - st.t0);
          req.destroy();
          if (onDone) onDone();
        }
      }
    });
    res.on('error', () => {});
  });
  req.on('error', () => { if (!st.done && !req.destroyed) { errors++; } resolve(st); });
}

async function runSse() {
  const jobs = [];
  for (const b of cfg.builds) for (let j = 0; j < cfg.perBuild; j++) jobs.push(b);
  // open in waves so the accept queue is not flooded
  for (let i = 0; i < jobs.length; i += 200) {
    await Promise.all(jobs.slice(i, i + 200).map((b) => sseOpen(b)));
  }
}

async function runStorm() {
  // every client reconnects with Last-Event-ID = cursor of its build, reads until seq `until`
  const jobs = [];
  for (const b of cfg.builds) for (let j = 0; j < cfg.perBuild; j++) jobs.push(b);
  let remaining = jobs.length;
  const t0 = now();
  await new Promise((resolve) => {
    const onDone = () => { if (--remaining === 0) resolve(); };
    for (const b of jobs) {
      sseOpen(b.runId, b.lastEventId, b.until, onDone).then((st) => { if (!st.req || st.req.destroyed && !st.done) {} });
    }
    setTimeout(resolve, cfg.timeoutMs);
  });
  return now() - t0;
}

async function runSio() {
  const { io } = require('socket.io-client');
  const jobs = [];
  for (const b of cfg.builds) for (let j = 0; j < cfg.perBuild; j++) jobs.push(b);
  const open = (b) => new Promise((resolve) => {
    const st = { seq: null };
    const s = io(`http://127.0.0.1:${cfg.port}`, { transports: ['websocket'], auth: { token: cfg.token }, forceNew: true, reconnection: false, timeout: 20000 });
    conns.push(s);
    s.on('update', (ev) => onEvent(st, ev, now()));
    s.on('dropped', () => closedEarly++);
    s.on('connect_error', () => { failed++; resolve(); });
    s.on('connect', () => {
      s.timeout(20000).emit('subscribe', { buildId: b }, (err, ack) => {
        if (err || !ack || !ack.ok) failed++; else connected++;
        resolve();
      });
    });
  });
  for (let i = 0; i < jobs.length; i += 100) await Promise.all(jobs.slice(i, i + 100).map(open));
}

function runPoll() {
  const pagent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const jobs = [];
  for (const b of cfg.builds) for (let j = 0; j < cfg.perBuild; j++) jobs.push({ runId: b, cursor: cfg.cursor, st: { seq: null } });
  let stopped = false;
  conns.push({ stop: () => { stopped = true; pagent.destroy(); } });
  const poll = (p) => {
    if (stopped) return;
    const req = http.get({ host: '127.0.0.1', port: cfg.port, agent: pagent,
      path: `/api/v1/builds/${encodeURIComponent(p.runId)}/events?lastEventId=${p.cursor}&limit=1000`,
      headers: { Authorization: `Bearer ${cfg.token}` } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const t = now();
        if (res.statusCode === 200) {
          const body = JSON.parse(Buffer.concat(chunks));
          for (const ev of body.events) onEvent(p.st, ev, t);
          p.cursor = body.lastEventId;
        } else errors++;
        setTimeout(() => poll(p), cfg.intervalMs);
      });
    });
    req.on('error', () => { errors++; if (!stopped) setTimeout(() => poll(p), cfg.intervalMs); });
  };
  jobs.forEach((p) => setTimeout(() => poll(p), Math.random() * cfg.intervalMs));
  connected = jobs.length;
}

function stopAll() {
  for (const c of conns) {
    if (c.req) c.req.destroy();
    else if (c.stop) c.stop();
    else if (c.disconnect) c.disconnect();
  }
}

process.on('message', async (m) => {
  if (m.cmd === 'start') {
    cfg = m.cfg;
    let stormMs;
    if (cfg.kind === 'sse') await runSse();
    else if (cfg.kind === 'sio') await runSio();
    else if (cfg.kind === 'poll') runPoll();
    else if (cfg.kind === 'storm') stormMs = await runStorm();
    process.send({ ready: true, connected, failed, stormMs, doneCount: doneTimes.length, doneTimes: Float64Array.from(doneTimes), gaps, dups });
  } else if (m.cmd === 'reset') {
    n = 0;
    process.send({ reset: true });
  } else if (m.cmd === 'stop') {
    stopAll();
    // Do not exit here: a large answer may still be in the IPC pipe (exiting 200 ms after
    // send() lost it at 10,000 subscribers, when closing 5,000 sockets kept this loop
    // busy). The orchestrator disconnects us once it has the answer.
    process.send({ done: true, ks: ks.slice(0, n), ts: ts.slice(0, n), gaps, dups, errors, connected, failed, closedEarly, resumed, doneTimes: Float64Array.from(doneTimes) });
  }
});
// The orchestrator went away (or has our answer): nothing left to do.
process.on('disconnect', () => process.exit(0));
process.on('uncaughtException', (e) => {
  process.stderr.write(`worker ${process.pid}: ${e && e.stack || e}\n`);
  process.exit(3);
});
