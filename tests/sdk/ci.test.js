// The CI integrations, run the way each CI runs them, against the real server: the GitHub
// Action's steps (action.yml) with the variables GitHub Actions sets, and the GitLab CI
// and CircleCI snippets (sdk/ci/*.yml, quoted in sdk/js/README.md) with theirs. kiln is
// installed by the steps themselves, downloaded from a local file server.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { KILN_BIN, createProject, getBuild, getEvents, listBuilds, repoRoot, run, startServer } from './helpers.js';

const SHA = '4c1f0e0b3a2d9e8f7a6b5c4d3e2f1a0b9c8d7e6f';

/** Serves the kiln binary at /kiln, as a release asset would be. */
async function startFileServer() {
  const server = createServer((req, res) => {
    if (req.url !== '/kiln') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    createReadStream(KILN_BIN).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/kiln`, stop: () => new Promise((resolve) => server.close(resolve)) };
}

/** A tiny npm project (no dependencies) for the snippets' npm ci / npm test / npm run build. */
function npmProject(dir, { failTest = false } = {}) {
  writeFileSync(join(dir, 'package.json'), JSON.stringify({
    name: 'app', version: '1.0.0', private: true,
    scripts: { test: failTest ? 'echo 1 test failed && exit 3' : 'echo tests pass', build: 'echo built' },
  }));
  writeFileSync(join(dir, 'package-lock.json'), JSON.stringify({
    name: 'app', version: '1.0.0', lockfileVersion: 3, requires: true, packages: { '': { name: 'app', version: '1.0.0' } },
  }));
}

/** Evaluates the `${{ … }}` expressions this action uses: inputs (with defaults) and github.action_path. */
function expand(text, inputs, action) {
  return String(text).replace(/\$\{\{\s*([^}]+?)\s*\}\}/g, (_, expression) => {
    if (expression === 'github.action_path') return repoRoot.replace(/\/$/, '');
    const input = /^inputs\.([\w-]+)$/.exec(expression);
    if (input) {
      const name = input[1];
      if (!(name in action.inputs)) throw new Error(`action.yml uses an undeclared input ${name}`);
      return inputs[name] ?? action.inputs[name].default ?? '';
    }
    throw new Error(`the test does not evaluate \${{ ${expression} }}`);
  });
}

/** Runs the composite action's steps as the GitHub runner does; resolves to {code, outputs, log}. */
async function runAction(inputs, githubEnv, workspace) {
  const action = parse(readFileSync(join(repoRoot, 'action.yml'), 'utf8'));
  for (const [name, spec] of Object.entries(action.inputs)) {
    if (spec.required && inputs[name] === undefined) throw new Error(`input ${name} is required`);
  }
  assert.equal(action.runs.using, 'composite');
  const runnerTemp = mkdtempSync(join(tmpdir(), 'kiln-gha-runner-'));
  const files = { GITHUB_PATH: join(runnerTemp, 'path'), GITHUB_OUTPUT: join(runnerTemp, 'output'), GITHUB_ENV: join(runnerTemp, 'env') };
  for (const file of Object.values(files)) writeFileSync(file, '');
  const outputs = {};
  let log = '';
  let code = 0;
  try {
    for (const step of action.runs.steps) {
      assert.equal(step.shell, 'bash', `step ${step.name} runs with bash`);
      const added = readFileSync(files.GITHUB_PATH, 'utf8').split('\n').filter(Boolean).reverse();
      const env = {
        ...githubEnv,
        ...files,
        GITHUB_WORKSPACE: workspace,
        RUNNER_TEMP: runnerTemp,
        PATH: [...added, githubEnv.PATH ?? process.env.PATH].join(':'),
      };
      for (const [name, value] of Object.entries(step.env ?? {})) env[name] = expand(value, inputs, action);
      writeFileSync(files.GITHUB_OUTPUT, '');
      const cwd = step['working-directory'] ? join(workspace, expand(step['working-directory'], inputs, action)) : workspace;
      // GitHub runs `bash --noprofile --norc -eo pipefail {0}` on the step's script.
      const result = await run('bash', ['--noprofile', '--norc', '-eo', 'pipefail', '-c', expand(step.run, inputs, action)], { cwd, env, timeoutMs: 600_000 });
      log += `--- ${step.name}\n${result.stdout}${result.stderr}`;
      if (step.id) {
        outputs[step.id] = Object.fromEntries(
          readFileSync(files.GITHUB_OUTPUT, 'utf8').split('\n').filter(Boolean).map((line) => line.split(/=(.*)/s).slice(0, 2)),
        );
      }
      if (result.code !== 0) {
        code = result.code;
        break;
      }
    }
  } finally {
    rmSync(runnerTemp, { recursive: true, force: true });
  }
  const actionOutputs = Object.fromEntries(
    Object.entries(action.outputs).map(([name, spec]) => [name, spec.value.replace(/\$\{\{\s*steps\.([\w-]+)\.outputs\.([\w-]+)\s*\}\}/, (_, id, key) => outputs[id]?.[key] ?? '')]),
  );
  return { code, outputs: actionOutputs, log };
}

describe('CI integrations', () => {
  let server;
  let files;
  let token;
  const dirs = [];
  const workspace = () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-ci-'));
    dirs.push(dir);
    return dir;
  };

  before(async () => {
    server = await startServer();
    files = await startFileServer();
    token = await createProject(server, 'ci');
  });
  after(async () => {
    await files?.stop();
    await server?.stop();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  const githubEnv = (overrides = {}) => ({
    CI: 'true', GITHUB_ACTIONS: 'true', GITHUB_SERVER_URL: 'https://github.com', GITHUB_REPOSITORY: 'acme/widgets',
    GITHUB_SHA: SHA, GITHUB_REF: 'refs/heads/main', GITHUB_REF_NAME: 'main', GITHUB_HEAD_REF: '', GITHUB_RUN_ID: '9876543210',
    GITHUB_RUN_ATTEMPT: '1', GITHUB_WORKFLOW: 'CI', GITHUB_JOB: 'build', GITHUB_ACTOR: 'ada', GITHUB_EVENT_NAME: 'push',
    RUNNER_OS: 'Linux', HOME: workspace(), ...overrides,
  });

  test('GitHub Action: installs kiln from a release URL and reports the build with GitHub\'s metadata', async () => {
    const dir = workspace();
    const result = await runAction(
      { command: 'echo "built $GITHUB_SHA"', stages: 'Install=echo installing\nTest=echo tests pass\n', 'server-url': server.url, token, 'kiln-url': files.url, env: 'ci' },
      githubEnv(),
      dir,
    );
    assert.equal(result.code, 0, result.log);
    const runId = result.outputs['run-id'];
    assert.match(runId, /^[0-9a-f-]{36}$/, `the run-id output (${runId})`);
    const build = await getBuild(server, token, runId);
    assert.equal(build.status, 'success');
    assert.deepEqual([build.repo, build.branch, build.commit, build.env, build.origin], ['acme/widgets', 'main', SHA, 'ci', 'kiln-cli']);
    assert.deepEqual(build.stages.map((s) => [s.name, s.status]), [['Install', 'success'], ['Test', 'success']]);
    const [started] = await getEvents(server, token, runId);
    assert.deepEqual(started.data.ci, {
      provider: 'github_actions', url: 'https://github.com/acme/widgets/actions/runs/9876543210', workflow: 'CI', job: 'build', runId: '9876543210', actor: 'ada',
    });
  });

  test('GitHub Action: a pull request reports its head branch, and a failing command fails the step and the build', async () => {
    const dir = workspace();
    const result = await runAction(
      { command: 'echo compiling; exit 4', 'server-url': server.url, token, 'kiln-url': files.url, 'run-id': 'gha-pr-42' },
      githubEnv({ GITHUB_REF: 'refs/pull/42/merge', GITHUB_REF_NAME: '42/merge', GITHUB_HEAD_REF: 'feature/login', GITHUB_EVENT_NAME: 'pull_request' }),
      dir,
    );
    assert.equal(result.code, 4, 'the step exits with the command\'s code');
    assert.equal(result.outputs['run-id'], 'gha-pr-42');
    const build = await getBuild(server, token, 'gha-pr-42');
    assert.equal(build.status, 'failed');
    assert.equal(build.branch, 'feature/login');
  });

  test('GitHub Action: without kiln-url or source-path, and no kiln on PATH, the install step says what to give', async () => {
    const result = await runAction({ command: 'true', token }, githubEnv({ PATH: '/usr/bin:/bin' }), workspace());
    assert.notEqual(result.code, 0);
    assert.match(result.log, /give the action kiln-url \(a release binary\) or source-path/);
  });

  test('GitHub Action: builds kiln from source with cargo (source-path)', { skip: process.env.KILN_SDK_TEST_CARGO !== '1' && 'set KILN_SDK_TEST_CARGO=1 to build kiln with cargo (.ci/run does; the build is already there)' }, async () => {
    const result = await runAction(
      { command: 'echo from source', 'server-url': server.url, token, 'source-path': repoRoot, 'cargo-profile': 'dev' },
      githubEnv({ HOME: process.env.HOME }),
      workspace(),
    );
    assert.equal(result.code, 0, result.log);
    assert.equal((await getBuild(server, token, result.outputs['run-id'])).status, 'success');
  });

  /** Runs shell lines as the CI would, in `dir`, with kiln's download URL and the server set. */
  const snippetEnv = (ciEnv, home) => ({ ...ciEnv, HOME: home, KILN_URL: server.url, KILN_TOKEN: token, KILN_DOWNLOAD_URL: files.url, PATH: '/usr/local/bin:/usr/bin:/bin' });

  test('GitLab CI snippet: before_script and script, run with GitLab\'s variables', async () => {
    const job = parse(readFileSync(join(repoRoot, 'sdk/ci/gitlab-ci.yml'), 'utf8')).build;
    const dir = workspace();
    npmProject(dir);
    const before = (await listBuilds(server, token)).length;
    // GitLab runs before_script and script in one shell session, stopping at the first failure.
    const script = ['set -eo pipefail', ...job.before_script, ...job.script].join('\n');
    const env = snippetEnv({
      CI: 'true', GITLAB_CI: 'true', CI_PROJECT_PATH: 'acme/shop', CI_COMMIT_REF_NAME: 'release/2', CI_COMMIT_SHA: SHA,
      CI_JOB_URL: 'https://gitlab.com/acme/shop/-/jobs/555', CI_PIPELINE_ID: '321', CI_JOB_NAME: 'build', GITLAB_USER_LOGIN: 'grace',
    }, workspace());
    env.PATH = `${join(process.execPath, '..')}:${env.PATH}`;
    const result = await run('bash', ['-c', script], { cwd: dir, env });
    assert.equal(result.code, 0, result.stderr);
    const builds = await listBuilds(server, token);
    assert.equal(builds.length, before + 1);
    const build = await getBuild(server, token, builds[0].runId);
    assert.equal(build.status, 'success');
    assert.deepEqual([build.repo, build.branch, build.commit], ['acme/shop', 'release/2', SHA]);
    assert.deepEqual(build.stages.map((s) => s.name), ['Install', 'Test']);
    const [started] = await getEvents(server, token, build.runId);
    assert.deepEqual(started.data.ci, { provider: 'gitlab_ci', url: 'https://gitlab.com/acme/shop/-/jobs/555', pipelineId: '321', job: 'build', user: 'grace' });
  });

  test('CircleCI snippet: each run step in its own shell with BASH_ENV, with CircleCI\'s variables; a failing test fails the build', async () => {
    const config = parse(readFileSync(join(repoRoot, 'sdk/ci/circleci-config.yml'), 'utf8'));
    assert.deepEqual(config.workflows.build.jobs, ['build']);
    const dir = workspace();
    npmProject(dir, { failTest: true });
    const home = workspace();
    const bashEnv = join(home, '.circleci-bash-env');
    writeFileSync(bashEnv, '');
    const env = snippetEnv({
      CI: 'true', CIRCLECI: 'true', CIRCLE_PROJECT_USERNAME: 'acme', CIRCLE_PROJECT_REPONAME: 'api', CIRCLE_BRANCH: 'main', CIRCLE_SHA1: SHA,
      CIRCLE_BUILD_URL: 'https://app.circleci.com/pipelines/gh/acme/api/7/workflows/x/jobs/12', CIRCLE_JOB: 'build', CIRCLE_BUILD_NUM: '12',
      CIRCLE_USERNAME: 'linus', BASH_ENV: bashEnv,
    }, home);
    env.PATH = `${join(process.execPath, '..')}:${env.PATH}`;
    const before = (await listBuilds(server, token)).length;
    const codes = [];
    for (const step of config.jobs.build.steps) {
      if (step === 'checkout') continue;
      // CircleCI runs each step with `/bin/bash -eo pipefail`, which sources $BASH_ENV first.
      const result = await run('/bin/bash', ['-eo', 'pipefail', '-c', step.run.command], { cwd: dir, env });
      codes.push(result.code);
      if (result.code !== 0) break;
    }
    assert.deepEqual(codes, [0, 3], 'the install succeeds; the build step fails with npm test\'s code');
    const builds = await listBuilds(server, token);
    assert.equal(builds.length, before + 1);
    const build = await getBuild(server, token, builds[0].runId);
    assert.equal(build.status, 'failed');
    assert.deepEqual([build.repo, build.branch, build.commit], ['acme/api', 'main', SHA]);
    assert.deepEqual(build.stages.map((s) => [s.name, s.status]), [['Install', 'success'], ['Test', 'failed']]);
    const [started] = await getEvents(server, token, build.runId);
    assert.equal(started.data.ci.provider, 'circleci');
    assert.equal(started.data.ci.buildNum, '12');
  });

  test('the README quotes the snippets exactly as tested', () => {
    const readme = readFileSync(join(repoRoot, 'sdk/js/README.md'), 'utf8');
    for (const file of ['sdk/ci/gitlab-ci.yml', 'sdk/ci/circleci-config.yml']) {
      const text = readFileSync(join(repoRoot, file), 'utf8').trim();
      assert.ok(readme.includes(text), `sdk/js/README.md quotes ${file} as it is`);
    }
    assert.ok(existsSync(join(repoRoot, 'action.yml')));
  });
});
