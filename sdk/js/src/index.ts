// @kiln-ci/sdk: report builds to Kiln from JavaScript. The Jest reporter, the Vite plugin
// and the webpack plugin are the subpaths `@kiln-ci/sdk/jest`, `/vite` and `/webpack`.

export { BuildTracker, errorMessage } from './tracker.js';
export type { BuildTrackerOptions, StartOptions, EndOptions, StageHandle, EventOptions, Metrics } from './tracker.js';
export type { FlushResult, SenderStats } from './sender.js';
export { SDK_VERSION, defaultSpoolDir } from './sender.js';
export { collectMetadata, ciMetadata } from './metadata.js';
export type { BuildMetadata } from './metadata.js';
