import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RateController } from '../../src/transport/rate-controller.js';

const cap = 125e6; // 1 Gbit/s in bytes

/** Drives the controller for `ms` of virtual time, one report per receiver per ms. */
function drive(
  c: RateController,
  from: number,
  ms: number,
  report: (t: number) => [number, number][],
): number {
  for (let t = from; t < from + ms; t++) {
    for (const [receiver, [rtt, loss]] of report(t).entries()) c.report(receiver, rtt, loss);
    c.tick(t);
  }
  return from + ms;
}

test('without congestion the rate grows to the cap and stays there', () => {
  const c = new RateController({ capBytesPerSecond: cap });
  assert.equal(c.rate, cap / 4);
  drive(c, 0, 500, () => [[0.3, 0]]);
  assert.equal(c.rate, cap);
});

test('a steady random loss on an idle link does not throttle the session', () => {
  const c = new RateController({ capBytesPerSecond: cap });
  drive(c, 0, 1000, () => [[0.3, 0.01]]);
  assert.equal(c.rate, cap);
});

test('scheduling noise of a few ms is not taken for a queue', () => {
  const c = new RateController({ capBytesPerSecond: cap });
  drive(c, 0, 1000, (t) => [[t % 7 === 0 ? 8 : 0.3, 0]]);
  assert.equal(c.rate, cap);
});

test('queueing delay at one receiver cuts the rate, and recovery follows when it drains', () => {
  const c = new RateController({ capBytesPerSecond: cap });
  let t = drive(c, 0, 300, () => [
    [0.3, 0],
    [0.3, 0],
  ]);
  t = drive(c, t, 600, () => [
    [0.3, 0],
    [60, 0],
  ]);
  const cut = c.rate;
  assert.ok(cut < cap * 0.5, `cut to ${cut}`);
  drive(c, t, 1000, () => [
    [0.3, 0],
    [0.3, 0],
  ]);
  assert.equal(c.rate, cap);
});

test('a jump in loss well above the usual loss cuts the rate; the floor holds', () => {
  const c = new RateController({ capBytesPerSecond: cap, minBytesPerSecond: 1e6 });
  const t = drive(c, 0, 300, () => [[0.3, 0.01]]);
  drive(c, t, 500, () => [[0.3, 0.3]]);
  assert.equal(c.rate, 1e6, 'down to the floor, never below');
  assert.throws(() => new RateController({ capBytesPerSecond: 0 }), RangeError);
});

test('a forgotten receiver no longer holds the rate down', () => {
  const c = new RateController({ capBytesPerSecond: cap });
  c.report(7, 0.3, 0);
  let t = 0;
  for (; t < 1000; t++) {
    c.report(7, 100, 0);
    c.tick(t);
  }
  assert.ok(c.rate < cap / 4);
  c.forget(7);
  drive(c, t, 500, () => []);
  assert.equal(c.rate, cap);
});
