import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Prng } from '../../src/memory/prng.js';
import { BlockCodec } from '../../src/transport/fec-codec.js';
import { MemoryNetwork } from '../../src/transport/memory-network.js';
import { ReceiverSession, SenderSession, type SessionIdentity } from '../../src/transport/session.js';
import { VirtualClock } from '../../src/transport/virtual-clock.js';

/**
 * Seeding announces a round's session while the one before it still sends (seed/seeding.ts): a held
 * session gathers its joins and sends nothing until released, its outcome is known before its last
 * Done repeats, and receivers on the same group and port do not count each other's datagrams as drops.
 */
const GROUP = '239.255.1.1:7420';
const codec = new BlockCodec();

function network(seed = 1) {
  const clock = new VirtualClock();
  const rng = new Prng(seed);
  const random = () => rng.next();
  return { clock, random, net: new MemoryNetwork(clock, random, {}) };
}

function identity(session: number): SessionIdentity {
  return { session, key: new Uint8Array(randomBytes(32)), group: GROUP };
}

function sender(
  n: ReturnType<typeof network>,
  id: SessionIdentity,
  address: string,
  objects: readonly Uint8Array[],
  receivers: number,
  startHeld = false,
): SenderSession {
  return new SenderSession(
    n.net.socket(address),
    n.clock,
    id,
    objects.map((bytes) => ({ bytes })),
    Array.from({ length: receivers }, (_, i) => i + 1),
    { symbolSize: 1024, blockSymbols: 16, parity: codec, rateCapBytesPerSecond: 20e6, startHeld },
  );
}

function receiver(
  n: ReturnType<typeof network>,
  id: SessionIdentity,
  receiverId: number,
  address: string,
  senderAddress: string,
  got: Map<number, Uint8Array>,
  siblings?: ReadonlySet<number>,
): ReceiverSession {
  return new ReceiverSession(
    n.net.socket(address),
    n.clock,
    id,
    receiverId,
    senderAddress,
    { decoder: codec, senderTimeoutMs: 2000 },
    (objectId, bytes) => got.set(objectId, bytes.slice()),
    n.random,
    siblings,
  );
}

/** Runs the virtual clock a millisecond at a time, letting promise callbacks run between steps. */
async function runUntil(clock: VirtualClock, done: () => boolean, limitMs: number): Promise<boolean> {
  const end = clock.now() + limitMs;
  while (!done() && clock.now() < end) {
    clock.runUntil(() => false, 1);
    await new Promise((resolve) => setImmediate(resolve));
  }
  return done();
}

test('a held session gathers its joins but sends no data until released, then delivers everything', async () => {
  const n = network();
  const objects = [new Uint8Array(randomBytes(200_000))];
  const id = identity(11);
  const held = sender(n, id, '10.0.0.1:7000', objects, 2, true);
  const got = [new Map<number, Uint8Array>(), new Map<number, Uint8Array>()];
  const receivers = got.map((g, i) => receiver(n, id, i + 1, `10.0.0.${i + 2}:7001`, '10.0.0.1:7000', g));
  receivers.forEach((r) => void r.run());
  const ran = held.run();
  // Far longer than the join timeout the session was given by default: still nothing sent.
  await runUntil(n.clock, () => false, 3000);
  assert.equal(held.stats.dataPackets, 0, 'no data while held');
  assert.ok(held.stats.controlPackets > 0, 'it announced itself meanwhile');
  assert.deepEqual(held.result().dropped, [], 'no receiver timed out while it waited');

  held.releaseData();
  let settledWhileRunning: boolean | undefined;
  void held.whenSettled().then(() => (settledWhileRunning = !held.done));
  let over = false;
  void ran.then(() => (over = true));
  assert.ok(await runUntil(n.clock, () => over, 10_000), 'the session ended');
  assert.equal(settledWhileRunning, true, 'its outcome was known before its Done repeats ended');
  assert.deepEqual(held.result().completed.slice().sort(), [1, 2]);
  for (const g of got) assert.deepEqual(Buffer.from(g.get(0)!), Buffer.from(objects[0]!));
});

test('whenFirstPassWithin resolves while the first pass still has data to send', async () => {
  const n = network(2);
  const objects = [new Uint8Array(randomBytes(400_000)), new Uint8Array(randomBytes(400_000))];
  const id = identity(12);
  const s = sender(n, id, '10.0.0.1:7000', objects, 1);
  void receiver(n, id, 1, '10.0.0.2:7001', '10.0.0.1:7000', new Map()).run();
  void s.run();
  let packetsAtSignal: number | undefined;
  void s.whenFirstPassWithin(5).then(() => (packetsAtSignal = s.stats.dataPackets));
  assert.ok(await runUntil(n.clock, () => packetsAtSignal !== undefined, 10_000));
  const total = Math.ceil(400_000 / 1024) * 2;
  // 5 ms at 20 MB/s is about 100 of the 782 data packets: the signal came near the end, not after it.
  assert.ok(packetsAtSignal! > total / 2, `${packetsAtSignal} of ${total} sent at the signal`);
  assert.ok(packetsAtSignal! < total, `${packetsAtSignal} of ${total} sent at the signal`);
});

test("receivers on one group and port skip a sibling session's datagrams without counting them as drops", async () => {
  const n = network(3);
  const first = identity(21);
  const second = identity(22);
  const siblings = new Set([first.session, second.session]);
  const objects = [new Uint8Array(randomBytes(100_000))];
  const a = sender(n, first, '10.0.0.1:7000', objects, 1);
  const b = sender(n, second, '10.0.0.1:7002', objects, 2, true);
  const told = new Map<number, Uint8Array>();
  const untold = new Map<number, Uint8Array>();
  // Both of the second session's receivers are on the group while the first one sends; only one of
  // them was told of the first session.
  const withSiblings = receiver(n, second, 1, '10.0.0.3:7001', '10.0.0.1:7002', told, siblings);
  const without = receiver(n, second, 2, '10.0.0.4:7001', '10.0.0.1:7002', untold);
  void receiver(n, first, 1, '10.0.0.2:7001', '10.0.0.1:7000', new Map()).run();
  void withSiblings.run();
  void without.run();
  const ranA = a.run();
  const ranB = b.run();
  let aOver = false;
  void ranA.then(() => (aOver = true));
  assert.ok(await runUntil(n.clock, () => aOver, 10_000), 'the first session ended');
  b.releaseData();
  let bOver = false;
  void ranB.then(() => (bOver = true));
  assert.ok(await runUntil(n.clock, () => bOver, 10_000), 'the second session ended');
  assert.deepEqual(b.result().completed.slice().sort(), [1, 2]);
  assert.equal(withSiblings.drops.total, 0, JSON.stringify(withSiblings.drops.snapshot()));
  assert.ok(without.drops.snapshot().session > 0, 'the first session reached the group: counted there');
  assert.deepEqual(Buffer.from(told.get(0)!), Buffer.from(objects[0]!));
});
