// Shared by the SDK tests: starts the real `kiln serve` binary on a loopback port with a
// fresh data directory (as tests/js/helpers.js does), reads builds and events back through
// its HTTP API, and runs commands with a clean environment.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const testsDir = fileURLToPath(new URL('.', import.meta.url));
export const KILN_BIN = process.env.KILN_BIN || join(repoRoot, 'target/debug/kiln');

/** Starts `kiln serve`; resolves once it printed its address. */
export async function startServer(extraArgs = []) {
  if (!existsSync(KILN_BIN)) {
    throw new Error(`${KILN_BIN} does not exist; run \`cargo build -p kiln-cli\` first (or set KILN_BIN)`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'kiln-sdk-'));
  const adminToken = `kiln_admin_${randomBytes(16).toString('hex')}`;
  const child = spawn(KILN_BIN, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...extraArgs], {
    env: { ...process.env, KILN_ADMIN_TOKEN: adminToken, KILN_LOG: process.env.KILN_LOG || 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kiln did not start within 20 s:\n${log}`)), 20_000);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const match = /kiln listening on (http:\/\/\S+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolve(match[1].replace(/\/$/, ''));
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kiln exited with ${code} before listening:\n${log}`));
    });
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  return {
    url,
    adminToken,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One HTTP call; resolves to {status, body} without throwing on error statuses. */
export async function api(server, method, path, { token, body } = {}) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: response.status, body: parsed };
}

/** Creates a project and an ingest+read token for it; resolves to the token. */
export async function createProject(server, slug) {
  const project = await api(server, 'POST', '/api/v1/projects', { token: server.adminToken, body: { slug, name: `Project ${slug}` } });
  if (project.status !== 201) throw new Error(`create project: ${JSON.stringify(project)}`);
  const token = await api(server, 'POST', `/api/v1/projects/${slug}/tokens`, {
    token: server.adminToken,
    body: { name: 'sdk tests', scopes: ['ingest', 'read'] },
  });
  if (token.status !== 201) throw new Error(`create token: ${JSON.stringify(token)}`);
  return token.body.token;
}

/** The stored build (with its stages). */
export async function getBuild(server, token, runId) {
  const result = await api(server, 'GET', `/api/v1/builds/${encodeURIComponent(runId)}`, { token });
  if (result.status !== 200) throw new Error(`GET build ${runId}: ${JSON.stringify(result)}`);
  return result.body;
}

/** Every stored event of a build, oldest first (all pages). */
export async function getEvents(server, token, runId) {
  const events = [];
  let cursor = 0;
  for (;;) {
    const result = await api(server, 'GET', `/api/v1/builds/${encodeURIComponent(runId)}/events?lastEventId=${cursor}&limit=1000`, { token });
    if (result.status !== 200) throw new Error(`GET events ${runId}: ${JSON.stringify(result)}`);
    events.push(...result.body.events);
    cursor = result.body.lastEventId;
    if (!result.body.hasMore) return events;
  }
}

/** The project's builds, newest first. */
export async function listBuilds(server, token, query = '') {
  const result = await api(server, 'GET', `/api/v1/builds?limit=1000${query}`, { token });
  if (result.status !== 200) throw new Error(`GET builds: ${JSON.stringify(result)}`);
  return result.body.builds;
}

/** Asserts no two stored events share an eventId. */
export function duplicateEventIds(events) {
  const seen = new Set();
  const duplicates = [];
  for (const event of events) {
    if (event.eventId === undefined) continue;
    if (seen.has(event.eventId)) duplicates.push(event.eventId);
    seen.add(event.eventId);
  }
  return duplicates;
}

/**
 * Runs a command; resolves to {code, signal, stdout, stderr, ms}. The environment is the
 * test's minus Kiln's and CI's variables, plus `env`, so the host CI cannot leak in.
 */
export function run(command, args, { cwd, env = {}, timeoutMs = 120_000, input } = {}) {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(
      ([name]) => !/^(KILN_|OM_BUILD_|GITHUB_|GITLAB_|CI_|CIRCLE|RUNNER_)/.test(name) && name !== 'CI' && name !== 'CIRCLECI',
    ),
  );
  const started = Date.now();
  return new Promise((resolve, reject) => {
    // Undelivered events go to a spool of the test run's own, never the user's.
    const spool = { KILN_SPOOL_DIR: join(tmpdir(), `kiln-sdk-test-spool-${process.pid}`) };
    const child = spawn(command, args, { cwd, env: { ...base, ...spool, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} did not end within ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
    child.stdin.on('error', () => {}); // a child that exits before reading its input
    child.stdin.end(input ?? '');
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves when `predicate()` (sync or async) holds, polling; rejects after `timeoutMs`. */
export async function waitFor(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export function uniqueRunId(prefix) {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

export function uniqueSlug(prefix) {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}
