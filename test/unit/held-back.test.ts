import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HeldBack } from '../../src/agent/held-back.js';

test("a VM's stream messages wait for the stores they may refer to, and run in the order they came", async () => {
  const held = new HeldBack();
  const ran: string[] = [];
  let release!: () => void;
  const stored = new Promise<void>((resolve) => (release = resolve));
  held.run('g1', stored, () => ran.push('g1 first'));
  // The stores are done for what comes later, but it still waits behind the first.
  held.run('g1', undefined, () => ran.push('g1 second'));
  held.run('g2', undefined, () => ran.push('g2 at once'));
  let drained = false;
  const waiting = held.drained('g1').then(() => (drained = true));
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(ran, ['g2 at once'], 'nothing of g1 runs before its stores settle');
  assert.equal(drained, false);
  release();
  await waiting;
  assert.deepEqual(ran, ['g2 at once', 'g1 first', 'g1 second']);
  // Nothing waits any more: the next message is written at once, in the same turn.
  held.run('g1', undefined, () => ran.push('g1 third'));
  assert.equal(ran.at(-1), 'g1 third');
});

test('work that throws does not stop what is held back after it', async () => {
  const held = new HeldBack();
  const ran: string[] = [];
  held.run('g1', Promise.resolve(), () => {
    throw new Error('destination gone');
  });
  held.run('g1', undefined, () => ran.push('after'));
  await held.drained('g1');
  assert.deepEqual(ran, ['after']);
});
