import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chooseCopyStrategy, finalPassLimitMs, MAX_PLAIN_PASSES } from '../../src/live/copy-strategy.js';

const MiB = 2 ** 20;
const base = { memoryBytes: 256 * MiB, bandwidthBytesPerSecond: 125e6, downtimeLimitMs: 300 };

test('copy strategy: an idle guest is copied by plain precopy in a pass or two', () => {
  const decision = chooseCopyStrategy({ ...base, dirtyBytesPerSecond: 256 * 1024 });
  assert.equal(decision.strategy, 'precopy');
  assert.ok(decision.passes <= 2);
});

test('copy strategy: a guest dirtying near the bandwidth is throttled to converge', () => {
  assert.equal(
    chooseCopyStrategy({ ...base, dirtyBytesPerSecond: 0.7 * 125e6 }).strategy,
    'precopy-auto-converge',
  );
  // Below half the bandwidth but needing many passes for a tight limit: throttled too.
  const tight = chooseCopyStrategy({ ...base, dirtyBytesPerSecond: 0.45 * 125e6, downtimeLimitMs: 1 });
  assert.ok(tight.passes > MAX_PLAIN_PASSES);
  assert.equal(tight.strategy, 'precopy-auto-converge');
});

test('copy strategy: a guest dirtying faster than the link, or a tiny one, is stopped and copied once', () => {
  const fast = chooseCopyStrategy({ ...base, dirtyBytesPerSecond: 2 * 125e6 });
  assert.equal(fast.strategy, 'stop-and-copy');
  assert.equal(fast.passes, Infinity);
  const tiny = chooseCopyStrategy({ ...base, memoryBytes: 16 * MiB, dirtyBytesPerSecond: 50e6 });
  assert.equal(tiny.strategy, 'stop-and-copy');
  assert.equal(
    chooseCopyStrategy({ ...base, bandwidthBytesPerSecond: 0, dirtyBytesPerSecond: 1 }).strategy,
    'stop-and-copy',
  );
});

test("QEMU's downtime limit is the final pass's share of the VM's downtime target, never 0", () => {
  assert.equal(finalPassLimitMs(300), 150);
  assert.equal(finalPassLimitMs(1), 1);
  assert.ok(finalPassLimitMs(1000) < 1000);
});
