// Real vite@8 and webpack@5 builds of a small app with Kiln's plugins: a successful build
// (stages per phase, progress, per-chunk sizes that match the files written), a syntax
// error (the bundler's message on the failed build), and watch mode (one build per
// rebuild, with what changed). Results read back through the API.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createProject, duplicateEventIds, getBuild, getEvents, listBuilds, run, startServer, testsDir, waitFor } from './helpers.js';

const vite = join(testsDir, 'node_modules/vite/bin/vite.js');

/** A fresh copy of a fixture app inside tests/sdk (so it resolves the installed packages). */
function copyFixture(name) {
  const dir = join(testsDir, 'work', `${name}-${randomBytes(4).toString('hex')}`);
  mkdirSync(join(testsDir, 'work'), { recursive: true });
  cpSync(join(testsDir, 'fixtures', name), dir, { recursive: true });
  return dir;
}

/** Sizes of the files a build wrote, by path relative to dist/. */
function writtenFiles(dist) {
  const files = {};
  const walk = (dir, prefix) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) walk(join(dir, entry.name), `${prefix}${entry.name}/`);
      else files[`${prefix}${entry.name}`] = statSync(join(dir, entry.name)).size;
    }
  };
  walk(dist, '');
  return files;
}

function startWatcher(command, args, cwd, env) {
  const child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  return {
    output: () => output,
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.on('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

describe('bundler plugins', () => {
  let server;
  const dirs = [];

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.stop();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  async function newProject(prefix) {
    const slug = `${prefix}-${randomBytes(3).toString('hex')}`;
    return createProject(server, slug);
  }

  function assertSizesMatch(metricsEvent, dist) {
    const written = writtenFiles(dist);
    const reported = metricsEvent.data.files;
    const js = Object.entries(written).filter(([name]) => name.endsWith('.js'));
    for (const [name, bytes] of js) {
      const file = reported.find((f) => f.fileName === name);
      assert.ok(file, `${name} is reported (${JSON.stringify(reported)})`);
      assert.equal(file.bytes, bytes, `${name}: reported ${file.bytes} bytes, written ${bytes}`);
    }
    const metrics = metricsEvent.data.metrics;
    assert.equal(metrics.bundle_bytes, reported.reduce((sum, f) => sum + f.bytes, 0));
    assert.ok(metrics.bundle_chunks >= 2, 'the entry and the lazy chunk');
  }

  describe('Vite plugin (vite@8)', () => {
    test('a successful build: stages build, render and write, progress, per-chunk sizes', async () => {
      const token = await newProject('vite');
      const dir = copyFixture('vite-app');
      dirs.push(dir);
      const result = await run(process.execPath, [vite, 'build'], { cwd: dir, env: { KILN_URL: server.url, KILN_TOKEN: token } });
      assert.equal(result.code, 0, result.stderr);
      const [build] = await listBuilds(server, token);
      const stored = await getBuild(server, token, build.runId);
      assert.equal(stored.status, 'success');
      assert.deepEqual(stored.stages.map((s) => [s.name, s.status]), [['build', 'success'], ['render', 'success'], ['write', 'success']]);
      const events = await getEvents(server, token, build.runId);
      assert.deepEqual(duplicateEventIds(events), []);
      assert.equal(events[0].data.tool, 'vite');
      const progress = events.filter((e) => e.event === 'build_progress').map((e) => e.progress);
      assert.ok(progress.length >= 4 && progress.every((p, i) => i === 0 || p > progress[i - 1]), `progress ${progress}`);
      const metricsEvent = events.find((e) => e.event === 'build_metrics');
      assertSizesMatch(metricsEvent, join(dir, 'dist'));
      assert.ok(metricsEvent.data.metrics['chunk_bytes.index'] > 0, JSON.stringify(metricsEvent.data.metrics));
      assert.equal(events.at(-1).event, 'build_completed');
    });

    test('a syntax error: the build fails with the bundler\'s message, vite exits 1', async () => {
      const token = await newProject('vite-err');
      const dir = copyFixture('vite-app');
      dirs.push(dir);
      writeFileSync(join(dir, 'src/math.js'), 'export const total = (values) => values.reduce((sum, value) => sum + , 0);\n');
      const result = await run(process.execPath, [vite, 'build'], { cwd: dir, env: { KILN_URL: server.url, KILN_TOKEN: token } });
      assert.equal(result.code, 1);
      const [build] = await listBuilds(server, token);
      const stored = await getBuild(server, token, build.runId);
      assert.equal(stored.status, 'failed');
      assert.match(stored.message, /math\.js/);
      assert.match(stored.message, /Unexpected token|PARSE_ERROR/);
      assert.deepEqual(stored.stages.map((s) => [s.name, s.status]), [['build', 'failed']]);
      const events = await getEvents(server, token, build.runId);
      assert.equal(events.filter((e) => e.event === 'build_failed').length, 1);
      assert.equal(events.find((e) => e.event === 'build_failed').stage, 'build');
    });

    test('watch mode: one build per rebuild, with the changed file; a broken rebuild fails, the fix succeeds', async () => {
      const token = await newProject('vite-watch');
      const dir = copyFixture('vite-app');
      dirs.push(dir);
      const watcher = startWatcher(process.execPath, [vite, 'build', '--watch'], dir, { KILN_URL: server.url, KILN_TOKEN: token });
      try {
        const ended = async (n) => (await listBuilds(server, token)).filter((b) => b.status !== 'running').length >= n;
        await waitFor(() => ended(1), 30_000, `the first build\n${watcher.output()}`);
        writeFileSync(join(dir, 'src/greet.js'), 'export const greet = (name) => `Hi, ${name}`;\n');
        await waitFor(() => ended(2), 30_000, `the rebuild\n${watcher.output()}`);
        writeFileSync(join(dir, 'src/greet.js'), 'export const greet = (name) => `Hi, ${name`;\n');
        await waitFor(async () => (await listBuilds(server, token)).some((b) => b.status === 'failed'), 30_000, `the broken rebuild\n${watcher.output()}`);
        writeFileSync(join(dir, 'src/greet.js'), 'export const greet = (name) => `Hello again, ${name}`;\n');
        await waitFor(async () => (await listBuilds(server, token))[0].status === 'success', 30_000, `the fixed rebuild\n${watcher.output()}`);
      } finally {
        await watcher.stop();
      }
      const builds = (await listBuilds(server, token)).reverse();
      assert.ok(builds.length >= 4, `${builds.length} builds`);
      assert.equal(builds[0].status, 'success');
      assert.equal(builds.at(-1).status, 'success');
      assert.ok(builds.some((b) => b.status === 'failed'));
      const starts = await Promise.all(builds.map(async (b) => (await getEvents(server, token, b.runId))[0]));
      assert.ok(starts.every((e) => e.data.watch && e.data.watch.session === starts[0].data.watch.session), 'one watch session');
      assert.deepEqual(starts.map((e) => e.data.watch.rebuild), builds.map((_, i) => i + 1));
      assert.ok(starts[1].data.watch.changedFiles.some((f) => f.endsWith('src/greet.js')), JSON.stringify(starts[1].data.watch));
    });
  });

  describe('webpack plugin (webpack@5)', () => {
    const build = (dir, env, args = []) => run(process.execPath, [join(dir, 'build.cjs'), ...args], { cwd: dir, env });

    test('a successful build: ProgressPlugin phases as stages, progress, per-chunk sizes', async () => {
      const token = await newProject('webpack');
      const dir = copyFixture('webpack-app');
      dirs.push(dir);
      const result = await build(dir, { KILN_URL: server.url, KILN_TOKEN: token });
      assert.equal(result.code, 0, result.stderr);
      const [listed] = await listBuilds(server, token);
      const stored = await getBuild(server, token, listed.runId);
      assert.equal(stored.status, 'success');
      assert.deepEqual(stored.stages.map((s) => [s.name, s.status]), [['setup', 'success'], ['building', 'success'], ['sealing', 'success'], ['emitting', 'success']]);
      const events = await getEvents(server, token, listed.runId);
      assert.deepEqual(duplicateEventIds(events), []);
      assert.equal(events[0].data.tool, 'webpack');
      assert.match(events[0].data.toolVersion, /^5\./);
      const progress = events.filter((e) => e.event === 'build_progress').map((e) => e.progress);
      assert.ok(progress.length >= 5 && progress.every((p, i) => i === 0 || p > progress[i - 1]), `progress ${progress}`);
      const metricsEvent = events.find((e) => e.event === 'build_metrics');
      assertSizesMatch(metricsEvent, join(dir, 'dist'));
      assert.ok(metricsEvent.data.metrics['chunk_bytes.main'] > 0, JSON.stringify(metricsEvent.data.metrics));
    });

    test('a syntax error: the build fails with webpack\'s error', async () => {
      const token = await newProject('webpack-err');
      const dir = copyFixture('webpack-app');
      dirs.push(dir);
      writeFileSync(join(dir, 'src/math.js'), 'export const total = (values) => values.reduce((sum, value) => sum + , 0);\n');
      const result = await build(dir, { KILN_URL: server.url, KILN_TOKEN: token });
      assert.equal(result.code, 1);
      const [listed] = await listBuilds(server, token);
      const stored = await getBuild(server, token, listed.runId);
      assert.equal(stored.status, 'failed');
      assert.match(stored.message, /Module parse failed/);
      assert.match(stored.message, /math\.js|Unexpected token/);
      assert.equal(stored.stages.filter((s) => s.status === 'failed').length, 1);
      const failedEvent = (await getEvents(server, token, listed.runId)).find((e) => e.event === 'build_failed');
      assert.ok(failedEvent.data.errors.length >= 1);
    });

    test('watch mode: one build per rebuild, with the changed file', async () => {
      const token = await newProject('webpack-watch');
      const dir = copyFixture('webpack-app');
      dirs.push(dir);
      const watcher = startWatcher(process.execPath, [join(dir, 'build.cjs'), '--watch'], dir, { KILN_URL: server.url, KILN_TOKEN: token });
      try {
        const ended = async (n) => (await listBuilds(server, token)).filter((b) => b.status !== 'running').length >= n;
        await waitFor(() => ended(1), 30_000, `the first build\n${watcher.output()}`);
        writeFileSync(join(dir, 'src/greet.js'), 'export const greet = (name) => `Hi, ${name}`;\n');
        await waitFor(() => ended(2), 30_000, `the rebuild\n${watcher.output()}`);
        writeFileSync(join(dir, 'src/greet.js'), 'export const greet = (name) => `Hi, ${name`;\n');
        await waitFor(async () => (await listBuilds(server, token)).some((b) => b.status === 'failed'), 30_000, `the broken rebuild\n${watcher.output()}`);
      } finally {
        await watcher.stop();
      }
      const builds = (await listBuilds(server, token)).reverse();
      assert.equal(builds[0].status, 'success');
      assert.equal(builds[1].status, 'success');
      assert.equal(builds.at(-1).status, 'failed');
      const second = (await getEvents(server, token, builds[1].runId))[0];
      assert.equal(second.data.watch.rebuild, 2);
      assert.ok(second.data.watch.changedFiles.some((f) => f.endsWith('greet.js')), JSON.stringify(second.data.watch));
    });
  });
});
