// BuildTracker: reports one build's lifecycle (started, stages, progress, custom events,
// metrics, completed or failed) to a Kiln server. Every public method is guarded: the
// SDK never throws into the build it observes, and its own problems are reported once on
// stderr (or to `onWarning`). Delivery is the Sender's job (sender.ts).

import { randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';

import { type BuildMetadata, ciMetadata, collectMetadata, hostname } from './metadata.js';
import { type FlushResult, Sender, type SenderStats, SDK_VERSION, defaultSpoolDir } from './sender.js';
import { type EventFields, LIMITS, isValidEventType, isValidRunId, serializeEvent, stageName } from './wire.js';

/** How to reach Kiln and how to behave. Every member is optional; see each for its default. */
export interface BuildTrackerOptions {
  /** The server, e.g. `http://kiln:8090`. Default: `KILN_URL`, else `OM_BUILD_EVENT_URL`, else `http://127.0.0.1:8090`. */
  url?: string;
  /** A project token with the `ingest` scope. Default: `KILN_TOKEN`, else `OM_BUILD_EVENT_TOKEN`. Without one nothing is sent (one warning). */
  token?: string;
  /** Deployment environment label copied onto the build (`prod`). Default: `KILN_ENV`. */
  env?: string;
  /** The build's `origin`. Default: `kiln-sdk-js`. */
  origin?: string;
  /** Milliseconds between heartbeats while the build runs; 0 turns them off. Default: `KILN_HEARTBEAT_INTERVAL` seconds, else 25 s. */
  heartbeatIntervalMs?: number;
  /** Longest wait for delivery when the build ends or the process exits. Default: `KILN_FLUSH_TIMEOUT` seconds, else 5 s. */
  flushTimeoutMs?: number;
  /** Events per request, at most the server's 1,000. Default: 500. */
  batchSize?: number;
  /** How long a new event waits for others to share its request. Default: 100 ms. */
  lingerMs?: number;
  /** One request's time limit. Default: 10 s. */
  requestTimeoutMs?: number;
  /** Where undelivered events are kept for `kiln spool send`: `true` (default: `KILN_SPOOL_DIR`, else `~/.local/state/kiln/spool`), a directory, or `false`. */
  spool?: boolean | string;
  /** Read git and CI metadata (repository, branch, commit, CI links) for `build_started`. Default: true. */
  metadata?: boolean;
  /** The directory git is asked about. Default: `process.cwd()`. */
  cwd?: string;
  /** Called with each warning (delivery problems, refused events) instead of printing it on stderr. */
  onWarning?: (message: string) => void;
  /** Print no warnings at all. Default: false. */
  silent?: boolean;
  /** Environment to read the defaults from. Default: `process.env`. */
  environment?: Record<string, string | undefined>;
}

/** How a build starts. */
export interface StartOptions {
  /** The build's run id. Default: `KILN_RUN_ID` (joining that build), else a new UUID. */
  runId?: string;
  /**
   * Report into a build someone else owns (e.g. the `kiln run` around this process): no
   * `build_started`, and `complete`/`fail` send no build end, only flush. Default: true
   * when the run id came from `KILN_RUN_ID`, else false.
   */
  join?: boolean;
  /** Start this stage at once. */
  stage?: string;
  /** The command line shown on the build. Default: this process's arguments. */
  command?: string;
  /** The repository (`org/app`) instead of the collected one. */
  repo?: string;
  /** The branch instead of the collected one. */
  branch?: string;
  /** The commit instead of the collected one. */
  commit?: string;
  /** This build's stale timeout in seconds (5–604,800); the server's default otherwise. */
  heartbeatTimeoutSecs?: number;
  /** Extra members of `build_started`'s `data` (next to `ci` and `sdk`). */
  data?: Record<string, unknown>;
}

/** How a build or stage ends. */
export interface EndOptions {
  /** Text stored as the event's `message`. */
  message?: string;
  /** Stored as the event's `data`. */
  data?: Record<string, unknown>;
  /** The stage a failure happened in. Default: the last failed stage, else the innermost running one. */
  stage?: string;
}

/** A stage started with `beginStage`; end it once with `complete` or `fail`. */
export interface StageHandle {
  /** The stage name as sent (trimmed, at most 200 characters). */
  readonly name: string;
  /** Sends `stage_completed` with the measured duration. */
  complete(options?: EndOptions): void;
  /** Sends `stage_failed` with the error's message and the measured duration. */
  fail(error?: unknown, options?: EndOptions): void;
}

/** Extra fields of a custom event. */
export interface EventOptions {
  /** The stage the event belongs to (custom events with a stage do not start or end it). */
  stage?: string;
  /** Text stored as the event's `message`. */
  message?: string;
  /** A duration the event measured, in milliseconds. */
  durationMs?: number;
  /** The build's progress (0–100) as of this event. */
  progress?: number;
}

/** A numeric measurement, e.g. `{bundle_bytes: 412000, tests: 1200}`. */
export type Metrics = Record<string, number>;

function readSeconds(raw: string | undefined): number | undefined {
  if (raw === undefined || raw === '') return undefined;
  const value = Number(raw);
  return Number.isFinite(value) && value >= 0 ? value * 1000 : undefined;
}

/** The message of anything thrown. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  if (typeof error === 'string') return error;
  if (error === undefined || error === null) return 'failed';
  try {
    return JSON.stringify(error);
  } catch {
    return String(error);
  }
}

function errorData(error: unknown): Record<string, unknown> | undefined {
  if (!(error instanceof Error)) return undefined;
  const out: Record<string, unknown> = { name: error.name, message: error.message };
  if (error.stack) out.stack = error.stack.slice(0, 8 * 1024);
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' || typeof code === 'number') out.code = code;
  return out;
}

interface OpenStage {
  name: string;
  startedAt: number;
}

/**
 * One build reported to Kiln.
 *
 * ```ts
 * const tracker = new BuildTracker();           // KILN_URL, KILN_TOKEN
 * tracker.start();
 * await tracker.stage('Install', () => install());
 * tracker.progress(50, 'installed');
 * await tracker.complete();                      // or tracker.fail(error)
 * ```
 */
export class BuildTracker {
  /** The server URL in use. */
  readonly url: string;
  /** False when no token was found: every method is then a no-op. */
  readonly enabled: boolean;
  private readonly options: BuildTrackerOptions;
  private readonly environment: Record<string, string | undefined>;
  private readonly sender: Sender | undefined;
  private readonly flushTimeoutMs: number;
  private readonly heartbeatIntervalMs: number;
  private readonly eventIdPrefix = `js-${randomBytes(6).toString('hex')}-`;
  private eventSeq = 0;
  private currentRunId: string | undefined;
  private joined = false;
  private ended = false;
  private startedAt = 0;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private readonly openStages: OpenStage[] = [];
  private lastFailedStage: string | undefined;
  private readonly warned = new Set<string>();

  constructor(options: BuildTrackerOptions = {}) {
    this.options = options;
    const env = options.environment ?? process.env;
    this.environment = env;
    this.url = (options.url || env.KILN_URL || env.OM_BUILD_EVENT_URL || 'http://127.0.0.1:8090').replace(/\/+$/, '');
    const token = options.token || env.KILN_TOKEN || env.OM_BUILD_EVENT_TOKEN || '';
    this.flushTimeoutMs = options.flushTimeoutMs ?? readSeconds(env.KILN_FLUSH_TIMEOUT) ?? 5000;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? readSeconds(env.KILN_HEARTBEAT_INTERVAL) ?? 25_000;
    let sender: Sender | undefined;
    try {
      new URL(this.url);
      if (token) {
        const spool = options.spool ?? true;
        sender = new Sender({
          url: this.url,
          token,
          batchSize: options.batchSize ?? 500,
          lingerMs: options.lingerMs ?? 100,
          requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
          flushTimeoutMs: this.flushTimeoutMs,
          spoolDir: spool === false ? false : typeof spool === 'string' ? spool : defaultSpoolDir(env),
          warn: (key, message) => this.warn(key, message),
        });
      } else {
        this.warn('token', 'no token (set KILN_TOKEN or pass {token}); build events are not sent');
      }
    } catch (error) {
      this.warn('url', `'${this.url}' is not a URL (${errorMessage(error)}); build events are not sent`);
    }
    this.sender = sender;
    this.enabled = sender !== undefined;
  }

  /** The build's run id once started (or joined). */
  get runId(): string | undefined {
    return this.currentRunId;
  }

  /** Whether this tracker reports into a build it does not own. */
  get isJoined(): boolean {
    return this.joined;
  }

  /** What the sender did so far. */
  get stats(): SenderStats {
    return this.sender ? { ...this.sender.stats } : { stored: 0, duplicates: 0, ignored: 0, dropped: 0, retries: 0, requests: 0, spooled: 0 };
  }

  /** Events queued and not yet acknowledged. */
  get pending(): number {
    return this.sender?.pending ?? 0;
  }

  /**
   * Starts the build (`build_started` with the command, host, pid, git and CI metadata)
   * and its heartbeat, or joins `KILN_RUN_ID`'s build. Returns the run id. Calling it
   * again returns the same run id.
   */
  start(options: StartOptions = {}): string {
    try {
      if (this.currentRunId !== undefined) return this.currentRunId;
      const fromEnv = this.environment.KILN_RUN_ID;
      let runId = options.runId ?? fromEnv;
      if (runId !== undefined && !isValidRunId(runId)) {
        this.warn('runId', `run id '${String(runId).slice(0, 60)}' is not valid (1-128 of A-Z a-z 0-9 . _ - :); using a new one`);
        runId = undefined;
      }
      this.joined = options.join ?? (options.runId === undefined && runId !== undefined && runId === fromEnv);
      this.currentRunId = runId ?? randomUUID();
      this.startedAt = performance.now();
      this.ended = false;
      if (this.sender && !this.joined) {
        this.sendStarted(options);
      }
      if (this.sender && this.heartbeatIntervalMs > 0) {
        this.heartbeatTimer = setInterval(() => this.heartbeat(), Math.max(50, this.heartbeatIntervalMs));
        this.heartbeatTimer.unref();
      }
      if (options.stage) this.beginStage(options.stage);
      return this.currentRunId;
    } catch (error) {
      this.internal(error);
      return this.currentRunId ?? '';
    }
  }

  private sendStarted(options: StartOptions): void {
    const sender = this.sender!;
    const command =
      options.command ?? process.argv.slice(1).join(' ').slice(0, LIMITS.command);
    const fields = (metadata: BuildMetadata): EventFields => ({
      env: this.options.env ?? this.environment.KILN_ENV,
      origin: this.options.origin ?? 'kiln-sdk-js',
      command,
      host: metadata.host,
      pid: process.pid,
      repo: options.repo ?? metadata.repo,
      branch: options.branch ?? metadata.branch,
      commit: options.commit ?? metadata.commit,
      heartbeatTimeout: options.heartbeatTimeoutSecs,
      data: {
        ...(metadata.ci ? { ci: metadata.ci } : {}),
        sdk: { name: '@kiln-ci/sdk', version: SDK_VERSION, node: process.versions.node },
        ...(options.data ?? {}),
      },
    });
    const eventId = this.nextEventId();
    // CI variables are read at once; git answers a few milliseconds later. The event is
    // queued now (so it stays first) and completed with git's answers when they come.
    const quick: BuildMetadata = { host: hostname(this.environment), ...(ciMetadata(this.environment) ?? {}) };
    const runId = this.currentRunId!;
    const initial = serializeEvent(runId, 'build_started', eventId, fields(quick));
    if (this.options.metadata === false) {
      sender.enqueue(initial);
      return;
    }
    // Git's files are read on the next turn of the event loop, not in the build's own hook.
    const cwd = this.options.cwd ?? process.cwd();
    const environment = this.environment;
    const full = new Promise<BuildMetadata>((resolve) => setImmediate(() => resolve(collectMetadata(cwd, environment)))).then(
      (metadata) => serializeEvent(runId, 'build_started', eventId, fields(metadata)),
      () => initial,
    );
    sender.enqueueDeferred(initial, full);
  }

  /**
   * Runs `fn` as a stage: `stage_started`, then `stage_completed` with its duration, or
   * `stage_failed` with the error's message — and the error is rethrown: it is the
   * build's own, not the SDK's.
   */
  async stage<T>(name: string, fn: () => T | Promise<T>): Promise<T> {
    const handle = this.beginStage(name);
    let result: T;
    try {
      result = await fn();
    } catch (error) {
      handle.fail(error);
      throw error;
    }
    handle.complete();
    return result;
  }

  /** Starts a stage that ends later (`handle.complete()` or `handle.fail(error)`). */
  beginStage(name: string, data?: Record<string, unknown>): StageHandle {
    const stage = stageName(name) ?? 'stage';
    let done = false;
    const open: OpenStage = { name: stage, startedAt: performance.now() };
    const finish = (type: 'stage_completed' | 'stage_failed', fields: EventFields) => {
      if (done) return;
      done = true;
      const index = this.openStages.lastIndexOf(open);
      if (index >= 0) this.openStages.splice(index, 1);
      this.send(type, { stage, durationMs: performance.now() - open.startedAt, ...fields });
    };
    try {
      this.ensureStarted();
      this.openStages.push(open);
      this.send('stage_started', { stage, data });
    } catch (error) {
      this.internal(error);
    }
    return {
      name: stage,
      complete: (options: EndOptions = {}) => {
        try {
          finish('stage_completed', { message: options.message, data: options.data });
        } catch (error) {
          this.internal(error);
        }
      },
      fail: (error?: unknown, options: EndOptions = {}) => {
        try {
          this.lastFailedStage = stage;
          finish('stage_failed', {
            message: options.message ?? errorMessage(error),
            data: options.data ?? (errorData(error) ? { error: errorData(error) } : undefined),
          });
        } catch (caught) {
          this.internal(caught);
        }
      },
    };
  }

  /** Sets the build's progress (0–100) with an optional message (`build_progress`). */
  progress(percent: number, message?: string): void {
    try {
      if (typeof percent !== 'number' || !Number.isFinite(percent)) {
        this.warn('progress', `progress(${String(percent)}) is not a number between 0 and 100; ignored`);
        return;
      }
      this.ensureStarted();
      this.send('build_progress', { progress: percent, message });
    } catch (error) {
      this.internal(error);
    }
  }

  /** Sends a custom event (`snake_case`, ≤ 50 characters, e.g. `deploy_completed`) with free JSON data. */
  event(type: string, data?: Record<string, unknown>, options: EventOptions = {}): void {
    try {
      if (!isValidEventType(type)) {
        this.warn(`type:${type}`, `'${String(type).slice(0, 60)}' is not an event type Kiln takes (snake_case, at most 50 characters); not sent`);
        return;
      }
      this.ensureStarted();
      this.send(type, { ...options, data });
    } catch (error) {
      this.internal(error);
    }
  }

  /**
   * Records numeric metrics as a `build_metrics` event: `data.metrics` holds them all (as
   * seed 002's build_metrics did), and the event's `metrics` the first 50 whose names Kiln
   * keeps on the build (1–100 characters of `A-Z a-z 0-9 _ . : -`, values within ±1e15),
   * which the build's metrics and the project's analytics show. Non-numeric values are
   * left out.
   */
  metrics(values: Metrics, data?: Record<string, unknown>): void {
    try {
      const metrics: Metrics = {};
      for (const [name, value] of Object.entries(values ?? {})) {
        if (typeof value === 'number' && Number.isFinite(value)) metrics[name] = value;
      }
      this.ensureStarted();
      this.send('build_metrics', { data: { ...(data ?? {}), metrics }, metrics });
    } catch (error) {
      this.internal(error);
    }
  }

  /** Sends a heartbeat now (they are also sent every `heartbeatIntervalMs` while the build runs). */
  heartbeat(): void {
    try {
      if (this.currentRunId === undefined || this.ended) return;
      this.send('heartbeat', {});
    } catch (error) {
      this.internal(error);
    }
  }

  /**
   * Ends the build as successful (`build_completed` with its duration; open stages are
   * completed by the server) and waits for delivery, at most the flush timeout. A joined
   * build is only flushed. Resolves, never rejects.
   */
  complete(options: EndOptions = {}): Promise<FlushResult> {
    return this.end('build_completed', { message: options.message, data: options.data });
  }

  /**
   * Ends the build as failed (`build_failed` with the error's message, the stage it failed
   * in and its duration) and waits for delivery, at most the flush timeout.
   */
  fail(error?: unknown, options: EndOptions = {}): Promise<FlushResult> {
    const stage = options.stage ?? this.lastFailedStage ?? this.openStages[this.openStages.length - 1]?.name;
    const details = errorData(error);
    return this.end('build_failed', {
      stage,
      message: options.message ?? errorMessage(error),
      data: options.data ?? (details ? { error: details } : undefined),
    });
  }

  /** Ends the build as cancelled (`build_cancelled`) and waits for delivery. */
  cancel(reason?: string): Promise<FlushResult> {
    return this.end('build_cancelled', { message: reason });
  }

  /** Waits until what was queued is delivered, at most `timeoutMs` (default: the flush timeout). */
  async flush(timeoutMs: number = this.flushTimeoutMs): Promise<FlushResult> {
    try {
      if (!this.sender) return { delivered: true, pending: 0 };
      return await this.sender.flush(timeoutMs);
    } catch (error) {
      this.internal(error);
      return { delivered: false, pending: this.pending };
    }
  }

  private async end(type: 'build_completed' | 'build_failed' | 'build_cancelled', fields: EventFields): Promise<FlushResult> {
    try {
      if (!this.sender) return { delivered: true, pending: 0 };
      if (this.ended) return await this.sender.flush(this.flushTimeoutMs);
      this.ensureStarted();
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
      if (!this.joined) {
        this.send(type, { durationMs: performance.now() - this.startedAt, ...fields });
      }
      this.ended = true;
      return await this.sender.flush(this.flushTimeoutMs, true);
    } catch (error) {
      this.internal(error);
      return { delivered: false, pending: this.pending };
    }
  }

  private ensureStarted(): void {
    if (this.currentRunId === undefined) this.start();
  }

  private nextEventId(): string {
    this.eventSeq += 1;
    return `${this.eventIdPrefix}${this.eventSeq}`;
  }

  private send(type: string, fields: EventFields): void {
    if (!this.sender || this.currentRunId === undefined) return;
    if (this.ended && !isCustom(type)) {
      // Lifecycle events after the build's end would be refused (409) and heartbeats
      // ignored: keep them out of the batch. Custom events annotate an ended build.
      return;
    }
    this.sender.enqueue(serializeEvent(this.currentRunId, type, this.nextEventId(), fields));
  }

  private warn(key: string, message: string): void {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    if (this.options.onWarning) {
      try {
        this.options.onWarning(message);
      } catch {
        // a throwing handler must not reach the build either
      }
      return;
    }
    if (this.options.silent) return;
    try {
      process.stderr.write(`kiln: ${message}\n`);
    } catch {
      // stderr closed
    }
  }

  private internal(error: unknown): void {
    this.warn('internal', `internal error, ignored: ${errorMessage(error)}`);
  }
}

function isCustom(type: string): boolean {
  return !/^(build|stage)_/.test(type) && type !== 'heartbeat';
}
