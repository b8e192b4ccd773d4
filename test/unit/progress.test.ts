import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spinnerWanted } from '../../src/cli/progress.js';

test('progress: a spinner only on a terminal that has columns (width 0 looped for ever)', () => {
  assert.equal(spinnerWanted(true, { isTTY: true, columns: 80 }), true);
  assert.equal(spinnerWanted(true, { isTTY: true, columns: 0 }), false);
  assert.equal(spinnerWanted(true, { isTTY: true }), false);
  assert.equal(spinnerWanted(true, { isTTY: false, columns: 80 }), false);
  assert.equal(spinnerWanted(false, { isTTY: true, columns: 80 }), false);
});
