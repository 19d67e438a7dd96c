// Shared by the dashboard's browser tests: a real `kiln serve` on a loopback port with a
// fresh SQLite data directory, projects built from real git repositories in temp dirs,
// users with roles, a real `kiln agent` (process executor), and headless Chromium driven
// by playwright-core, with screenshots and axe-core scans.

import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const KILN_BIN = process.env.KILN_BIN || join(repoRoot, 'target/debug/kiln');
export const CHROMIUM = process.env.KILN_CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOT_DIR = resolve(
  repoRoot,
  process.env.KILN_SCREENSHOT_DIR || 'target/ci-output/screenshots',
);
/** Where the latency figures go: next to the screenshot directory. */
export const OUTPUT_DIR = dirname(SCREENSHOT_DIR);

/** Everyone's password in these tests (8–1024 bytes). */
export const PASSWORD = 'correct horse battery staple';

export const sleep = (ms) => new Promise((resolveSleep) => setTimeout(resolveSleep, ms));

/**
 * Errors a probe meets when it reads a page that is navigating (a form posted, a redirect
 * followed): the page is there again a moment later, so the probe is tried again.
 */
const NAVIGATING = /Execution context was destroyed|Not attached to an active page|interrupted by another navigation|frame was detached|Cannot find context with specified id/;

/**
 * Resolves to `await probe()` once it is truthy, polling; rejects after `timeoutMs`. A probe
 * that fails because its page is between two documents counts as "not yet".
 */
export async function until(probe, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let navigating = null;
  for (;;) {
    let value;
    try {
      value = await probe();
      navigating = null;
    } catch (error) {
      if (!NAVIGATING.test(String(error && error.message))) throw error;
      navigating = error;
    }
    if (value) return value;
    if (Date.now() > deadline) {
      const cause = navigating ? ` (the page was still navigating: ${navigating.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await sleep(50);
  }
}

/** Starts `kiln serve`; resolves once it printed its address. */
export async function startServer(extraArgs = []) {
  if (!existsSync(KILN_BIN)) {
    throw new Error(`${KILN_BIN} does not exist; run \`cargo build -p kiln-cli\` first (or set KILN_BIN)`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'kiln-browser-'));
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
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    log += chunk;
  });
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`kiln did not start within 30 s:\n${log}`)), 30_000);
    const look = () => {
      const match = /kiln listening on (http:\/\/\S+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        child.stderr.off('data', look);
        resolveUrl(match[1].replace(/\/$/, ''));
      }
    };
    child.stderr.on('data', look);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kiln exited with ${code} before listening:\n${log}`));
    });
  });
  const exited = new Promise((resolveExit) => child.on('exit', resolveExit));
  return {
    url,
    adminToken,
    dataDir,
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

/** Like `api` but throws unless the status is one of `expected`. */
export async function must(server, method, path, options = {}, expected = [200, 201, 204]) {
  const result = await api(server, method, path, options);
  if (!expected.includes(result.status)) {
    throw new Error(`${method} ${path} → ${result.status} ${JSON.stringify(result.body)}`);
  }
  return result.body;
}

const git = (cwd, ...args) =>
  execFileSync('git', args, {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      GIT_AUTHOR_NAME: 'Kiln Tests',
      GIT_AUTHOR_EMAIL: 'tests@kiln.invalid',
      GIT_COMMITTER_NAME: 'Kiln Tests',
      GIT_COMMITTER_EMAIL: 'tests@kiln.invalid',
    },
  }).toString();

/** A git repository in a temp dir with `.kiln.yml` on `main`, one commit. */
export function makeRepo(pipeline, dir) {
  mkdirSync(dir, { recursive: true });
  git(dir, 'init', '-q', '-b', 'main');
  writeFileSync(join(dir, '.kiln.yml'), pipeline);
  writeFileSync(join(dir, 'README.md'), '# browser test fixture\n');
  git(dir, 'add', '.');
  git(dir, 'commit', '-q', '-m', 'Add the pipeline');
  return dir;
}

/**
 * The pipeline of the main fixture: a step that prints over four seconds, with an
 * ANSI-coloured line and a stderr line, so the log grows while a page watches (the build
 * page opens the first step's log), then a second step.
 */
export const PIPELINE = `steps:
  - name: test
    run: |
      printf '\\033[32mgreen: all systems go\\033[0m\\n'
      echo "warning: this line goes to stderr" >&2
      for i in $(seq 1 20); do echo "line $i"; sleep 0.2; done
  - name: package
    depends_on: test
    run: |
      echo "packaging"
      sleep 1
`;

/** A pipeline that runs long enough to be cancelled by hand. */
export const SLOW_PIPELINE = `steps:
  - name: slow
    run: |
      for i in $(seq 1 600); do echo "still working $i"; sleep 0.1; done
`;

/** A pipeline whose only step needs a label no agent offers: it waits in the queue. */
export const GPU_PIPELINE = `steps:
  - name: train
    agents: [gpu]
    run: echo "training"
`;

/**
 * Everything a test file needs: the server, an agent, projects with repositories
 * (`web` runs PIPELINE, `slow` SLOW_PIPELINE, `gpu` GPU_PIPELINE, `ingest` takes ingested
 * builds), users (admin: project admin of all four; dev: developer; viewer: viewer) and
 * an ingest token for `ingest`.
 */
export async function startFixture({ agent = true } = {}) {
  const tmp = mkdtempSync(join(tmpdir(), 'kiln-browser-fixture-'));
  // Webhooks to 127.0.0.1 are allowed, so a test can point one at a local port.
  const server = await startServer(['--webhooks-allow-private']);
  const admin = server.adminToken;
  const fixture = { server, tmp, users: {}, agents: [] };
  try {
    const repos = { web: PIPELINE, slow: SLOW_PIPELINE, gpu: GPU_PIPELINE };
    for (const slug of ['web', 'slow', 'gpu', 'ingest']) {
      await must(server, 'POST', '/api/v1/projects', { token: admin, body: { slug, name: `Project ${slug}` } });
      if (repos[slug]) {
        const dir = makeRepo(repos[slug], join(tmp, `repo-${slug}`));
        await must(server, 'PUT', `/api/v1/projects/${slug}/repo`, {
          token: admin,
          body: { repo: dir, defaultBranch: 'main' },
        });
      }
    }
    const token = await must(server, 'POST', '/api/v1/projects/ingest/tokens', {
      token: admin,
      body: { name: 'browser tests', scopes: ['ingest', 'read'] },
    });
    fixture.ingestToken = token.token;

    const people = [
      ['admin', 'Ada Admin', 'admin'],
      ['dev', 'Dev Eloper', 'developer'],
      ['viewer', 'Vi Ewer', 'viewer'],
    ];
    for (const [key, name, role] of people) {
      const email = `${key}@example.com`;
      await must(server, 'POST', '/api/v1/users', { token: admin, body: { email, name, password: PASSWORD } });
      for (const slug of ['web', 'slow', 'gpu', 'ingest']) {
        await must(server, 'PUT', `/api/v1/projects/${slug}/members/${encodeURIComponent(email)}`, {
          token: admin,
          body: { role },
        });
      }
      fixture.users[key] = { email, name, password: PASSWORD, role };
    }

    if (agent) fixture.agents.push(await startAgent(fixture, 'a1', ['linux', 'x86_64']));
  } catch (error) {
    await stopFixture(fixture);
    throw error;
  }
  return fixture;
}

/** Starts a real `kiln agent` and waits until the server lists it as connected. */
export async function startAgent(fixture, name, labels) {
  const { server } = fixture;
  const created = await must(server, 'POST', '/api/v1/agent-tokens', { token: server.adminToken, body: { name } });
  const dir = join(fixture.tmp, `agent-${name}`);
  mkdirSync(dir, { recursive: true });
  const args = [
    'agent',
    '--server', server.url,
    '--token', created.token,
    '--name', name,
    '--executor', 'process',
    '--work-dir', join(dir, 'work'),
    '--cache-dir', join(dir, 'cache'),
    '--grace-secs', '2',
  ];
  if (labels.length) args.push('--labels', labels.join(','));
  const child = spawn(KILN_BIN, args, {
    env: { ...process.env, KILN_LOG: process.env.KILN_LOG || 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    log += chunk;
  });
  const exited = new Promise((resolveExit) => child.on('exit', resolveExit));
  const agent = {
    name,
    labels,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
  try {
    await until(async () => {
      if (child.exitCode !== null) throw new Error(`kiln agent exited with ${child.exitCode}:\n${log}`);
      const list = await api(server, 'GET', '/api/v1/agents', { token: server.adminToken });
      const found = list.body.agents?.find((a) => a.name === name);
      // CPU use needs two samples: from the second heartbeat on.
      return found && found.health === 'connected' && typeof found.metrics?.cpuPercent === 'number';
    }, 20_000, `agent ${name} to connect and report its CPU use`);
  } catch (error) {
    await agent.stop();
    throw error;
  }
  return agent;
}

export async function stopFixture(fixture) {
  for (const agent of fixture.agents) await agent.stop();
  await fixture.server.stop();
  rmSync(fixture.tmp, { recursive: true, force: true });
}

/** Triggers a build of `slug`'s default branch through the API (as the instance admin). */
export async function triggerBuild(fixture, slug) {
  return must(fixture.server, 'POST', `/api/v1/projects/${slug}/builds`, {
    token: fixture.server.adminToken,
    body: {},
  });
}

/** Resolves to the build's JSON once `predicate(build)` holds. */
export async function waitForBuild(fixture, runId, predicate, timeoutMs, what) {
  return until(async () => {
    const build = await api(fixture.server, 'GET', `/api/v1/builds/${runId}`, { token: fixture.server.adminToken });
    return build.status === 200 && predicate(build.body) ? build.body : null;
  }, timeoutMs, what);
}

/** Ingested events (one or an array) with the project's ingest token. */
export async function ingest(fixture, events) {
  return must(fixture.server, 'POST', '/api/v1/events', { token: fixture.ingestToken, body: events });
}

// ---- the browser ---------------------------------------------------------------------

/** The launch flags of /work/shared/RECIPES.md ("Headless Chromium"). */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Headless Chromium with a fresh profile (playwright-core gives each launch its own user-data-dir). */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} does not exist; install it with \`apt-get install -y chromium\` (.ci/browser.sh does)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * A browser context logged in as `user` through the session API (the same cookie the
 * login form sets); the login form itself is exercised by login.test.js.
 */
export async function loggedInContext(browser, fixture, user, contextOptions = {}) {
  const context = await browser.newContext({ baseURL: fixture.server.url, ...contextOptions });
  const response = await context.request.post('/api/v1/session', {
    data: { email: user.email, password: user.password },
  });
  assert.equal(response.status(), 200, `log in as ${user.email}: ${await response.text()}`);
  return context;
}

/**
 * Collects page errors (uncaught exceptions) and console errors, but those matching one of
 * `allow` (e.g. the browser's own report of a 404 the test asked for); a test asserts
 * the list stays empty.
 */
export function watchConsole(page, allow = []) {
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    const text = message.text();
    if (message.type() === 'error' && !allow.some((pattern) => pattern.test(text))) problems.push(`console error: ${text}`);
  });
  return problems;
}

/** A full-page screenshot at `<screenshot dir>/<name>.png`. */
export async function screenshot(page, name) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const path = join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

const AXE_PATH = require.resolve('axe-core/axe.min.js');

/**
 * Runs axe-core on the page: serious and critical violations fail the test, the others
 * are printed.
 */
export async function axeScan(page, name) {
  // The dashboard's Content-Security-Policy allows no inline script, so an injected
  // <script> tag would be blocked (and reported as a console error); axe's source is
  // evaluated over the DevTools protocol instead, which the policy does not govern.
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) {
    await page.evaluate(readFileSync(AXE_PATH, 'utf8'));
  }
  const results = await page.evaluate(async () => {
    const run = await window.axe.run(document, { resultTypes: ['violations'] });
    return run.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary?.split('\n').join(' ')}`),
    }));
  });
  const bad = results.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of results.filter((r) => !bad.includes(r))) {
    console.log(`axe (${name}): ${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.join('\n  ')}`);
  }
  assert.deepEqual(
    bad.map((v) => `${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.join('\n  ')}`),
    [],
    `axe-core found serious or critical violations on ${name}`,
  );
  return results;
}

/** Screenshot plus axe scan: what every page visit ends with. */
export async function checkPage(page, name) {
  await screenshot(page, name);
  await axeScan(page, name);
}

/** Percentile of sorted numbers (nearest rank). */
export function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}
