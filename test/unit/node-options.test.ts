import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CLI_NODE_OPTIONS } from '../../src/cli/node-options.js';
import { repoRoot } from '../support/fixtures.js';

test("the command's first line, npm start and CLI_NODE_OPTIONS give node the same options", () => {
  const shebang = readFileSync(join(repoRoot, 'src/cli/main.ts'), 'utf8').split('\n')[0]!;
  assert.equal(shebang, `#!/usr/bin/env -S node ${CLI_NODE_OPTIONS.join(' ')}`);
  // The compiled command keeps its first line (it is what `vmscatter` runs).
  const built = readFileSync(join(repoRoot, 'dist/src/cli/main.js'), 'utf8').split('\n')[0]!;
  assert.equal(built, shebang);
  const scripts = (
    JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  ).scripts;
  assert.match(scripts.start!, new RegExp(`node ${CLI_NODE_OPTIONS.join(' ')} dist/src/cli/main\\.js `));
});
