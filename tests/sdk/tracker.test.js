// BuildTracker against the real server, with a fault-injecting proxy in front of it where
// a test needs one: server down, slow, 5xx then success, lost answers, process exit
// during a send. Nothing may be thrown into the build, the build is never held longer
// than the flush timeout, nothing is lost, and nothing is stored twice.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { BuildTracker, collectMetadata } from '@kiln-ci/sdk';
import {
  KILN_BIN, api, createProject, duplicateEventIds, getBuild, getEvents, run, startServer, testsDir, uniqueRunId, waitFor, sleep,
} from './helpers.js';
import { closedPortUrl, startProxy } from './proxy.js';

const script = join(testsDir, 'fixtures/scripts/report.mjs');

function spoolDir() {
  return mkdtempSync(join(tmpdir(), 'kiln-sdk-spool-'));
}

function spooledEvents(dir) {
  const files = readdirSync(dir).filter((name) => name.endsWith('.jsonl'));
  return files.flatMap((name) => {
    const [header, ...lines] = readFileSync(join(dir, name), 'utf8').trim().split('\n');
    return lines.map((line) => ({ header: JSON.parse(header), event: JSON.parse(line) }));
  });
}

describe('BuildTracker', () => {
  let server;
  let token;
  const warnings = [];
  const options = (extra = {}) => ({ url: server.url, token, spool: false, lingerMs: 5, onWarning: (message) => warnings.push(message), ...extra });

  before(async () => {
    server = await startServer();
    token = await createProject(server, 'sdk');
  });
  after(async () => {
    await server?.stop();
  });

  test('reports a build with stages, progress, custom events and metrics', async () => {
    const tracker = new BuildTracker(options());
    const runId = tracker.start({ branch: 'main', commit: 'abc1234', repo: 'acme/web', data: { purpose: 'test' } });
    const installed = await tracker.stage('Install', async () => {
      await sleep(20);
      return 'node_modules';
    });
    assert.equal(installed, 'node_modules', 'stage() returns what fn returned');
    tracker.progress(40, 'installed');
    tracker.event('plan_generated', { steps: 6 });
    tracker.metrics({ bundle_kb: 412, tests: 1200, not_a_number: 'x' });
    await assert.rejects(tracker.stage('Test', () => { throw new Error('2 tests failed'); }), /2 tests failed/, "the build's own error is rethrown");
    const result = await tracker.fail(new Error('tests failed'));
    assert.deepEqual({ delivered: result.delivered, pending: result.pending }, { delivered: true, pending: 0 });

    const build = await getBuild(server, token, runId);
    assert.equal(build.status, 'failed');
    assert.equal(build.message, 'tests failed');
    assert.equal(build.origin, 'kiln-sdk-js');
    assert.equal(build.progress, 40);
    assert.deepEqual([build.repo, build.branch, build.commit], ['acme/web', 'main', 'abc1234']);
    assert.equal(build.pid, process.pid);
    assert.deepEqual(build.stages.map((s) => [s.name, s.status, s.message]), [['Install', 'success', null], ['Test', 'failed', '2 tests failed']]);
    assert.ok(build.stages[0].durationMs >= 15, `Install took ${build.stages[0].durationMs} ms`);
    const events = await getEvents(server, token, runId);
    assert.deepEqual(events.map((e) => e.event), [
      'build_started', 'stage_started', 'stage_completed', 'build_progress', 'plan_generated', 'build_metrics', 'stage_started', 'stage_failed', 'build_failed',
    ]);
    assert.equal(events[0].data.purpose, 'test');
    assert.equal(events[0].data.sdk.name, '@kiln-ci/sdk');
    assert.deepEqual(events[5].data.metrics, { bundle_kb: 412, tests: 1200 });
    assert.deepEqual(events[5].metrics, { bundle_kb: 412, tests: 1200 }, 'the metrics Kiln keeps on the build');
    assert.deepEqual(build.metrics, { bundle_kb: 412, tests: 1200 });
    assert.equal(events.at(-1).stage, 'Test', 'build_failed names the stage that failed');
    assert.ok(events.every((e) => typeof e.eventId === 'string'), 'every event carries an eventId');
    assert.deepEqual(duplicateEventIds(events), []);
  });

  test('never throws into the build, whatever it is given; bad values are fixed so the batch is stored', async () => {
    const tracker = new BuildTracker(options());
    const circular = { name: 'loop' };
    circular.self = circular;
    const runId = tracker.start();
    assert.doesNotThrow(() => {
      tracker.event('Not A Type', {});
      tracker.event('x'.repeat(60), {});
      tracker.progress(Number.NaN);
      tracker.progress(250);
      tracker.event('odd_data', { circular, big: 10n, huge: 2 ** 70, nul: 'a\u0000b', fn: () => 1 });
      tracker.event('too_big', { blob: 'x'.repeat(100_000) });
      tracker.metrics(null);
      tracker.beginStage('tab\there\nand newline ' + 'y'.repeat(300)).complete();
      tracker.beginStage('').fail('plain string');
    });
    const result = await tracker.complete({ message: 'm'.repeat(40_000) });
    assert.equal(result.delivered, true);
    const events = await getEvents(server, token, runId);
    const types = events.map((e) => e.event);
    assert.ok(!types.includes('Not A Type'));
    assert.ok(types.includes('odd_data') && types.includes('too_big') && types.includes('build_completed'), types.join());
    const odd = events.find((e) => e.event === 'odd_data');
    assert.equal(odd.data.big, '10');
    assert.equal(odd.data.huge, String(2 ** 70));
    assert.equal(odd.data.nul, 'a\ufffdb');
    assert.equal(events.find((e) => e.event === 'too_big').data.truncated, true);
    assert.equal(events.find((e) => e.event === 'build_progress').progress, 100, 'progress is clamped to 0-100');
    const build = await getBuild(server, token, runId);
    assert.equal(build.stages[0].name.length, 200);
    assert.ok(!/[\t\n]/.test(build.stages[0].name));
    assert.equal(build.status, 'success');
    assert.ok(build.message.length <= 16 * 1024);
    assert.equal(tracker.stats.dropped, 0);
  });

  test('sends thousands of events in batches within the server limit, each stored once', async () => {
    const proxy = await startProxy(server.url);
    try {
      const tracker = new BuildTracker(options({ url: proxy.url }));
      const runId = tracker.start();
      for (let i = 0; i < 2500; i += 1) tracker.event('test_passed', { title: `test ${i}` }, { durationMs: i % 7 });
      const result = await tracker.complete();
      assert.equal(result.delivered, true);
      const batches = proxy.requests.map((r) => JSON.parse(r.body).length);
      assert.ok(batches.every((n) => n <= 1000), `batch sizes ${batches}`);
      assert.ok(batches.length >= 3 && batches.length <= 10, `${batches.length} requests for 2,502 events`);
      const events = await getEvents(server, token, runId);
      assert.equal(events.length, 2502);
      assert.deepEqual(duplicateEventIds(events), []);
    } finally {
      await proxy.stop();
    }
  });

  test('5xx, then success: retried with the same eventIds, stored once', async () => {
    const proxy = await startProxy(server.url, (n) => (n <= 2 ? { status: n === 1 ? 503 : 500, headers: { 'retry-after': '0' } } : { forward: true }));
    try {
      const tracker = new BuildTracker(options({ url: proxy.url }));
      const runId = tracker.start();
      await tracker.stage('Build', () => sleep(10));
      const result = await tracker.complete();
      assert.equal(result.delivered, true);
      assert.ok(tracker.stats.retries >= 2, JSON.stringify(tracker.stats));
      const bodies = proxy.requests.map((r) => JSON.parse(r.body).map((e) => e.eventId));
      assert.deepEqual(bodies[1].slice(0, bodies[0].length), bodies[0], 'the retry resends the same eventIds');
      const events = await getEvents(server, token, runId);
      assert.deepEqual(events.map((e) => e.event), ['build_started', 'stage_started', 'stage_completed', 'build_completed']);
      assert.ok(warnings.some((w) => /cannot deliver events/.test(w)), 'the failure is reported once as a warning');
    } finally {
      await proxy.stop();
    }
  });

  test('an answer lost after the server stored the batch: the resend is a duplicate, not a second copy', async () => {
    const proxy = await startProxy(server.url, (n) => (n === 1 ? { forwardAndDrop: true } : { forward: true }));
    try {
      const tracker = new BuildTracker(options({ url: proxy.url }));
      const runId = tracker.start();
      tracker.progress(10);
      const result = await tracker.complete();
      assert.equal(result.delivered, true);
      assert.ok(tracker.stats.duplicates >= 1, JSON.stringify(tracker.stats));
      const events = await getEvents(server, token, runId);
      assert.deepEqual(duplicateEventIds(events), []);
      assert.equal(events.filter((e) => e.event === 'build_started').length, 1);
    } finally {
      await proxy.stop();
    }
  });

  test('server down: nothing thrown, the end returns at once, the events wait in the spool for `kiln spool send`', async () => {
    const dir = spoolDir();
    try {
      const url = await closedPortUrl();
      const tracker = new BuildTracker(options({ url, spool: dir, flushTimeoutMs: 5000 }));
      const runId = tracker.start({ runId: uniqueRunId('down') });
      await tracker.stage('Compile', () => sleep(5));
      const startedEnd = Date.now();
      const result = await tracker.complete();
      const endMs = Date.now() - startedEnd;
      assert.ok(endMs < 1500, `complete() took ${endMs} ms with the server down (flush timeout 5 s)`);
      assert.equal(result.delivered, false);
      assert.ok(result.spooled, 'the undelivered events were spooled');
      const spooled = spooledEvents(dir);
      assert.deepEqual(spooled.map((s) => s.event.event), ['build_started', 'stage_started', 'stage_completed', 'build_completed']);
      assert.equal(spooled[0].header.kilnSpool, 1);

      // Kiln's own resend: the spool file is in the CLI's format, pointed at the live server.
      const rewritten = readFileSync(result.spooled, 'utf8').replace(url, server.url);
      rmSync(result.spooled);
      const { writeFileSync } = await import('node:fs');
      writeFileSync(join(dir, 'resend.jsonl'), rewritten, { mode: 0o600 });
      const sent = await run(KILN_BIN, ['spool', 'send'], { env: { KILN_SPOOL_DIR: dir, KILN_URL: server.url, KILN_TOKEN: token } });
      assert.equal(sent.code, 0, sent.stderr);
      const build = await getBuild(server, token, runId);
      assert.equal(build.status, 'success');
      assert.deepEqual(build.stages.map((s) => s.name), ['Compile']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('server slow: the end waits no longer than the flush timeout; what arrives late is not stored twice', async () => {
    const dir = spoolDir();
    const proxy = await startProxy(server.url, () => ({ delayMs: 2500 }));
    try {
      const tracker = new BuildTracker(options({ url: proxy.url, spool: dir, flushTimeoutMs: 800, requestTimeoutMs: 10_000 }));
      const runId = tracker.start();
      tracker.progress(30);
      const startedEnd = Date.now();
      const result = await tracker.complete();
      const endMs = Date.now() - startedEnd;
      assert.ok(endMs >= 700 && endMs < 1500, `complete() took ${endMs} ms (flush timeout 800 ms)`);
      assert.equal(result.delivered, false);
      // The proxy still forwards the request it held; the spooled copy kiln resends (through
      // the same slow proxy) is answered as a duplicate.
      await waitFor(() => proxy.requests.some((r) => r.status), 10_000, 'the delayed request to reach the server');
      const sent = await run(KILN_BIN, ['spool', 'send'], { env: { KILN_SPOOL_DIR: dir, KILN_URL: server.url, KILN_TOKEN: token } });
      assert.equal(sent.code, 0, sent.stderr);
      const events = await getEvents(server, token, runId);
      assert.deepEqual(duplicateEventIds(events), []);
    } finally {
      await proxy.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('process.exit() during a send: the exit waits at most the flush timeout and every event is stored once', async () => {
    const proxy = await startProxy(server.url, (n) => (n === 1 ? { delayMs: 1500, then: { forwardAndDrop: true } } : { forward: true }));
    const dir = spoolDir();
    try {
      const child = await run(process.execPath, [script], {
        cwd: testsDir,
        env: { SCENARIO: 'exit-during-send', KILN_URL: proxy.url, KILN_TOKEN: token, KILN_FLUSH_TIMEOUT: '3', KILN_SPOOL_DIR: dir, EVENTS: '30' },
      });
      assert.equal(child.code, 0, child.stderr);
      const { runId, pendingAtExit } = JSON.parse(child.stdout.trim().split('\n')[0]);
      assert.ok(pendingAtExit > 0, 'events were in flight at exit');
      assert.ok(child.ms < 3000 + 1500, `the process took ${child.ms} ms to exit (flush timeout 3 s)`);
      await waitFor(() => proxy.requests.length >= 2 && proxy.requests[0].status, 10_000, 'the held request to reach the server');
      const events = await getEvents(server, token, runId);
      assert.equal(events.filter((e) => e.event === 'step_done').length, 30);
      assert.deepEqual(duplicateEventIds(events), []);
      assert.deepEqual(spooledEvents(dir), [], 'delivered at exit, nothing left in the spool');
    } finally {
      await proxy.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an uncaught exception during a send: the events are delivered on the way out', async () => {
    const proxy = await startProxy(server.url, (n) => (n === 1 ? { hang: true } : { forward: true }));
    try {
      const child = await run(process.execPath, [script], {
        cwd: testsDir,
        env: { SCENARIO: 'throw-during-send', KILN_URL: proxy.url, KILN_TOKEN: token, KILN_FLUSH_TIMEOUT: '3', KILN_SPOOL_DIR: spoolDir() },
      });
      assert.equal(child.code, 1, 'the crash keeps its exit code');
      assert.match(child.stderr, /the build script crashes/);
      const { runId } = JSON.parse(child.stdout.trim().split('\n')[0]);
      const events = await getEvents(server, token, runId);
      assert.equal(events.filter((e) => e.event === 'step_done').length, 20);
    } finally {
      await proxy.stop();
    }
  });

  test('a script that never awaits: the events are flushed before the process exits', async () => {
    const child = await run(process.execPath, [script], {
      cwd: testsDir,
      env: { SCENARIO: 'no-await', KILN_URL: server.url, KILN_TOKEN: token, KILN_SPOOL_DIR: spoolDir() },
    });
    assert.equal(child.code, 0, child.stderr);
    const { runId } = JSON.parse(child.stdout.trim());
    const build = await getBuild(server, token, runId);
    assert.equal(build.status, 'success');
    assert.equal((await getEvents(server, token, runId)).length, 23);
  });

  test('heartbeats while the build runs, none after it ended', async () => {
    const tracker = new BuildTracker(options({ heartbeatIntervalMs: 100 }));
    const runId = tracker.start();
    await sleep(450);
    await tracker.complete();
    await sleep(250);
    const events = await getEvents(server, token, runId);
    const beats = events.filter((e) => e.event === 'heartbeat').length;
    assert.ok(beats >= 3, `${beats} heartbeats in 450 ms at 100 ms`);
    assert.equal(events.at(-1).event, 'build_completed');
  });

  test('a refused event is dropped with a warning and the rest of its batch is stored', async () => {
    const runId = uniqueRunId('refused');
    const owner = new BuildTracker(options());
    owner.start({ runId });
    await owner.complete();
    const seen = [];
    const late = new BuildTracker(options({ onWarning: (w) => seen.push(w) }));
    late.start({ runId, join: true });
    late.event('deploy_completed', { target: 'prod' });
    late.beginStage('too late').complete(); // refused: the build ended
    late.event('upload_completed', {});
    await late.flush();
    const events = await getEvents(server, token, runId);
    assert.deepEqual(events.map((e) => e.event).slice(-2), ['deploy_completed', 'upload_completed']);
    assert.ok(seen.some((w) => /build_ended/.test(w)), seen.join('\n'));
    assert.equal(late.stats.dropped, 2);
  });

  test('joins KILN_RUN_ID without starting or ending the build; reads KILN_* and the seed OM_BUILD_EVENT_* variables', async () => {
    const runId = uniqueRunId('joined');
    const owner = new BuildTracker(options());
    owner.start({ runId });
    const joined = new BuildTracker({ environment: { KILN_RUN_ID: runId, OM_BUILD_EVENT_URL: server.url, OM_BUILD_EVENT_TOKEN: token }, spool: false, lingerMs: 5 });
    assert.equal(joined.url, server.url);
    assert.equal(joined.start(), runId);
    assert.equal(joined.isJoined, true);
    await joined.stage('Nested', () => sleep(5));
    await joined.complete();
    let build = await getBuild(server, token, runId);
    assert.equal(build.status, 'running', 'a joined tracker does not end the build');
    await owner.complete();
    build = await getBuild(server, token, runId);
    assert.equal(build.status, 'success');
    const events = await getEvents(server, token, runId);
    assert.equal(events.filter((e) => e.event === 'build_started').length, 1);
  });

  test('reads CI metadata like kiln run (GitHub Actions)', async () => {
    const tracker = new BuildTracker(options({
      environment: {
        GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/widgets', GITHUB_SHA: 'f'.repeat(40), GITHUB_REF_NAME: 'main', GITHUB_HEAD_REF: 'feature/x',
        GITHUB_SERVER_URL: 'https://github.com', GITHUB_RUN_ID: '77', GITHUB_WORKFLOW: 'CI', GITHUB_JOB: 'test', GITHUB_ACTOR: 'ada', KILN_ENV: 'staging',
      },
    }));
    const runId = tracker.start();
    await tracker.complete();
    const build = await getBuild(server, token, runId);
    assert.deepEqual([build.repo, build.branch, build.commit, build.env], ['acme/widgets', 'feature/x', 'f'.repeat(40), 'staging']);
    const [started] = await getEvents(server, token, runId);
    assert.deepEqual(started.data.ci, {
      provider: 'github_actions', url: 'https://github.com/acme/widgets/actions/runs/77', workflow: 'CI', job: 'test', runId: '77', actor: 'ada',
    });
  });

  test('reads git metadata from the repository files as git answers (branch, commit, origin; packed refs; worktrees)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-sdk-git-'));
    try {
      const git = async (...args) => {
        const result = await run('git', ['-C', dir, '-c', 'user.email=t@t', '-c', 'user.name=t', ...args]);
        assert.equal(result.code, 0, result.stderr);
        return result.stdout.trim();
      };
      await git('init', '-q', '-b', 'feature/x');
      await git('commit', '-q', '--allow-empty', '-m', 'first');
      await git('remote', 'add', 'origin', 'git@example.com:acme/widgets.git');
      await git('pack-refs', '--all');
      let metadata = await collectMetadata(dir, {});
      assert.deepEqual([metadata.repo, metadata.branch, metadata.commit], ['acme/widgets', 'feature/x', await git('rev-parse', 'HEAD')]);
      await git('worktree', 'add', '-q', '-b', 'side', join(dir, 'wt'));
      await git('-C', join(dir, 'wt'), 'commit', '-q', '--allow-empty', '-m', 'side');
      metadata = await collectMetadata(join(dir, 'wt'), {});
      assert.deepEqual([metadata.repo, metadata.branch, metadata.commit], ['acme/widgets', 'side', await git('-C', join(dir, 'wt'), 'rev-parse', 'HEAD')]);
      await git('checkout', '-q', '--detach');
      metadata = await collectMetadata(dir, {});
      assert.equal(metadata.branch, undefined, 'a detached head has no branch');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('without a token nothing is sent, once said, and every method still works', async () => {
    const said = [];
    const tracker = new BuildTracker({ environment: {}, onWarning: (w) => said.push(w) });
    assert.equal(tracker.enabled, false);
    tracker.start();
    assert.equal(await tracker.stage('S', () => 7), 7);
    tracker.progress(5);
    assert.deepEqual(await tracker.complete(), { delivered: true, pending: 0 });
    assert.equal(said.length, 1);
    assert.match(said[0], /no token/);
  });

  test('a refused token stops sending after one warning', async () => {
    const said = [];
    const tracker = new BuildTracker({ url: server.url, token: 'kiln_not_a_token', spool: false, lingerMs: 5, onWarning: (w) => said.push(w) });
    tracker.start();
    tracker.progress(1);
    const result = await tracker.complete();
    assert.equal(result.pending, 0);
    assert.equal(said.filter((w) => /refused/.test(w)).length, 1, said.join('\n'));
    assert.ok(tracker.stats.requests <= 1, 'no retries against a refused token');
  });

  test('the CommonJS build works with require()', async () => {
    const require = createRequire(join(testsDir, 'package.json'));
    const cjs = require('@kiln-ci/sdk');
    assert.equal(typeof cjs.BuildTracker, 'function');
    assert.equal(typeof require('@kiln-ci/sdk/jest').default, 'function');
    assert.equal(typeof require('@kiln-ci/sdk/webpack').KilnWebpackPlugin, 'function');
    assert.equal(typeof require('@kiln-ci/sdk/vite').kiln, 'function');
    const result = await run(process.execPath, ['-e', `
      const { BuildTracker } = require('@kiln-ci/sdk');
      const t = new BuildTracker({ url: ${JSON.stringify(server.url)}, token: ${JSON.stringify(token)}, spool: false });
      const id = t.start();
      t.complete().then((r) => console.log(JSON.stringify({ id, r })));`], { cwd: testsDir });
    const { id, r } = JSON.parse(result.stdout);
    assert.equal(r.delivered, true);
    assert.equal((await getBuild(server, token, id)).status, 'success');
    const status = await api(server, 'GET', `/api/v1/builds/${id}/status`, { token });
    assert.equal(status.body.status, 'success');
  });
});
