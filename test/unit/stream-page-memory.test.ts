import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StreamPageMemory } from '../../src/live/records.js';

/**
 * Both ends of a live stream remember the pages it carried in full by the same rule, without telling
 * each other: so a reference the coordinator sends to a page it remembers always resolves at the agent.
 */
const digest = (n: number) =>
  Uint8Array.from({ length: 16 }, (_, i) => ((n >> (i % 2 ? 8 : 0)) + i * 7) & 0xff);
const page = (n: number) => new Uint8Array(4096).fill((n % 255) + 1);

test('stream page memory: coordinator and agent agree on what is remembered, up to the capacity', () => {
  const capacity = 50;
  const coordinator = new StreamPageMemory(capacity);
  const agent = new StreamPageMemory(capacity);
  // A stream of pages with repeats: content n appears at positions n and again later.
  const stream = [...Array.from({ length: 80 }, (_, n) => n), 3, 7, 60, 79, 3];
  for (const n of stream) {
    const d = digest(n);
    if (coordinator.has(d)) {
      // Sent as a reference: the agent must have the page.
      assert.deepEqual(agent.get(d), page(n), `content ${n} resolves at the agent`);
      continue;
    }
    coordinator.remember(d);
    agent.remember(d, page(n));
  }
  // The first `capacity` distinct contents are remembered, the later ones not (sent in full again).
  assert.ok(coordinator.has(digest(3)) && coordinator.has(digest(49)));
  assert.ok(!coordinator.has(digest(50)) && !coordinator.has(digest(79)));
  assert.equal(agent.get(digest(60)), undefined);
  assert.equal(agent.get(digest(999)), undefined);
});
