import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ERROR_CATALOGUE, VmscatterError } from '../../src/errors.js';
import { repoRoot } from '../support/fixtures.js';

/** The README's table of error codes: `| \`CODE\` | exit | meaning |` rows. */
function readmeCodes(): Map<string, { exitCode: number; meaning: string }> {
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const rows = [...readme.matchAll(/^\| `(VMS_[A-Z_]+)`\s*\|\s*(\d+)\s*\|\s*(.*?)\s*\|$/gm)];
  return new Map(rows.map((m) => [m[1]!, { exitCode: Number(m[2]), meaning: m[3]! }]));
}

test('errors: the README lists every error code with its exit code and meaning, as src/errors.ts has them', () => {
  const documented = readmeCodes();
  assert.deepEqual(
    [...documented.keys()].sort(),
    Object.keys(ERROR_CATALOGUE).sort(),
    'codes in the README and in the catalogue',
  );
  for (const [code, entry] of Object.entries(ERROR_CATALOGUE))
    assert.deepEqual(documented.get(code), { exitCode: entry.exitCode, meaning: entry.meaning }, code);
});

test("errors: an error's exit code is its code's, unless a command documents its own", () => {
  assert.equal(new VmscatterError('VMS_STORE', 'x').exitCode, 5);
  assert.equal(new VmscatterError('VMS_INTERRUPTED', 'x').exitCode, 130);
  assert.equal(new VmscatterError('VMS_STORE', 'x', 1).exitCode, 1);
});
