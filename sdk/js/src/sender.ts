// Delivers events to `POST /api/v1/events` in the background, in order, in batches, with
// retries, and never holds up the process that reports.
//
// One sender per BuildTracker. Events are serialized once when queued and stay at the
// head of the queue until the server acknowledged them, so a retry resends the same
// bytes with the same `eventId`s and the server stores each event once (a batch stored
// whose answer was lost comes back as `duplicate`). One request is in flight at a time,
// which keeps the build's events in order.
//
// Holding the process: requests run on unref'd sockets and the retry timers are unref'd,
// so a pending send never keeps Node alive by itself. Only `flush` holds the process, with
// a ref'd timer that ends at its deadline. When the process is about to exit with events
// still queued, `beforeExit` flushes them within the flush timeout, and `exit` (reached by
// `process.exit()` or an uncaught exception, where nothing asynchronous can run any more)
// hands them to a short-lived child process that sends them synchronously within the same
// deadline. Whatever is still undelivered then is written to Kiln's spool, the same files
// `kiln run` writes, which `kiln spool send` and every later `kiln` command resend.

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

import { LIMITS } from './wire.js';

/** This package's version, sent in `build_started`'s `data.sdk` and the User-Agent. */
export const SDK_VERSION = '0.1.0';

/** What a flush achieved. */
export interface FlushResult {
  /** Everything queued before the flush was acknowledged by the server. */
  delivered: boolean;
  /** Events still undelivered when the flush returned. */
  pending: number;
  /** The spool file the undelivered events were written to (final flushes only). */
  spooled?: string;
}

/** Counters of what the sender did, for tests and diagnostics. */
export interface SenderStats {
  /** Events the server stored. */
  stored: number;
  /** Events the server had already stored (a resend after a lost answer). */
  duplicates: number;
  /** Events the server acknowledged without storing (heartbeats after the end). */
  ignored: number;
  /** Events the server refused for their content, or dropped after the token was refused. */
  dropped: number;
  /** Requests that failed and were retried. */
  retries: number;
  /** Requests made. */
  requests: number;
  /** Events written to the spool. */
  spooled: number;
}

export interface SenderConfig {
  url: string;
  token: string;
  batchSize: number;
  lingerMs: number;
  requestTimeoutMs: number;
  flushTimeoutMs: number;
  /** Directory for undelivered events, or false for none. */
  spoolDir: string | false;
  warn: (key: string, message: string) => void;
}

interface Queued {
  json: string;
  bytes: number;
}

/** Body bytes per request at most: the server's 1 MiB cap, with room to spare. */
const MAX_BATCH_BYTES = 768 * 1024;
/** Events held in memory; beyond it new ones go to the spool. */
const MAX_QUEUED = 100_000;
const MAX_BACKOFF_MS = 5000;
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNRESET_BEFORE_CONNECT',
  'CONNECT_TIMEOUT',
]);

type Outcome =
  | { kind: 'ok'; stored: number; duplicates: number; ignored: number }
  | { kind: 'retry'; reason: string; unreachable: boolean; retryAfterMs?: number }
  | { kind: 'refused'; status: number; code: string; message: string; index?: number };

const httpAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
// node:https (TLS) takes ~20 ms to load: only servers behind https pay for it.
let httpsModule: Promise<{ request: typeof http.request; agent: http.Agent }> | undefined;
function loadHttps(): Promise<{ request: typeof http.request; agent: http.Agent }> {
  httpsModule ??= import('node:https').then((https) => ({
    request: https.request as unknown as typeof http.request,
    agent: new https.Agent({ keepAlive: true, maxSockets: 4 }) as unknown as http.Agent,
  }));
  return httpsModule;
}

/** `KILN_SPOOL_DIR`, else `$XDG_STATE_HOME/kiln/spool`, else `~/.local/state/kiln/spool` (as `kiln`). */
export function defaultSpoolDir(env: Record<string, string | undefined> = process.env): string {
  if (env.KILN_SPOOL_DIR) return env.KILN_SPOOL_DIR;
  if (env.XDG_STATE_HOME) return join(env.XDG_STATE_HOME, 'kiln/spool');
  let home = env.HOME;
  if (!home) {
    try {
      home = homedir();
    } catch {
      home = undefined;
    }
  }
  return home ? join(home, '.local/state/kiln/spool') : join(tmpdir(), 'kiln-spool');
}

/** Writes events to a new spool file in `kiln`'s format; returns its path, undefined on failure. */
export function writeSpool(dir: string, url: string, token: string, events: string[]): string | undefined {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    const name = `${process.pid}-${randomBytes(16).toString('hex')}.jsonl`;
    const temporary = join(dir, `.${name}.tmp`);
    const header = JSON.stringify({ kilnSpool: 1, server: url, token });
    writeFileSync(temporary, `${header}\n${events.join('\n')}\n`, { mode: 0o600, flag: 'wx' });
    const path = join(dir, name);
    renameSync(temporary, path);
    return path;
  } catch {
    return undefined;
  }
}

// The child that delivers events synchronously at `exit`: reads {url, token, bodies} on
// stdin, posts each body in turn, exits 0 when every one was answered 2xx.
const EXIT_SENDER = `
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', async () => {
  const { url, token, bodies, userAgent } = JSON.parse(input);
  const lib = url.startsWith('https:') ? require('node:https') : require('node:http');
  for (const body of bodies) {
    const ok = await new Promise((resolve) => {
      const req = lib.request(url + '/api/v1/events', { method: 'POST', headers: {
        'content-type': 'application/json', 'authorization': 'Bearer ' + token,
        'content-length': Buffer.byteLength(body), 'user-agent': userAgent } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode >= 200 && res.statusCode < 300));
      });
      req.on('error', () => resolve(false));
      req.end(body);
    });
    if (!ok) process.exit(1);
  }
  process.exit(0);
});`;

const liveSenders = new Set<Sender>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('beforeExit', () => {
    for (const sender of liveSenders) sender.onBeforeExit();
  });
  process.on('exit', () => {
    for (const sender of liveSenders) sender.onExit();
  });
}

export class Sender {
  readonly stats: SenderStats = { stored: 0, duplicates: 0, ignored: 0, dropped: 0, retries: 0, requests: 0, spooled: 0 };
  private readonly config: SenderConfig;
  private readonly endpoint: URL;
  private readonly queue: Queued[] = [];
  private batchSize: number;
  private pumping = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  private backoffTimer: NodeJS.Timeout | undefined;
  private wakeBackoff: (() => void) | undefined;
  private currentRequest: http.ClientRequest | undefined;
  private backoffMs = 100;
  /** The last attempt could not connect to the server. */
  private unreachable = false;
  /** Attempts finished since the sender was created; flushes watch it. */
  private attempts = 0;
  /** The server refused the token: nothing more is sent. */
  private refused = false;
  /** Bumped by `close`: a pump of an earlier epoch stops (its request was aborted). */
  private epoch = 0;
  private exitFlushStarted = false;
  private gate: Promise<unknown> | undefined;
  private readonly listeners = new Set<() => void>();

  constructor(config: SenderConfig) {
    this.config = config;
    this.endpoint = new URL('/api/v1/events', config.url.endsWith('/') ? config.url : `${config.url}/`);
    this.batchSize = Math.max(1, Math.min(LIMITS.batchEvents, Math.floor(config.batchSize)));
    installExitHooks();
  }

  /** Events not yet acknowledged (the one in flight included). */
  get pending(): number {
    return this.queue.length;
  }

  /** Sending waits for `promise` (the build's metadata) before the first request. */
  holdUntil(promise: Promise<unknown>): void {
    this.gate = promise.catch(() => undefined);
  }

  /** Queues one serialized event; never blocks, never throws. */
  enqueue(json: string): void {
    this.push(json);
  }

  /**
   * Queues an event now whose final text comes later (`build_started` waiting for git):
   * sending waits for `later` (which must settle quickly); `initial` is what goes out if
   * the process exits before.
   */
  enqueueDeferred(initial: string, later: Promise<string>): void {
    const item = this.push(initial);
    if (!item) return;
    this.gate = later.then(
      (json) => {
        item.json = json;
        item.bytes = Buffer.byteLength(json, 'utf8') + 1;
      },
      () => undefined,
    );
  }

  private push(json: string): Queued | undefined {
    if (this.refused) {
      this.stats.dropped += 1;
      return undefined;
    }
    if (this.queue.length >= MAX_QUEUED) {
      this.config.warn('overflow', `more than ${MAX_QUEUED} events wait for the server; new ones go to the spool`);
      this.spool([json]);
      return undefined;
    }
    const item = { json, bytes: Buffer.byteLength(json, 'utf8') + 1 };
    this.queue.push(item);
    liveSenders.add(this);
    if (this.pumping) return item;
    if (this.queue.length >= this.batchSize) {
      this.startPump();
    } else if (this.lingerTimer === undefined) {
      this.lingerTimer = setTimeout(() => this.startPump(), this.config.lingerMs);
      this.lingerTimer.unref();
    }
    return item;
  }

  /**
   * Waits until every queued event is delivered, for at most `timeoutMs` — and not at all
   * once the server proved unreachable (one immediate attempt is made first). `final`
   * stops the sender afterwards and spools what is left.
   */
  async flush(timeoutMs: number, final = false): Promise<FlushResult> {
    try {
      if (this.queue.length > 0 && !this.refused) {
        const startAttempts = this.attempts;
        await new Promise<void>((resolve) => {
          const hold = setTimeout(done, Math.max(0, timeoutMs));
          const check = () => {
            if (this.queue.length === 0 || this.refused) return done();
            // An attempt since the flush began could not connect: do not wait out the deadline.
            if (this.unreachable && this.attempts > startAttempts) return done();
          };
          function done() {
            clearTimeout(hold);
            self.listeners.delete(check);
            resolve();
          }
          const self = this;
          this.listeners.add(check);
          this.startPump();
          this.wakeBackoff?.();
          check();
        });
      }
      if (!final) return { delivered: this.queue.length === 0, pending: this.queue.length };
      return this.close();
    } catch {
      return { delivered: false, pending: this.queue.length };
    }
  }

  /**
   * Gives up on what is queued: aborts the request in flight and spools the undelivered
   * events. Events queued later are sent as usual.
   */
  close(): FlushResult {
    this.epoch += 1;
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    this.wakeBackoff?.();
    this.currentRequest?.destroy(new Error('the flush timeout passed'));
    const pending = this.queue.length;
    let spooled: string | undefined;
    if (pending > 0) {
      const events = this.queue.splice(0).map((item) => item.json);
      spooled = this.spool(events);
      this.config.warn(
        'undelivered',
        spooled
          ? `${pending} event(s) not delivered in time, saved to ${spooled}; \`kiln spool send\` (or any later kiln command) resends them`
          : `${pending} event(s) could not be delivered${this.config.spoolDir ? ' or spooled' : ''}`,
      );
    }
    liveSenders.delete(this);
    return { delivered: pending === 0, pending, spooled };
  }

  /** `beforeExit`: the event loop is empty but events wait; flush them within the deadline. */
  onBeforeExit(): void {
    if (this.queue.length === 0 || this.exitFlushStarted) return;
    this.exitFlushStarted = true;
    void this.flush(this.config.flushTimeoutMs, true);
  }

  /** `exit`: nothing asynchronous runs any more; send synchronously through a child, else spool. */
  onExit(): void {
    if (this.queue.length === 0 || this.refused) return;
    this.epoch += 1;
    this.currentRequest?.destroy();
    const events = this.queue.splice(0).map((item) => item.json);
    const bodies: string[] = [];
    for (let i = 0; i < events.length; i += this.batchSize) {
      bodies.push(`[${events.slice(i, i + this.batchSize).join(',')}]`);
    }
    let delivered = false;
    try {
      const result = spawnSync(process.execPath, ['-e', EXIT_SENDER], {
        input: JSON.stringify({ url: this.endpoint.origin + this.basePath(), token: this.config.token, bodies, userAgent: userAgent() }),
        timeout: Math.max(100, this.config.flushTimeoutMs),
        stdio: ['pipe', 'ignore', 'ignore'],
        windowsHide: true,
      });
      delivered = result.status === 0;
    } catch {
      delivered = false;
    }
    if (delivered) {
      this.stats.stored += events.length;
    } else {
      const spooled = this.spool(events);
      try {
        process.stderr.write(
          spooled
            ? `kiln: ${events.length} event(s) not delivered before exit, saved to ${spooled}; \`kiln spool send\` resends them\n`
            : `kiln: ${events.length} event(s) could not be delivered before exit\n`,
        );
      } catch {
        // stderr closed: nothing to tell
      }
    }
    liveSenders.delete(this);
  }

  private basePath(): string {
    return this.endpoint.pathname.replace(/\/api\/v1\/events$/, '');
  }

  private spool(events: string[]): string | undefined {
    if (!this.config.spoolDir || events.length === 0) return undefined;
    const path = writeSpool(this.config.spoolDir, this.config.url.replace(/\/+$/, ''), this.config.token, events);
    if (path) this.stats.spooled += events.length;
    return path;
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }

  private startPump(): void {
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    if (this.pumping) return;
    this.pumping = true;
    this.pump()
      .catch((error) => this.config.warn('internal', `event delivery stopped: ${(error as Error)?.message ?? error}`))
      .finally(() => {
        this.pumping = false;
        this.notify();
        // Events queued while the last request was answered go out next.
        if (this.queue.length > 0 && !this.refused && this.lingerTimer === undefined) {
          this.lingerTimer = setTimeout(() => this.startPump(), this.config.lingerMs);
          this.lingerTimer.unref();
        }
      });
  }

  private async pump(): Promise<void> {
    const epoch = this.epoch;
    if (this.gate) {
      await this.gate;
      this.gate = undefined;
    }
    while (this.queue.length > 0 && !this.refused && epoch === this.epoch) {
      let count = 0;
      let bytes = 2;
      while (count < this.queue.length && count < this.batchSize) {
        const next = this.queue[count].bytes;
        if (count > 0 && bytes + next > MAX_BATCH_BYTES) break;
        bytes += next;
        count += 1;
      }
      const batch = this.queue.slice(0, count);
      const body = `[${batch.map((item) => item.json).join(',')}]`;
      const outcome = await this.post(body);
      this.attempts += 1;
      if (epoch !== this.epoch) return;
      switch (outcome.kind) {
        case 'ok':
          this.unreachable = false;
          this.backoffMs = 100;
          this.queue.splice(0, count);
          this.stats.stored += outcome.stored;
          this.stats.duplicates += outcome.duplicates;
          this.stats.ignored += outcome.ignored;
          this.notify();
          break;
        case 'retry': {
          this.stats.retries += 1;
          this.unreachable = outcome.unreachable;
          this.config.warn(
            'retry',
            `cannot deliver events to ${this.config.url} (${outcome.reason}); retrying in the background — the build goes on`,
          );
          this.notify();
          const wait = outcome.retryAfterMs ?? this.backoffMs;
          this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
          await this.sleep(wait);
          break;
        }
        case 'refused':
          this.handleRefusal(outcome, count);
          this.notify();
          break;
      }
    }
  }

  private handleRefusal(outcome: Extract<Outcome, { kind: 'refused' }>, count: number): void {
    const { status, code, message } = outcome;
    if (status === 401 || status === 403 || status === 404) {
      // The token (or the server) refuses us: every later request would be refused too.
      this.refused = true;
      const dropped = this.queue.splice(0).length;
      this.stats.dropped += dropped;
      this.config.warn(
        'refused',
        `the server refused the events (${status} ${code}: ${message}); check KILN_URL and KILN_TOKEN (a project token with the ingest scope). ${dropped} event(s) dropped, later ones are not sent`,
      );
      return;
    }
    if (code === 'batch_too_large' || status === 413) {
      if (count > 1) {
        this.batchSize = Math.max(1, Math.floor(count / 2));
        return;
      }
    }
    // One event of the batch is refused (its index is in `field`): drop it, send the rest.
    const index = outcome.index !== undefined && outcome.index < count ? outcome.index : count > 1 ? undefined : 0;
    if (index === undefined) {
      this.queue.splice(0, count);
      this.stats.dropped += count;
      this.config.warn('dropped', `the server refused ${count} event(s) (${status} ${code}: ${message}); they are dropped`);
      return;
    }
    const [event] = this.queue.splice(index, 1);
    this.stats.dropped += 1;
    let type = 'an event';
    try {
      type = JSON.parse(event.json).event;
    } catch {
      // keep the generic name
    }
    this.config.warn(`dropped:${code}`, `the server refused ${type} (${status} ${code}: ${message}); it is dropped`);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(this.backoffTimer);
        this.backoffTimer = undefined;
        this.wakeBackoff = undefined;
        resolve();
      };
      this.backoffTimer = setTimeout(finish, ms);
      this.backoffTimer.unref();
      this.wakeBackoff = finish;
      this.notify();
    });
  }

  private async post(body: string): Promise<Outcome> {
    this.stats.requests += 1;
    const secure = this.endpoint.protocol === 'https:';
    let transport = { request: http.request, agent: httpAgent };
    if (secure) {
      try {
        transport = await loadHttps();
      } catch (error) {
        return { kind: 'retry', reason: String((error as Error)?.message ?? error), unreachable: true };
      }
    }
    return new Promise<Outcome>((resolve) => {
      let settled = false;
      const settle = (outcome: Outcome) => {
        if (settled) return;
        settled = true;
        this.currentRequest = undefined;
        resolve(outcome);
      };
      let connected = false;
      let request: http.ClientRequest;
      try {
        request = transport.request(this.endpoint, {
          method: 'POST',
          agent: transport.agent,
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body, 'utf8'),
            authorization: `Bearer ${this.config.token}`,
            'user-agent': userAgent(),
          },
        });
      } catch (error) {
        return settle({ kind: 'retry', reason: String((error as Error)?.message ?? error), unreachable: true });
      }
      this.currentRequest = request;
      request.setTimeout(this.config.requestTimeoutMs, () => {
        request.destroy(Object.assign(new Error(`no answer within ${this.config.requestTimeoutMs} ms`), { code: connected ? 'ETIMEDOUT' : 'CONNECT_TIMEOUT' }));
      });
      request.on('socket', (socket) => {
        // A send in the background never keeps the process alive; `flush` holds it instead.
        socket.unref();
        if ((socket as { connecting?: boolean }).connecting) {
          socket.once('connect', () => {
            connected = true;
          });
        } else {
          connected = true;
        }
      });
      request.on('error', (error: NodeJS.ErrnoException) => {
        const code = error.code ?? '';
        settle({
          kind: 'retry',
          reason: error.message || code,
          unreachable: UNREACHABLE_CODES.has(code) || (!connected && code !== 'ETIMEDOUT'),
        });
      });
      request.on('response', (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', (error) => settle({ kind: 'retry', reason: error.message, unreachable: false }));
        response.on('end', () => {
          const status = response.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          if (status >= 200 && status < 300) {
            let stored = 0;
            let duplicates = 0;
            let ignored = 0;
            const acks = (parsed as { events?: Array<{ status?: string }> } | undefined)?.events ?? [];
            for (const ack of acks) {
              if (ack.status === 'duplicate') duplicates += 1;
              else if (ack.status === 'ignored') ignored += 1;
              else stored += 1;
            }
            return settle({ kind: 'ok', stored, duplicates, ignored });
          }
          const error = (parsed as { error?: { code?: string; message?: string; field?: string } } | undefined)?.error;
          if (status === 408 || status === 429 || status >= 500 || status === 0) {
            const retryAfter = Number(response.headers['retry-after']);
            return settle({
              kind: 'retry',
              reason: `${status} ${error?.code ?? response.statusMessage ?? ''}`.trim(),
              unreachable: false,
              retryAfterMs: Number.isFinite(retryAfter) && retryAfter > 0 ? Math.min(MAX_BACKOFF_MS, retryAfter * 1000) : undefined,
            });
          }
          const match = /^\[(\d+)\]/.exec(error?.field ?? '');
          settle({
            kind: 'refused',
            status,
            code: error?.code ?? 'refused',
            message: error?.message ?? (text.slice(0, 200) || `HTTP ${status}`),
            index: match ? Number(match[1]) : undefined,
          });
        });
      });
      request.end(body);
    });
  }
}

function userAgent(): string {
  return `kiln-sdk-js/${SDK_VERSION} node/${process.versions.node}`;
}
