// Logging in and out through the real forms in headless Chromium.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkPage, launchBrowser, startFixture, stopFixture, watchConsole } from './harness.js';

let fixture;
let browser;

before(async () => {
  fixture = await startFixture({ agent: false });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
});

test('an anonymous visitor is sent to the login form; a wrong password shows the error, the right one lands on the page asked for; logout ends the session', async () => {
  const context = await browser.newContext({ baseURL: fixture.server.url });
  const page = await context.newPage();
  // The refused login answers 401 (with the form); Chromium reports that status.
  const problems = watchConsole(page, [/status of 401 \(Unauthorized\)/]);
  const { email, password } = fixture.users.admin;

  // An anonymous browser asking for a page is redirected to /login?next=…
  await page.goto('/queue');
  assert.equal(new URL(page.url()).pathname, '/login');
  assert.equal(new URL(page.url()).searchParams.get('next'), '/queue');
  await checkPage(page, 'login');

  // Wrong password: the form again, with the error and the email kept.
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Log in' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /wrong email or password/i);
  assert.equal(await page.getByLabel('Email').inputValue(), email);
  assert.equal(new URL(page.url()).pathname, '/login');
  await checkPage(page, 'login-error');

  // The right password: lands on the page it asked for (`next`), logged in.
  await page.getByLabel('Password').fill(password);
  await Promise.all([page.waitForURL('**/queue'), page.getByRole('button', { name: 'Log in' }).click()]);
  assert.equal(new URL(page.url()).pathname, '/queue');
  assert.match(await page.locator('header .who').innerText(), /Ada Admin/);

  // Logging in without `next` lands on the builds overview `/`.
  await page.goto('/login');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await Promise.all([page.waitForURL((url) => url.pathname === '/'), page.getByRole('button', { name: 'Log in' }).click()]);
  assert.equal(new URL(page.url()).pathname, '/');
  await page.getByRole('heading', { name: 'Builds', level: 1 }).waitFor();

  // Log out: back on the login form, and the pages ask for a login again.
  const session = (await context.cookies()).find((c) => c.name === 'kiln_session');
  assert.ok(session?.httpOnly, 'the session cookie is HttpOnly');
  await Promise.all([page.waitForURL('**/login'), page.getByRole('button', { name: 'Log out' }).click()]);
  const cookies = await context.cookies();
  assert.equal(cookies.some((c) => c.name === 'kiln_session' && c.value), false, 'the session cookie is cleared');
  await page.goto('/');
  assert.equal(new URL(page.url()).pathname, '/login');
  // The old cookie, replayed, no longer works: the session was ended on the server.
  await context.addCookies([session]);
  await page.goto('/agents');
  assert.equal(new URL(page.url()).pathname, '/login');

  assert.deepEqual(problems, []);
  await context.close();
});
