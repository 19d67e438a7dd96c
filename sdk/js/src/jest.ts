// The Jest reporter (`@kiln-ci/sdk/jest`): one Kiln build per test run (or the build of
// `KILN_RUN_ID`, joined), a stage per test file (its path from the root dir), progress as
// files finish, one event per test with its result and duration, and the counts as
// `build_metrics`. Kiln has no test-results store yet, so tests are events:
//
//   test_passed / test_failed / test_skipped   stage: the file, durationMs, message: the
//                                              failure messages; data: title, fullName,
//                                              ancestors, file, status, invocations
//
// A file that could not run (a crash at load time) fails its stage with Jest's message.
// The run completes when Jest's `success` holds, else fails with the counts as message.

import { relative, sep } from 'node:path';

import { BuildTracker, type BuildTrackerOptions, type StageHandle, errorMessage } from './tracker.js';
import { stripAnsi } from './bundler.js';

/** Options of the Jest reporter: `reporters: ['default', ['@kiln-ci/sdk/jest', {…}]]`. */
export interface KilnJestReporterOptions extends BuildTrackerOptions {
  /** Report into this build (see `StartOptions.join`). Default: `KILN_RUN_ID`, else a new build per run. */
  runId?: string;
  /** Put before every stage name (e.g. `'jest: '`). Default: none. (`lingerMs` defaults to 500 ms here.) */
  stagePrefix?: string;
  /** Send an event per test. Default: true. */
  testEvents?: boolean;
  /** Longest failure message kept per test, in characters. Default: 4,000. */
  maxMessageLength?: number;
}

// The parts of Jest's reporter arguments used here (structurally; no import of Jest needed).
interface TestLike {
  path: string;
  context?: { config?: { rootDir?: string; displayName?: { name?: string } | string } };
}
interface AssertionLike {
  title: string;
  fullName?: string;
  ancestorTitles?: string[];
  status: string;
  duration?: number | null;
  failureMessages?: string[];
  invocations?: number;
  retryReasons?: string[];
  location?: { line: number; column: number } | null;
}
interface TestResultLike {
  testFilePath: string;
  testResults: AssertionLike[];
  testExecError?: { message?: string; stack?: string } | null;
  failureMessage?: string | null;
  numFailingTests: number;
  numPassingTests: number;
  numPendingTests: number;
  numTodoTests?: number;
  perfStats?: { start?: number; end?: number; runtime?: number };
  skipped?: boolean;
}
interface AggregatedLike {
  numTotalTestSuites: number;
  numFailedTestSuites?: number;
  numRuntimeErrorTestSuites?: number;
  numTotalTests?: number;
  numPassedTests?: number;
  numFailedTests?: number;
  numPendingTests?: number;
  numTodoTests?: number;
  snapshot?: { failure?: boolean };
  wasInterrupted?: boolean;
  startTime?: number;
  testResults?: TestResultLike[];
}
interface GlobalConfigLike {
  rootDir?: string;
  watch?: boolean;
  watchAll?: boolean;
}

function testEventType(status: string): 'test_passed' | 'test_failed' | 'test_skipped' {
  if (status === 'passed') return 'test_passed';
  if (status === 'failed') return 'test_failed';
  return 'test_skipped';
}

/** Jest reporter; Jest constructs it with `(globalConfig, options)`. */
export default class KilnJestReporter {
  private readonly globalConfig: GlobalConfigLike;
  private readonly options: KilnJestReporterOptions;
  private tracker: BuildTracker | undefined;
  private readonly stages = new Map<string, StageHandle>();
  private totalFiles = 0;
  private doneFiles = 0;
  private failedFiles: string[] = [];

  constructor(globalConfig: GlobalConfigLike = {}, options: KilnJestReporterOptions = {}) {
    this.globalConfig = globalConfig ?? {};
    this.options = options ?? {};
  }

  /** A run begins: a new build (or the joined one), progress 0. */
  onRunStart(aggregated: AggregatedLike): void {
    try {
      this.stages.clear();
      this.totalFiles = aggregated?.numTotalTestSuites ?? 0;
      this.doneFiles = 0;
      this.failedFiles = [];
      // Test events are not urgent: fewer, larger requests cost the run less.
      this.tracker = new BuildTracker({ lingerMs: 500, ...this.options });
      this.tracker.start({
        runId: this.options.runId,
        data: { tool: 'jest', testFiles: this.totalFiles },
      });
      this.tracker.progress(0, `0/${this.totalFiles} test files`);
    } catch {
      // never into Jest
    }
  }

  private stageName(path: string, test?: TestLike): string {
    const root = test?.context?.config?.rootDir ?? this.globalConfig.rootDir ?? process.cwd();
    let name = relative(root, path) || path;
    if (sep !== '/') name = name.split(sep).join('/');
    return `${this.options.stagePrefix ?? ''}${name}`;
  }

  /** A test file starts: its stage starts. */
  onTestFileStart(test: TestLike): void {
    try {
      if (!this.tracker || this.stages.has(test.path)) return;
      this.stages.set(test.path, this.tracker.beginStage(this.stageName(test.path, test)));
    } catch {
      // never into Jest
    }
  }

  /** Jest < 27 names it onTestStart; both are answered. */
  onTestStart(test: TestLike): void {
    this.onTestFileStart(test);
  }

  /** A test file finished: an event per test, its stage completes or fails, progress moves. */
  onTestFileResult(test: TestLike, result: TestResultLike): void {
    try {
      const tracker = this.tracker;
      if (!tracker) return;
      const path = result?.testFilePath ?? test?.path;
      const stage = this.stageName(path, test);
      let handle = this.stages.get(path);
      if (!handle) handle = tracker.beginStage(stage);
      this.stages.delete(path);
      const maxMessage = this.options.maxMessageLength ?? 4000;
      if (this.options.testEvents !== false) {
        for (const assertion of result.testResults ?? []) {
          const failures = (assertion.failureMessages ?? []).map(stripAnsi).join('\n\n');
          tracker.event(
            testEventType(assertion.status),
            {
              title: assertion.title,
              fullName: assertion.fullName ?? [...(assertion.ancestorTitles ?? []), assertion.title].join(' '),
              ancestors: assertion.ancestorTitles ?? [],
              file: stage,
              status: assertion.status,
              ...(assertion.invocations !== undefined ? { invocations: assertion.invocations } : {}),
              ...(assertion.retryReasons?.length ? { retryReasons: assertion.retryReasons.map(stripAnsi).slice(0, 5) } : {}),
              ...(assertion.location ? { location: assertion.location } : {}),
            },
            {
              stage,
              durationMs: typeof assertion.duration === 'number' ? assertion.duration : undefined,
              message: failures ? failures.slice(0, maxMessage) : undefined,
            },
          );
        }
      }
      const execError = result.testExecError;
      const failed = result.numFailingTests > 0 || Boolean(execError);
      const counts = {
        passed: result.numPassingTests,
        failed: result.numFailingTests,
        skipped: result.numPendingTests + (result.numTodoTests ?? 0),
      };
      if (failed) {
        this.failedFiles.push(stage);
        const firstFailure = (result.testResults ?? []).find((assertion) => assertion.status === 'failed');
        const message = execError
          ? `Test suite failed to run: ${stripAnsi(execError.message ?? result.failureMessage ?? 'unknown error')}`
          : `${result.numFailingTests} failed: ${firstFailure?.fullName ?? firstFailure?.title ?? ''}\n${stripAnsi((firstFailure?.failureMessages ?? [])[0] ?? '')}`;
        handle.fail(undefined, { message: message.slice(0, maxMessage), data: counts });
      } else {
        handle.complete({ data: counts });
      }
      this.doneFiles += 1;
      const total = Math.max(this.totalFiles, this.doneFiles);
      tracker.progress((this.doneFiles / total) * 100, `${this.doneFiles}/${total} test files`);
      // The last file: send what waits now (no linger), while Jest sums up the run, so the
      // flush in onRunComplete has only the build's end left to wait for.
      if (this.doneFiles >= this.totalFiles) void tracker.flush(0);
    } catch {
      // never into Jest
    }
  }

  /** Jest < 27. */
  onTestResult(test: TestLike, result: TestResultLike): void {
    this.onTestFileResult(test, result);
  }

  /** The run ended: the counts as `build_metrics`, then the build completes or fails; waits for delivery (at most the flush timeout). */
  async onRunComplete(_contexts: unknown, aggregated: AggregatedLike): Promise<void> {
    const tracker = this.tracker;
    this.tracker = undefined;
    if (!tracker) return;
    try {
      // Files Jest never reported back on (an interrupted run) end as failed.
      for (const handle of this.stages.values()) handle.fail(undefined, { message: 'the test run ended before this file finished' });
      this.stages.clear();
      const metrics = {
        tests_total: aggregated.numTotalTests ?? 0,
        tests_passed: aggregated.numPassedTests ?? 0,
        tests_failed: aggregated.numFailedTests ?? 0,
        tests_skipped: (aggregated.numPendingTests ?? 0) + (aggregated.numTodoTests ?? 0),
        test_files: aggregated.numTotalTestSuites ?? 0,
        test_files_failed: aggregated.numFailedTestSuites ?? 0,
        test_files_not_run: aggregated.numRuntimeErrorTestSuites ?? 0,
      };
      tracker.metrics(metrics, { tool: 'jest' });
      // Jest sets `aggregated.success` only after the reporters' onRunComplete: decide here.
      const success =
        metrics.tests_failed === 0 && metrics.test_files_failed === 0 && metrics.test_files_not_run === 0 && !aggregated.snapshot?.failure;
      if (success && !aggregated.wasInterrupted) {
        await tracker.complete({ message: `${metrics.tests_passed} passed, ${metrics.tests_skipped} skipped` });
        return;
      }
      const parts: string[] = [];
      if (metrics.tests_failed > 0) parts.push(`${metrics.tests_failed} of ${metrics.tests_total} tests failed`);
      if (metrics.test_files_not_run > 0) parts.push(`${metrics.test_files_not_run} test file(s) could not run`);
      if (aggregated.wasInterrupted) parts.push('the run was interrupted');
      if (parts.length === 0) parts.push(aggregated.snapshot?.failure ? 'snapshots failed' : 'test files failed');
      const files = this.failedFiles.slice(0, 5).join(', ');
      await tracker.fail(undefined, {
        message: `${parts.join('; ')}${files ? ` (${files}${this.failedFiles.length > 5 ? ', …' : ''})` : ''}`,
        stage: this.failedFiles[0],
        data: { tool: 'jest', failedFiles: this.failedFiles.slice(0, 100) },
      });
    } catch (error) {
      // never into Jest
      void errorMessage(error);
    }
  }

  /** Jest asks reporters for an error to fail the run with; this one never has any. */
  getLastError(): undefined {
    return undefined;
  }
}

export { KilnJestReporter };
