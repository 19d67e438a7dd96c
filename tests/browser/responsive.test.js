// Phone width (no sideways scrolling of the whole page) and keyboard navigation (Skip to
// content, Tab reaches the Build button); screenshots of the remaining pages.

import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  api,
  checkPage,
  ingest,
  launchBrowser,
  loggedInContext,
  startFixture,
  stopFixture,
  triggerBuild,
  until,
  waitForBuild,
  watchConsole,
} from './harness.js';

let fixture;
let browser;
let built;

before(async () => {
  fixture = await startFixture();
  browser = await launchBrowser();
  built = await triggerBuild(fixture, 'web');
  await waitForBuild(fixture, built.runId, (b) => b.status === 'success', 60_000, 'the fixture build to succeed');
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
});

/** The whole page does not scroll sideways (wide tables may scroll inside their own box). */
async function assertNoHorizontalScroll(page, what) {
  const sizes = await page.evaluate(() => ({
    scrollWidth: document.scrollingElement.scrollWidth,
    innerWidth: window.innerWidth,
    widest: [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
      .slice(0, 5)
      .map((el) => `${el.tagName.toLowerCase()}${el.className ? `.${String(el.className).split(' ').join('.')}` : ''}`),
  }));
  assert.ok(
    sizes.scrollWidth <= sizes.innerWidth,
    `${what}: the page is ${sizes.scrollWidth} px wide in a ${sizes.innerWidth} px window (sticking out: ${sizes.widest})`,
  );
}

test('at phone width (390×844) the overview and the build page fit the screen', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev, {
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  const page = await context.newPage();
  const problems = watchConsole(page);

  await page.goto('/');
  await page.locator(`[data-run-id="${built.runId}"]`).first().waitFor();
  await assertNoHorizontalScroll(page, 'overview');
  await checkPage(page, 'overview-phone');

  await page.goto(`/builds/${built.runId}`);
  await page.locator('.log .line').first().waitFor();
  await assertNoHorizontalScroll(page, 'build page');
  await checkPage(page, 'build-phone');
  assert.deepEqual(problems, []);
  await context.close();
});

test('from the keyboard: the first Tab reaches "Skip to content", which moves focus to the content; Tab reaches the Build button', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  await page.goto('/');
  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    return { tag: el?.tagName.toLowerCase(), text: (el?.innerText || el?.getAttribute('aria-label') || '').trim(), id: el?.id };
  });

  await page.keyboard.press('Tab');
  assert.equal((await focused()).text, 'Skip to content', 'the first stop is the skip link');
  assert.ok(await page.getByRole('link', { name: 'Skip to content' }).isVisible(), 'it is visible when focused');
  await page.keyboard.press('Enter');
  assert.equal((await focused()).id, 'main', 'Enter on it focuses the content');

  let reached = null;
  for (let i = 0; i < 80 && !reached; i += 1) {
    await page.keyboard.press('Tab');
    const now = await focused();
    if (now.tag === 'button' && /^Build\b/.test(now.text)) reached = now;
  }
  assert.ok(reached, 'Tab reaches a Build button');
  // The focused button shows a focus ring.
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none', 'the focused button is outlined');
  await context.close();
});

test('an ingested build, the project settings (a token and a webhook made with its forms), the webhook page, projects and account render, with screenshots and no serious accessibility violations', async () => {
  const runId = `ingested-${Date.now()}`;
  await ingest(fixture, [
    { runId, event: 'build_started', branch: 'main', commit: 'abc1234', command: 'make test', host: 'laptop' },
    { runId, event: 'stage_started', stage: 'compile' },
    { runId, event: 'stage_completed', stage: 'compile', durationMs: 1200 },
    { runId, event: 'stage_started', stage: 'unit tests' },
    { runId, event: 'build_progress', progress: 60 },
  ]);
  // A real jest-junit report for it: the build page lists the failed tests.
  const report = await fetch(`${fixture.server.url}/api/v1/builds/${runId}/tests`, {
    method: 'POST',
    headers: { authorization: `Bearer ${fixture.ingestToken}`, 'content-type': 'application/xml' },
    body: readFileSync(new URL('../../crates/kiln-core/tests/fixtures/junit/jest-junit.xml', import.meta.url)),
  });
  assert.equal(report.status, 201, await report.text());
  const context = await loggedInContext(browser, fixture, fixture.users.admin);
  const page = await context.newPage();
  const problems = watchConsole(page, [/status of 404 \(Not Found\)/, /status of 400 \(Bad Request\)/]);

  await page.goto(`/builds/${runId}`);
  const stages = await page.locator('[data-timeline] li[data-step]').evaluateAll((items) =>
    items.map((li) => [li.dataset.step, li.dataset.status]));
  assert.deepEqual(stages, [['compile', 'success'], ['unit tests', 'running']]);
  await page.getByRole('heading', { name: 'Tests', level: 2 }).waitFor();
  assert.match(await page.locator('[data-tests-summary]').innerText(), /7 tests: 4 passed, 2 failed/);
  assert.equal(await page.locator('li[data-test]').count(), 2);
  await page.locator('li[data-test] summary').first().click();
  await page.locator('li[data-test] pre.test-message').first().waitFor();
  await checkPage(page, 'build-ingested');

  await page.goto('/projects/web/settings');
  await page.getByRole('heading', { name: 'Project web settings', level: 1 }).waitFor();
  for (const section of ['Tokens', 'Members', 'Branches', 'Repository', 'Public status', 'Webhooks']) {
    await page.getByRole('heading', { name: section, level: 2 }).waitFor();
  }
  await page.locator(`tr[data-member="${fixture.users.viewer.email}"]`).waitFor();
  await checkPage(page, 'project-settings');

  // A token made with the form is shown once, and works.
  const tokenForm = page.getByRole('form', { name: 'Create token' });
  await tokenForm.getByLabel('Name').fill('from the browser');
  await tokenForm.getByLabel('read').check();
  await tokenForm.getByRole('button', { name: 'Create token' }).click();
  const secret = await page.locator('input[data-secret]').inputValue();
  assert.match(secret, /^kiln_/);
  await checkPage(page, 'token-created');
  const read = await api(fixture.server, 'GET', '/api/v1/projects/web', { token: secret });
  assert.equal(read.status, 200, 'the new token reads its project');

  // A webhook made with the form; its page holds the delivery log.
  const hookUrl = 'http://127.0.0.1:9/kiln'; // nothing listens: deliveries fail and are logged
  await page.goto('/projects/web/settings#webhooks');
  const hookForm = page.getByRole('form', { name: 'Create webhook' });
  await hookForm.getByLabel('Receiver URL').fill(hookUrl);
  await hookForm.getByRole('button', { name: 'Create webhook' }).click();
  await page.locator('input[data-secret], [role="alert"]').first().waitFor();
  assert.equal(await page.locator('[role="alert"]').count(), 0, `no refusal: ${await page.locator('[role="alert"]').allInnerTexts()}`);
  await checkPage(page, 'webhook-created');
  await page.goto('/projects/web/settings#webhooks');
  await page.getByRole('link', { name: `Deliveries of ${hookUrl}` }).click();
  await page.getByRole('heading', { name: `Webhook ${hookUrl}`, level: 1 }).waitFor();
  // The button posts a form that redirects back to this page: wait for that page before
  // reloading it (a reload during the post fails with "Not attached to an active page").
  await Promise.all([
    page.waitForURL(/notice=test-queued/),
    page.getByRole('button', { name: 'Send test event' }).click(),
  ]);
  await until(async () => {
    await page.reload();
    return (await page.locator('li[data-delivery-id]').count()) > 0;
  }, 15_000, 'the test delivery to be logged');
  await checkPage(page, 'webhook');

  // Public status: published with the settings form, then seen by an anonymous browser.
  await page.goto('/projects/web/settings#public-status');
  await Promise.all([
    page.waitForURL(/notice=status-published/),
    page.getByRole('button', { name: 'Publish status' }).click(),
  ]);
  await page.locator('section[data-public-status="on"]').waitFor();
  const badgeLoaded = await page
    .locator('section#public-status img')
    .evaluate((img) => img.complete && img.naturalWidth > 0);
  assert.ok(badgeLoaded, 'the default branch badge renders');
  const anonymous = await browser.newContext({ baseURL: fixture.server.url });
  const publicPage = await anonymous.newPage();
  const publicProblems = watchConsole(publicPage);
  const shown = await publicPage.goto('/status/web');
  assert.equal(shown.status(), 200);
  await publicPage.getByRole('heading', { name: 'Latest build per branch', level: 2 }).waitFor();
  assert.equal(await publicPage.locator('tr[data-branch="main"]').count(), 1);
  await checkPage(publicPage, 'public-status');
  assert.deepEqual(publicProblems, []);
  await anonymous.close();

  await page.goto('/projects');
  await page.getByRole('link', { name: 'Settings of web' }).waitFor();
  await checkPage(page, 'projects');

  // Analytics of the project the ingested build went to: charts with their tables.
  await page.getByRole('link', { name: 'Analytics of ingest' }).click();
  await page.getByRole('heading', { name: 'Analytics of ingest', level: 1 }).waitFor();
  const builds = Number(await page.locator('[data-figure="builds"]').innerText());
  assert.ok(builds >= 1, `the range holds the ingested build (${builds})`);
  for (const name of ['Build duration per day', 'Success rate per day', 'Builds started per hour of the day (UTC)']) {
    await page.getByRole('img', { name }).waitFor();
  }
  await page.locator('tr[data-stage="compile"]').waitFor();
  await checkPage(page, 'analytics');
  const badRange = await page.goto('/projects/ingest/analytics?from=2026-02-30');
  assert.equal(badRange.status(), 400);
  await page.getByText('from: must be a date').waitFor();
  await page.goto('/account');
  await page.getByRole('heading', { name: 'Account', level: 1 }).waitFor();
  await checkPage(page, 'account');

  // A project setting page refused to a developer is an HTML page, not a crash.
  const devContext = await loggedInContext(browser, fixture, fixture.users.dev);
  const devPage = await devContext.newPage();
  const refused = await devPage.goto('/projects/web/settings');
  assert.equal(refused.status(), 403);
  assert.match(await refused.headerValue('content-type'), /text\/html/);
  await checkPage(devPage, 'project-settings-refused');
  await devContext.close();

  const missing = await page.goto('/builds/no-such-build');
  assert.equal(missing.status(), 404);
  await checkPage(page, 'build-not-found');
  assert.deepEqual(problems, []);
  await context.close();
});
