// Installs @kiln-ci/sdk into this test project the way users get it: `npm pack` in
// sdk/js (which builds it), then `npm install` of that tarball. The tests import the
// installed package, never sdk/js/src.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const sdk = fileURLToPath(new URL('../../sdk/js/', import.meta.url));
const destination = mkdtempSync(join(tmpdir(), 'kiln-sdk-pack-'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
execFileSync(npm, ['pack', '--pack-destination', destination, '--silent'], { cwd: sdk, stdio: ['ignore', 'ignore', 'inherit'] });
const [tarball] = readdirSync(destination).filter((name) => name.endsWith('.tgz'));
if (!tarball) throw new Error(`npm pack wrote no tarball to ${destination}`);
execFileSync(npm, ['install', '--no-save', '--no-audit', '--no-fund', '--ignore-scripts', join(destination, tarball)], {
  cwd: here,
  stdio: ['ignore', 'ignore', 'inherit'],
});
console.log(`installed ${tarball} into tests/sdk/node_modules/@kiln-ci/sdk`);
