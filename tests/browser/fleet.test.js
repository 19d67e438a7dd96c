// The agents page (a real `kiln agent`: labels, health, CPU/memory/disk gauges) and the
// queue page (a job waiting for a label no agent offers, with its reason).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  api,
  checkPage,
  launchBrowser,
  loggedInContext,
  startFixture,
  stopFixture,
  triggerBuild,
  until,
  watchConsole,
} from './harness.js';

let fixture;
let browser;

before(async () => {
  fixture = await startFixture();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  if (fixture) await stopFixture(fixture);
});

test('the agents page lists the agent, online, with its labels and CPU, memory and disk gauges', async () => {
  const context = await loggedInContext(browser, fixture, fixture.users.viewer);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/agents');
  await page.getByRole('heading', { name: 'Agents', level: 1 }).waitFor();

  const agent = page.locator('tr[data-agent="a1"]');
  await agent.waitFor();
  assert.match(await agent.getByRole('rowheader').innerText(), /\ba1\b/, 'names the agent');
  assert.equal(await agent.locator('[data-agent-state]').innerText(), 'online');
  const labels = await agent.getByRole('list', { name: 'Labels of a1' }).getByRole('listitem').allInnerTexts();
  assert.deepEqual(labels.sort(), ['linux', 'x86_64']);
  assert.match(await agent.locator('time[data-ago]').innerText(), /s ago|min ago/, 'the last heartbeat’s age');

  // CPU, memory and disk gauges: meters (or progress bars) with accessible names.
  const gauges = agent.locator('meter, [role="meter"], progress, [role="progressbar"]');
  assert.ok((await gauges.count()) >= 3, `three gauges, found ${await gauges.count()}`);
  const names = [];
  for (let i = 0; i < (await gauges.count()); i += 1) {
    const gauge = gauges.nth(i);
    const name = (await gauge.getAttribute('aria-label')) || (await gauge.evaluate((el) => {
      const labelledBy = el.getAttribute('aria-labelledby');
      if (labelledBy) return labelledBy.split(/\s+/).map((id) => document.getElementById(id)?.textContent || '').join(' ');
      return el.labels?.[0]?.textContent || el.title || '';
    }));
    names.push(name);
  }
  for (const what of [/cpu/i, /memory/i, /disk/i]) {
    assert.ok(names.some((n) => what.test(n)), `a gauge named ${what}: ${JSON.stringify(names)}`);
  }
  await checkPage(page, 'agents');
  assert.deepEqual(problems, []);
  await context.close();
});

test('the queue page shows a waiting job and the reason it waits', async () => {
  const build = await triggerBuild(fixture, 'gpu');
  const job = build.jobs.find((j) => j.step === 'train');
  await until(async () => {
    const queue = await api(fixture.server, 'GET', '/api/v1/queue', { token: fixture.server.adminToken });
    return queue.body.jobs?.find((j) => j.id === job.id && /no matching agent/.test(j.waitingFor || ''));
  }, 10_000, 'the API to report the job waiting for an agent');

  const context = await loggedInContext(browser, fixture, fixture.users.dev);
  const page = await context.newPage();
  const problems = watchConsole(page);
  await page.goto('/queue');
  await page.getByRole('heading', { name: 'Queue', level: 1 }).waitFor();
  const waiting = page.getByRole('table', { name: /^Waiting jobs/ });
  const row = waiting.locator(`tr[data-job="${job.id}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-state'), 'queued');
  const text = await row.innerText();
  assert.match(text, /\bgpu\b/, 'names the project');
  assert.match(text, /\btrain\b/, 'names the step');
  assert.match(await row.locator('[data-waiting-for]').innerText(), /^no matching agent: no connected agent has labels gpu/, 'says why it waits');
  await checkPage(page, 'queue');
  assert.deepEqual(problems, []);
  await context.close();

  await api(fixture.server, 'POST', `/api/v1/projects/gpu/builds/${build.runId}/cancel`, {
    token: fixture.server.adminToken,
  });
});
