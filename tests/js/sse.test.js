// Server-Sent Events driven by clients no one here wrote: the npm `eventsource` package
// (resuming with Last-Event-ID after a cut connection) and `curl -N`.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { EventSource } from 'eventsource';
import { startServer, api, createProject, ingest, sleep, waitFor, uniqueRunId } from './helpers.js';

const TYPES = [
  'build_started', 'stage_started', 'stage_completed', 'build_progress', 'build_completed',
  'deploy_finished', 'end', 'dropped',
];

/**
 * An EventSource that authenticates with a bearer token (through the package's `fetch`
 * option) and whose current connection the test can cut, as a network failure would.
 */
function openEventSource(url, token) {
  const requests = [];
  const received = [];
  let cut = () => {
    throw new Error('no connection to cut yet');
  };
  const source = new EventSource(url, {
    fetch: async (input, init) => {
      requests.push({ lastEventId: init.headers['Last-Event-ID'] ?? null });
      const response = await fetch(input, {
        ...init,
        headers: { ...init.headers, authorization: `Bearer ${token}` },
      });
      if (!response.body) return response;
      const reader = response.body.getReader();
      const body = new ReadableStream({
        async pull(controller) {
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        cancel(reason) {
          return reader.cancel(reason);
        },
      });
      // Cancelling the network reader ends this body; the EventSource sees the stream
      // close and reconnects after the server's `retry:` hint, sending Last-Event-ID.
      cut = () => reader.cancel();
      return new Response(body, { status: response.status, headers: response.headers });
    },
  });
  for (const type of TYPES) {
    source.addEventListener(type, (message) => {
      received.push({ type, id: message.lastEventId, data: JSON.parse(message.data) });
    });
  }
  return { source, requests, received, cut: () => cut() };
}

describe('SSE with real clients', () => {
  let server;
  let token;
  let otherToken;

  before(async () => {
    server = await startServer();
    token = await createProject(server, 'web');
    otherToken = await createProject(server, 'api');
  });
  after(async () => {
    await server?.stop();
  });

  test('eventsource receives events, resumes with Last-Event-ID after a cut without gaps or duplicates, and gets end', async () => {
    const runId = uniqueRunId('es');
    const ids = await ingest(server, token, [
      { runId, event: 'build_started' },
      { runId, event: 'stage_started', stage: 'Build' },
    ]);
    const client = openEventSource(`${server.url}/api/v1/builds/${runId}/stream`, token);
    try {
      await waitFor(() => client.received.length >= 2, 5000, 'the first events');

      client.cut();
      // Committed while the client is away: the resumed stream must replay them.
      ids.push(...await ingest(server, token, [
        { runId, event: 'stage_completed', stage: 'Build' },
        { runId, event: 'stage_started', stage: 'Test' },
        { runId, event: 'build_progress', progress: 10 },
        { runId, event: 'build_progress', progress: 20 },
      ]));
      await waitFor(() => client.requests.length >= 2, 10_000, 'the reconnection');
      await waitFor(() => client.received.length >= 6, 10_000, 'the replay after reconnecting');

      ids.push(...await ingest(server, token, [
        { runId, event: 'stage_completed', stage: 'Test' },
        { runId, event: 'build_completed' },
      ]));
      await waitFor(() => client.received.some((event) => event.type === 'end'), 10_000, 'the end event');
      client.source.close();

      assert.equal(client.requests[0].lastEventId, null);
      assert.equal(client.requests[1].lastEventId, String(ids[1]), 'the reconnect carried Last-Event-ID');
      const events = client.received.filter((event) => event.type !== 'end');
      assert.deepEqual(events.map((event) => Number(event.id)), ids, 'every event once, in order, across the cut');
      assert.deepEqual(events.map((event) => event.type), [
        'build_started', 'stage_started', 'stage_completed', 'stage_started',
        'build_progress', 'build_progress', 'stage_completed', 'build_completed',
      ]);
      for (const event of events) {
        assert.equal(event.data.id, Number(event.id), 'data is the event JSON with its id');
        assert.equal(event.data.runId, runId);
      }
      assert.deepEqual(client.received.at(-1), { type: 'end', id: '', data: { runId, reason: 'the build ended' } });
    } finally {
      client.source.close();
    }
  });

  test('eventsource on the project stream resumes from a cursor', async () => {
    const run1 = uniqueRunId('p1');
    const run2 = uniqueRunId('p2');
    const [first] = await ingest(server, token, { runId: run1, event: 'build_started' });
    const ids = await ingest(server, token, [
      { runId: run2, event: 'build_started' },
      { runId: run1, event: 'deploy_finished', data: { env: 'prod' } },
    ]);
    await ingest(server, otherToken, { runId: uniqueRunId('elsewhere'), event: 'build_started' });
    const client = openEventSource(`${server.url}/api/v1/stream?project=web&lastEventId=${first}`, token);
    try {
      await waitFor(() => client.received.length >= 2, 5000, 'the replay');
      ids.push(...await ingest(server, token, { runId: run2, event: 'build_completed' }));
      await waitFor(() => client.received.length >= 3, 5000, 'the live event');
      await sleep(200);
      assert.deepEqual(client.received.map((event) => Number(event.id)), ids, "only this project's events after the cursor");
      assert.deepEqual(client.received[1].data.data, { env: 'prod' });
    } finally {
      client.source.close();
    }
  });

  test('curl -N on a build stream exits by itself once the build completes', async () => {
    const runId = uniqueRunId('curl');
    await ingest(server, token, { runId, event: 'build_started' });
    const curl = spawn('curl', ['-sSN', '--max-time', '30', '-H', `Authorization: Bearer ${token}`,
      `${server.url}/api/v1/builds/${runId}/stream`]);
    let output = '';
    curl.stdout.setEncoding('utf8');
    curl.stdout.on('data', (chunk) => { output += chunk; });
    curl.stderr.on('data', (chunk) => { output += chunk; });
    const exited = new Promise((resolve) => curl.on('exit', (code) => resolve(code)));
    try {
      await waitFor(() => output.includes('event: build_started'), 5000, 'curl to print the first event');
      const ids = await ingest(server, token, [
        { runId, event: 'stage_started', stage: 'Only' },
        { runId, event: 'build_completed' },
      ]);
      const started = Date.now();
      const code = await exited;
      assert.equal(code, 0, `curl exit status; output:\n${output}`);
      assert.ok(Date.now() - started < 5000, 'curl ended promptly, not by its --max-time');
      assert.match(output, /^retry: 2000$/m);
      assert.match(output, new RegExp(`^id: ${ids[1]}\\nevent: build_completed\\ndata: \\{`, 'm'));
      assert.match(output, /event: end\ndata: \{"reason":"the build ended","runId":"[^"]+"\}\n\n$/);
    } finally {
      curl.kill();
    }
  });

  test('refusals come before the stream starts', async () => {
    const runId = uniqueRunId('refuse');
    await ingest(server, token, { runId, event: 'build_started' });
    const stream = `/api/v1/builds/${runId}/stream`;

    const unknown = await api(server, 'GET', '/api/v1/builds/no-such-build/stream', { token });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'not_found');

    const badCursor = await api(server, 'GET', stream, { token, headers: { 'last-event-id': 'abc' } });
    assert.equal(badCursor.status, 400);
    assert.equal(badCursor.body.error.field, 'Last-Event-ID');

    assert.equal((await api(server, 'GET', stream)).status, 401, 'no token');
    assert.equal((await api(server, 'GET', stream, { token: otherToken })).status, 404, "another project's build is not found");
    assert.equal((await api(server, 'GET', '/api/v1/stream?project=web', { token: otherToken })).status, 404);
    assert.equal((await api(server, 'GET', `${stream}?coalesce=fast`, { token })).status, 400);
  });
});
