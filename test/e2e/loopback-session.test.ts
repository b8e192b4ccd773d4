import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { realScheduler } from '../../src/transport/datagram.js';
import { DgramSocket } from '../../src/transport/dgram-socket.js';
import { BlockCodec } from '../../src/transport/fec-codec.js';
import { ReceiverSession, SenderSession } from '../../src/transport/session.js';

test('real UDP on loopback: 3 receivers get 24 MiB in 6 objects byte-exact, encrypted', async () => {
  const port = 48_000 + (process.pid % 1000);
  const identity = { session: 11, key: new Uint8Array(randomBytes(32)), group: `239.255.78.1:${port}` };
  const objects = Array.from({ length: 6 }, () => ({ bytes: new Uint8Array(randomBytes(4 * 2 ** 20)) }));
  const codec = new BlockCodec();
  const senderSocket = await DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' });
  const receiverSockets = await Promise.all(
    [1, 2, 3].map(() => DgramSocket.open({ port, multicastInterface: '127.0.0.1' })),
  );
  const received = [1, 2, 3].map(() => new Map<number, Uint8Array>());
  try {
    const receivers = receiverSockets.map(
      (socket, i) =>
        new ReceiverSession(
          socket,
          realScheduler,
          identity,
          i + 1,
          senderSocket.address,
          { decoder: codec },
          (id, bytes) => received[i]!.set(id, bytes),
        ),
    );
    const receiving = receivers.map((r) => r.run(AbortSignal.timeout(60_000)));
    const sender = new SenderSession(senderSocket, realScheduler, identity, objects, [1, 2, 3], {
      symbolSize: 8192,
      blockSymbols: 32,
      parity: codec,
      rateCapBytesPerSecond: 100e6,
    });
    const result = await sender.run(AbortSignal.timeout(60_000));
    assert.deepEqual(result.dropped, []);
    assert.deepEqual(result.completed.slice().sort(), [1, 2, 3]);
    assert.deepEqual(await Promise.all(receiving), ['complete', 'complete', 'complete']);
    for (const got of received) {
      objects.forEach((o, id) =>
        assert.ok(Buffer.from(o.bytes).equals(Buffer.from(got.get(id)!)), `object ${id}`),
      );
    }
  } finally {
    await Promise.all([senderSocket.close(), ...receiverSockets.map((s) => s.close())]);
  }
});
