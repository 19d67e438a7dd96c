// The event as `POST /api/v1/events` takes it (docs/api.md, "Ingest"), and the client-side
// checks that keep one bad event from sinking a batch: the server stores a batch all or
// nothing, so a value it would refuse is fixed (truncated, dropped) here, before sending.

/** One event on the wire. Every field but `runId`, `event` and `eventId` is optional. */
export interface WireEvent {
  runId: string;
  event: string;
  eventId: string;
  env?: string;
  origin?: string;
  command?: string;
  host?: string;
  pid?: number;
  stage?: string;
  message?: string;
  durationMs?: number;
  repo?: string;
  branch?: string;
  commit?: string;
  progress?: number;
  heartbeatTimeout?: number;
  data?: Record<string, unknown>;
}

/** The server's limits (crates/kiln-core/src/limits.rs, docs/operations.md#limits). */
export const LIMITS = {
  batchEvents: 1000,
  bodyBytes: 1024 * 1024,
  eventType: 50,
  stage: 200,
  shortField: 255,
  command: 4096,
  commit: 64,
  messageBytes: 16 * 1024,
  dataBytes: 64 * 1024,
  durationMs: 1_000_000_000_000,
  minHeartbeatTimeout: 5,
  maxHeartbeatTimeout: 7 * 24 * 3600,
} as const;

const CORE_TYPES = new Set([
  'build_queued',
  'build_started',
  'stage_started',
  'stage_completed',
  'stage_failed',
  'build_progress',
  'heartbeat',
  'build_completed',
  'build_failed',
  'build_cancelled',
]);

/** Whether the server accepts `type` as an event type: a core type or custom snake_case ≤ 50. */
export function isValidEventType(type: unknown): type is string {
  if (typeof type !== 'string') return false;
  if (CORE_TYPES.has(type)) return true;
  return type.length <= LIMITS.eventType && /^[a-z][a-z0-9_]*$/.test(type) && !type.endsWith('_') && !type.includes('__');
}

/** `A-Z a-z 0-9 . _ - :`, 1–128 characters. */
export function isValidRunId(runId: unknown): runId is string {
  return typeof runId === 'string' && /^[A-Za-z0-9._:-]{1,128}$/.test(runId);
}

// Control characters are refused in stage names; NUL in any string.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;
// eslint-disable-next-line no-control-regex
const NUL = /\u0000/g;
// The same, without the global flag's lastIndex: for testing.
// eslint-disable-next-line no-control-regex
const CONTROL_TEST = /[\u0000-\u001f\u007f-\u009f]/;

/** Cuts `text` to at most `maxBytes` of UTF-8 without splitting a character. */
export function truncateBytes(text: string, maxBytes: number): string {
  if (text.length * 3 <= maxBytes || Buffer.byteLength(text, 'utf8') <= maxBytes) return text;
  const marker = '… (truncated)';
  let cut = Buffer.from(text, 'utf8').subarray(0, maxBytes - Buffer.byteLength(marker)).toString('utf8');
  // A character split at the cut decodes as U+FFFD; drop it.
  if (cut.endsWith('\ufffd')) cut = cut.slice(0, -1);
  return cut + marker;
}

function truncateChars(text: string, max: number): string {
  // No more UTF-16 units than `max` means no more characters either.
  if (text.length <= max) return text;
  const chars = Array.from(text);
  return chars.length <= max ? text : chars.slice(0, max).join('');
}

/** A stage name the server takes: trimmed, no control characters, ≤ 200 characters (the end kept, as it names the file). */
export function stageName(raw: unknown): string | undefined {
  if (raw === undefined || raw === null) return undefined;
  // Every test event of a file names the same stage: the last answer is kept.
  if (typeof raw === 'string' && raw === lastStage.raw) return lastStage.name;
  const name = checkStageName(raw);
  if (typeof raw === 'string') {
    lastStage.raw = raw;
    lastStage.name = name;
  }
  return name;
}

const lastStage: { raw: string | undefined; name: string | undefined } = { raw: undefined, name: undefined };

function checkStageName(raw: unknown): string | undefined {
  const text = String(raw);
  const cleaned = (CONTROL_TEST.test(text) ? text.replace(CONTROL, ' ') : text).trim();
  if (cleaned === '') return undefined;
  if (cleaned.length <= LIMITS.stage) return cleaned;
  const chars = Array.from(cleaned);
  return chars.length <= LIMITS.stage ? cleaned : '…' + chars.slice(chars.length - (LIMITS.stage - 1)).join('');
}

function withoutNul(text: string): string {
  return text.includes('\u0000') ? text.replace(NUL, '\ufffd') : text;
}

function shortText(raw: unknown, max: number): string | undefined {
  if (raw === undefined || raw === null) return undefined;
  const text = withoutNul(String(raw));
  return text === '' ? undefined : truncateChars(text, max);
}

/** `data` as JSON the server takes: an object, ≤ 64 KiB, no NUL, no integer beyond 64 bits, no BigInt or cycle. */
export function dataJson(data: unknown): string | undefined {
  if (data === undefined || data === null) return undefined;
  if (typeof data !== 'object' || Array.isArray(data)) {
    return JSON.stringify({ value: safeValue(data) });
  }
  let json: string | undefined;
  try {
    // Most data (a test's title and file, a bundle's sizes) is plain: JSON.stringify
    // without the replacer gives the very same text, several times faster.
    if (isPlain(data, 0, new Set())) json = JSON.stringify(data);
  } catch {
    json = undefined;
  }
  if (json === undefined) json = checkedJson(data);
  if (json === undefined) return undefined;
  if (json.length * 3 > LIMITS.dataBytes && Buffer.byteLength(json, 'utf8') > LIMITS.dataBytes) {
    json = JSON.stringify({
      truncated: true,
      reason: `data was ${Buffer.byteLength(json, 'utf8')} bytes as JSON; the server keeps at most ${LIMITS.dataBytes}`,
      preview: truncateBytes(json, 8 * 1024),
    });
  }
  return json;
}

/**
 * Whether JSON.stringify alone serializes `value` as the replacer below would: only
 * strings without NUL, numbers that need no rewriting, booleans, null, and arrays and
 * plain objects (each met once, not too deep) of those. Undefined members are fine (left
 * out alike); anything else (BigInt, functions, Errors, toJSON, class instances) is not.
 */
function isPlain(value: unknown, depth: number, seen: Set<object>): boolean {
  switch (typeof value) {
    case 'string':
      return !value.includes('\u0000');
    case 'number':
      return !(Number.isInteger(value) && Math.abs(value) >= 2 ** 63);
    case 'boolean':
    case 'undefined':
      return true;
    case 'object': {
      if (value === null) return true;
      if (depth > 20 || seen.has(value)) return false;
      seen.add(value);
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i += 1) {
          const item = value[i];
          // undefined in an array becomes null, which the replacer also gives
          if (!isPlain(item, depth + 1, seen)) return false;
        }
        return true;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return false;
      if ('toJSON' in value) return false;
      for (const key of Object.keys(value)) {
        if (!isPlain((value as Record<string, unknown>)[key], depth + 1, seen)) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

/** JSON of anything, through the replacer: cycles and repeats as `[Circular]`, BigInt as text, Errors as name and message. */
function checkedJson(data: unknown): string | undefined {
  let json: string | undefined;
  try {
    const seen = new WeakSet<object>();
    json = JSON.stringify(data, function (this: unknown, key: string, value: unknown) {
      if (typeof value === 'object' && value !== null) {
        if (seen.has(value)) return '[Circular]';
        seen.add(value);
      }
      return replacer(key, value);
    });
  } catch (error) {
    json = JSON.stringify({ unserializable: String((error as Error)?.message ?? error) });
  }
  return json;
}

function safeValue(value: unknown): unknown {
  return replacer('', value);
}

function replacer(_key: string, value: unknown): unknown {
  switch (typeof value) {
    case 'bigint':
      return value.toString();
    case 'string':
      return value.includes('\u0000') ? value.replace(NUL, '\ufffd') : value;
    case 'number':
      // The server refuses integer literals beyond 64 bits rather than round them.
      return Number.isInteger(value) && Math.abs(value) >= 2 ** 63 ? String(value) : value;
    case 'function':
    case 'symbol':
      return undefined;
    default:
      if (value instanceof Error) return { name: value.name, message: value.message };
      return value;
  }
}

/** The fields a caller may set on an event, before checks. */
export interface EventFields {
  env?: unknown;
  origin?: unknown;
  command?: unknown;
  host?: unknown;
  pid?: unknown;
  stage?: unknown;
  message?: unknown;
  durationMs?: unknown;
  repo?: unknown;
  branch?: unknown;
  commit?: unknown;
  progress?: unknown;
  heartbeatTimeout?: unknown;
  data?: unknown;
  /** Custom metrics; only those Kiln keeps on the build are sent (see `eventMetrics`). */
  metrics?: unknown;
}

/**
 * The metrics the server takes: at most 50 per event, names of 1–100 characters of
 * `A-Z a-z 0-9 _ . : -`, finite values within ±1e15; the others are left out (they stay
 * in `data.metrics` where the caller put them there).
 */
export function eventMetrics(raw: unknown): Record<string, number> | undefined {
  if (raw === null || typeof raw !== 'object') return undefined;
  const kept: Record<string, number> = {};
  let count = 0;
  for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
    if (count >= 50) break;
    if (typeof value !== 'number' || !Number.isFinite(value) || Math.abs(value) > 1e15) continue;
    if (!/^[A-Za-z0-9_.:-]{1,100}$/.test(name)) continue;
    kept[name] = value;
    count += 1;
  }
  return count > 0 ? kept : undefined;
}

function integer(raw: unknown, min: number, max: number): number | undefined {
  if (typeof raw !== 'number' || !Number.isFinite(raw)) return undefined;
  return Math.min(max, Math.max(min, Math.round(raw)));
}

/**
 * One event serialized as the server takes it. Returns the JSON text (serialized once,
 * resent as is on retries). Fields the server would refuse are fixed or left out.
 */
export function serializeEvent(runId: string, event: string, eventId: string, fields: EventFields): string {
  // One object literal of a fixed shape; JSON.stringify leaves the undefined members out.
  const message = fields.message;
  const progress = fields.progress;
  const head = JSON.stringify({
    runId,
    event,
    eventId,
    env: shortText(fields.env, LIMITS.shortField),
    origin: shortText(fields.origin, LIMITS.shortField),
    command: shortText(fields.command, LIMITS.command),
    host: shortText(fields.host, LIMITS.shortField),
    pid: integer(fields.pid, 0, 2 ** 32 - 1),
    stage: stageName(fields.stage),
    message: message !== undefined && message !== null ? truncateBytes(withoutNul(String(message)), LIMITS.messageBytes) : undefined,
    durationMs: integer(fields.durationMs, 0, LIMITS.durationMs),
    repo: shortText(fields.repo, LIMITS.shortField),
    branch: shortText(fields.branch, LIMITS.shortField),
    commit: shortText(fields.commit, LIMITS.commit),
    progress: typeof progress === 'number' && Number.isFinite(progress) ? Math.min(100, Math.max(0, progress)) : undefined,
    heartbeatTimeout: integer(fields.heartbeatTimeout, LIMITS.minHeartbeatTimeout, LIMITS.maxHeartbeatTimeout),
    metrics: fields.metrics === undefined ? undefined : eventMetrics(fields.metrics),
  });
  const data = dataJson(fields.data);
  return data === undefined ? head : `${head.slice(0, -1)},"data":${data}}`;
}
