// A project's deployments page with a real agent: a developer clicks Deploy, the
// deployment appears in the history with Deploy disabled while it runs, the real
// `kiln agent` (process executor) builds the site and uploads its `dist` directory, the
// page turns "deployed" by itself (its live region), a second deploy, then "Roll back
// to #1" switches the live deployment back; a deployment of a slow site is cancelled
// with its Cancel button; a viewer sees no buttons; axe and a screenshot of the page.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  api,
  checkPage,
  launchBrowser,
  loggedInContext,
  makeRepo,
  must,
  startFixture,
  stopFixture,
  until,
  watchConsole,
} from './harness.js';

/** A site built in a few seconds (long enough to see Deploy disabled), published from dist. */
const SITE_PIPELINE = `steps:
  - name: site
    run: |
      sleep 2
      mkdir -p dist
      echo "<h1>hello from $(git rev-parse --short HEAD 2>/dev/null || echo kiln)</h1>" > dist/index.html
    deploy: {environment: production, publish: dist}
`;

/** A site whose build runs long enough to be cancelled from the page. */
const SLOW_SITE_PIPELINE = `steps:
  - name: site
    run: |
      sleep 60
      mkdir -p dist
      echo "<h1>too late</h1>" > dist/index.html
    deploy: {environment: production, publish: dist}
`;

let fixture;
let browser;

before(async () => {
  fixture = await startFixture();
  browser = await launchBrowser();
  const { server } = fixture;
  const admin = server.adminToken;
  await must(server, 'POST', '/api/v1/projects', { token: admin, body: { slug: 'site', name: 'Project site' } });
  const dir = makeRepo(SITE_PIPELINE, join(fixture.tmp, 'repo-site'));
  await must(server, 'PUT', '/api/v1/projects/site/repo', { token: admin, body: { repo: dir, defaultBranch: 'main' } });
  await must(server, 'POST', '/api/v1/projects', { token: admin, body: { slug: 'slowsite', name: 'Slow site' } });
  const slowDir = makeRepo(SLOW_SITE_PIPELINE, join(fixture.tmp, 'repo-slowsite'));
  await must(server, 'PUT', '/api/v1/projects/slowsite/repo', { token: admin, body: { repo: slowDir, defaultBranch: 'main' } });
  for (const key of ['dev', 'viewer']) {
    const user = fixture.users[key];
    for (const slug of ['site', 'slowsite']) {
      await must(server, 'PUT', `/api/v1/projects/${slug}/members/${encodeURIComponent(user.email)}`, {
        token: admin,
        body: { role: user.role },
      });
    }
  }
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
});

/** The project's deployments, newest first, from the JSON API. */
async function deployments() {
  const list = await api(fixture.server, 'GET', '/api/v1/projects/site/deployments', { token: fixture.server.adminToken });
  return list.body.deployments || [];
}

/** Waits, without reloading, until the history row of `runId` shows `status`. */
async function rowBecomes(page, runId, status, timeoutMs) {
  await until(async () => {
    const row = page.locator(`tr[data-run-id="${runId}"]:not([data-rollback])`).first();
    return (await row.count()) > 0 && (await row.getAttribute('data-status')) === status;
  }, timeoutMs, `the deployment of ${runId} to read ${status} on the page`);
}

test('a developer deploys from the page, sees it run and finish, and rolls back', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/projects/site/deployments');
  await page.getByRole('heading', { name: 'Deployments of Project site', level: 1 }).waitFor();
  assert.match(await page.locator('main').innerText(), /Nothing deployed yet/);

  // The first deploy: the form for an environment without a card, production proposed.
  const first = page.locator('form[data-deploy-form=""]');
  assert.equal(await first.getByLabel('Environment').inputValue(), 'production');
  assert.equal(await first.getByLabel('Branch').inputValue(), 'main');
  await Promise.all([
    page.waitForURL(/\/projects\/site\/deployments\?notice=deploy-started/),
    first.getByRole('button', { name: 'Deploy', exact: true }).click(),
  ]);
  await page.getByRole('status').filter({ hasText: 'Deploy started' }).waitFor();
  const [started] = await deployments();
  assert.ok(started, 'the API lists the deployment');
  assert.equal(started.environment, 'production');
  assert.equal(started.requestedBy, fixture.users.dev.email);
  const row = page.locator(`tr[data-deployment="${started.id}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-environment'), 'production');
  assert.match(await row.innerText(), new RegExp(fixture.users.dev.email.replace('.', '\\.')));

  // While it runs the environment's Deploy is disabled, with the reason beside it.
  const card = page.locator('section[data-environment="production"]');
  const deploy = card.getByRole('button', { name: 'Deploy to production' });
  if (await page.locator('[data-deploy-running]').count()) {
    assert.equal(await deploy.isDisabled(), true, 'Deploy is disabled while a deployment runs');
    assert.match(await card.locator('[data-busy]').innerText(), /available again once it ends/);
    await checkPage(page, 'deployments-running');
  }

  // The real agent builds and uploads dist; the page's live region follows (no reload).
  await page.evaluate(() => { window.__kilnMarker = 1; });
  await rowBecomes(page, started.runId, 'deployed', 60_000);
  await until(async () => !(await deploy.isDisabled()), 15_000, 'Deploy to be enabled again');
  assert.equal(await page.evaluate(() => window.__kilnMarker), 1, 'updated in place, not reloaded');
  assert.match(await card.locator('[data-live-deployment]').innerText(), /deployed\s+build #1/);
  assert.match(await card.locator('[data-last-good]').innerText(), /build #1/);

  // A second deploy from the card; once it is live, build #1 can be served again.
  await Promise.all([
    page.waitForURL(/notice=deploy-started/),
    deploy.click(),
  ]);
  const [second] = await deployments();
  assert.notEqual(second.runId, started.runId);
  await rowBecomes(page, second.runId, 'deployed', 60_000);
  const rollback = card.getByRole('button', { name: 'Roll back to #1 (production)' });
  await until(async () => (await rollback.count()) > 0, 15_000, 'the Roll back to #1 button');
  assert.equal(await rollback.innerText(), 'Roll back to #1');
  await checkPage(page, 'deployments');

  page.once('dialog', (dialog) => dialog.accept());
  await Promise.all([
    page.waitForURL(/notice=rolled-back/),
    rollback.click(),
  ]);
  await page.getByRole('status').filter({ hasText: 'Rolled back' }).waitFor();
  const live = page.locator('tr[data-live-row]');
  assert.equal(await live.getAttribute('data-run-id'), started.runId);
  assert.equal(await live.getAttribute('data-rollback'), '');
  const environments = await api(fixture.server, 'GET', '/api/v1/projects/site/environments', {
    token: fixture.server.adminToken,
  });
  assert.equal(environments.body.environments[0].current.runId, started.runId, 'production serves build #1 again');
  assert.match(await card.locator('[data-live-deployment]').innerText(), /build #1.*\(rollback\)/s);
  await checkPage(page, 'deployments-rolled-back');
  assert.deepEqual(problems, []);
  await context.close();
});

test('a developer cancels a deployment on its way with its Cancel button', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/projects/slowsite/deployments');
  await Promise.all([
    page.waitForURL(/notice=deploy-started/),
    page.locator('form[data-deploy-form=""]').getByRole('button', { name: 'Deploy', exact: true }).click(),
  ]);
  const list = await api(fixture.server, 'GET', '/api/v1/projects/slowsite/deployments', { token: fixture.server.adminToken });
  const [running] = list.body.deployments;
  const card = page.locator('section[data-environment="production"]');
  const cancel = card.getByRole('button', { name: `Cancel deployment ${running.id} (production)` });
  await cancel.waitFor();
  assert.equal(await page.locator(`tr[data-deployment="${running.id}"] form[data-cancel-deployment]`).count(), 1);
  await checkPage(page, 'deployments-cancellable');
  page.once('dialog', (dialog) => dialog.accept());
  await Promise.all([
    page.waitForURL(/notice=deploy-cancelled/),
    cancel.click(),
  ]);
  await page.getByRole('status').filter({ hasText: 'Cancelled' }).waitFor();
  await until(async () => {
    const row = page.locator(`tr[data-deployment="${running.id}"]`);
    return (await row.getAttribute('data-status')) === 'cancelled';
  }, 15_000, 'the deployment to read cancelled on the page');
  assert.equal(await page.locator('form[data-cancel-deployment]').count(), 0, 'nothing left to cancel');
  const build = await api(fixture.server, 'GET', `/api/v1/builds/${running.runId}`, { token: fixture.server.adminToken });
  assert.equal(build.body.status, 'cancelled');
  assert.deepEqual(problems, []);
  await context.close();
});

test('a viewer sees the deployments without Deploy or Roll back buttons', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.viewer);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/projects');
  await page.getByRole('link', { name: 'Deployments of site' }).click();
  await page.getByRole('heading', { name: 'Deployments of Project site', level: 1 }).waitFor();
  await page.locator('tr[data-deployment]').first().waitFor();
  assert.equal(await page.getByRole('button', { name: /^Deploy|^Roll back|^Cancel/ }).count(), 0);
  assert.equal(await page.locator('form[data-deploy-form], form[data-rollback-to], form[data-cancel-deployment]').count(), 0);
  await checkPage(page, 'deployments-viewer');
  assert.deepEqual(problems, []);
  await context.close();
});
