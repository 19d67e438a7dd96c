// What the Vite and webpack plugins share: one Kiln build per bundler run (per rebuild in
// watch mode), a stage per bundler phase, throttled progress, and the bundle's sizes as
// metrics at the end. The plugins translate their bundler's hooks into these calls.

import { randomBytes } from 'node:crypto';

import { BuildTracker, type BuildTrackerOptions, type StageHandle, errorMessage } from './tracker.js';
import type { FlushResult } from './sender.js';

/** Options of the Vite and webpack plugins (BuildTracker's, plus these). */
export interface BundlerPluginOptions extends BuildTrackerOptions {
  /** Report into this build instead of a new one per bundler run (see `StartOptions.join`). Default: `KILN_RUN_ID`. */
  runId?: string;
  /** Put before every stage name, e.g. `'web: '` when two bundlers report into one build. Default: none. */
  stagePrefix?: string;
  /** Send progress at most this often. Default: 500 ms. */
  progressIntervalMs?: number;
  /** Turn the plugin off (e.g. `!process.env.CI`). Default: false. */
  disabled?: boolean;
}

/** One output file of a bundle. */
export interface BundleFile {
  /** The path written, relative to the output directory. */
  fileName: string;
  /** The chunk's name (`index`, `vendor`), when the file is a chunk. */
  name?: string;
  /** A JavaScript chunk or another asset. */
  type: 'chunk' | 'asset';
  /** Its size in bytes as written. */
  bytes: number;
  /** Whether the chunk is an entry (or initial) chunk. */
  isEntry?: boolean;
}

/** Metrics of a bundle: total bytes and files, and the bytes of each chunk and asset. */
export function bundleMetrics(files: BundleFile[]): Record<string, number> {
  const metrics: Record<string, number> = {
    bundle_bytes: files.reduce((sum, file) => sum + file.bytes, 0),
    bundle_files: files.length,
    bundle_chunks: files.filter((file) => file.type === 'chunk').length,
  };
  for (const file of files) {
    // Chunks by name (stable across builds, unlike hashed file names); assets and unnamed
    // chunks by file name.
    const key = file.type === 'chunk' && file.name ? `chunk_bytes.${file.name}` : `${file.type}_bytes.${file.fileName}`;
    metrics[key] = (metrics[key] ?? 0) + file.bytes;
  }
  return metrics;
}

export class BundlerReport {
  private readonly options: BundlerPluginOptions;
  private readonly tool: string;
  private readonly session = randomBytes(6).toString('hex');
  private rebuilds = 0;
  private tracker: BuildTracker | undefined;
  private phase: { name: string; handle: StageHandle } | undefined;
  private lastProgressAt = 0;
  private lastProgress = -1;
  private failed = false;

  constructor(tool: string, options: BundlerPluginOptions = {}) {
    this.tool = tool;
    this.options = options;
  }

  /** Whether a build is being reported now. */
  get active(): boolean {
    return this.tracker !== undefined;
  }

  /** The current build's run id. */
  get runId(): string | undefined {
    return this.tracker?.runId;
  }

  /** A bundler run begins: a new build (or the joined one), with what changed in watch mode. */
  begin(details: { watch: boolean; changedFiles?: string[]; version?: string; data?: Record<string, unknown> }): void {
    try {
      if (this.options.disabled) return;
      if (this.tracker) void this.end(undefined, []);
      this.rebuilds += 1;
      this.failed = false;
      this.lastProgress = -1;
      this.lastProgressAt = 0;
      const tracker = new BuildTracker(this.options);
      this.tracker = tracker;
      tracker.start({
        runId: this.options.runId,
        data: {
          tool: this.tool,
          ...(details.version ? { toolVersion: details.version } : {}),
          ...(details.watch
            ? { watch: { session: this.session, rebuild: this.rebuilds, changedFiles: (details.changedFiles ?? []).slice(0, 50) } }
            : {}),
          ...(details.data ?? {}),
        },
      });
    } catch {
      // never into the bundler
    }
  }

  /** Enters a phase: the previous phase's stage completes, this one's starts. */
  enterPhase(name: string): void {
    try {
      if (!this.tracker || this.phase?.name === name) return;
      this.phase?.handle.complete();
      this.phase = { name, handle: this.tracker.beginStage(`${this.options.stagePrefix ?? ''}${name}`) };
    } catch {
      // never into the bundler
    }
  }

  /** Progress 0–100, sent at most every `progressIntervalMs` and only when it moved. */
  progress(percent: number, message?: string): void {
    if (!this.tracker) return;
    const now = Date.now();
    const rounded = Math.floor(percent);
    if (rounded <= this.lastProgress) return;
    if (now - this.lastProgressAt < (this.options.progressIntervalMs ?? 500) && rounded < 100) return;
    this.lastProgress = rounded;
    this.lastProgressAt = now;
    this.tracker.progress(rounded, message);
  }

  /**
   * The run ended: with `error`, the open phase fails and the build fails with the
   * bundler's message; else the phase completes, the sizes go out as `build_metrics`
   * and the build completes. Resolves once delivered or after the flush timeout.
   */
  async end(error: unknown, files: BundleFile[], extra: { errors?: string[] } = {}): Promise<FlushResult | undefined> {
    const tracker = this.tracker;
    if (!tracker) return undefined;
    this.tracker = undefined;
    const phase = this.phase;
    this.phase = undefined;
    try {
      if (error !== undefined && error !== null) {
        this.failed = true;
        phase?.handle.fail(error);
        const messages = extra.errors ?? [errorMessage(error)];
        return await tracker.fail(error, {
          stage: phase ? `${this.options.stagePrefix ?? ''}${phase.name}` : undefined,
          message: stripAnsi(messages[0] ?? errorMessage(error)),
          data: { tool: this.tool, errors: messages.slice(0, 10).map((message) => stripAnsi(message).slice(0, 4096)) },
        });
      }
      phase?.handle.complete();
      if (files.length > 0) {
        tracker.metrics(bundleMetrics(files), { tool: this.tool, files: files.slice(0, 300) });
      }
      return await tracker.complete();
    } catch {
      return undefined;
    }
  }
}

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;

export function stripAnsi(text: string): string {
  return text.replace(ANSI, '');
}
