// The webpack plugin (`@kiln-ci/sdk/webpack`): one Kiln build per compiler run (per
// rebuild in watch mode), progress and a stage per phase from webpack's own ProgressPlugin
// (`setup`, `building`, `sealing`, `emitting`), at the end the emitted chunks' and assets'
// sizes as `build_metrics` and `build_completed`, or `build_failed` with webpack's first
// error (compilation errors and fatal ones alike).

import { type BundleFile, BundlerReport, type BundlerPluginOptions } from './bundler.js';

export type { BundlerPluginOptions, BundleFile } from './bundler.js';
export { bundleMetrics } from './bundler.js';

/** Options of the webpack plugin. */
export type KilnWebpackOptions = BundlerPluginOptions;

interface Tapable<Args extends unknown[]> {
  tap(name: string, fn: (...args: Args) => void): void;
  tapPromise?(name: string, fn: (...args: Args) => Promise<void>): void;
}

interface SourceLike {
  size(): number;
}

interface CompilationLike {
  chunks: Iterable<{ name?: string | null; id?: string | number | null; files: Iterable<string>; canBeInitial?(): boolean }>;
  getAssets?(): Array<{ name: string; source: SourceLike }>;
  assets?: Record<string, SourceLike>;
  errors: Array<{ message?: string } | string>;
}

interface StatsLike {
  hasErrors(): boolean;
  compilation: CompilationLike;
}

/** The part of webpack's Compiler the plugin uses (structurally; no import of webpack needed). */
export interface CompilerLike {
  /** webpack's exports (`compiler.webpack`): its version and ProgressPlugin. */
  webpack?: { version?: string; ProgressPlugin?: new (handler: (percentage: number, message: string, ...args: string[]) => void) => { apply(compiler: CompilerLike): void } };
  /** The compiler's options. */
  options?: { watch?: boolean };
  /** Files changed since the last run (watch mode). */
  modifiedFiles?: ReadonlySet<string>;
  /** Whether the compiler watches. */
  watchMode?: boolean;
  /** The hooks the plugin taps. */
  hooks: {
    run: Tapable<[CompilerLike]>;
    watchRun: Tapable<[CompilerLike]>;
    done: Tapable<[StatsLike]>;
    failed: Tapable<[Error]>;
  };
}

const PHASES = new Set(['setup', 'building', 'sealing', 'emitting']);

function bundleFiles(compilation: CompilationLike): BundleFile[] {
  const sizes = new Map<string, number>();
  if (typeof compilation.getAssets === 'function') {
    for (const asset of compilation.getAssets()) sizes.set(asset.name, asset.source.size());
  } else {
    for (const [name, source] of Object.entries(compilation.assets ?? {})) sizes.set(name, source.size());
  }
  const files: BundleFile[] = [];
  const inChunks = new Set<string>();
  for (const chunk of compilation.chunks) {
    for (const fileName of chunk.files) {
      if (!sizes.has(fileName) || inChunks.has(fileName)) continue;
      inChunks.add(fileName);
      files.push({
        fileName,
        name: chunk.name ?? (chunk.id !== undefined && chunk.id !== null ? String(chunk.id) : undefined),
        type: 'chunk',
        bytes: sizes.get(fileName) ?? 0,
        isEntry: typeof chunk.canBeInitial === 'function' ? chunk.canBeInitial() : undefined,
      });
    }
  }
  for (const [fileName, bytes] of sizes) {
    if (!inChunks.has(fileName)) files.push({ fileName, type: 'asset', bytes });
  }
  return files;
}

function errorText(error: { message?: string } | string): string {
  return typeof error === 'string' ? error : error?.message ?? String(error);
}

/**
 * ```js
 * // webpack.config.js
 * const { KilnWebpackPlugin } = require('@kiln-ci/sdk/webpack');
 * module.exports = { plugins: [new KilnWebpackPlugin()] };   // KILN_URL, KILN_TOKEN
 * ```
 */
export class KilnWebpackPlugin {
  private readonly options: KilnWebpackOptions;

  constructor(options: KilnWebpackOptions = {}) {
    this.options = options;
  }

  /** Called by webpack with its compiler: taps run, watchRun, done and failed and adds a ProgressPlugin. */
  apply(compiler: CompilerLike): void {
    if (this.options.disabled) return;
    try {
      const report = new BundlerReport('webpack', this.options);
      const version = compiler.webpack?.version;
      let watching = false;
      compiler.hooks.run.tap('KilnWebpackPlugin', () => {
        watching = false;
        report.begin({ watch: false, version });
        report.enterPhase('setup');
      });
      compiler.hooks.watchRun.tap('KilnWebpackPlugin', (current) => {
        watching = true;
        report.begin({ watch: true, version, changedFiles: [...(current?.modifiedFiles ?? [])].slice(0, 50) });
        report.enterPhase('setup');
      });
      const ProgressPlugin = compiler.webpack?.ProgressPlugin;
      if (ProgressPlugin) {
        new ProgressPlugin((percentage, message, ...details) => {
          try {
            if (PHASES.has(message)) report.enterPhase(message);
            report.progress(percentage * 100, [message, ...details].filter(Boolean).join(' ').slice(0, 200));
          } catch {
            // never into webpack
          }
        }).apply(compiler);
      }
      const done = async (stats: StatsLike) => {
        try {
          if (!report.active) return;
          const compilation = stats.compilation;
          const ending = stats.hasErrors()
            ? report.end(new Error(errorText(compilation.errors[0])), [], { errors: compilation.errors.map(errorText) })
            : report.end(undefined, bundleFiles(compilation));
          // A one-off build waits for delivery (at most the flush timeout); a watcher goes on.
          if (!watching) await ending;
        } catch {
          // never into webpack
        }
      };
      if (compiler.hooks.done.tapPromise) compiler.hooks.done.tapPromise('KilnWebpackPlugin', done);
      else compiler.hooks.done.tap('KilnWebpackPlugin', (stats) => void done(stats));
      compiler.hooks.failed.tap('KilnWebpackPlugin', (error) => {
        void report.end(error, []);
      });
    } catch {
      // never into webpack
    }
  }
}

export default KilnWebpackPlugin;
