// Real jest@30 runs with the reporter: passing, failing, skipped and a crashing test file;
// a passing run; a run inside `kiln run` that joins its build. Results read back through
// the API.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  KILN_BIN, createProject, duplicateEventIds, getBuild, getEvents, listBuilds, run, startServer, testsDir, uniqueRunId,
} from './helpers.js';

const jest = join(testsDir, 'node_modules/jest/bin/jest.js');
const config = join(testsDir, 'fixtures/jest-app/jest.config.cjs');

describe('Jest reporter (jest@30)', () => {
  let server;
  let token;

  before(async () => {
    server = await startServer();
    token = await createProject(server, 'jest');
  });
  after(async () => {
    await server?.stop();
  });

  async function runJest(args, env = {}) {
    const before = new Set((await listBuilds(server, token)).map((b) => b.runId));
    const result = await run(process.execPath, [jest, '--config', config, '--ci', ...args], {
      cwd: testsDir,
      env: { KILN_URL: server.url, KILN_TOKEN: token, ...env },
    });
    const created = (await listBuilds(server, token)).filter((b) => !before.has(b.runId));
    return { result, created };
  }

  test('a run with passing, failing, skipped and crashing files: a stage per file, every test, the failure messages', async () => {
    const { result, created } = await runJest([]);
    assert.equal(result.code, 1, 'jest fails the run; the reporter does not change that');
    assert.match(result.stderr, /Tests:\s+1 failed, 2 skipped, 1 todo, 5 passed, 9 total/);
    assert.doesNotMatch(result.stderr, /kiln:/, 'no delivery warnings');
    assert.equal(created.length, 1, 'one build per run');
    const build = await getBuild(server, token, created[0].runId);
    assert.equal(build.status, 'failed');
    assert.match(build.message, /1 of 9 tests failed; 1 test file\(s\) could not run/);
    assert.equal(build.progress, 100);
    const stages = Object.fromEntries(build.stages.map((s) => [s.name, s]));
    assert.deepEqual(Object.keys(stages).sort(), ['crashing.test.js', 'failing.test.js', 'passing.test.js', 'skipped.test.js']);
    assert.equal(stages['passing.test.js'].status, 'success');
    assert.equal(stages['skipped.test.js'].status, 'success');
    assert.equal(stages['failing.test.js'].status, 'failed');
    assert.match(stages['failing.test.js'].message, /compares the wrong total/);
    assert.equal(stages['crashing.test.js'].status, 'failed');
    assert.match(stages['crashing.test.js'].message, /Test suite failed to run: the fixture crashes at load time/);

    const events = await getEvents(server, token, build.runId);
    assert.deepEqual(duplicateEventIds(events), []);
    const tests = events.filter((e) => /^test_/.test(e.event));
    const byType = (type) => tests.filter((e) => e.event === type).map((e) => e.data.fullName).sort();
    assert.deepEqual(byType('test_passed'), ['add adds negative numbers', 'add adds two numbers', 'passes before the failure', 'runs next to the skipped ones', 'waits a little']);
    assert.deepEqual(byType('test_failed'), ['compares the wrong total']);
    assert.deepEqual(byType('test_skipped'), ['a skipped group is skipped with its group', 'is skipped', 'is still to write']);
    const failed = tests.find((e) => e.event === 'test_failed');
    assert.equal(failed.stage, 'failing.test.js');
    assert.match(failed.message, /Expected: 5\s+Received: 4/);
    assert.doesNotMatch(failed.message, /\u001b\[/, 'no terminal colours in stored messages');
    assert.equal(tests.find((e) => e.data.title === 'is still to write').data.status, 'todo');
    const slow = tests.find((e) => e.data.title === 'waits a little');
    assert.ok(slow.durationMs >= 25, `duration ${slow.durationMs} ms`);
    const progress = events.filter((e) => e.event === 'build_progress').map((e) => e.progress);
    assert.deepEqual(progress, [0, 25, 50, 75, 100]);
    const metrics = events.find((e) => e.event === 'build_metrics').data.metrics;
    assert.deepEqual(metrics, {
      tests_total: 9, tests_passed: 5, tests_failed: 1, tests_skipped: 3, test_files: 4, test_files_failed: 2, test_files_not_run: 1,
    });
  });

  test('a passing run completes the build', async () => {
    const { result, created } = await runJest(['passing.test.js']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(created.length, 1);
    const build = await getBuild(server, token, created[0].runId);
    assert.equal(build.status, 'success');
    assert.deepEqual(build.stages.map((s) => [s.name, s.status]), [['passing.test.js', 'success']]);
    assert.equal(build.origin, 'kiln-sdk-js');
    assert.ok(build.command.includes('jest'), build.command);
  });

  test('inside `kiln run`, the reporter joins its build (KILN_RUN_ID) instead of starting one', async () => {
    const runId = uniqueRunId('jest-in-kiln-run');
    const before = (await listBuilds(server, token)).length;
    const result = await run(KILN_BIN, ['run', '--run-id', runId, '--', process.execPath, jest, '--config', config, '--ci', 'passing.test.js'], {
      cwd: testsDir,
      env: { KILN_URL: server.url, KILN_TOKEN: token, KILN_TEST_STAGE_PREFIX: 'jest: ' },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.equal((await listBuilds(server, token)).length, before + 1, 'no second build');
    const build = await getBuild(server, token, runId);
    assert.equal(build.status, 'success');
    assert.equal(build.origin, 'kiln-cli', 'kiln run owns the build');
    assert.deepEqual(build.stages.map((s) => s.name), ['jest: passing.test.js']);
    const events = await getEvents(server, token, runId);
    assert.equal(events.filter((e) => e.event === 'build_started').length, 1);
    assert.equal(events.filter((e) => e.event === 'build_completed').length, 1);
    assert.equal(events.filter((e) => e.event === 'test_passed').length, 3);
  });
});
