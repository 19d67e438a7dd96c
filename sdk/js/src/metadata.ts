// What a build learns about its surroundings: git repository, branch and commit, host,
// and CI provider metadata (GitHub Actions, GitLab CI, CircleCI). The same rules as
// `kiln run` (crates/kiln-cli/src/report/metadata.rs): CI variables win over git, since
// CI checkouts are often detached heads, and null members are left out.

import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';

/** Where a build runs, as stored on the build and in `build_started`'s `data.ci`. */
export interface BuildMetadata {
  /** `org/app`: from the CI's variables, else the git remote `origin`, else the checkout's directory name. */
  repo?: string;
  /** The branch (a pull request's head branch on GitHub Actions). */
  branch?: string;
  /** The full commit id. */
  commit?: string;
  /** The machine's host name. */
  host?: string;
  /** `{provider, url, …}` when running under GitHub Actions, GitLab CI or CircleCI. */
  ci?: Record<string, string>;
}

type Env = Record<string, string | undefined>;

function variable(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

function withoutEmpty(object: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(object)) {
    if (value !== undefined) out[key] = value;
  }
  return out;
}

/** The CI provider's view of the build, or undefined outside a known CI. */
export function ciMetadata(env: Env = process.env): BuildMetadata | undefined {
  if (variable(env, 'GITHUB_ACTIONS') === 'true') {
    const server = variable(env, 'GITHUB_SERVER_URL');
    const repo = variable(env, 'GITHUB_REPOSITORY');
    const run = variable(env, 'GITHUB_RUN_ID');
    return {
      repo,
      branch: variable(env, 'GITHUB_HEAD_REF') ?? variable(env, 'GITHUB_REF_NAME'),
      commit: variable(env, 'GITHUB_SHA'),
      ci: withoutEmpty({
        provider: 'github_actions',
        url: server && repo && run ? `${server}/${repo}/actions/runs/${run}` : undefined,
        workflow: variable(env, 'GITHUB_WORKFLOW'),
        job: variable(env, 'GITHUB_JOB'),
        runId: run,
        actor: variable(env, 'GITHUB_ACTOR'),
      }),
    };
  }
  if (variable(env, 'GITLAB_CI') === 'true') {
    return {
      repo: variable(env, 'CI_PROJECT_PATH'),
      branch: variable(env, 'CI_COMMIT_REF_NAME'),
      commit: variable(env, 'CI_COMMIT_SHA'),
      ci: withoutEmpty({
        provider: 'gitlab_ci',
        url: variable(env, 'CI_JOB_URL') ?? variable(env, 'CI_PIPELINE_URL'),
        pipelineId: variable(env, 'CI_PIPELINE_ID'),
        job: variable(env, 'CI_JOB_NAME'),
        user: variable(env, 'GITLAB_USER_LOGIN'),
      }),
    };
  }
  if (variable(env, 'CIRCLECI') === 'true') {
    const user = variable(env, 'CIRCLE_PROJECT_USERNAME');
    const name = variable(env, 'CIRCLE_PROJECT_REPONAME');
    return {
      repo: user && name ? `${user}/${name}` : user ? undefined : name,
      branch: variable(env, 'CIRCLE_BRANCH'),
      commit: variable(env, 'CIRCLE_SHA1'),
      ci: withoutEmpty({
        provider: 'circleci',
        url: variable(env, 'CIRCLE_BUILD_URL'),
        job: variable(env, 'CIRCLE_JOB'),
        buildNum: variable(env, 'CIRCLE_BUILD_NUM'),
        user: variable(env, 'CIRCLE_USERNAME'),
      }),
    };
  }
  return undefined;
}

/** The repository name from a remote URL (`git@host:org/app.git` → `org/app`). */
export function repoFromRemote(url: string): string {
  let trimmed = url.replace(/\/+$/, '');
  if (trimmed.endsWith('.git')) trimmed = trimmed.slice(0, -4);
  let path = trimmed;
  const scheme = trimmed.lastIndexOf('://');
  if (scheme >= 0) {
    const rest = trimmed.slice(scheme + 3);
    const slash = rest.indexOf('/');
    path = slash >= 0 ? rest.slice(slash + 1) : rest;
  }
  const colon = path.lastIndexOf(':');
  if (colon >= 0) path = path.slice(colon + 1);
  return path.replace(/^\/+/, '');
}

// The kernel's host name, read once per process ('' where there is none to read).
let kernelHostname: string | undefined;

export function hostname(env: Env = process.env): string | undefined {
  if (kernelHostname === undefined) {
    try {
      kernelHostname = readFileSync('/proc/sys/kernel/hostname', 'utf8').trim();
    } catch {
      // not Linux: fall back to the variable, then to Node's idea of it
      kernelHostname = '';
    }
  }
  if (kernelHostname) return kernelHostname;
  return variable(env, 'HOSTNAME') ?? (osHostname() || undefined);
}

function git(dir: string, args: string[], timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    try {
      execFile('git', ['-C', dir, ...args], { timeout: timeoutMs, windowsHide: true }, (error, stdout) => {
        if (error) return resolve(undefined);
        const text = String(stdout).trim();
        resolve(text === '' ? undefined : text);
      });
    } catch {
      resolve(undefined);
    }
  });
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * What git would answer, read from the repository's files (HEAD, refs, packed-refs,
 * config) instead of starting git four times — a build script should not pay for
 * subprocesses. Worktrees (`.git` as a file) are followed. Undefined when the layout is
 * not the plain one (then git itself is asked).
 */
export function readGitFiles(start: string): { toplevel: string; commit?: string; branch?: string; remote?: string } | undefined {
  let dir = resolve(start);
  for (;;) {
    const dotGit = join(dir, '.git');
    let gitDir: string | undefined;
    try {
      const stat = statSync(dotGit);
      if (stat.isDirectory()) gitDir = dotGit;
      else {
        const pointer = /^gitdir:\s*(.+)$/m.exec(readText(dotGit) ?? '');
        if (pointer) gitDir = resolve(dir, pointer[1].trim());
      }
    } catch {
      gitDir = undefined;
    }
    if (gitDir) {
      const common = readText(join(gitDir, 'commondir'));
      const commonDir = common ? resolve(gitDir, common.trim()) : gitDir;
      const head = readText(join(gitDir, 'HEAD'))?.trim();
      if (!head) return undefined;
      let commit: string | undefined;
      let branch: string | undefined;
      if (head.startsWith('ref: ')) {
        const ref = head.slice(5).trim();
        if (ref.startsWith('refs/heads/')) branch = ref.slice('refs/heads/'.length);
        commit = (readText(join(gitDir, ref)) ?? readText(join(commonDir, ref)))?.trim();
        if (!commit) {
          const packed = readText(join(commonDir, 'packed-refs')) ?? '';
          commit = packed.split('\n').find((line) => line.endsWith(` ${ref}`))?.split(' ')[0];
        }
      } else {
        commit = head;
      }
      if (!commit || !/^[0-9a-f]{40,64}$/.test(commit)) return undefined;
      const config = readText(join(commonDir, 'config')) ?? '';
      const section = /^\[remote "origin"\]\s*$([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(config);
      const remote = section ? /^\s*url\s*=\s*(.+?)\s*$/m.exec(section[1])?.[1] : undefined;
      return { toplevel: dir, commit, branch, remote };
    }
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/**
 * Collects the build's metadata from `dir` (git) and the environment (CI). Never
 * rejects: what cannot be learnt is left out. Git is asked only for what the CI's
 * variables do not already say, and from its files when they are laid out plainly.
 */
export async function collectMetadata(dir: string = process.cwd(), env: Env = process.env): Promise<BuildMetadata> {
  const metadata: BuildMetadata = { host: hostname(env) };
  const ci = ciMetadata(env);
  if (!(ci?.repo && ci.branch && ci.commit)) {
    const files = readGitFiles(dir);
    if (files) {
      metadata.commit = files.commit;
      metadata.branch = files.branch;
      metadata.repo = files.remote ? repoFromRemote(files.remote) : basename(files.toplevel) || undefined;
    } else {
      const timeout = 3000;
      const toplevel = await git(dir, ['rev-parse', '--show-toplevel'], timeout);
      if (toplevel) {
        const [commit, branch, remote] = await Promise.all([
          git(dir, ['rev-parse', 'HEAD'], timeout),
          git(dir, ['rev-parse', '--abbrev-ref', 'HEAD'], timeout),
          git(dir, ['config', '--get', 'remote.origin.url'], timeout),
        ]);
        metadata.commit = commit;
        metadata.branch = branch === 'HEAD' ? undefined : branch;
        metadata.repo = remote ? repoFromRemote(remote) : basename(toplevel) || undefined;
      }
    }
  }
  if (ci) {
    metadata.ci = ci.ci;
    metadata.repo = ci.repo ?? metadata.repo;
    metadata.branch = ci.branch ?? metadata.branch;
    metadata.commit = ci.commit ?? metadata.commit;
  }
  return metadata;
}
