// Issue 20's dashboard points in the browser: a failed build's bar stops where the build
// stopped (also when the page watched it fail), "Triggered by" names the token, every time
// reads "… ago" with the exact UTC time as its tooltip, exit codes read "exit code N", and
// an instance admin's Users page creates a user, deactivates them and resets a password.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  PASSWORD,
  api,
  checkPage,
  launchBrowser,
  loggedInContext,
  makeRepo,
  must,
  startFixture,
  stopFixture,
  until,
  waitForBuild,
  watchConsole,
} from './harness.js';
import { markerSurvives, setMarker } from './ui.js';

/** Three steps in a row: the first passes, the second exits with 3, the third never runs. */
const FAILING_PIPELINE = `steps:
  - name: prepare
    run: |
      echo "preparing"
      sleep 2
  - name: broken
    depends_on: prepare
    run: |
      echo "about to fail"
      exit 3
  - name: publish
    depends_on: broken
    run: echo "never printed"
`;

let fixture;
let browser;
let ciToken;
const root = { email: 'root@example.com', name: 'Root Admin', password: PASSWORD };

before(async () => {
  fixture = await startFixture();
  browser = await launchBrowser();
  const admin = fixture.server.adminToken;
  await must(fixture.server, 'POST', '/api/v1/projects', { token: admin, body: { slug: 'fails', name: 'Fails' } });
  const dir = makeRepo(FAILING_PIPELINE, join(fixture.tmp, 'repo-fails'));
  await must(fixture.server, 'PUT', '/api/v1/projects/fails/repo', { token: admin, body: { repo: dir } });
  ciToken = await must(fixture.server, 'POST', '/api/v1/projects/fails/tokens', {
    token: admin,
    body: { name: 'ci-bot', scopes: ['ingest', 'read'] },
  });
  await must(fixture.server, 'PUT', `/api/v1/projects/fails/members/${encodeURIComponent(fixture.users.dev.email)}`, {
    token: admin,
    body: { role: 'developer' },
  });
  await must(fixture.server, 'POST', '/api/v1/users', {
    token: admin,
    body: { ...root, instanceAdmin: true },
  });
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
});

/** Every <time> on the page: its text, title and datetime; and any raw instant in the visible text. */
const readTimes = (page) => page.evaluate(() => ({
  times: [...document.querySelectorAll('time')].map((el) => ({
    text: el.textContent.trim(),
    title: el.getAttribute('title') || '',
    datetime: el.getAttribute('datetime') || '',
  })),
  rawInstants: (document.querySelector('main').innerText.match(/\d{4}-\d\d-\d\dT\d\d:\d\d/g) || []),
}));

function assertOneTimeFormat(found, where) {
  assert.ok(found.times.length > 0, `${where}: some times are shown`);
  for (const time of found.times) {
    assert.match(time.text, /^(\d+ (s|min|h|d) ago|in \d+ (s|min|h|d))$/, `${where}: ${JSON.stringify(time)}`);
    assert.match(time.title, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/, `${where}: ${JSON.stringify(time)}`);
    assert.equal(time.title, `${time.datetime.slice(0, 10)} ${time.datetime.slice(11, 19)} UTC`, where);
  }
  assert.deepEqual(found.rawInstants, [], `${where}: no raw timestamps in the text`);
}

/** The build page's bar: value, words, width of the fill (percent of the track) and colour. */
const readBar = (page, root = '[data-build]') => page.evaluate((selector) => {
  const scope = document.querySelector(selector);
  const bar = scope.querySelector('[data-progress-bar]');
  const fill = bar.querySelector('.bar');
  return {
    now: bar.getAttribute('aria-valuenow'),
    text: bar.getAttribute('aria-valuetext'),
    label: scope.querySelector('[data-percent]').textContent.trim(),
    share: fill.getBoundingClientRect().width / bar.getBoundingClientRect().width,
    colour: getComputedStyle(fill).backgroundColor,
    className: bar.className,
  };
}, root);

test('a failed build stops its bar where it stopped, names its token, and reads exit codes and times one way', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  const problems = watchConsole(page);
  const built = await must(fixture.server, 'POST', '/api/v1/projects/fails/builds', { token: ciToken.token, body: {} });
  // The page watches the build fail, without a reload.
  await page.goto(`/builds/${built.runId}`);
  await setMarker(page);
  await until(async () => (await page.getAttribute('[data-build]', 'data-status')) === 'failed', 60_000, 'the build page to show the failure');
  await until(async () => (await readBar(page)).text === 'failed at 33%', 10_000, 'the bar to say where the build stopped');
  assert.ok(await markerSurvives(page), 'the page was not reloaded');
  const live = await readBar(page);
  assert.equal(live.now, '33');
  assert.equal(live.label, 'failed at 33%');
  assert.ok(live.share > 0.25 && live.share < 0.42, `the fill covers a third of the track, not all of it: ${live.share}`);
  assert.equal(live.colour, 'rgb(207, 34, 46)', 'red, the failed colour');

  // The same after a reload, with the words and the times.
  await page.reload();
  const bar = await readBar(page);
  assert.equal(bar.text, 'failed at 33%');
  assert.ok(bar.share > 0.25 && bar.share < 0.42, `${bar.share}`);
  const triggered = await page.locator('dt:text-is("Triggered by") + dd').innerText();
  assert.equal(triggered, `token 'ci-bot' (#${ciToken.id}), API`);
  const broken = page.locator('li[data-step="broken"]');
  assert.match(await broken.innerText(), /exit code 3/);
  assert.match(await page.locator('li[data-step="prepare"]').innerText(), /exit code 0/);
  assert.match(await page.locator('li[data-step="publish"]').innerText(), /skipped/);
  const text = await page.locator('main').innerText();
  assert.doesNotMatch(text, /exit_status|exit status/);
  const stageFailed = page.locator('tr[data-type="stage_failed"]').first();
  assert.match(await stageFailed.innerText(), /exit code 3/);
  assertOneTimeFormat(await readTimes(page), 'build page');
  // The tooltip is the exact time (hovering shows it; the title is what the browser shows).
  const started = page.locator('dt:text-is("Started") + dd time').first();
  assert.match(await started.getAttribute('title'), / UTC$/);
  await checkPage(page, 'build-failed-stopped');

  // The overview's row says the same.
  await page.goto('/?project=fails');
  const row = `tr[data-run-id="${built.runId}"]`;
  await page.locator(row).waitFor();
  const rowBar = await readBar(page, row);
  assert.equal(rowBar.text, 'failed at 33%');
  assert.ok(rowBar.share > 0.25 && rowBar.share < 0.42, `${rowBar.share}`);
  assert.match(await page.locator(row).innerText(), new RegExp(`token 'ci-bot' \\(#${ciToken.id}\\), API`));
  assertOneTimeFormat(await readTimes(page), 'overview');
  await checkPage(page, 'overview-failed-stopped');
  assert.deepEqual(problems, []);
  await context.close();
});

test('an instance admin creates a user, deactivates them and resets their password on the Users page', async () => {
  // Others see no Users link, and the page refuses them.
  const devContext = await loggedInContext(browser, fixture, fixture.users.admin);
  const devPage = await devContext.newPage();
  await devPage.goto('/');
  assert.equal(await devPage.getByRole('link', { name: 'Users', exact: true }).count(), 0);
  const refused = await devPage.goto('/users');
  assert.equal(refused.status(), 403);
  await devContext.close();

  const context = await loggedInContext(browser, fixture, root);
  const page = await context.newPage();
  // The refused duplicate below answers 409, which the browser reports.
  const problems = watchConsole(page, [/status of 409/]);
  page.on('dialog', (dialog) => dialog.accept());
  await page.goto('/');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Users', exact: true }).click();
  await page.waitForURL('**/users');
  assert.ok(await page.locator('tr[data-user="root@example.com"]').isVisible());
  assertOneTimeFormat(await readTimes(page), 'users page');
  await checkPage(page, 'users');

  // Create: the generated password is shown once and logs in.
  const form = page.getByRole('form', { name: 'Create user' });
  await form.getByLabel('Email').fill('newcomer@example.com');
  await form.getByLabel('Name', { exact: true }).fill('New Comer');
  await form.getByRole('button', { name: 'Create user' }).click();
  await page.getByRole('heading', { name: 'User created: newcomer@example.com' }).waitFor();
  const password = await page.locator('input[data-secret]').inputValue();
  assert.ok(password.length >= 16, password);
  await checkPage(page, 'users-password-once');
  const login = (secret) => api(fixture.server, 'POST', '/api/v1/session', {
    body: { email: 'newcomer@example.com', password: secret },
  });
  assert.equal((await login(password)).status, 200, 'the shown password logs in');
  await page.getByRole('link', { name: 'Done: back to the users' }).click();
  const row = page.locator('tr[data-user="newcomer@example.com"]');
  assert.equal(await row.getAttribute('data-state'), 'active');

  // Bad input: the reason on the page, never a 500.
  await form.getByLabel('Email').fill('newcomer@example.com');
  await form.getByLabel('Name', { exact: true }).fill('Twice');
  await form.getByRole('button', { name: 'Create user' }).click();
  await page.getByRole('alert').waitFor();
  assert.match(await page.getByRole('alert').innerText(), /exists already/);

  // Deactivate (after the confirm dialog): the password no longer logs in.
  await page.getByRole('button', { name: 'Deactivate newcomer@example.com' }).click();
  await page.getByRole('status').waitFor();
  assert.equal(await page.locator('tr[data-user="newcomer@example.com"]').getAttribute('data-state'), 'deactivated');
  assert.equal((await login(password)).status, 401, 'a deactivated user cannot log in');
  await page.getByRole('button', { name: 'Reactivate newcomer@example.com' }).click();
  await until(async () => (await page.locator('tr[data-user="newcomer@example.com"]').getAttribute('data-state')) === 'active', 5_000, 'the user to be active again');
  assert.equal((await login(password)).status, 200);

  // Reset: a new password, shown once; the old one stops working.
  await page.getByRole('button', { name: 'Reset password of newcomer@example.com' }).click();
  await page.getByRole('heading', { name: 'New password for newcomer@example.com' }).waitFor();
  const reset = await page.locator('input[data-secret]').inputValue();
  assert.notEqual(reset, password);
  assert.equal((await login(password)).status, 401, 'the old password is gone');
  assert.equal((await login(reset)).status, 200, 'the new one logs in');
  assert.deepEqual(problems, []);
  await context.close();
});
