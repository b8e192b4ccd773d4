import assert from 'node:assert/strict';
import { test } from 'node:test';
import { worthASession } from '../../src/seed/seeding.js';

/** A round is multicast only when unicast would take the link longer than a session's set-up. */
const round = (pages: number, receivers: number) => ({
  group: 0,
  receivers: Array.from({ length: receivers }, (_, i) => i),
  needed: Array.from({ length: receivers }, () => pages),
  ids: Uint32Array.from({ length: pages }, (_, i) => i + 1),
});

test('a round worth a multicast session: unicast to its receivers would outlast the set-up', () => {
  const gbit = 1e9;
  // 50 ms at 1 Gbit/s is 6.25 MB: 1526 pages to one receiver, 382 to four.
  assert.equal(worthASession(round(1525, 1), gbit, 50), false);
  assert.equal(worthASession(round(1526, 1), gbit, 50), true);
  assert.equal(worthASession(round(381, 4), gbit, 50), false);
  assert.equal(worthASession(round(382, 4), gbit, 50), true);
  // A slower link makes the set-up cheaper in bytes: smaller rounds pay.
  assert.equal(worthASession(round(200, 1), 100e6, 50), true);
  // 0 ms: every round multicast, however small.
  assert.equal(worthASession(round(1, 1), gbit, 0), true);
});
