import assert from 'node:assert/strict';
import { test } from 'node:test';
import { heldForLive } from '../../src/coordinator/live-phase.js';
import { DigestTable } from '../../src/memory/digest-table.js';
import { DIGEST_BYTES } from '../../src/memory/page.js';

/**
 * A running VM's stream refers to a page only where its target holds it: confirmed by the target
 * (held-confirmation.test.ts), or from a round the target completed, less the pages that round left out because their guest had rewritten them since the
 * scan. Fails if a left-out page counts as held (the target would be sent a reference it cannot
 * resolve, and the VM would stay at its source for nothing).
 */
test('held for live: what completed rounds carried, not the pages they left out', () => {
  const table = new DigestTable(16);
  const digest = (n: number) => new Uint8Array(DIGEST_BYTES).fill(n);
  for (let n = 1; n <= 6; n++) table.intern(digest(n), 0);
  const round = (ids: number[], receivers: number[]) => ({
    group: 0,
    receivers,
    needed: receivers.map(() => ids.length),
    ids: Uint32Array.from(ids),
  });
  const rounds = [round([1, 2, 3], [0, 1]), round([4, 5], [1]), round([6], [0])];
  const holds = heldForLive(
    rounds,
    {
      // Target 1 completed rounds 0 and 1, target 0 only round 0 (round 2 failed at it).
      roundCompleted: [[0, 1], [1], []],
      roundChanged: [Uint32Array.of(2), new Uint32Array(0), new Uint32Array(0)],
    },
    [undefined, undefined],
    table,
    2,
  );
  const held = (t: number) => [1, 2, 3, 4, 5, 6].filter((n) => holds(t, digest(n)));
  assert.deepEqual(held(0), [1, 3]);
  assert.deepEqual(held(1), [1, 3, 4, 5]);
});
