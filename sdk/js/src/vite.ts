// The Vite plugin (`@kiln-ci/sdk/vite`): one Kiln build per `vite build` (per rebuild with
// `--watch`), stages `build` (resolve, load, transform: buildStart → buildEnd), `render`
// (renderStart → generateBundle) and `write` (→ closeBundle), progress from those hooks (and,
// in watch mode, the count of parsed modules), and at the end the bundle's chunk and asset sizes as
// `build_metrics`, or `build_failed` with the bundler's error. Works with Vite's Rollup
// (≤ 7) and Rolldown (8) hooks alike; it applies to builds only, not the dev server.

import { type BundleFile, BundlerReport, type BundlerPluginOptions } from './bundler.js';

export type { BundlerPluginOptions, BundleFile } from './bundler.js';
export { bundleMetrics } from './bundler.js';

/** Options of the Vite plugin. */
export interface KilnViteOptions extends BundlerPluginOptions {
  /**
   * Count parsed modules for progress during the `build` phase (a `moduleParsed` hook).
   * Default: in watch mode only, where the previous build's count makes it a measure of
   * progress. Rolldown (Vite 8) calls a JavaScript `moduleParsed` hook for every module,
   * which cost ~30 µs a module (about 10% of a small build's time); `true` asks for it in
   * one-off builds too, `false` never.
   */
  moduleProgress?: boolean;
}

/** The part of Rollup's/Rolldown's output bundle the plugin reads. */
interface OutputItem {
  type: 'chunk' | 'asset';
  fileName: string;
  name?: string;
  isEntry?: boolean;
  code?: string;
  source?: string | Uint8Array;
}

interface PluginContextLike {
  meta?: { watchMode?: boolean; rollupVersion?: string; rolldownVersion?: string; viteVersion?: string };
}

/** A Vite plugin object (structurally Vite's `Plugin`; no import of vite needed). */
export interface KilnVitePlugin {
  /** `kiln`. */
  name: string;
  /** Builds only, not the dev server. */
  apply: 'build';
  /** After the other plugins, so the sizes are those of the final output. */
  enforce: 'post';
  [hook: string]: unknown;
}

function byteLength(item: OutputItem): number {
  if (item.type === 'chunk') return Buffer.byteLength(item.code ?? '', 'utf8');
  const source = item.source;
  if (typeof source === 'string') return Buffer.byteLength(source, 'utf8');
  return source?.byteLength ?? 0;
}

/**
 * ```js
 * // vite.config.js
 * import kiln from '@kiln-ci/sdk/vite';
 * export default { plugins: [kiln()] };   // KILN_URL, KILN_TOKEN
 * ```
 */
export function kiln(options: KilnViteOptions = {}): KilnVitePlugin {
  const report = new BundlerReport('vite', options);
  let watchConfigured = false;
  let changedFiles: string[] = [];
  let modules = 0;
  let previousModules = 0;
  let files: BundleFile[] = [];
  const moduleProgress = options.moduleProgress !== false && !options.disabled;
  const moduleProgressAlways = options.moduleProgress === true;

  const plugin: KilnVitePlugin = {
    name: 'kiln',
    apply: 'build',
    enforce: 'post',
    configResolved(config: { build?: { watch?: unknown } }) {
      watchConfigured = Boolean(config?.build?.watch);
      // Hooks are bound after configResolved: a one-off build does without the per-module hook.
      if (!watchConfigured && !moduleProgressAlways) delete plugin.moduleParsed;
    },
    watchChange(id: string) {
      if (changedFiles.length < 50) changedFiles.push(id);
    },
    buildStart(this: PluginContextLike) {
      const meta = this?.meta ?? {};
      report.begin({
        watch: meta.watchMode ?? watchConfigured,
        changedFiles,
        version: meta.viteVersion,
        data: { bundler: meta.rolldownVersion ? `rolldown ${meta.rolldownVersion}` : meta.rollupVersion ? `rollup ${meta.rollupVersion}` : undefined },
      });
      changedFiles = [];
      previousModules = modules || previousModules;
      modules = 0;
      files = [];
      report.enterPhase('build');
      report.progress(1, 'build started');
    },
    async buildEnd(error?: Error) {
      if (error) {
        await report.end(error, []);
        return;
      }
      report.progress(70, `${modules} modules transformed`);
    },
    renderStart() {
      report.enterPhase('render');
      report.progress(75, 'rendering chunks');
    },
    async renderError(error?: Error) {
      await report.end(error ?? new Error('rendering failed'), []);
    },
    generateBundle(_options: unknown, bundle: Record<string, OutputItem>) {
      report.enterPhase('write');
      report.progress(90, `${Object.keys(bundle ?? {}).length} files generated`);
    },
    writeBundle(_options: unknown, bundle: Record<string, OutputItem>) {
      // Sizes as written: Vite's own plugins still change chunks after the others' generateBundle.
      try {
        for (const item of Object.values(bundle ?? {})) {
          files.push({ fileName: item.fileName, name: item.type === 'chunk' ? item.name : undefined, type: item.type, bytes: byteLength(item), isEntry: item.isEntry });
        }
      } catch {
        // sizes are a bonus; never fail the build over them
      }
      report.progress(99, `${files.length} files written`);
    },
    async closeBundle(error?: Error) {
      if (!report.active) return;
      const watching = watchConfigured;
      const ending = report.end(error ?? undefined, error ? [] : files);
      // A one-off build waits for delivery (at most the flush timeout); a watcher goes on.
      if (!watching) await ending;
    },
  };
  if (moduleProgress) {
    plugin.moduleParsed = () => {
      modules += 1;
      // Against the previous build's count in watch mode, else an estimate that nears 70%.
      const share = previousModules > 0 ? Math.min(1, modules / previousModules) : 1 - 1 / (1 + modules / 200);
      report.progress(1 + 69 * share, `${modules} modules`);
    };
  }
  return plugin;
}

export default kiln;
