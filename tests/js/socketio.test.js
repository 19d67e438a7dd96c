// Socket.IO at /socket.io/ driven by the official npm socket.io-client (protocol v5):
// handshake auth, subscribe with replay then live, project rooms, unsubscribe, error
// acks, limits, and the 50 ms coalescing of progress events.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, api, createProject, ingest, connectSocket, sleep, waitFor, uniqueRunId,
} from './helpers.js';

/** Records every update/end/dropped a socket receives, in arrival order. */
function record(socket) {
  const seen = [];
  socket.on('update', (event, subscription) => seen.push({ kind: 'update', event, subscription }));
  socket.on('end', (body) => seen.push({ kind: 'end', body }));
  socket.on('dropped', (body) => seen.push({ kind: 'dropped', body }));
  return seen;
}

describe('Socket.IO live endpoint', () => {
  let server;
  let tokenA;
  let tokenB;

  before(async () => {
    server = await startServer();
    tokenA = await createProject(server, 'alpha');
    tokenB = await createProject(server, 'beta');
  });
  after(async () => {
    await server?.stop();
  });

  test('subscribe {buildId, lastEventId} acks, replays what was missed, then goes live, in order', async () => {
    const runId = uniqueRunId('sio');
    const early = await ingest(server, tokenA, [
      { runId, event: 'build_started', eventId: 'e1' },
      { runId, event: 'stage_started', stage: 'Build', eventId: 'e2' },
      { runId, event: 'stage_completed', stage: 'Build', eventId: 'e3' },
    ]);
    const socket = await connectSocket(server, { token: tokenA });
    try {
      const seen = record(socket);
      const ack = await socket.timeout(5000).emitWithAck('subscribe', { buildId: runId, lastEventId: early[0] });
      assert.deepEqual(ack, { ok: true, buildId: runId, lastEventId: early[0] });
      // Replay: everything after the cursor, not the event at it.
      await waitFor(() => seen.length >= 2, 5000, 'the replayed events');
      const late = await ingest(server, tokenA, [
        { runId, event: 'stage_started', stage: 'Test', eventId: 'e4' },
        { runId, event: 'log_uploaded', data: { url: 'https://example.test/log' }, eventId: 'e5' },
      ]);
      const last = await ingest(server, tokenA, { runId, event: 'build_completed', eventId: 'e6' });
      await waitFor(() => seen.some((entry) => entry.kind === 'end'), 5000, 'the end of the build');
      const updates = seen.filter((entry) => entry.kind === 'update');
      assert.deepEqual(
        updates.map((entry) => entry.event.id),
        [early[1], early[2], ...late, ...last],
        'replayed then live, each once, in id order',
      );
      assert.deepEqual(
        updates.map((entry) => entry.event.event),
        ['stage_started', 'stage_completed', 'stage_started', 'log_uploaded', 'build_completed'],
      );
      for (const { event, subscription } of updates) {
        assert.equal(event.runId, runId);
        assert.ok(Number.isInteger(event.seq) && typeof event.receivedAt === 'string');
        assert.deepEqual(subscription, { buildId: runId });
      }
      assert.deepEqual(updates[3].event.data, { url: 'https://example.test/log' }, 'the event JSON is served as stored');
      assert.deepEqual(seen.at(-1), { kind: 'end', body: { buildId: runId, reason: 'the build ended' } });
      // After its end the subscription is gone: unsubscribing finds nothing.
      const gone = await socket.timeout(5000).emitWithAck('unsubscribe', { buildId: runId });
      assert.deepEqual(gone, { ok: true, buildId: runId, wasSubscribed: false });
    } finally {
      socket.close();
    }
  });

  test('a subscription to an ended build replays it and ends', async () => {
    const runId = uniqueRunId('ended');
    const ids = await ingest(server, tokenA, [
      { runId, event: 'build_started' },
      { runId, event: 'build_failed', message: 'boom' },
    ]);
    const socket = await connectSocket(server, { token: tokenA });
    try {
      const seen = record(socket);
      const ack = await socket.timeout(5000).emitWithAck('subscribe', { buildId: runId });
      assert.equal(ack.ok, true);
      assert.equal(ack.lastEventId, 0);
      await waitFor(() => seen.some((entry) => entry.kind === 'end'), 5000, 'the end');
      assert.deepEqual(seen.filter((e) => e.kind === 'update').map((e) => e.event.id), ids);
    } finally {
      socket.close();
    }
  });

  test('subscribe {project} joins the project room; unsubscribe leaves it', async () => {
    const socket = await connectSocket(server, { token: tokenA });
    try {
      const seen = record(socket);
      const ack = await socket.timeout(5000).emitWithAck('subscribe', { project: 'alpha' });
      assert.equal(ack.ok, true);
      assert.equal(ack.project, 'alpha');
      assert.ok(Number.isInteger(ack.lastEventId));
      // Without a cursor a project subscription starts with what comes next.
      await sleep(200);
      assert.equal(seen.length, 0, 'no history replayed without lastEventId');

      const run1 = uniqueRunId('p1');
      const run2 = uniqueRunId('p2');
      const ids = await ingest(server, tokenA, [
        { runId: run1, event: 'build_started' },
        { runId: run2, event: 'build_started' },
        { runId: run1, event: 'stage_started', stage: 'Lint' },
      ]);
      await ingest(server, tokenB, { runId: uniqueRunId('other'), event: 'build_started' });
      await waitFor(() => seen.length >= 3, 5000, 'the project updates');
      await sleep(200);
      assert.deepEqual(seen.map((entry) => entry.event.id), ids, "only alpha's events, in order");
      assert.ok(seen.every((entry) => entry.subscription.project === 'alpha'));

      const left = await socket.timeout(5000).emitWithAck('unsubscribe', { project: 'alpha' });
      assert.deepEqual(left, { ok: true, project: 'alpha', wasSubscribed: true });
      await ingest(server, tokenA, { runId: run1, event: 'stage_completed', stage: 'Lint' });
      await sleep(500);
      assert.equal(seen.length, 3, 'no update after the unsubscribe ack');

      // Resuming with a cursor replays what happened while away.
      const missed = await ingest(server, tokenA, { runId: run2, event: 'build_completed' });
      const again = await socket.timeout(5000).emitWithAck('subscribe', { project: 'alpha', lastEventId: ids.at(-1) });
      assert.equal(again.ok, true);
      await waitFor(() => seen.length >= 5, 5000, 'the replay after resubscribing');
      assert.deepEqual(seen.slice(3).map((entry) => entry.event.event), ['stage_completed', 'build_completed']);
      assert.equal(seen.at(-1).event.id, missed[0]);
    } finally {
      socket.close();
    }
  });

  test('a burst larger than a room buffers (4,000 events in one group commit) reaches a subscriber whole', async () => {
    const socket = await connectSocket(server, { token: tokenB }, { transports: ['websocket'] });
    try {
      const seen = record(socket);
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { project: 'beta' })).ok, true);
      const batches = await Promise.all([0, 1, 2, 3].map((batch) => ingest(server, tokenB,
        Array.from({ length: 1000 }, (_, i) => ({ runId: `burst-${batch}`, event: 'log_line', data: { i } })))));
      const ids = batches.flat().sort((a, b) => a - b);
      await waitFor(() => seen.length >= ids.length || seen.some((entry) => entry.kind !== 'update'), 20_000, 'the burst');
      await sleep(200);
      assert.deepEqual(seen.filter((entry) => entry.kind !== 'update'), [], 'not dropped');
      assert.deepEqual(seen.map((entry) => entry.event.id), ids, 'every event once, in order');
    } finally {
      socket.close();
    }
  });

  test('an instance-admin token may follow any project', async () => {
    const socket = await connectSocket(server, { token: server.adminToken });
    try {
      const seen = record(socket);
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { project: 'beta' })).ok, true);
      const ids = await ingest(server, tokenB, { runId: uniqueRunId('admin'), event: 'build_started' });
      await waitFor(() => seen.length >= 1, 5000, 'the update');
      assert.equal(seen[0].event.id, ids[0]);
    } finally {
      socket.close();
    }
  });

  test('the handshake refuses a missing, unknown or revoked token with a reason', async () => {
    const refusedWith = (pattern) => (error) => {
      assert.match(error.message, pattern);
      return true;
    };
    await assert.rejects(connectSocket(server, undefined), refusedWith(/^unauthorized: a token is required/));
    await assert.rejects(connectSocket(server, { token: '' }), refusedWith(/^unauthorized: a token is required/));
    await assert.rejects(connectSocket(server, { token: 'kiln_not_a_real_token' }), refusedWith(/^unauthorized: unknown token/));

    const created = await api(server, 'POST', '/api/v1/projects/alpha/tokens', {
      token: server.adminToken,
      body: { name: 'soon revoked', scopes: ['read'] },
    });
    await api(server, 'DELETE', `/api/v1/projects/alpha/tokens/${created.body.id}`, { token: server.adminToken });
    await assert.rejects(connectSocket(server, { token: created.body.token }), refusedWith(/^unauthorized: this token was revoked/));

    // Clients that can set headers may authenticate the handshake request instead.
    const byHeader = { transports: ['polling'], extraHeaders: { Authorization: `Bearer ${tokenA}` } };
    const socket = await connectSocket(server, undefined, byHeader);
    try {
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { project: 'alpha' })).ok, true);
    } finally {
      socket.close();
    }
    const badHeader = { transports: ['polling'], extraHeaders: { Authorization: 'Token nope' } };
    await assert.rejects(connectSocket(server, undefined, badHeader), refusedWith(/^unauthorized: use `Authorization: Bearer <token>`/));
  });

  test('revoking the token of a connected socket ends its subscriptions and disconnects it', async () => {
    const runId = uniqueRunId('sio-revoke');
    await ingest(server, tokenA, [{ runId, event: 'build_started' }]);
    const created = await api(server, 'POST', '/api/v1/projects/alpha/tokens', {
      token: server.adminToken,
      body: { name: 'dashboard', scopes: ['read'] },
    });
    const socket = await connectSocket(server, { token: created.body.token });
    const seen = record(socket);
    const notices = [];
    socket.on('revoked', (body) => notices.push(body));
    let disconnected = null;
    socket.on('disconnect', (reason) => { disconnected = reason; });
    try {
      const ack = await socket.timeout(5000).emitWithAck('subscribe', { buildId: runId, lastEventId: 0 });
      assert.equal(ack.ok, true);
      await waitFor(() => seen.length === 1, 5000, 'the replayed build_started');
      await api(server, 'DELETE', `/api/v1/projects/alpha/tokens/${created.body.id}`, { token: server.adminToken });
      await waitFor(() => notices.length === 1 && disconnected !== null, 5000, 'the revoked notice and the disconnect');
      assert.equal(notices[0].buildId, runId);
      assert.equal(notices[0].lastEventId, seen[0].event.id);
      assert.match(notices[0].reason, /revoked/);
      assert.equal(disconnected, 'io server disconnect');
    } finally {
      socket.close();
    }
  });

  test('bad subscriptions get an error ack, and the socket stays usable', async () => {
    const runA = uniqueRunId('secret');
    await ingest(server, tokenA, { runId: runA, event: 'build_started' });
    const socket = await connectSocket(server, { token: tokenB });
    try {
      const seen = record(socket);
      const subscribe = (payload) => socket.timeout(5000).emitWithAck('subscribe', payload);

      const foreign = await subscribe({ buildId: runA });
      assert.equal(foreign.ok, false);
      assert.equal(foreign.error.status, 404, "another project's build is not found");
      assert.equal(foreign.error.code, 'not_found');
      assert.match(foreign.error.message, new RegExp(runA));

      const unknown = await subscribe({ buildId: 'no-such-build' });
      assert.deepEqual(unknown.error, {
        status: 404, code: 'not_found', message: "build 'no-such-build' not found", field: null,
      });

      assert.equal((await subscribe({ project: 'alpha' })).error.status, 404);

      const cursor = await subscribe({ buildId: runA, lastEventId: -1 });
      assert.equal(cursor.error.status, 400);
      assert.equal(cursor.error.field, 'lastEventId');
      assert.equal((await subscribe({ buildId: runA, lastEventId: 'abc' })).error.field, 'lastEventId');
      assert.equal((await subscribe({})).error.field, 'buildId');
      assert.equal((await subscribe({ buildId: 'x', project: 'beta' })).error.field, 'buildId');
      const nul = await subscribe({ buildId: 'a\u0000b' });
      assert.equal(nul.error.status, 400, 'a NUL in a name is refused, not looked up');
      assert.equal(nul.error.field, 'buildId');
      assert.equal((await subscribe({ project: 'beta\u0000' })).error.field, 'project');
      assert.equal((await subscribe('nonsense')).error.code, 'invalid_field');
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe')).error.code, 'invalid_field');

      await sleep(200);
      assert.equal(seen.length, 0, 'a refused subscription delivers nothing');
      const own = uniqueRunId('own');
      await ingest(server, tokenB, { runId: own, event: 'build_started' });
      assert.equal((await subscribe({ buildId: own })).ok, true, 'still usable after errors');
      await waitFor(() => seen.length === 1, 5000, 'the own build');
    } finally {
      socket.close();
    }
  });

  test('coalescing: 1,000 progress events in about a second reach a subscriber as about 20, lifecycle events all and in order', async () => {
    const runId = uniqueRunId('coalesce');
    const [startedId] = await ingest(server, tokenA, { runId, event: 'build_started' });
    const socket = await connectSocket(server, { token: tokenA });
    const project = await connectSocket(server, { token: tokenA });
    try {
      const seen = record(socket);
      const seenProject = record(project);
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { buildId: runId, lastEventId: startedId })).ok, true);
      assert.equal((await project.timeout(5000).emitWithAck('subscribe', { project: 'alpha' })).ok, true);

      // 20 batches of 50 progress events, one every 50 ms; a stage event in 4 of them.
      const lifecycle = [];
      const started = Date.now();
      let progress = 0;
      for (let batch = 0; batch < 20; batch += 1) {
        const events = [];
        for (let i = 0; i < 50; i += 1) {
          progress += 0.1;
          events.push({ runId, event: 'build_progress', progress: Math.min(99, Math.round(progress * 10) / 10) });
          if (i === 25 && batch % 10 === 3) {
            events.push({ runId, event: 'stage_started', stage: `S${batch}` });
          }
          if (i === 25 && batch % 10 === 8) {
            events.push({ runId, event: 'stage_completed', stage: `S${batch - 5}` });
          }
        }
        const ids = await ingest(server, tokenA, events);
        events.forEach((event, index) => {
          if (event.event !== 'build_progress') lifecycle.push(ids[index]);
        });
        const next = started + (batch + 1) * 50;
        await sleep(Math.max(0, next - Date.now()));
      }
      const elapsed = Date.now() - started;
      const final = await ingest(server, tokenA, [
        { runId, event: 'build_progress', progress: 99.5 },
        { runId, event: 'build_completed' },
      ]);
      lifecycle.push(final[1]);
      await waitFor(() => seen.some((entry) => entry.kind === 'end'), 10_000, 'the end of the build');
      await waitFor(() => seenProject.some((entry) => entry.event?.id === final[1]), 10_000, 'the project room to catch up');

      for (const [name, entries] of [['build room', seen], ['project room', seenProject]]) {
        const updates = entries.filter((entry) => entry.kind === 'update');
        const ids = updates.map((entry) => entry.event.id);
        assert.ok(ids.every((id, i) => i === 0 || ids[i - 1] < id), `${name}: ids strictly increase`);
        const progressCount = updates.filter((entry) => entry.event.event === 'build_progress').length;
        const stageIds = updates.filter((entry) => entry.event.event !== 'build_progress').map((entry) => entry.event.id);
        assert.deepEqual(stageIds, lifecycle, `${name}: every lifecycle event, in order`);
        // One per 50 ms window over about a second (the issue's ~20-25), plus at most one
        // released early by each of the 5 lifecycle events; the bound allows the ingest to
        // run longer than a second on a slow machine.
        const windows = Math.ceil(elapsed / 50) + 1;
        assert.ok(progressCount <= Math.max(30, windows + lifecycle.length + 1),
          `${name}: ${progressCount} progress updates for 1,001 progress events in ${elapsed} ms`);
        assert.ok(progressCount >= 5, `${name}: progress still flows (${progressCount})`);
        const lastProgress = updates.filter((entry) => entry.event.event === 'build_progress').at(-1);
        assert.equal(lastProgress.event.id, final[0], `${name}: the latest progress is never lost`);
        console.log(`${name}: ${progressCount} progress updates, ${stageIds.length} lifecycle, in ${elapsed} ms`);
      }
    } finally {
      socket.close();
      project.close();
    }
  });
});

describe('Socket.IO limits', () => {
  let server;
  let token;

  before(async () => {
    server = await startServer(['--max-streams-per-token', '3']);
    token = await createProject(server, 'limited');
  });
  after(async () => {
    await server?.stop();
  });

  test('the per-token stream limit covers Socket.IO subscriptions and SSE streams together', async () => {
    const runs = [uniqueRunId('l1'), uniqueRunId('l2'), uniqueRunId('l3'), uniqueRunId('l4')];
    await ingest(server, token, runs.map((runId) => ({ runId, event: 'build_started' })));
    const socket = await connectSocket(server, { token });
    try {
      for (const runId of runs.slice(0, 3)) {
        assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { buildId: runId })).ok, true);
      }
      const refused = await socket.timeout(5000).emitWithAck('subscribe', { buildId: runs[3] });
      assert.equal(refused.ok, false);
      assert.equal(refused.error.status, 429);
      assert.equal(refused.error.code, 'too_many_streams');
      assert.match(refused.error.message, /3 live streams, the limit/);

      const sse = await api(server, 'GET', `/api/v1/builds/${runs[3]}/stream`, { token });
      assert.equal(sse.status, 429, 'SSE shares the limit');
      assert.equal(sse.body.error.code, 'too_many_streams');

      // Subscribing again to the same build replaces, not adds.
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { buildId: runs[0], lastEventId: 0 })).ok, true);
      assert.equal((await socket.timeout(5000).emitWithAck('unsubscribe', { buildId: runs[0] })).wasSubscribed, true);
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { buildId: runs[3] })).ok, true, 'a freed place is reusable');
    } finally {
      socket.close();
    }
    // Closing the socket frees its places.
    const other = await connectSocket(server, { token });
    try {
      let ok = false;
      for (let attempt = 0; attempt < 50 && !ok; attempt += 1) {
        ok = (await other.timeout(5000).emitWithAck('subscribe', { buildId: runs[1] })).ok;
        if (!ok) await sleep(100);
      }
      assert.ok(ok, "a closed socket's subscriptions are released");
    } finally {
      other.close();
    }
  });
});

describe('Socket.IO per-socket subscription cap', () => {
  let server;
  let token;

  before(async () => {
    server = await startServer(['--max-streams-per-token', '5000']);
    token = await createProject(server, 'many');
  });
  after(async () => {
    await server?.stop();
  });

  test('a socket subscribing to thousands of rooms is stopped at 1,000 with a clear error', async () => {
    const runs = Array.from({ length: 1001 }, (_, i) => `many-${i}`);
    await ingest(server, token, runs.slice(0, 1000).map((runId) => ({ runId, event: 'build_started' })));
    await ingest(server, token, { runId: runs[1000], event: 'build_started' });
    const socket = await connectSocket(server, { token }, { transports: ['websocket'] });
    try {
      // In flights of 50: the server queues at most 64 requests per socket.
      for (let start = 0; start < 1000; start += 50) {
        const acks = await Promise.all(runs.slice(start, start + 50).map((buildId) => socket.timeout(10_000).emitWithAck('subscribe', { buildId })));
        assert.ok(acks.every((ack) => ack.ok), JSON.stringify(acks.find((ack) => !ack.ok)));
      }
      const refused = await socket.timeout(5000).emitWithAck('subscribe', { buildId: runs[1000] });
      assert.equal(refused.ok, false);
      assert.equal(refused.error.status, 429);
      assert.equal(refused.error.code, 'too_many_subscriptions');
      assert.match(refused.error.message, /1000 subscriptions, the limit/);

      // Flooding past the request queue is refused per request, not by dropping the socket.
      const flood = await Promise.all(Array.from({ length: 200 }, () => socket.timeout(10_000).emitWithAck('unsubscribe', { buildId: 'none' })));
      assert.ok(flood.some((ack) => ack.ok));
      const throttled = flood.filter((ack) => !ack.ok);
      assert.ok(throttled.every((ack) => ack.error.code === 'too_many_requests'));
      assert.ok(socket.connected);
    } finally {
      socket.close();
    }
  });
});

describe('Socket.IO at shutdown', () => {
  // The `shutdown` notice is emitted as the streams close, but nothing waits for
  // Socket.IO sessions to flush before the process exits, so it is best-effort: checked
  // when it arrives, not required.
  test('open sockets do not hold the server at shutdown; a shutdown notice carries the cursor', async () => {
    const server = await startServer();
    try {
      const token = await createProject(server, 'closing');
      const runId = uniqueRunId('closing');
      const ids = await ingest(server, token, { runId, event: 'build_started' });
      const socket = await connectSocket(server, { token });
      const notices = [];
      socket.on('shutdown', (body) => notices.push(body));
      const seen = record(socket);
      assert.equal((await socket.timeout(5000).emitWithAck('subscribe', { buildId: runId })).ok, true);
      await waitFor(() => seen.length === 1, 5000, 'the replay');
      const started = Date.now();
      await server.stop();
      assert.ok(Date.now() - started < 5000, `the server took ${Date.now() - started} ms to stop`);
      await waitFor(() => !socket.connected, 5000, 'the disconnect');
      for (const notice of notices) {
        assert.deepEqual({ buildId: notice.buildId, lastEventId: notice.lastEventId }, { buildId: runId, lastEventId: ids[0] });
      }
      socket.close();
    } finally {
      await server.stop();
    }
  });
});
