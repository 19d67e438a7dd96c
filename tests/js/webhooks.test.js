// Outbound webhooks verified by a library no one here wrote: the npm `standardwebhooks`
// package checks the signature of deliveries from a real `kiln serve` to a receiver on
// 127.0.0.1, before and after a secret rotation (both secrets sign during the overlap).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { Webhook } from 'standardwebhooks';
import { startServer, api, createProject, ingest, waitFor, uniqueRunId } from './helpers.js';

let server;
let receiver;
const received = [];

before(async () => {
  server = await startServer(['--webhooks-allow-private']);
  receiver = createServer((request, response) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      received.push({ headers: request.headers, body });
      response.writeHead(204).end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  await server?.stop();
  await new Promise((resolve) => receiver?.close(resolve));
});

test('deliveries verify with standardwebhooks, also across a secret rotation', async () => {
  const token = await createProject(server, 'hooked');
  const created = await api(server, 'POST', '/api/v1/projects/hooked/webhooks', {
    token: server.adminToken,
    body: { url: `http://127.0.0.1:${receiver.address().port}/hook`, events: ['build_*'] },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const secret = created.body.secret;
  assert.match(secret, /^whsec_/);

  const runId = uniqueRunId('hook');
  await ingest(server, token, [
    { runId, event: 'build_started', eventId: 'a' },
    { runId, event: 'heartbeat' },
    { runId, event: 'build_completed', eventId: 'b' },
  ]);
  await waitFor(() => received.length === 2, 10_000, 'two deliveries');
  const verifier = new Webhook(secret);
  const types = received.map(({ headers, body }) => verifier.verify(body, headers).type);
  assert.deepEqual(types, ['build_started', 'build_completed']);
  assert.equal(verifier.verify(received[0].body, received[0].headers).buildId, runId);

  // A tampered body fails verification.
  assert.throws(() => verifier.verify(received[0].body.replace(runId, 'other'), received[0].headers));

  const rotated = await api(
    server, 'POST', `/api/v1/projects/hooked/webhooks/${created.body.id}/rotate-secret`,
    { token: server.adminToken },
  );
  assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
  const sent = await api(
    server, 'POST', `/api/v1/projects/hooked/webhooks/${created.body.id}/test`,
    { token: server.adminToken },
  );
  assert.equal(sent.status, 202);
  await waitFor(() => received.length === 3, 10_000, 'the test delivery');
  const { headers, body } = received[2];
  assert.equal(new Webhook(rotated.body.secret).verify(body, headers).type, 'webhook_test');
  assert.equal(new Webhook(secret).verify(body, headers).type, 'webhook_test');
});
