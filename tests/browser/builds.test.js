// Builds in the browser: the Build button, the build page updating live (progress bar,
// log viewer, status badge, stage timeline) without reloading, the Cancel button, the
// header's unread count and the inbox, and what a viewer does not get.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  api,
  checkPage,
  launchBrowser,
  loggedInContext,
  sleep,
  startFixture,
  stopFixture,
  triggerBuild,
  until,
  waitForBuild,
  watchConsole,
} from './harness.js';
import { markerSurvives, setMarker, unreadCount, widgets } from './ui.js';

let fixture;
let browser;

before(async () => {
  fixture = await startFixture();
  browser = await launchBrowser();
  // One finished build of `web` first: a Kiln-run build reports no progress of its own,
  // so its bar and ETA come from the median duration of earlier successful builds.
  const first = await triggerBuild(fixture, 'web');
  await waitForBuild(fixture, first.runId, (b) => b.status === 'success', 60_000, 'the first build of web to succeed');
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
});

/** Accepts confirm() dialogs (a Cancel button may ask first). */
const acceptDialogs = (page) => page.on('dialog', (dialog) => dialog.accept());

/** The overview's Build button for a project (its default branch is prefilled). */
const buildButton = (page, slug) => page.getByRole('button', { name: `Build ${slug}`, exact: true });

/** Clicks Build for `slug` on the overview; resolves to the new build's runId. */
async function clickBuild(page, slug) {
  const before = await api(fixture.server, 'GET', `/api/v1/builds?project=${slug}&limit=1`, {
    token: fixture.server.adminToken,
  });
  const previous = before.body.builds[0]?.runId;
  await buildButton(page, slug).click();
  const build = await until(async () => {
    const list = await api(fixture.server, 'GET', `/api/v1/builds?project=${slug}&limit=1`, {
      token: fixture.server.adminToken,
    });
    const newest = list.body.builds[0];
    return newest && newest.runId !== previous ? newest : null;
  }, 10_000, `a new build of ${slug} after clicking Build`);
  return build.runId;
}

/** Goes to the build page, unless the Build button already went there. */
async function openBuildPage(page, runId) {
  const path = `/builds/${runId}`;
  try {
    await page.waitForURL((url) => url.pathname === path, { timeout: 3_000 });
  } catch {
    await page.goto(path);
  }
  assert.equal(new URL(page.url()).pathname, path);
}

test('the Build button starts a build; its page shows progress, log lines and the end live, without reloading', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/');
  await checkPage(page, 'overview');

  const runId = await clickBuild(page, 'web');
  await openBuildPage(page, runId);
  await setMarker(page);

  // Sample the page while the build runs: status, progress, log lines.
  const samples = [];
  const deadline = Date.now() + 60_000;
  let last;
  for (;;) {
    last = await widgets(page);
    samples.push({ at: Date.now(), ...last });
    if (last.status === 'success' || last.status === 'failed' || last.status === 'cancelled') break;
    if (Date.now() > deadline) throw new Error(`the badge never showed an end; samples: ${JSON.stringify(samples.slice(-5))}`);
    await sleep(100);
  }
  assert.equal(last.status, 'success', `the badge shows success (samples: ${JSON.stringify(samples.slice(-3))})`);
  assert.ok(await markerSurvives(page), 'the page was neither reloaded nor navigated');

  // The log viewer grew line by line while the build ran (several different counts seen).
  const lineCounts = [...new Set(samples.map((s) => s.lines))];
  assert.ok(lineCounts.length >= 3, `the log grew in steps while watched, saw line counts ${lineCounts}`);
  for (let i = 1; i < samples.length; i += 1) {
    assert.ok(samples[i].lines >= samples[i - 1].lines, `the log never shrinks: ${samples.map((s) => s.lines)}`);
  }

  // The progress bar moved: a value strictly between 0 and 100 before the end, then 100.
  const progresses = samples.map((s) => s.progress).filter((p) => p !== null && !Number.isNaN(p));
  for (let i = 1; i < progresses.length; i += 1) {
    assert.ok(progresses[i] >= progresses[i - 1], `progress never goes back: ${progresses}`);
  }
  assert.ok(
    progresses.some((p) => p > 0 && p < 100),
    `the progress bar showed an intermediate value while running: ${[...new Set(progresses)]}`,
  );
  assert.equal(progresses.at(-1), 100, 'a successful build ends at 100 %');

  // The stage timeline lists the steps, in order, and catches up with the end (it is
  // refreshed in place after each step event).
  const timeline = () => page.locator('[data-timeline] li[data-step]').evaluateAll((items) =>
    items.map((li) => `${li.dataset.step}:${li.dataset.status}`).join(' '));
  await until(async () => (await timeline()) === 'test:success package:success', 5_000,
    `the timeline to show both steps passed (shows ${await timeline()})`);
  assert.ok(await markerSurvives(page), 'still the same page');

  await checkPage(page, 'build-success');

  // The first step's log (now a fresh page: the live part is over) holds its output:
  // the ANSI colour rendered, not as escape codes, and the stderr line marked.
  const jobs = await api(fixture.server, 'GET', `/api/v1/projects/web/builds/${runId}/jobs`, { token: fixture.server.adminToken });
  const testJob = jobs.body.jobs.find((j) => j.step === 'test');
  await page.goto(`/builds/${runId}?job=${testJob.id}#log`);
  const logText = (await page.locator('.log').allInnerTexts()).join('\n');
  assert.match(logText, /line 20/, 'the last line of the step is shown');
  assert.match(logText, /green: all systems go/);
  assert.ok(!logText.includes('\u001b['), 'no raw escape codes in the log viewer');
  const green = page.locator('.log .line span.a-f2', { hasText: 'green: all systems go' });
  assert.equal(await green.count(), 1, 'the ANSI green text is a green span');
  const colour = await green.evaluate((el) => getComputedStyle(el).color);
  assert.notEqual(colour, await page.locator('.log').evaluate((el) => getComputedStyle(el).color), 'the ANSI green text has its own colour');
  const stderr = page.locator('.log .line.e .txt.s-err', { hasText: 'warning: this line goes to stderr' });
  assert.equal(await stderr.count(), 1, 'the stderr line is marked as such');
  await checkPage(page, 'build-log');
  assert.deepEqual(problems, []);
  await context.close();
});

test('a second build is cancelled with the Cancel button; its page in another tab shows cancelled without reloading', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  acceptDialogs(page);
  const problems = watchConsole(page);
  await page.goto('/');
  const runId = await clickBuild(page, 'slow');
  await openBuildPage(page, runId);
  // A second tab on the same build, never reloaded: it must learn of the cancel live.
  const watcher = await context.newPage();
  const watcherProblems = watchConsole(watcher);
  await watcher.goto(`/builds/${runId}`);
  await setMarker(watcher);
  await setMarker(page);

  // Wait until it runs (its log has lines), then cancel.
  await until(async () => (await widgets(page)).lines > 0 && (await widgets(watcher)).lines > 0, 30_000, 'the slow build to log');
  await checkPage(page, 'build-running');
  await page.getByRole('button', { name: 'Cancel', exact: true }).click();
  await until(async () => (await widgets(page)).status === 'cancelled', 10_000, 'the badge to show cancelled');
  await until(async () => (await widgets(watcher)).status === 'cancelled', 10_000, 'the other tab’s badge to show cancelled');
  assert.ok(await markerSurvives(watcher), 'the other tab was neither reloaded nor navigated');
  // The Cancel button is a plain form (it works without JavaScript): report whether it
  // reloaded the page that clicked it.
  console.log(`the Cancel button ${await markerSurvives(page) ? 'updated the page in place' : 'posted the form and reloaded the build page'}`);
  const build = await waitForBuild(fixture, runId, (b) => b.status === 'cancelled', 5_000, 'the build to be cancelled');
  assert.equal(build.status, 'cancelled');
  // An ended build offers no Cancel, in either tab.
  for (const p of [page, watcher]) {
    await until(async () => (await p.getByRole('button', { name: 'Cancel', exact: true }).count()) === 0, 5_000, 'Cancel to go');
  }
  await checkPage(page, 'build-cancelled');
  assert.deepEqual([...problems, ...watcherProblems], []);
  await context.close();
});

test("a project admin's unread count rises without reloading when a build ends; the inbox lists them and marks one read", async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.admin);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/');
  await setMarker(page);
  const before = await unreadCount(page);

  const build = await triggerBuild(fixture, 'web');
  // The build's end notifies the admin (a build Kiln runs is queued, not "started", so
  // its start notifies no one): once the overview shows the build ended, the header
  // counts it, without a reload.
  await waitForBuild(fixture, build.runId, (b) => b.status === 'success', 60_000, 'the build to succeed');
  await until(async () => (await widgets(page, `[data-run-id="${build.runId}"]`))?.status === 'success', 10_000, 'the overview row to show success');
  const ended = Date.now();
  await until(async () => (await unreadCount(page)) >= before + 1, 20_000,
    `the unread count to rise by the build's end (from ${before}; shows ${await unreadCount(page)})`);
  console.log(`unread count updated ${Date.now() - ended} ms after the overview showed the build ended`);
  assert.ok(await markerSurvives(page), 'the page was neither reloaded nor navigated');
  const shown = await unreadCount(page);
  const stats = await page.evaluate(() => kilnApi('GET', '/api/v1/notifications/stats'));
  assert.equal(shown, stats.unread, 'the header shows the server’s unread count');

  // The inbox lists the notification of this build's end.
  await page.getByRole('link', { name: /^Notifications/ }).click();
  await page.waitForURL('**/notifications');
  const item = page.locator('li[data-notification-id][data-kind="build_completed"]').filter({ hasText: new RegExp(`web #${build.number} completed`) });
  await item.waitFor();
  await checkPage(page, 'notifications');

  // Mark it read: the count goes down by one and the item is no longer unread.
  const id = await item.getAttribute('data-notification-id');
  assert.equal(await item.getAttribute('data-unread'), 'true');
  await item.getByRole('button', { name: /^Mark read/ }).click();
  await until(async () => (await item.getAttribute('data-unread')) === 'false', 10_000, 'the item to show read');
  await until(async () => (await unreadCount(page)) === shown - 1, 10_000, 'the unread count to drop by one');
  const after = await api(fixture.server, 'GET', '/api/v1/notifications?unread=true&limit=200', {
    headers: { cookie: (await context.cookies()).map((c) => `${c.name}=${c.value}`).join('; ') },
  });
  assert.equal(after.status, 200);
  assert.ok(!after.body.notifications.some((n) => String(n.id) === id), 'it is read on the server');
  assert.deepEqual(problems, []);
  await context.close();
});

test('a viewer sees builds but no Build, Cancel or Retry buttons', async () => {
  const build = await triggerBuild(fixture, 'slow');
  try {
    const context = await loggedInContext(browser, fixture, fixture.users.viewer);
    const page = await context.newPage();
    const problems = watchConsole(page);
    await page.goto('/');
    await page.locator(`[data-run-id="${build.runId}"]`).first().waitFor();
    assert.equal(await page.getByRole('button', { name: /^Build\b/ }).count(), 0, 'no Build button for a viewer');
    // A viewer is notified of nothing: the header shows no unread count (not even "0").
    assert.equal(await page.locator('[data-unread-count]').isVisible(), false, 'no unread badge when nothing is unread');
    await checkPage(page, 'overview-viewer');

    await page.goto(`/builds/${build.runId}`);
    await page.locator('[data-badge]').first().waitFor();
    assert.equal(await page.getByRole('button', { name: /^Cancel/ }).count(), 0, 'no Cancel button for a viewer');
    assert.equal(await page.getByRole('button', { name: /^Retry/ }).count(), 0, 'no Retry button for a viewer');
    await checkPage(page, 'build-viewer');
    assert.deepEqual(problems, []);
    await context.close();
  } finally {
    await api(fixture.server, 'POST', `/api/v1/projects/slow/builds/${build.runId}/cancel`, {
      token: fixture.server.adminToken,
    });
  }
});
