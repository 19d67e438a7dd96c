// Inbound GitHub webhooks checked with libraries no one here wrote: real example payloads
// from npm `@octokit/webhooks-examples` (GitHub's own documented deliveries), signed with
// npm `@octokit/webhooks-methods`' sign() (the X-Hub-Signature-256 GitHub sends), POSTed to
// a real `kiln serve`. A push is rewritten to point at a commit of a real git repository
// (the project's repo), and the queued build must be of exactly that commit.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sign, verify } from '@octokit/webhooks-methods';
import { startServer, api } from './helpers.js';

const require = createRequire(import.meta.url);
/** [{name, examples: [payload, …]}, …] — the package's main export. */
const examples = require('@octokit/webhooks-examples');

/** The example payloads of one event type (fails if the package has none). */
function examplesOf(name) {
  const entry = examples.find((e) => e.name === name);
  assert.ok(entry && entry.examples.length > 0, `@octokit/webhooks-examples has no ${name} examples`);
  return entry.examples;
}

const slug = 'gh';
let server;
let repoDir;
let secret;

function git(...args) {
  return execFileSync(
    'git',
    ['-c', 'user.name=kiln-test', '-c', 'user.email=kiln-test@localhost', ...args],
    { cwd: repoDir, encoding: 'utf8' },
  ).trim();
}

/** POSTs `body` (a string, sent byte for byte) as GitHub would; resolves to {status, body}. */
async function deliver(event, body, signature, { delivery = crypto.randomUUID() } = {}) {
  const headers = {
    'content-type': 'application/json',
    'user-agent': 'GitHub-Hookshot/kiln-test',
    'x-github-event': event,
    'x-github-delivery': delivery,
  };
  if (signature !== undefined) headers['x-hub-signature-256'] = signature;
  const response = await fetch(`${server.url}/api/v1/hooks/github/${slug}`, {
    method: 'POST',
    headers,
    body,
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // keep the text
  }
  return { status: response.status, body: parsed };
}

/** Serialises `payload`, signs it with @octokit/webhooks-methods and delivers it. */
async function deliverSigned(event, payload, key = secret) {
  const body = typeof payload === 'string' ? payload : JSON.stringify(payload);
  const signature = await sign(key, body);
  assert.match(signature, /^sha256=[0-9a-f]{64}$/);
  return deliver(event, body, signature);
}

/** A push example from the package, moved to `branch` at `commit` of the real repo. */
function pushTo(branch, commit) {
  const example = examplesOf('push').find((p) => p.ref.startsWith('refs/heads/') && !p.deleted);
  assert.ok(example, 'a branch push example');
  const payload = structuredClone(example);
  payload.ref = `refs/heads/${branch}`;
  payload.after = commit;
  payload.deleted = false;
  if (payload.head_commit) payload.head_commit.id = commit;
  return payload;
}

before(async () => {
  server = await startServer();
  repoDir = mkdtempSync(join(tmpdir(), 'kiln-gh-repo-'));
  git('init', '-q', '-b', 'main');
  writeFileSync(join(repoDir, '.kiln.yml'), 'steps:\n  - name: build\n    run: echo built\n');
  git('add', '.kiln.yml');
  git('commit', '-q', '-m', 'first commit');

  const project = await api(server, 'POST', '/api/v1/projects', {
    token: server.adminToken,
    body: { slug, name: 'GitHub hooks' },
  });
  assert.equal(project.status, 201, JSON.stringify(project.body));
  const repo = await api(server, 'PUT', `/api/v1/projects/${slug}/repo`, {
    token: server.adminToken,
    body: { repo: repoDir, defaultBranch: 'main' },
  });
  assert.equal(repo.status, 200, JSON.stringify(repo.body));
});

after(async () => {
  await server?.stop();
  if (repoDir) rmSync(repoDir, { recursive: true, force: true });
});

test('a project without a secret takes no GitHub webhooks (404)', async () => {
  const ping = examplesOf('ping')[0];
  const answer = await deliverSigned('ping', ping, 'any secret');
  assert.equal(answer.status, 404, JSON.stringify(answer.body));
});

test('the project admin sets the secret (shown once)', async () => {
  const set = await api(server, 'PUT', `/api/v1/projects/${slug}/hooks/github`, {
    token: server.adminToken,
  });
  assert.equal(set.status, 201, JSON.stringify(set.body));
  assert.equal(set.body.path, `/api/v1/hooks/github/${slug}`);
  assert.equal(set.body.contentType, 'application/json');
  assert.deepEqual(set.body.events, ['push']);
  secret = set.body.secret;
  assert.equal(typeof secret, 'string');
  assert.ok(secret.length >= 32);
});

test('every ping example answers 200, signed as GitHub signs it', async () => {
  for (const ping of examplesOf('ping')) {
    // GitHub signs the exact bytes it sends; send the pretty-printed form once too.
    for (const body of [JSON.stringify(ping), JSON.stringify(ping, null, 2)]) {
      const signature = await sign(secret, body);
      assert.ok(await verify(secret, body, signature)); // the library agrees with itself
      const answer = await deliver('ping', body, signature);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.ok, true);
    }
  }
});

test('missing, wrong-secret and tampered signatures are refused with 401', async () => {
  const payload = pushTo('main', git('rev-parse', 'HEAD'));
  const body = JSON.stringify(payload);

  const unsigned = await deliver('push', body, undefined);
  assert.equal(unsigned.status, 401, JSON.stringify(unsigned.body));

  const wrongSecret = await deliver('push', body, await sign(`${secret}-not`, body));
  assert.equal(wrongSecret.status, 401, JSON.stringify(wrongSecret.body));
  assert.equal(typeof wrongSecret.body.error.code, 'string');

  // Signed correctly, then the body changed in transit (another commit to build).
  const tamperedBody = body.replace(`"after":"${payload.after}"`, `"after":"${'f'.repeat(40)}"`);
  assert.notEqual(tamperedBody, body);
  const tampered = await deliver('push', tamperedBody, await sign(secret, body));
  assert.equal(tampered.status, 401, JSON.stringify(tampered.body));

  // GitHub's legacy SHA-1 header alone is not accepted.
  const sha1Only = await deliver('push', body, (await sign(secret, body)).replace('sha256=', 'sha1='));
  assert.equal(sha1Only.status, 401, JSON.stringify(sha1Only.body));

  // None of them queued a build.
  const builds = await api(server, 'GET', `/api/v1/builds?project=${slug}`, { token: server.adminToken });
  assert.equal(builds.status, 200);
  assert.equal(builds.body.builds.length, 0, JSON.stringify(builds.body));
});

test('a push of the default branch queues a build of exactly the pushed commit', async () => {
  writeFileSync(join(repoDir, 'README'), 'second\n');
  git('add', 'README');
  git('commit', '-q', '-m', 'second commit');
  const head = git('rev-parse', 'HEAD');
  const parent = git('rev-parse', 'HEAD~1');

  // Push the parent (not the tip): the build must be of the pushed commit, not the branch's tip.
  for (const commit of [parent, head]) {
    const answer = await deliverSigned('push', pushTo('main', commit));
    assert.equal(answer.status, 201, JSON.stringify(answer.body));
    assert.equal(answer.body.commit, commit);
    assert.equal(answer.body.branch, 'main');
    assert.equal(answer.body.status, 'queued');

    const build = await api(server, 'GET', `/api/v1/builds/${answer.body.runId}`, {
      token: server.adminToken,
    });
    assert.equal(build.status, 200, JSON.stringify(build.body));
    assert.equal(build.body.project, slug);
    assert.equal(build.body.commit, commit);
    assert.equal(build.body.branch, 'main');
    assert.equal(build.body.status, 'queued');

    const events = await api(server, 'GET', `/api/v1/builds/${answer.body.runId}/events`, {
      token: server.adminToken,
    });
    assert.equal(events.status, 200);
    assert.equal(events.body.events[0].event, 'build_queued');
    assert.equal(events.body.events[0].data.trigger, 'github');
  }
  assert.equal(
    (await api(server, 'GET', `/api/v1/builds?project=${slug}`, { token: server.adminToken })).body.builds.length,
    2,
  );
});

test('a push of a configured branch builds; an unconfigured branch is ignored (202)', async () => {
  git('checkout', '-q', '-b', 'release');
  writeFileSync(join(repoDir, 'RELEASE'), '1\n');
  git('add', 'RELEASE');
  git('commit', '-q', '-m', 'release commit');
  const commit = git('rev-parse', 'HEAD');
  git('checkout', '-q', 'main');

  const before = await deliverSigned('push', pushTo('release', commit));
  assert.equal(before.status, 202, JSON.stringify(before.body));
  assert.match(before.body.ignored, /release/);

  const added = await api(server, 'POST', `/api/v1/projects/${slug}/branches`, {
    token: server.adminToken,
    body: { name: 'release' },
  });
  assert.ok(added.status === 200 || added.status === 201, JSON.stringify(added.body));

  const answer = await deliverSigned('push', pushTo('release', commit));
  assert.equal(answer.status, 201, JSON.stringify(answer.body));
  const build = await api(server, 'GET', `/api/v1/builds/${answer.body.runId}`, { token: server.adminToken });
  assert.equal(build.body.commit, commit);
  assert.equal(build.body.branch, 'release');
});

test('tag pushes, deletions and the unmodified push examples are ignored (202)', async () => {
  const buildsBefore = (await api(server, 'GET', `/api/v1/builds?project=${slug}`, { token: server.adminToken }))
    .body.builds.length;
  const head = git('rev-parse', 'HEAD');

  // The package's own push examples as they are: tag pushes and deletions of
  // refs/tags/simple-tag, and pushes of `master`, a branch this project does not build.
  for (const payload of examplesOf('push')) {
    const answer = await deliverSigned('push', payload);
    assert.equal(answer.status, 202, `${payload.ref}: ${JSON.stringify(answer.body)}`);
    assert.equal(typeof answer.body.ignored, 'string');
  }

  // A tag push at a real commit of the repository.
  git('tag', 'v1.0.0');
  const tagExample = examplesOf('push').find((p) => p.ref.startsWith('refs/tags/') && !p.deleted);
  assert.ok(tagExample, 'a tag push example');
  const tag = { ...structuredClone(tagExample), ref: 'refs/tags/v1.0.0', after: head, deleted: false };
  const tagAnswer = await deliverSigned('push', tag);
  assert.equal(tagAnswer.status, 202, JSON.stringify(tagAnswer.body));
  assert.match(tagAnswer.body.ignored, /refs\/tags\/v1\.0\.0/);

  // The default branch deleted.
  const deletion = {
    ...pushTo('main', '0000000000000000000000000000000000000000'),
    before: head,
    deleted: true,
    head_commit: null,
  };
  const deleted = await deliverSigned('push', deletion);
  assert.equal(deleted.status, 202, JSON.stringify(deleted.body));
  assert.match(deleted.body.ignored, /deleted/);

  const buildsAfter = (await api(server, 'GET', `/api/v1/builds?project=${slug}`, { token: server.adminToken }))
    .body.builds.length;
  assert.equal(buildsAfter, buildsBefore, 'nothing was queued');
});

test('other events (issues, pull_request, …) are ignored with 202', async () => {
  const buildsBefore = (await api(server, 'GET', `/api/v1/builds?project=${slug}`, { token: server.adminToken }))
    .body.builds.length;
  for (const name of ['issues', 'pull_request', 'create', 'release']) {
    const payloads = examplesOf(name);
    for (const payload of payloads) {
      const answer = await deliverSigned(name, payload);
      assert.equal(answer.status, 202, `${name}/${payload.action}: ${JSON.stringify(answer.body)}`);
      assert.match(answer.body.ignored, new RegExp(name));
    }
  }
  const buildsAfter = (await api(server, 'GET', `/api/v1/builds?project=${slug}`, { token: server.adminToken }))
    .body.builds.length;
  assert.equal(buildsAfter, buildsBefore);
});

test('a new secret replaces the old one', async () => {
  const old = secret;
  const set = await api(server, 'PUT', `/api/v1/projects/${slug}/hooks/github`, { token: server.adminToken });
  assert.equal(set.status, 201);
  secret = set.body.secret;
  assert.notEqual(secret, old);
  const ping = examplesOf('ping')[0];
  assert.equal((await deliverSigned('ping', ping, old)).status, 401);
  assert.equal((await deliverSigned('ping', ping, secret)).status, 200);
});
