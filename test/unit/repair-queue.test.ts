import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RepairQueue } from '../../src/transport/repair-queue.js';

const drain = (q: RepairQueue, now: number) => {
  const out: string[] = [];
  for (let r = q.next(now); r; r = q.next(now)) out.push(`${r.object}:${r.block}:${r.index}`);
  return out;
};

test('as many fresh parity symbols per block as the neediest receiver lacks, blocks in order asked', () => {
  const q = new RepairQueue();
  q.request(0, 3, 16, 2, 16, 0, 5);
  q.request(1, 0, 16, 1, 16, 0, 5);
  q.request(0, 3, 16, 3, 16, 0, 5); // another receiver lacks more of the same block
  assert.deepEqual(drain(q, 0), ['0:3:16', '0:3:17', '0:3:18', '1:0:16']);
  assert.equal(q.owed, false);
});

test('a NAK within the holdoff counts repairs already sent; after it, a new round starts', () => {
  const q = new RepairQueue();
  q.request(0, 0, 8, 2, 8, 0, 5);
  assert.equal(drain(q, 1).length, 2);
  q.request(0, 0, 8, 2, 8, 3, 5); // stale NAK, sent before the repairs arrived
  assert.equal(q.owed, false);
  q.request(0, 0, 8, 1, 8, 20, 5); // a repair was lost: asked again after the holdoff
  assert.deepEqual(drain(q, 20), ['0:0:10']);
});

test('past the last parity row, source symbols are resent in turn; missing is capped at k', () => {
  const q = new RepairQueue();
  q.request(0, 0, 4, 99, 253, 0, 0);
  assert.deepEqual(drain(q, 0), ['0:0:253', '0:0:254', '0:0:0', '0:0:1']);
});
