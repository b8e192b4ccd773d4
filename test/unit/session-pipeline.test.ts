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
  open = false,
): SenderSession {
  return new SenderSession(
    n.net.socket(address),
    n.clock,
    id,
    objects.map((bytes) => ({ bytes })),
    Array.from({ length: receivers }, (_, i) => i + 1),
    { symbolSize: 1024, blockSymbols: 16, parity: codec, rateCapBytesPerSecond: 20e6, startHeld, open },
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

test('an open session delivers objects offered while it sends, in order, and ends only once closed', async () => {
  const clock = new VirtualClock();
  const rng = new Prng(4);
  const random = () => rng.next();
  // 5% loss: objects offered late are repaired like the others.
  const n = { clock, random, net: new MemoryNetwork(clock, random, { loss: 0.05 }) };
  const id = identity(13);
  const objects = Array.from({ length: 6 }, () => new Uint8Array(randomBytes(150_000)));
  const s = sender(n, id, '10.0.0.1:7000', objects.slice(0, 1), 2, false, true);
  const got = [new Map<number, Uint8Array>(), new Map<number, Uint8Array>()];
  const receivers = got.map((g, i) => receiver(n, id, i + 1, `10.0.0.${i + 2}:7001`, '10.0.0.1:7000', g));
  const states: string[] = [];
  receivers.forEach((r) => void r.run().then((state) => states.push(state)));
  let over = false;
  void s.run().then(() => (over = true));
  // Every object offered so far goes out once; the session waits for more, its receivers with it.
  let firstPassDone = false;
  void s.whenFirstPassDone().then(() => (firstPassDone = true));
  assert.ok(await runUntil(n.clock, () => got.every((g) => g.size === 1), 5000), 'the first object arrived');
  await runUntil(n.clock, () => false, 500);
  assert.equal(over, false, 'an open session does not end when its receivers hold what it offered');
  assert.deepEqual(states, [], 'no receiver counts itself complete while more may come');
  assert.equal(firstPassDone, false, 'its first pass is not done while it is open');
  // Offered in two steps while it runs, then closed.
  s.append(objects.slice(1, 3).map((bytes) => ({ bytes })));
  let sending = false;
  void s.whenSending(3).then(() => (sending = true));
  assert.ok(await runUntil(n.clock, () => sending, 5000), 'objects 1 and 2 went out once');
  s.append(objects.slice(3).map((bytes) => ({ bytes })));
  s.close();
  assert.ok(await runUntil(n.clock, () => over, 10_000), 'the session ended once closed and delivered');
  assert.equal(firstPassDone, true);
  assert.deepEqual(s.result().completed.slice().sort(), [1, 2]);
  assert.deepEqual(states.sort(), ['complete', 'complete']);
  for (const g of got) {
    assert.deepEqual([...g.keys()].sort(), [0, 1, 2, 3, 4, 5]);
    objects.forEach((bytes, i) =>
      assert.deepEqual(Buffer.from(g.get(i)!), Buffer.from(bytes), `object ${i}`),
    );
  }
  assert.ok(s.stats.repairPackets > 0, 'losses were repaired');
  assert.equal(s.objectsCompleteAt(1), 6);
});

test('an open receiver that never answers the group is dropped as unheard, the others served', async () => {
  const n = network(5);
  const id = identity(14);
  const objects = [new Uint8Array(randomBytes(50_000))];
  const s = sender(n, id, '10.0.0.1:7000', objects, 2, false, true);
  n.net.denyMulticast('10.0.0.3');
  const got = [new Map<number, Uint8Array>(), new Map<number, Uint8Array>()];
  got.forEach(
    (g, i) =>
      void receiver(n, id, i + 1, `10.0.0.${i + 2}:7001`, '10.0.0.1:7000', g)
        .run()
        .catch(() => undefined),
  );
  let over = false;
  void s.run().then(() => (over = true));
  s.close();
  assert.ok(await runUntil(n.clock, () => over, 20_000), 'the session ended');
  assert.deepEqual(s.result().completed, [1]);
  assert.deepEqual(s.result().dropped, [{ receiver: 2, reason: 'unheard' }]);
  assert.deepEqual(Buffer.from(got[0]!.get(0)!), Buffer.from(objects[0]!));
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

test('a session stopped by its signal stays stopped: released or offered objects after it, it sends nothing', async () => {
  const n = network(6);
  const id = identity(15);
  const s = sender(n, id, '10.0.0.1:7000', [], 1, true, true);
  void receiver(n, id, 1, '10.0.0.2:7001', '10.0.0.1:7000', new Map())
    .run()
    .catch(() => undefined);
  const stop = new AbortController();
  const ran = s.run(stop.signal).catch(() => 'stopped');
  await runUntil(n.clock, () => false, 100);
  stop.abort();
  assert.equal(await ran, 'stopped');
  const sent = { ...s.stats };
  // What seeding does to a held session once the one before it is done, stopped or not.
  s.releaseData();
  s.append([{ bytes: new Uint8Array(randomBytes(10_000)) }]);
  s.close();
  await s.whenFirstPassDone(); // resolves at once: a stopped session keeps nobody waiting
  await runUntil(n.clock, () => false, 1000);
  assert.deepEqual(s.stats, sent, 'no heartbeat, announce or data after the stop');
});
