import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Agent } from '../../src/agent/agent.js';
import { confirmedDigests, heldBitmap } from '../../src/announce/held-confirmation.js';
import type { HeldDigests } from '../../src/announce/digest-set.js';
import { connectControl } from '../../src/control/control-channel.js';
import { confirmHeld, liveReferenceCandidates } from '../../src/coordinator/job-agents.js';
import { heldForLive } from '../../src/coordinator/live-phase.js';
import { DigestTable } from '../../src/memory/digest-table.js';
import { DIGEST_BYTES, PAGE_SIZE, ZERO_PAGE_ID } from '../../src/memory/page.js';
import { TemplateStore } from '../../src/store/template-store.js';
import type { Host } from '../../src/topology/model.js';
import { AgentLink } from '../../src/wire/agent-link.js';
import { PROTOCOL_VERSION } from '../../src/wire/protocol.js';
import { tempDir } from '../support/fixtures.js';

const secret = new TextEncoder().encode('held confirmation test secret, 32+ bytes');

/** An announcement whose every answer is "may hold": a false positive for each page not held. */
const claimsEverything: HeldDigests = { mayHold: () => true, count: 1, falsePositiveRate: 0 };

test('held bitmap: bit i is digest i, and a bitmap of the wrong length confirms nothing', () => {
  const digests = randomBytes(11 * DIGEST_BYTES);
  const held = new Set([0, 3, 8, 10]);
  const at = (i: number) => digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
  const bitmap = heldBitmap(digests, (d) => [...held].some((i) => Buffer.compare(d, at(i)) === 0));
  assert.equal(bitmap.length, 2);
  const table = confirmedDigests(digests, bitmap);
  for (let i = 0; i < 11; i++) assert.equal(table.lookup(at(i)) > 0, held.has(i), `digest ${i}`);
  assert.equal(confirmedDigests(digests, new Uint8Array(1).fill(255)).size, 0);
  assert.equal(confirmedDigests(digests, new Uint8Array(3).fill(255)).size, 0);
});

/** A scan's table of `count` random digests (ids 1..count). */
function tableOf(count: number): DigestTable {
  const table = new DigestTable(Math.max(16, count));
  const digests = randomBytes(count * DIGEST_BYTES);
  for (let i = 0; i < count; i++) table.intern(digests, i * DIGEST_BYTES);
  return table;
}

/**
 * An agent whose store holds the pages `heldIds` of `table`, in a job opened over a real control
 * channel: the link a coordinator asks it through.
 */
async function agentHolding(
  t: TestContext,
  table: DigestTable,
  heldIds: readonly number[],
): Promise<AgentLink> {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = TemplateStore.open(join(dir, 'agent', 'store'), { capacityPages: 1024 });
  const packed = new Uint8Array(heldIds.length * DIGEST_BYTES);
  heldIds.forEach((id, k) => packed.set(table.digestOf(id), k * DIGEST_BYTES));
  store.offerMany(packed, randomBytes(heldIds.length * PAGE_SIZE), 1);
  store.close();
  const agent = await Agent.start({
    name: 't1',
    listenAddress: '127.0.0.1',
    port: 0,
    multicastInterface: '127.0.0.1',
    dir: join(dir, 'agent'),
    secret,
    log: () => undefined,
  });
  t.after(() => agent.close());
  const channel = await connectControl('127.0.0.1', agent.port, { secret });
  t.after(() => channel.close());
  const link = new AgentLink(0, { name: 't1' } as Host, channel);
  channel.send({ t: 'job', version: PROTOCOL_VERSION, job: 'confirm', host: 't1' });
  await link.next('ready', () => true, 10_000);
  return link;
}

/** What one running VM on the only target may refer to, where the target claims every page. */
function claimedOfOneVm(pages: Uint32Array, table: DigestTable): Uint8Array[] {
  return liveReferenceCandidates([{ name: 'g1', pages }], [0], Int32Array.of(0), [claimsEverything], table);
}

/**
 * The evacuation lab's intermittent failure, made certain: the target's announcement says it may
 * hold pages it lacks (a Bloom filter's false positives, here every page), and a running VM's stream
 * referred to such a page; the target could not put it back and the VM stayed at its source. Now the
 * coordinator asks the agent which announced pages it holds, and the stream refers to those only.
 */
test(
  'held confirmation: a running VM refers only to pages its target confirms; false positives go in full',
  { timeout: 30_000 },
  async (t) => {
    // The VM: pages 1..40 of the scan's table, and zero pages; the target holds the odd ones.
    const table = tableOf(40);
    const ids = Array.from({ length: 40 }, (_, i) => i + 1);
    const pages = Uint32Array.from([...ids, ZERO_PAGE_ID, ZERO_PAGE_ID, ...ids.reverse()]);
    const link = await agentHolding(
      t,
      table,
      ids.filter((id) => id % 2 === 1),
    );

    const candidates = claimedOfOneVm(pages, table);
    assert.equal(candidates[0]!.length, 40 * DIGEST_BYTES, 'every distinct non-zero page, once');
    const confirmed = await confirmHeld([link], candidates);
    const holds = heldForLive([], { roundCompleted: [], roundChanged: [] }, confirmed, table, 1);
    for (let id = 1; id <= 40; id++)
      assert.equal(holds(0, table.digestOf(id)), id % 2 === 1, `page ${id}: referred to only if held`);
  },
);

test('live reference candidates: only the running VMs placed on the target, and only what it announced', () => {
  const table = new DigestTable(16);
  const digests = randomBytes(6 * DIGEST_BYTES);
  for (let i = 0; i < 6; i++) table.intern(digests, i * DIGEST_BYTES);
  const announcedIds = new Set([1, 2, 5]);
  const announced: HeldDigests = {
    mayHold: (d, offset = 0) => announcedIds.has(table.lookup(d, offset)),
    count: 3,
    falsePositiveRate: 0,
  };
  const vms = [
    { name: 'a', pages: Uint32Array.of(1, 2, 3, 0) },
    { name: 'b', pages: Uint32Array.of(4, 5) },
    { name: 'c', pages: Uint32Array.of(2, 6) },
  ];
  // a and b run on target 0, c (an image, not running) is placed there too; target 1 announced nothing.
  const candidates = liveReferenceCandidates(
    vms,
    [0, 1],
    Int32Array.of(0, 0, 0),
    [announced, undefined],
    table,
  );
  const ids = (packed: Uint8Array) =>
    Array.from({ length: packed.length / DIGEST_BYTES }, (_, i) => table.lookup(packed, i * DIGEST_BYTES));
  assert.deepEqual(ids(candidates[0]!).sort(), [1, 2, 5]);
  assert.deepEqual(ids(candidates[1]!), []);
});

test(
  'held confirmation: more candidates than one message carries are asked in parts, and every part counts',
  { timeout: 60_000 },
  async (t) => {
    // 300,000 distinct pages: more than one part (2^18 digests), so the answer spans two messages.
    const count = 300_000;
    const table = tableOf(count);
    // Held: a few pages in the first part and a few in the second.
    const heldIds = [1, 2, 100_000, 262_144, 262_145, 299_999, 300_000];
    const link = await agentHolding(t, table, heldIds);
    const pages = Uint32Array.from({ length: count }, (_, i) => i + 1);
    const candidates = claimedOfOneVm(pages, table);
    const [confirmed] = await confirmHeld([link], candidates);
    assert.equal(confirmed!.size, heldIds.length);
    for (const id of heldIds) assert.ok(confirmed!.lookup(table.digestOf(id)) > 0, `page ${id} confirmed`);
  },
);
