// A fast local webhook receiver for bench/webhooks: answers every POST with 200 at once
// and records (event id, endpoint path, receipt time) per delivery.
//
//   node receiver.mjs PORT CONTROL_PORT [WORKERS]
//
// WORKERS (default 2) processes share PORT through node:cluster, so the receiver is not
// the bottleneck (bench/webhooks/webhooks.py measures its ceiling with wrk first). The
// primary serves a control port:
//   GET /collect?clear=1  → {"count", "records": [[eventId, path, receivedAtMs], …]}
//                            (eventId = data.id of a `kiln`-format body, -1 if absent;
//                            receivedAtMs = wall-clock ms with µs resolution)
//   GET /count            → {"count"} (cheap, for polling)
// Standard library only.

import cluster from 'node:cluster';
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';

const [port, controlPort, workersArg] = process.argv.slice(2).map(Number);
const workers = workersArg || 2;

if (cluster.isPrimary) {
  // Workers accept connections themselves: with the default round-robin policy the primary
  // accepts every connection and passes it over IPC, which caps a connection-per-request
  // client (Kiln's sender) far below what the workers can answer.
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  const pending = new Map(); // request id → {left, count, records, resolve}
  let nextId = 1;
  const forked = [];
  for (let i = 0; i < workers; i++) {
    const worker = cluster.fork();
    worker.on('message', (message) => {
      const job = pending.get(message.id);
      if (!job) return;
      job.count += message.count;
      if (message.records) for (const record of message.records) job.records.push(record);
      if (--job.left === 0) {
        pending.delete(message.id);
        job.resolve(job);
      }
    });
    forked.push(worker);
  }
  let ready = 0;
  cluster.on('listening', () => {
    if (++ready === workers) {
      const control = createServer((request, response) => {
        const url = new URL(request.url, 'http://x');
        const what = url.pathname === '/collect' ? 'collect' : 'count';
        const clear = url.searchParams.get('clear') === '1';
        const id = nextId++;
        new Promise((resolve) => {
          pending.set(id, { left: forked.length, count: 0, records: [], resolve });
          for (const worker of forked) worker.send({ id, what, clear });
        }).then((job) => {
          const body = what === 'collect'
            ? JSON.stringify({ count: job.count, records: job.records })
            : JSON.stringify({ count: job.count });
          response.writeHead(200, { 'content-type': 'application/json' }).end(body);
        });
      });
      control.listen(controlPort, '127.0.0.1', () => {
        process.stdout.write(`receiver ready on 127.0.0.1:${port} (${workers} workers), control ${controlPort}\n`);
      });
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (signal !== 'SIGTERM' && code !== 0) {
      process.stderr.write(`receiver worker exited with ${code ?? signal}\n`);
      process.exit(1);
    }
  });
  const stop = () => {
    for (const worker of forked) worker.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  let count = 0;
  let records = [];
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const receivedAt = performance.timeOrigin + performance.now();
      response.writeHead(200, { 'content-length': '0' }).end();
      count++;
      let eventId = -1;
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (body && body.data && typeof body.data.id === 'number') eventId = body.data.id;
      } catch {
        // not a kiln-format body (e.g. the ceiling run's filler): counted only
      }
      records.push([eventId, request.url, receivedAt]);
    });
  });
  server.keepAliveTimeout = 30_000;
  server.listen(port, '127.0.0.1');
  process.on('message', (message) => {
    const reply = { id: message.id, count };
    if (message.what === 'collect') reply.records = records;
    if (message.clear) {
      count = 0;
      records = [];
    }
    process.send(reply);
  });
  process.on('SIGTERM', () => process.exit(0));
}
