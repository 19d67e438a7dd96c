// What @kiln-ci/sdk adds to a real build: a jest@30 run of 2,000 tests with and without
// the Kiln reporter, and a vite@8 build of a 1,500-module app with and without the Kiln
// plugin, alternating, several rounds in the same run, against a real `kiln serve` on
// loopback. Reports the median wall time, the median of the paired differences (each
// round's run with the SDK against the one without it), the same for the main process's
// CPU time, and the main process's peak RSS.
//
//   node bench/sdk_overhead.mjs [--rounds 7]      # needs tests/sdk installed: cd tests/sdk && npm ci && npm run pretest
//
// KILN_BIN picks the server binary (default target/release/kiln, else target/debug/kiln).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('..', import.meta.url));
const testsDir = join(repo, 'tests/sdk');
const roundsArg = process.argv.indexOf('--rounds');
const rounds = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 7;
const kilnBin = process.env.KILN_BIN || [join(repo, 'target/release/kiln'), join(repo, 'target/debug/kiln')].find(existsSync);
if (!kilnBin || !existsSync(join(testsDir, 'node_modules/@kiln-ci/sdk'))) {
  console.error('needs a kiln binary (KILN_BIN or target/*/kiln) and tests/sdk installed (cd tests/sdk && npm ci && npm run pretest)');
  process.exit(2);
}

function exec(command, args, options = {}) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stderr = '';
    child.stdout.resume();
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const usage = /KILN_BENCH_MAXRSS=(\d+) KILN_BENCH_CPU=(\d+)/.exec(stderr);
      resolve({ code, ms, maxRssKb: usage ? Number(usage[1]) : undefined, cpuMs: usage ? Number(usage[2]) / 1000 : undefined, stderr });
    });
  });
}

async function startServer() {
  const dataDir = join(tmpdir(), `kiln-bench-sdk-${randomBytes(4).toString('hex')}`);
  const adminToken = `kiln_admin_${randomBytes(16).toString('hex')}`;
  const child = spawn(kilnBin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    env: { ...process.env, KILN_ADMIN_TOKEN: adminToken, KILN_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const match = /kiln listening on (http:\/\/\S+)/.exec(log);
      if (match) resolve(match[1].replace(/\/$/, ''));
    });
    child.on('exit', () => reject(new Error(log)));
  });
  const call = async (path, body) => {
    const response = await fetch(`${url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return response.json();
  };
  await call('/api/v1/projects', { slug: 'bench', name: 'bench' });
  const { token } = await call('/api/v1/projects/bench/tokens', { name: 'bench', scopes: ['ingest', 'read'] });
  return { url, token, stop: () => { child.kill('SIGTERM'); rmSync(dataDir, { recursive: true, force: true }); } };
}

// Undelivered events (none expected) go to a spool of the benchmark's own.
process.env.KILN_SPOOL_DIR = join(tmpdir(), `kiln-bench-sdk-spool-${process.pid}`);

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

const work = join(testsDir, 'work', `bench-${randomBytes(4).toString('hex')}`);
mkdirSync(work, { recursive: true });
// Reports the process's peak RSS at exit (loaded with -r into the jest and vite main processes).
const rssReporter = join(work, 'maxrss.cjs');
writeFileSync(rssReporter, "process.on('exit', () => { const u = process.resourceUsage(); process.stderr.write(`KILN_BENCH_MAXRSS=${u.maxRSS} KILN_BENCH_CPU=${u.userCPUTime + u.systemCPUTime}\\n`); });\n");

// 2,000 tests: 40 files of 50.
const jestDir = join(work, 'jest');
mkdirSync(jestDir);
for (let file = 0; file < 40; file += 1) {
  let text = `describe('suite ${file}', () => {\n`;
  for (let t = 0; t < 50; t += 1) text += `  test('case ${t}', () => { expect(${t} + ${file}).toBe(${t + file}); });\n`;
  writeFileSync(join(jestDir, `s${file}.test.js`), `${text}});\n`);
}
writeFileSync(join(jestDir, 'jest.config.cjs'), `module.exports = { rootDir: __dirname, testEnvironment: 'node',
  reporters: process.env.KILN_BENCH_WITH === '1' ? ['default', '@kiln-ci/sdk/jest'] : ['default'] };\n`);

// A vite app of 1,500 modules in a chain of imports.
const viteDir = join(work, 'vite');
mkdirSync(join(viteDir, 'src'), { recursive: true });
writeFileSync(join(viteDir, 'index.html'), '<!doctype html><div id="app"></div><script type="module" src="/src/main.js"></script>\n');
const imports = [];
for (let m = 0; m < 1500; m += 1) {
  writeFileSync(join(viteDir, 'src', `m${m}.js`), `export const value${m} = (x) => x * ${m} + ${'"'}${'pad'.repeat(20)}${'"'}.length;\n`);
  imports.push(`import { value${m} } from './m${m}.js';`);
}
writeFileSync(join(viteDir, 'src/main.js'), `${imports.join('\n')}\ndocument.querySelector('#app').textContent = String(${Array.from({ length: 1500 }, (_, m) => `value${m}(1)`).join(' + ')});\n`);
writeFileSync(join(viteDir, 'vite.config.mjs'), `import kiln from '@kiln-ci/sdk/vite';
export default { logLevel: 'silent', plugins: process.env.KILN_BENCH_WITH === '1' ? [kiln()] : [] };\n`);

const server = await startServer();
const results = { jest: { with: [], without: [] }, vite: { with: [], without: [] } };
const jobs = {
  jest: { cwd: testsDir, args: ['-r', rssReporter, join(testsDir, 'node_modules/jest/bin/jest.js'), '--config', join(jestDir, 'jest.config.cjs'), '--ci', '--silent'] },
  vite: { cwd: viteDir, args: ['-r', rssReporter, join(testsDir, 'node_modules/vite/bin/vite.js'), 'build'] },
};
try {
  for (const [name, job] of Object.entries(jobs)) {
    // One warm-up of each (file system caches, jest's cache), not counted.
    for (const withSdk of ['0', '1']) {
      await exec(process.execPath, job.args, { cwd: job.cwd, env: { ...process.env, KILN_URL: server.url, KILN_TOKEN: server.token, KILN_BENCH_WITH: withSdk } });
    }
    for (let round = 0; round < rounds; round += 1) {
      // Alternate which goes first, so drift affects both alike.
      const order = round % 2 === 0 ? ['0', '1'] : ['1', '0'];
      for (const withSdk of order) {
        const result = await exec(process.execPath, job.args, { cwd: job.cwd, env: { ...process.env, KILN_URL: server.url, KILN_TOKEN: server.token, KILN_BENCH_WITH: withSdk } });
        if (result.code !== 0) throw new Error(`${name} failed:\n${result.stderr}`);
        results[name][withSdk === '1' ? 'with' : 'without'].push(result);
      }
    }
  }
} finally {
  server.stop();
  rmSync(work, { recursive: true, force: true });
}

console.log(`rounds: ${rounds} (alternating), kiln: ${kilnBin}, node ${process.versions.node}`);
// This machine's speed drifts by tens of percent between identical runs a few seconds
// apart, so besides the medians of each set the table gives the median of the paired
// differences: each round's run with the SDK against the run without it beside it.
console.log('| run | without the SDK | with the SDK | wall time added (medians) | paired: median added | main process CPU added (paired) | peak RSS without | with | RSS added |');
console.log('|---|---|---|---|---|---|---|---|---|');
const pct = (part, whole) => `${((part / whole) * 100).toFixed(1)}%`;
for (const [name, { with: on, without: off }] of Object.entries(results)) {
  const a = median(off.map((r) => r.ms));
  const b = median(on.map((r) => r.ms));
  const pairedWall = median(on.map((r, i) => r.ms - off[i].ms));
  const pairedCpu = median(on.map((r, i) => r.cpuMs - off[i].cpuMs));
  const cpuOff = median(off.map((r) => r.cpuMs));
  const ra = median(off.map((r) => r.maxRssKb)) / 1024;
  const rb = median(on.map((r) => r.maxRssKb)) / 1024;
  const label = name === 'jest' ? 'jest@30, 2,000 tests (40 files)' : 'vite@8 build, 1,500 modules';
  console.log(`| ${label} | ${a.toFixed(0)} ms | ${b.toFixed(0)} ms | ${(b - a).toFixed(0)} ms (${pct(b - a, a)}) | ${pairedWall.toFixed(0)} ms (${pct(pairedWall, a)}) | ${pairedCpu.toFixed(0)} ms (${pct(pairedCpu, cpuOff)}) | ${ra.toFixed(1)} MB | ${rb.toFixed(1)} MB | ${(rb - ra).toFixed(1)} MB |`);
}
