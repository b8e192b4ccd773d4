import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NewContentTally } from '../../src/coordinator/live-phase.js';

/** Content sent in full during live migrations: repeats to the same target, and to another target. */
const digest = (n: number) => Uint8Array.from({ length: 16 }, (_, i) => (n * 31 + i) & 0xff);

test('new content tally: first sends count nothing, repeats count per VM and per kind', () => {
  const tally = new NewContentTally(3);
  // VM 0 -> target 0 sends A, B, then A again (a page rewritten with the same content).
  tally.sent(0, 0, digest(1));
  tally.sent(0, 0, digest(2));
  tally.sent(0, 0, digest(1));
  // VM 1 -> target 0 sends B (already at target 0) and C (new).
  tally.sent(1, 0, digest(2));
  tally.sent(1, 0, digest(3));
  // VM 2 -> target 2 sends A (only at target 0 so far: multicastable), then A again (now a repeat).
  tally.sent(2, 2, digest(1));
  tally.sent(2, 2, digest(1));
  assert.deepEqual(tally.of(0), { repeatedPages: 1, multicastablePages: 0 });
  assert.deepEqual(tally.of(1), { repeatedPages: 1, multicastablePages: 0 });
  assert.deepEqual(tally.of(2), { repeatedPages: 1, multicastablePages: 1 });
  assert.deepEqual(tally.of(7), { repeatedPages: 0, multicastablePages: 0 });
});

test('new content tally: targets are told apart for every content id (no key collisions)', () => {
  const targets = 4;
  const tally = new NewContentTally(targets);
  // Every content to every target once: each after the first target is multicastable, none repeated.
  for (let n = 0; n < 200; n++) for (let t = 0; t < targets; t++) tally.sent(t, t, digest(n));
  for (let t = 0; t < targets; t++)
    assert.deepEqual(tally.of(t), { repeatedPages: 0, multicastablePages: t === 0 ? 0 : 200 });
});
