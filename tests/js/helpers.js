// Shared by the live-delivery client tests: starts the real `kiln serve` binary on a
// loopback port with a fresh data directory, and talks to its HTTP API with fetch.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const KILN_BIN = process.env.KILN_BIN || join(repoRoot, 'target/debug/kiln');

/** Starts `kiln serve`; resolves once it printed its address. */
export async function startServer(extraArgs = []) {
  if (!existsSync(KILN_BIN)) {
    throw new Error(`${KILN_BIN} does not exist; run \`cargo build -p kiln-cli\` first`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'kiln-js-'));
  const adminToken = `kiln_admin_${randomBytes(16).toString('hex')}`;
  const child = spawn(
    KILN_BIN,
    // The tests' git repositories live in the temp dir (the data dir, also there, stays
    // refused as a repository).
    ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--allow-local-repos', tmpdir(), ...extraArgs],
    {
      env: { ...process.env, KILN_ADMIN_TOKEN: adminToken, KILN_LOG: process.env.KILN_LOG || 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
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
export async function api(server, method, path, { token, body, headers = {} } = {}) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...headers,
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
  const project = await api(server, 'POST', '/api/v1/projects', {
    token: server.adminToken,
    body: { slug, name: `Project ${slug}` },
  });
  if (project.status !== 201) throw new Error(`create project: ${JSON.stringify(project)}`);
  const token = await api(server, 'POST', `/api/v1/projects/${slug}/tokens`, {
    token: server.adminToken,
    body: { name: 'live tests', scopes: ['ingest', 'read'] },
  });
  if (token.status !== 201) throw new Error(`create token: ${JSON.stringify(token)}`);
  return token.body.token;
}

/** Posts events (one object or an array); resolves to the stored ids, in order. */
export async function ingest(server, token, events) {
  const result = await api(server, 'POST', '/api/v1/events', { token, body: events });
  if (result.status !== 201 && result.status !== 200) {
    throw new Error(`ingest: ${JSON.stringify(result)}`);
  }
  return result.body.events.map((event) => event.id);
}

/** Connects socket.io-client; resolves once connected, rejects with the connect_error. */
export function connectSocket(server, auth, options = {}) {
  const socket = io(server.url, { auth, reconnection: false, forceNew: true, ...options });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (error) => {
      socket.close();
      reject(error);
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves when `predicate()` holds, polling; rejects after `timeoutMs`. */
export async function waitFor(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

export function uniqueRunId(prefix) {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}
