import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ObjectMemory } from '../../src/transport/object-memory.js';

test('object memory: given-back memory serves the next object (the smallest that fits), never two at once', () => {
  const memory = new ObjectMemory(16 << 20);
  const a = memory.take(3 << 20);
  const b = memory.take(1 << 20);
  assert.equal(a.length, 3 << 20);
  assert.notEqual(a.buffer, b.buffer);
  memory.give(a);
  memory.give(b);
  memory.give(b); // twice: kept once
  // 1.5 MiB fits a's 3 MiB only; then 0.5 MiB takes b's (the smaller), and a third is new.
  const c = memory.take(1.5 * 2 ** 20);
  assert.equal(c.buffer, a.buffer);
  const d = memory.take(2 ** 19);
  assert.equal(d.buffer, b.buffer);
  const e = memory.take(2 ** 19);
  assert.ok(e.buffer !== a.buffer && e.buffer !== b.buffer);
  assert.equal(memory.reused, 2);
  // A view into the middle of a buffer is not the buffer's owner: not taken back.
  memory.give(c.subarray(1));
  assert.ok(memory.take(1).buffer !== a.buffer);
});

test('object memory: keeps at most its limit of given-back memory', () => {
  const memory = new ObjectMemory(2 << 20);
  const objects = [memory.take(1 << 20), memory.take(1 << 20), memory.take(1 << 20)];
  for (const o of objects) memory.give(o);
  const again = [memory.take(1 << 20), memory.take(1 << 20), memory.take(1 << 20)];
  assert.equal(memory.reused, 2);
  assert.equal(new Set(again.map((o) => o.buffer)).size, 3);
});
