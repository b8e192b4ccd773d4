import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import type { DatagramSocket } from '../../src/transport/datagram.js';
import { DgramSocket } from '../../src/transport/dgram-socket.js';
import { BlockCodec } from '../../src/transport/fec-codec.js';
import { defaultKernel, fastestKernel, nativeKernel, scalarKernel } from '../../src/fec/gf256.js';
import { ReedSolomon } from '../../src/fec/reed-solomon.js';
import { MessageType, type SymbolMessage } from '../../src/transport/messages.js';
import {
  PacketOpener,
  PacketSealer,
  nativeAead,
  nativeAeadAvailable,
  nodeAead,
} from '../../src/transport/packet-crypto.js';
import { SenderSession } from '../../src/transport/session.js';
import {
  HEADER_BYTES,
  SYMBOL_FIXED_BYTES,
  TAG_BYTES,
  decodeMessage,
  encodeMessage,
  encodeSymbolFields,
} from '../../src/transport/wire-codec.js';

/**
 * The transport's fast path: the addon's AES-256-GCM against Node's own on random inputs, sealing into
 * reused buffers, opening into a scratch buffer, and batched receiving, with forged and replayed
 * datagrams still dropped.
 */

const SESSION = 77;

/** Node's AES-256-GCM of the datagram layout, computed from scratch: the reference. */
function referenceSeal(key: Uint8Array, header: Uint8Array, body: Uint8Array): Uint8Array {
  const cipher = createCipheriv('aes-256-gcm', key, header.subarray(8, 20), { authTagLength: 16 });
  cipher.setAAD(header);
  const encrypted = Buffer.concat([cipher.update(body), cipher.final()]);
  return new Uint8Array(Buffer.concat([header, encrypted, cipher.getAuthTag()]));
}

function referenceOpen(key: Uint8Array, datagram: Uint8Array): Uint8Array | undefined {
  const end = datagram.length - 16;
  const decipher = createDecipheriv('aes-256-gcm', key, datagram.subarray(8, 20), { authTagLength: 16 });
  decipher.setAAD(datagram.subarray(0, 20));
  decipher.setAuthTag(datagram.subarray(end));
  try {
    return new Uint8Array(Buffer.concat([decipher.update(datagram.subarray(20, end)), decipher.final()]));
  } catch {
    return undefined;
  }
}

test('native AEAD: built into the addon, and chosen by sealers and openers', () => {
  assert.ok(nativeAeadAvailable, 'the addon has no AEAD (npm ci builds native/transport.c)');
  const key = new Uint8Array(32).fill(3);
  assert.equal(new PacketSealer(key, SESSION, 0).engine, 'native');
  assert.equal(new PacketOpener(key, SESSION).engine, 'native');
  assert.equal(PacketSealer.insecurePlaintext(SESSION, 0).engine, undefined);
});

test('native AEAD: the same bytes as Node AES-256-GCM on random keys, headers, bodies and splits', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 20, maxLength: 20 }),
      fc.uint8Array({ minLength: 0, maxLength: 3000 }),
      fc.nat(),
      fc.nat(7),
      (key, header, body, cut, pad) => {
        const expected = referenceSeal(key, header, body);
        const plain = body.length === 0 ? 0 : cut % (body.length + 1);
        for (const aead of [nativeAead(key), nodeAead(key)]) {
          // The first `plain` bytes in place, the rest from a source at an offset; room to spare after.
          const datagram = new Uint8Array(HEADER_BYTES + body.length + TAG_BYTES + pad);
          datagram.set(header);
          datagram.set(body.subarray(0, plain), HEADER_BYTES);
          const source = new Uint8Array(pad + body.length);
          source.set(body.subarray(plain), pad);
          const length = aead.seal(datagram, plain, source, pad, body.length - plain);
          assert.equal(length, expected.length, aead.engine);
          assert.deepEqual(datagram.subarray(0, length), expected, aead.engine);
          // Opening: into another array at an offset, and in place.
          const out = new Uint8Array(body.length + 5);
          assert.equal(aead.open(expected, expected.length, out, 5), true, aead.engine);
          assert.deepEqual(out.subarray(5), body, aead.engine);
          const copy = expected.slice();
          assert.equal(aead.open(copy, copy.length, copy, HEADER_BYTES), true, aead.engine);
          assert.deepEqual(copy.subarray(HEADER_BYTES, HEADER_BYTES + body.length), body, aead.engine);
        }
      },
    ),
    { numRuns: 150 },
  );
});

test('native AEAD: any changed bit of header, body or tag is refused, and nothing of the body is left', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 20, maxLength: 20 }),
      fc.uint8Array({ minLength: 1, maxLength: 2000 }),
      fc.nat(),
      fc.nat(7),
      (key, header, body, at, bit) => {
        const sealed = referenceSeal(key, header, body);
        const forged = sealed.slice();
        forged[at % forged.length]! ^= 1 << bit;
        assert.equal(referenceOpen(key, forged), undefined);
        for (const aead of [nativeAead(key), nodeAead(key)]) {
          const out = new Uint8Array(body.length).fill(0xa5);
          assert.equal(aead.open(forged, forged.length, out, 0), false, aead.engine);
          if (aead.engine === 'native')
            assert.ok(
              out.every((b) => b === 0),
              'the forged body was wiped',
            );
        }
        const wrongKey = key.slice();
        wrongKey[0]! ^= 1;
        assert.equal(nativeAead(wrongKey).open(sealed, sealed.length, new Uint8Array(body.length), 0), false);
      },
    ),
    { numRuns: 150 },
  );
});

test('native AEAD: ranges outside their arrays are refused, not read or written', () => {
  const aead = nativeAead(new Uint8Array(32));
  const datagram = new Uint8Array(HEADER_BYTES + 10 + TAG_BYTES);
  assert.throws(() => aead.seal(datagram, 11, null, 0, 0), TypeError);
  assert.throws(() => aead.seal(datagram, 0, new Uint8Array(4), 2, 3), TypeError);
  assert.throws(() => aead.open(datagram, datagram.length + 1, new Uint8Array(64), 0), TypeError);
  assert.throws(() => aead.open(datagram, datagram.length, new Uint8Array(5), 0), TypeError);
  assert.throws(() => aead.open(datagram, HEADER_BYTES + TAG_BYTES - 1, new Uint8Array(64), 0), TypeError);
});

test('sealInto: the datagram seal() makes, written into a reused buffer', () => {
  const key = new Uint8Array(32).map((_, i) => i);
  {
    const name = 'sealInto';
    const viaSeal = new PacketSealer(key, SESSION, 5);
    const viaInto = new PacketSealer(key, SESSION, 5);
    const buffer = new Uint8Array(HEADER_BYTES + SYMBOL_FIXED_BYTES + 300 + TAG_BYTES);
    const object = Uint8Array.from({ length: 1000 }, (_, i) => (i * 31) & 0xff);
    for (let n = 0; n < 3; n++) {
      const message: SymbolMessage = {
        type: MessageType.Data,
        objectId: n,
        objectLength: object.length,
        block: 0,
        index: n,
        blockSymbols: 4,
        payload: object.subarray(n * 300, n * 300 + 300),
      };
      const expected = viaSeal.seal(message.type, encodeMessage(message));
      encodeSymbolFields(message, buffer, HEADER_BYTES);
      const length = viaInto.sealInto(message.type, buffer, SYMBOL_FIXED_BYTES, object, n * 300, 300);
      assert.equal(length, expected.length, name);
      assert.deepEqual(buffer.subarray(0, length), expected, name);
    }
  }
});

test('opener with a scratch buffer: bodies are views of it; forged and replayed datagrams still dropped', () => {
  const key = new Uint8Array(32).fill(9);
  const sealer = new PacketSealer(key, SESSION, 2);
  const opener = new PacketOpener(key, SESSION);
  const scratch = new Uint8Array(2048);
  const message = { type: MessageType.Done, dropped: [1, 2, 3] } as const;
  const datagram = sealer.seal(message.type, encodeMessage(message));
  const opened = opener.open(datagram, scratch);
  assert.ok('body' in opened);
  assert.equal(opened.body.buffer, scratch.buffer);
  assert.deepEqual(decodeMessage(MessageType.Done, opened.body), message);
  assert.deepEqual(opener.open(datagram, scratch), { drop: 'replay' });
  const forged = sealer.seal(message.type, encodeMessage(message));
  forged[HEADER_BYTES + 2]! ^= 0x40;
  assert.deepEqual(opener.open(forged, scratch), { drop: 'auth' });
  const tooSmall = new Uint8Array(2);
  const next = opener.open(sealer.seal(message.type, encodeMessage(message)), tooSmall);
  assert.ok('body' in next, 'a scratch buffer too small for the body is passed over');
  assert.notEqual(next.body.buffer, tooSmall.buffer);
  assert.equal(opener.drops.get('replay'), 1);
  assert.equal(opener.drops.get('auth'), 1);
});

/** A socket that records what it is sent (the bytes as they were at send time, and the buffer). */
function recordingSocket(settled: boolean) {
  const sent: { buffer: Uint8Array; bytes: Uint8Array }[] = [];
  const socket: DatagramSocket = {
    address: '10.9.0.1:1',
    send: (bytes) => sent.push({ buffer: bytes, bytes: bytes.slice() }),
    sendsSettled: () => settled,
    joinGroup() {},
    leaveGroup() {},
    onDatagram() {},
    close: async () => {},
  };
  return { socket, sent };
}

test('sender: symbol buffers are reused once the socket has taken them, never before', () => {
  const key = new Uint8Array(32).fill(4);
  for (const settled of [true, false]) {
    const { socket, sent } = recordingSocket(settled);
    const objects = [{ bytes: Uint8Array.from({ length: 5000 }, (_, i) => i & 0xff) }];
    // A clock stepped by hand: each step runs what was scheduled.
    let now = 0;
    let due: (() => void)[] = [];
    const scheduler = {
      now: () => now,
      schedule: (_ms: number, fn: () => void) => {
        due.push(fn);
        return () => {
          due = due.filter((f) => f !== fn);
        };
      },
    };
    const session = new SenderSession(
      socket,
      scheduler,
      { session: SESSION, key, group: '239.1.1.1:1' },
      objects,
      [],
      {
        symbolSize: 1000,
        blockSymbols: 8,
        parity: new BlockCodec(),
        rateCapBytesPerSecond: 1e12,
        initialRateBytesPerSecond: 1e12,
        joinTimeoutMs: 0,
      },
    );
    void session.run();
    for (let step = 0; step < 100 && !session.done; step++) {
      now += 1;
      const run = due;
      due = [];
      for (const fn of run) fn();
    }
    const symbols = sent.filter(
      (s) => s.bytes.length === HEADER_BYTES + SYMBOL_FIXED_BYTES + 1000 + TAG_BYTES,
    );
    assert.equal(symbols.length, 5);
    const distinct = new Set(symbols.map((s) => s.buffer)).size;
    assert.equal(distinct, settled ? 1 : 5, `sendsSettled ${settled}`);
    // Every datagram opens to its own symbol, whatever happened to the buffer later.
    const opener = new PacketOpener(key, SESSION);
    for (const [i, s] of symbols.entries()) {
      const opened = opener.open(s.bytes);
      assert.ok('body' in opened);
      const m = decodeMessage(opened.header.type, opened.body) as SymbolMessage;
      assert.equal(m.index, i);
      assert.deepEqual(m.payload, objects[0]!.bytes.subarray(i * 1000, i * 1000 + 1000));
    }
  }
});

test('dgram socket: reads in batches through the addon, a 65507-byte datagram and a burst byte-exact', async () => {
  const a = await DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' });
  const b = await DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' });
  try {
    assert.equal(b.batchedReceive, true, 'the addon reads for the socket');
    assert.ok(b.bufferReport.grantedReceive > 0);
    const got: Uint8Array[] = [];
    const count = 200;
    const all = new Promise<void>((resolve) =>
      b.onDatagram((bytes, from) => {
        assert.equal(from, a.address);
        got.push(bytes.slice());
        if (got.length === count + 1) resolve();
      }),
    );
    const big = Uint8Array.from({ length: 65_507 }, (_, i) => (i * 7) & 0xff);
    a.send(big, b.address);
    for (let i = 0; i < count; i++) a.send(Uint8Array.of(i & 0xff, i >> 8, 0xee), b.address);
    await Promise.race([all, realSleep(5000)]);
    assert.equal(got.length, count + 1, 'every datagram arrived (loopback, a 32 MiB buffer)');
    assert.deepEqual(got[0], big);
    for (let i = 0; i < count; i++) assert.deepEqual(got[i + 1], Uint8Array.of(i & 0xff, i >> 8, 0xee));
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

test("dgram socket: a receiver gets the groups it joined, not another socket's on the same port", async () => {
  // Two receivers on one port, as two rounds' (or two agents' on one machine) are: each joined its
  // own group. Without IP_MULTICAST_ALL off, Linux hands both of them both groups' datagrams.
  const port = 41_000 + (process.pid % 1000);
  const open = () => DgramSocket.open({ port, multicastInterface: '127.0.0.1' });
  const [a, b] = [await open(), await open()];
  const sender = await DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' });
  try {
    a.joinGroup(`239.255.77.1:${port}`);
    b.joinGroup(`239.255.77.2:${port}`);
    const toA: number[] = [];
    const toB: number[] = [];
    a.onDatagram((bytes) => toA.push(bytes[0]!));
    b.onDatagram((bytes) => toB.push(bytes[0]!));
    for (let i = 0; i < 20; i++) {
      sender.send(Uint8Array.of(1), `239.255.77.1:${port}`);
      sender.send(Uint8Array.of(2), `239.255.77.2:${port}`);
    }
    const deadline = Date.now() + 5000;
    while ((toA.length < 20 || toB.length < 20) && Date.now() < deadline) await realSleep(10);
    await realSleep(50); // anything crossing over would have come by now
    assert.deepEqual(toA, new Array<number>(20).fill(1), 'the first receiver: its group only');
    assert.deepEqual(toB, new Array<number>(20).fill(2), 'the second receiver: its group only');
  } finally {
    await Promise.all([a.close(), b.close(), sender.close()]);
  }
});

function realSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

test('native GF(2^8) kernel: built, used by the block codec, and equal to the scalar one everywhere', () => {
  assert.ok(nativeKernel, 'the addon has no gfCombine (npm ci builds native/transport.c)');
  assert.equal(fastestKernel, nativeKernel);
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 9000 }),
      fc.integer({ min: 0, max: 7 }),
      fc.integer({ min: 1, max: 70 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 0, max: 2 ** 31 }),
      (length, offset, n, rows, seed) => {
        let x = seed;
        const next = (): number => (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
        const coefficients = Uint8Array.from({ length: n * rows }, next);
        if (n * rows > 2) [coefficients[0], coefficients[1]] = [0, 1];
        const inputs = Array.from({ length: n }, () =>
          Uint8Array.from({ length: length + offset }, next).subarray(offset),
        );
        const expected = Array.from({ length: rows }, () => new Uint8Array(length));
        const actual = Array.from({ length: rows }, () =>
          Uint8Array.from({ length: length + 3 }, next).subarray(3),
        );
        scalarKernel.combine(coefficients, inputs, expected, length);
        nativeKernel!.combine(coefficients, inputs, actual, length);
        assert.deepEqual(actual, expected);
      },
    ),
    { numRuns: 200 },
  );
  assert.throws(
    () => nativeKernel!.combine(new Uint8Array(3), [new Uint8Array(5)], [new Uint8Array(5)], 5),
    RangeError,
  );
});

test('block codec on the native kernel: any k of a block rebuild it, parity as the WebAssembly kernel makes it', () => {
  const k = 64;
  const size = 8916;
  const sources = Array.from({ length: k }, (_, i) =>
    Uint8Array.from({ length: size }, (_, j) => (i * 31 + j * 7) & 0xff),
  );
  const codec = new BlockCodec();
  const reference = new ReedSolomon(k, 255 - k, { kernel: defaultKernel });
  const parity = new Map<number, Uint8Array>();
  for (const index of [k, k + 1, k + 2, 200, 254]) {
    const made = codec.encodeParity(sources, index);
    const expected = new Uint8Array(size);
    reference.encodeParity(sources, index, expected);
    assert.deepEqual(made, expected, `parity ${index}`);
    parity.set(index, made);
  }
  // Lose five data symbols; rebuild from the rest and the five parity symbols.
  const symbols = new Map<number, Uint8Array>();
  for (let i = 0; i < k; i++) if (![0, 7, 31, 32, 63].includes(i)) symbols.set(i, sources[i]!);
  for (const [index, bytes] of parity) symbols.set(index, bytes);
  const rebuilt = codec.decode(k, symbols, size);
  for (let i = 0; i < k; i++) assert.deepEqual(rebuilt[i], sources[i], `symbol ${i}`);
});

test('dgram socket: a send to a name waits for node:dns, and its buffer is not reported free until it went', async () => {
  const a = await DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' });
  const b = await DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' });
  try {
    const got: Uint8Array[] = [];
    const both = new Promise<void>((resolve) =>
      b.onDatagram((bytes) => {
        got.push(bytes.slice());
        if (got.length === 2) resolve();
      }),
    );
    a.send(Uint8Array.of(1, 2, 3), b.address);
    assert.equal(a.sendsSettled(), true, 'a literal address goes to the kernel within send()');
    const port = b.address.slice(b.address.lastIndexOf(':') + 1);
    a.send(Uint8Array.of(4, 5, 6), `localhost:${port}`);
    assert.equal(a.sendsSettled(), false, 'a name is resolved first: the buffer is still ours to keep');
    await Promise.race([both, realSleep(5000)]);
    assert.deepEqual(got, [Uint8Array.of(1, 2, 3), Uint8Array.of(4, 5, 6)]);
    await realSleep(10);
    assert.equal(a.sendsSettled(), true);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});
