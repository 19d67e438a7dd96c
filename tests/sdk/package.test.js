// The package as npm delivers it (installed from the `npm pack` tarball by pretest): its
// contents, no runtime dependencies, both module formats with types for every entry
// point, and an API reference that matches the sources.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot, run, testsDir } from './helpers.js';

const installed = join(testsDir, 'node_modules/@kiln-ci/sdk');

test('the tarball holds both builds with declarations, the README and the API reference, and no runtime dependency', () => {
  const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
  assert.equal(manifest.name, '@kiln-ci/sdk');
  assert.deepEqual(manifest.dependencies ?? {}, {});
  assert.deepEqual(manifest.peerDependencies ?? {}, {});
  for (const entry of ['.', './jest', './vite', './webpack']) {
    const conditions = manifest.exports[entry];
    for (const format of ['import', 'require']) {
      for (const kind of ['types', 'default']) {
        const path = join(installed, conditions[format][kind]);
        assert.ok(existsSync(path), `${entry} ${format} ${kind}: ${path}`);
      }
    }
  }
  assert.ok(existsSync(join(installed, 'README.md')));
  assert.ok(existsSync(join(installed, 'API.md')));
  assert.ok(!existsSync(join(installed, 'src')), 'sources stay out of the tarball');
});

test('API.md is generated from the current sources and every export is documented', async () => {
  const result = await run(process.execPath, [join(repoRoot, 'sdk/js/scripts/api-doc.mjs'), '--check'], { cwd: join(repoRoot, 'sdk/js') });
  assert.equal(result.code, 0, result.stderr);
});

test('the README names every entry point and links the API reference', () => {
  const readme = readFileSync(join(repoRoot, 'sdk/js/README.md'), 'utf8');
  for (const name of ['@kiln-ci/sdk/jest', '@kiln-ci/sdk/vite', '@kiln-ci/sdk/webpack', 'BuildTracker', 'KilnWebpackPlugin', '[API.md](API.md)']) {
    assert.ok(readme.includes(name), name);
  }
});
