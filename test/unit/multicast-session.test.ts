import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { MessageType } from '../../src/transport/messages.js';
import { PacketSealer } from '../../src/transport/packet-crypto.js';
import { encodeMessage } from '../../src/transport/wire-codec.js';
import { sessionHarness } from '../support/session-harness.js';

const sizes = [0, 1, 1023, 1024, 1025, 64 * 1024, 300_000, 16 * 1024 + 7];

test('clean network: every receiver gets every object byte-exact and the session ends', () => {
  const h = sessionHarness({ receivers: 3, objectSizes: sizes });
  h.start();
  assert.ok(
    h.clock.runUntil(() => h.senderResult() !== undefined, 30_000),
    'session ends',
  );
  for (let i = 0; i < 3; i++) assert.ok(h.holdsAll(i), `receiver ${i + 1} holds all`);
  assert.deepEqual(h.senderResult()!.completed.slice().sort(), [1, 2, 3]);
  assert.deepEqual(h.senderResult()!.dropped, []);
  assert.equal(h.sender.stats.repairPackets, 0, 'no loss, no repair');
});

for (const share of [0.05, 0.2]) {
  test(`${share * 100}% loss, duplication and reordering: every receiver still gets everything`, () => {
    const h = sessionHarness({
      receivers: 4,
      objectSizes: sizes,
      seed: Math.round(share * 1000),
      conditions: { loss: share, duplicate: share, reorder: share, reorderMs: 3 },
    });
    h.start();
    assert.ok(
      h.clock.runUntil(() => h.senderResult() !== undefined, 60_000),
      'session ends',
    );
    for (let i = 0; i < 4; i++) assert.ok(h.holdsAll(i), `receiver ${i + 1} holds all`);
    assert.deepEqual(h.senderResult()!.dropped, []);
    assert.ok(h.sender.stats.repairPackets > 0, 'losses were repaired');
    assert.ok(
      h.receivers.some((r) => r.stats.decodedBlocks > 0),
      'parity rebuilt blocks',
    );
    assert.ok(
      h.receivers.some((r) => r.stats.duplicates > 0),
      'duplicates were absorbed',
    );
  });
}

test('objects rebuilt in memory given back by the consumer come out byte-exact, lost symbols recovered in it', () => {
  // Large objects first, then smaller ones: each fits in memory an earlier object left, full of its
  // bytes, so a byte the receiver failed to write would show as the earlier object's.
  const h = sessionHarness({
    receivers: 3,
    objectSizes: [300_000, 300_000, 200_000, 250_000, 1025, 299_999, 64 * 1024],
    seed: 11,
    conditions: { loss: 0.1, reorder: 0.1, reorderMs: 3 },
    reuseMemory: true,
  });
  h.start();
  assert.ok(
    h.clock.runUntil(() => h.senderResult() !== undefined, 60_000),
    'session ends',
  );
  for (let i = 0; i < 3; i++) {
    assert.ok(h.holdsAll(i), `receiver ${i + 1} holds all`);
    assert.ok(h.memories[i]!.reused > 0, `receiver ${i + 1} reused given-back memory`);
  }
  assert.ok(
    h.receivers.some((r) => r.stats.decodedBlocks > 0),
    'some blocks were recovered',
  );
});

test('one parity packet serves receivers that lost different symbols', () => {
  const h = sessionHarness({ receivers: 6, objectSizes: [512 * 1024], seed: 9, conditions: { loss: 0.02 } });
  h.start();
  assert.ok(h.clock.runUntil(() => h.senderResult() !== undefined, 60_000));
  for (let i = 0; i < 6; i++) assert.ok(h.holdsAll(i));
  const lost = h.network.counters.dropped;
  // Independent per-receiver losses: unicast repair would need one packet per loss.
  assert.ok(
    h.sender.stats.repairPackets < lost,
    `${h.sender.stats.repairPackets} repairs for ${lost} losses`,
  );
});

test('a receiver that crashes mid-transfer is dropped after the timeout; the others finish', () => {
  const h = sessionHarness({
    receivers: 3,
    objectSizes: [2 * 1024 * 1024, 2 * 1024 * 1024],
    rateBytesPerSecond: 20e6,
  });
  h.start();
  h.clock.runUntil(() => false, 50);
  void h.receiverSockets[1]!.close();
  assert.ok(
    h.clock.runUntil(() => h.senderResult() !== undefined, 60_000),
    'session ends',
  );
  assert.ok(h.holdsAll(0) && h.holdsAll(2), 'survivors hold all');
  assert.deepEqual(h.senderResult()!.dropped, [{ receiver: 2, reason: 'timeout' }]);
  assert.deepEqual(h.senderResult()!.completed.slice().sort(), [1, 3]);
});

test("a receiver whose agent is lost is dropped at once, not after the receivers' timeout", () => {
  const h = sessionHarness({
    receivers: 3,
    objectSizes: [2 * 1024 * 1024, 2 * 1024 * 1024],
    rateBytesPerSecond: 20e6,
  });
  h.start();
  h.clock.runUntil(() => false, 50);
  void h.receiverSockets[1]!.close();
  const lostAt = h.clock.now();
  h.sender.dropReceiver(2);
  assert.ok(
    h.clock.runUntil(() => h.senderResult() !== undefined, 60_000),
    'session ends',
  );
  assert.ok(h.holdsAll(0) && h.holdsAll(2), 'survivors hold all');
  assert.deepEqual(h.senderResult()!.dropped, [{ receiver: 2, reason: 'lost' }]);
  // Two objects of 2 MiB at 20 MB/s take about 0.2 s of virtual time; the timeout alone is 3 s.
  assert.ok(h.clock.now() - lostAt < 3000, `ended ${h.clock.now() - lostAt} ms after the loss`);
});

test('forged, replayed and garbage datagrams are dropped and counted, and change nothing', () => {
  const h = sessionHarness({ receivers: 2, objectSizes: [100_000, 5000] });
  const attacker = h.network.socket('10.0.0.99:6666');
  const captured: Uint8Array[] = [];
  const spy = h.network.socket('10.0.0.98:6666');
  spy.joinGroup(h.identity.group);
  spy.onDatagram((bytes) => captured.push(bytes.slice()));
  h.start();
  h.clock.runUntil(() => captured.length > 20, 10_000);
  // Sequences far ahead of anything sent, so these reach authentication instead of the replay check.
  const wrongKey = new PacketSealer(new Uint8Array(randomBytes(32)), h.identity.session, 0, {
    firstSequence: 1n << 40n,
  });
  const forgedData = {
    type: MessageType.Data as const,
    objectId: 0,
    objectLength: 100_000,
    block: 0,
    index: 0,
    blockSymbols: 16,
    payload: new Uint8Array(1024).fill(0xee),
  };
  for (let i = 0; i < 20; i++) {
    attacker.send(wrongKey.seal(MessageType.Data, encodeMessage(forgedData)), h.identity.group);
    attacker.send(new Uint8Array(randomBytes(1 + i * 37)), h.identity.group);
    attacker.send(captured[i]!, h.identity.group); // replay
    const tampered = captured[i]!.slice();
    new DataView(tampered.buffer).setBigUint64(12, (1n << 41n) + BigInt(i)); // the header is authenticated too
    attacker.send(tampered, h.identity.group);
  }
  assert.ok(h.clock.runUntil(() => h.senderResult() !== undefined, 60_000));
  for (let i = 0; i < 2; i++) {
    assert.ok(h.holdsAll(i), `receiver ${i + 1} holds the true bytes`);
    const drops = h.receivers[i]!.drops.snapshot();
    assert.equal(drops.auth, 40, `forged and tampered counted: ${JSON.stringify(drops)}`);
    assert.ok(drops.replay + drops.stale >= 20, `replays counted: ${JSON.stringify(drops)}`);
    assert.ok(drops.short + drops.magic + drops.version >= 19, `garbage counted: ${JSON.stringify(drops)}`);
  }
});

test('a receiver that cannot keep up is dropped after the lag timeout without stalling the others', () => {
  const h = sessionHarness({
    receivers: 3,
    objectSizes: Array.from({ length: 16 }, () => 256 * 1024),
    windowBytes: 1024 * 1024,
  });
  // Receiver 3 hears enough to stay alive (heartbeats, some data) but loses most of what it needs.
  h.network.setConditions({ loss: 0.9 }, h.receiverSockets[2]!.address);
  h.start();
  assert.ok(
    h.clock.runUntil(() => h.senderResult() !== undefined, 60_000),
    'session ends',
  );
  assert.ok(h.holdsAll(0) && h.holdsAll(1), 'the others hold all');
  assert.deepEqual(h.senderResult()!.dropped, [{ receiver: 3, reason: 'too slow' }]);
});
