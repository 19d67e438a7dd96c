// Live latency in the browser: from the moment Node sends a `build_progress` event to
// POST /api/v1/events until the page's progress bar shows it (a MutationObserver in the
// page stamps the DOM change), on the overview and on the build page, 20 times each.
// The figures (p50/p95/max) are printed and written to <output>/live-latency.json; the
// test asserts only that every update arrives (5 s), never a number.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  OUTPUT_DIR,
  checkPage,
  ingest,
  launchBrowser,
  loggedInContext,
  percentile,
  sleep,
  startFixture,
  stopFixture,
  watchConsole,
} from './harness.js';
import { installReader } from './ui.js';

const ROUNDS = 20;
let fixture;
let browser;
const results = {};
let chromiumVersion;

before(async () => {
  fixture = await startFixture({ agent: false });
  browser = await launchBrowser();
  chromiumVersion = browser.version();
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
  if (Object.keys(results).length) {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const file = join(OUTPUT_DIR, 'live-latency.json');
    writeFileSync(file, `${JSON.stringify({
      what: 'ms from sending POST /api/v1/events (build_progress) in Node to the DOM change in headless Chromium',
      chromium: chromiumVersion,
      rounds: ROUNDS,
      measuredAt: new Date().toISOString(),
      ...results,
    }, null, 2)}\n`);
    console.log(`live latency written to ${file}`);
  }
});

/** Node's clock as epoch milliseconds with sub-millisecond resolution. */
const nodeNow = () => performance.timeOrigin + performance.now();

/**
 * Offset to add to a page timestamp to get Node's clock: measured a few times bracketing
 * an evaluate call; the round trip with the least time wins.
 */
async function clockOffset(page) {
  let best = null;
  for (let i = 0; i < 10; i += 1) {
    const t0 = nodeNow();
    const pageNow = await page.evaluate(() => performance.timeOrigin + performance.now());
    const t1 = nodeNow();
    if (!best || t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: (t0 + t1) / 2 - pageNow };
  }
  return best;
}

/**
 * Installs a MutationObserver over the whole document that stamps (page clock) the first
 * DOM change after which the build's widgets under `rootSelector` show progress
 * `window.__kilnExpect.progress` (or status `.status`).
 */
async function installObserver(page, rootSelector) {
  await installReader(page);
  await page.evaluate((root) => {
    const readWidgets = window.__kilnRead;
    window.__kilnSeen = [];
    window.__kilnExpect = null;
    const check = () => {
      const expect = window.__kilnExpect;
      if (!expect) return;
      const now = readWidgets(root);
      if (!now) return;
      const ok = expect.progress !== undefined
        ? now.progress !== null && Math.round(now.progress) === expect.progress
        : now.status === expect.status;
      if (ok) {
        window.__kilnSeen.push({ key: expect.key, at: performance.timeOrigin + performance.now() });
        window.__kilnExpect = null;
      }
    };
    new MutationObserver(check).observe(document.documentElement, {
      subtree: true,
      childList: true,
      attributes: true,
      characterData: true,
    });
  }, rootSelector);
}

/** Posts one event and resolves to the ms until the page showed `expect`. */
async function measureOnce(page, offset, key, event, expect) {
  await page.evaluate(([k, e]) => {
    window.__kilnExpect = { key: k, ...e };
  }, [key, expect]);
  const sent = nodeNow();
  await ingest(fixture, event);
  const handle = await page.waitForFunction(
    (k) => window.__kilnSeen.find((s) => s.key === k),
    key,
    { timeout: 5_000, polling: 20 },
  ).catch((error) => {
    throw new Error(`update ${key} (${JSON.stringify(expect)}) did not show within 5 s: ${error.message}`);
  });
  const seen = await handle.jsonValue();
  return seen.at + offset - sent;
}

function summarize(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const round = (x) => Math.round(x * 10) / 10;
  return {
    samples: samples.map(round),
    n: samples.length,
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    max: round(sorted.at(-1)),
  };
}

async function measurePage(name, path, rootSelector) {
  const runId = `latency-${name}-${Date.now()}`;
  await ingest(fixture, [
    { runId, event: 'build_started', branch: 'main', commit: 'feedbeef', command: 'make bench' },
    { runId, event: 'stage_started', stage: 'bench' },
    { runId, event: 'build_progress', progress: 10 },
  ]);
  const context = await loggedInContext(browser, fixture, fixture.users.viewer);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto(path.replace('{runId}', runId));
  const root = rootSelector?.replace('{runId}', runId) ?? null;
  await installReader(page);
  await page.waitForFunction(
    (r) => {
      const now = window.__kilnRead(r);
      return now && now.progress !== null && Math.round(now.progress) === 10;
    },
    root,
    { timeout: 10_000 },
  );
  // Let the page's live connection settle (EventSource open) before measuring.
  await sleep(1_000);
  await installObserver(page, root);
  const { offset, rtt } = await clockOffset(page);

  const samples = [];
  for (let i = 0; i < ROUNDS; i += 1) {
    const progress = 40 + i; // 40…59: every update changes the bar
    samples.push(await measureOnce(page, offset, `p${i}`, { runId, event: 'build_progress', progress }, { progress }));
    await sleep(100);
  }
  // The badge too, once: the build ends.
  const statusMs = await measureOnce(page, offset, 'end', { runId, event: 'build_completed' }, { status: 'success' });
  await checkPage(page, `latency-${name}`);
  assert.deepEqual(problems, []);
  await context.close();

  const summary = { ...summarize(samples), badgeToSuccessMs: Math.round(statusMs * 10) / 10, clockRttMs: Math.round(rtt * 100) / 100 };
  results[name] = summary;
  console.log(`live latency ${name}: p50 ${summary.p50} ms, p95 ${summary.p95} ms, max ${summary.max} ms (badge ${summary.badgeToSuccessMs} ms; clock sync rtt ${summary.clockRttMs} ms)`);
  assert.equal(samples.length, ROUNDS, 'every update arrived');
}

test('overview: every ingested progress update shows up live (latency recorded)', async () => {
  await measurePage('overview', '/', '[data-run-id="{runId}"]');
});

test('build page: every ingested progress update shows up live (latency recorded)', async () => {
  await measurePage('build', '/builds/{runId}', null);
});
