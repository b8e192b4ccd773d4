import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MessageType, WIRE_VERSION } from '../../src/transport/messages.js';
import {
  DROP_REASONS,
  DropCounters,
  PacketOpener,
  PacketSealer,
  ReplayWindow,
  SequenceExhaustedError,
  type DropReason,
} from '../../src/transport/packet-crypto.js';
import {
  HEADER_BYTES,
  MAX_SEQUENCE,
  TAG_BYTES,
  decodeMessage,
  encodeHeader,
  encodeMessage,
} from '../../src/transport/wire-codec.js';

const KEY = new Uint8Array(32).map((_, i) => i * 7 + 1);
const OTHER_KEY = new Uint8Array(32).map((_, i) => i * 7 + 2);
const SESSION = 0x0102_0304;
const BODY = new Uint8Array([10, 20, 30, 40, 50]);

function opened(result: ReturnType<PacketOpener['open']>): {
  header: { sequence: bigint };
  body: Uint8Array;
} {
  assert.ok('body' in result, `dropped: ${'drop' in result ? result.drop : ''}`);
  return result;
}

function dropped(result: ReturnType<PacketOpener['open']>, reason: DropReason): void {
  assert.deepEqual(result, { drop: reason });
}

test('seal/open: round trip, layout header || ciphertext || tag, header authenticated in clear', () => {
  const sealer = new PacketSealer(KEY, SESSION, 3);
  const opener = new PacketOpener(KEY, SESSION);
  const datagram = sealer.seal(MessageType.Data, BODY);
  assert.equal(datagram.length, HEADER_BYTES + BODY.length + TAG_BYTES);
  const header = { version: WIRE_VERSION, type: MessageType.Data, session: SESSION, sender: 3, sequence: 1n };
  assert.deepEqual(datagram.subarray(0, HEADER_BYTES), encodeHeader(header));
  assert.notDeepEqual(datagram.subarray(HEADER_BYTES, HEADER_BYTES + BODY.length), BODY);
  const result = opener.open(datagram);
  assert.deepEqual(result, { header: { ...header, mode: 'sealed' }, body: BODY });
  assert.equal(opener.drops.total, 0);
  assert.equal(opener.senderCount, 1);
});

test('seal/open: empty bodies and a real message', () => {
  const sealer = new PacketSealer(KEY, SESSION, 0);
  const opener = new PacketOpener(KEY, SESSION);
  const empty = sealer.seal(MessageType.Complete, new Uint8Array(0));
  assert.equal(empty.length, HEADER_BYTES + TAG_BYTES);
  assert.equal(opened(opener.open(empty)).body.length, 0);
  const message = { type: MessageType.Done, dropped: [4, 5] } as const;
  const result = opened(opener.open(sealer.seal(message.type, encodeMessage(message))));
  assert.deepEqual(decodeMessage(MessageType.Done, result.body), message);
});

test('sealer: sequences start at 1 and strictly increase, so nonces never repeat', () => {
  const sealer = new PacketSealer(KEY, SESSION, 0xdead_beef);
  const nonces = new Set<string>();
  let previous = 0n;
  for (let i = 0; i < 5000; i++) {
    const datagram = sealer.seal(MessageType.Data, BODY);
    const sequence = new DataView(datagram.buffer).getBigUint64(12);
    assert.ok(sequence > previous);
    previous = sequence;
    nonces.add(Buffer.from(datagram.subarray(8, 20)).toString('hex'));
  }
  assert.equal(previous, 5000n);
  assert.equal(nonces.size, 5000);
  assert.equal(sealer.nextSequence, 5001n);
});

test('sealer: refuses to wrap the 64-bit sequence, and keeps refusing', () => {
  const sealer = new PacketSealer(KEY, SESSION, 1, { firstSequence: MAX_SEQUENCE - 1n });
  const opener = new PacketOpener(KEY, SESSION);
  opened(opener.open(sealer.seal(MessageType.Data, BODY)));
  const last = opened(opener.open(sealer.seal(MessageType.Data, BODY)));
  assert.equal(last.header.sequence, MAX_SEQUENCE);
  for (let i = 0; i < 2; i++) {
    assert.throws(
      () => sealer.seal(MessageType.Data, BODY),
      (error: unknown) => error instanceof SequenceExhaustedError && error.code === 'VMS_SEQUENCE_EXHAUSTED',
    );
  }
});

test('sealer and opener: configuration is validated at construction', () => {
  assert.throws(() => new PacketSealer(new Uint8Array(16), SESSION, 0), /32 bytes, got 16/);
  // An empty key is an error, never a way into plaintext mode.
  assert.throws(() => new PacketSealer(new Uint8Array(0), SESSION, 0), /32 bytes, got 0/);
  assert.throws(() => new PacketOpener(new Uint8Array(0), SESSION), /32 bytes/);
  assert.throws(() => new PacketSealer(KEY, -1, 0), RangeError);
  assert.throws(() => new PacketSealer(KEY, SESSION, 2 ** 32), RangeError);
  assert.throws(() => new PacketSealer(KEY, SESSION, 0, { firstSequence: 0n }), RangeError);
  assert.throws(() => new PacketOpener(KEY, SESSION, { replayWindow: 100 }), /multiple of 32/);
  assert.throws(() => new PacketOpener(KEY, SESSION, { maxSenders: 0 }), RangeError);
  assert.throws(
    () => new PacketSealer(KEY, SESSION, 0).seal(MessageType.Data, new Uint8Array(65_500)),
    /UDP/,
  );
  assert.throws(() => new PacketSealer(KEY, SESSION, 0).seal(99 as MessageType, BODY), RangeError);
});

test('opener: forged, corrupted, truncated, replayed and misdirected datagrams are dropped and counted', () => {
  const sealer = new PacketSealer(KEY, SESSION, 2);
  const opener = new PacketOpener(KEY, SESSION);
  const datagram = sealer.seal(MessageType.Data, BODY);

  dropped(opener.open(new PacketSealer(OTHER_KEY, SESSION, 2).seal(MessageType.Data, BODY)), 'auth');
  dropped(new PacketOpener(KEY, SESSION + 1).open(datagram), 'session');
  dropped(new PacketOpener(OTHER_KEY, SESSION).open(datagram), 'auth');

  const corrupt = (at: number, value: number): Uint8Array => {
    const copy = datagram.slice();
    copy[at] = value;
    return copy;
  };
  dropped(opener.open(corrupt(HEADER_BYTES, datagram[HEADER_BYTES]! ^ 1)), 'auth'); // ciphertext
  dropped(opener.open(corrupt(datagram.length - 1, datagram.at(-1)! ^ 0x80)), 'auth'); // tag
  dropped(opener.open(corrupt(3, MessageType.Parity)), 'auth'); // type is associated data
  dropped(opener.open(corrupt(11, 7)), 'auth'); // sender, hence nonce
  dropped(opener.open(corrupt(19, 9)), 'auth'); // sequence, hence nonce
  dropped(opener.open(corrupt(0, 0)), 'magic');
  dropped(opener.open(corrupt(1, 0x50)), 'mode');
  dropped(opener.open(corrupt(2, WIRE_VERSION + 1)), 'version');
  dropped(opener.open(corrupt(3, 0)), 'type');
  dropped(opener.open(datagram.subarray(0, HEADER_BYTES - 1)), 'short');
  dropped(opener.open(datagram.subarray(0, HEADER_BYTES + TAG_BYTES - 1)), 'short');
  dropped(opener.open(datagram.subarray(0, datagram.length - 1)), 'auth');
  dropped(opener.open(Uint8Array.from([...datagram, 0])), 'auth');
  const zeroSequence = corrupt(19, 0);
  zeroSequence.fill(0, 12, 20);
  dropped(opener.open(zeroSequence), 'stale');

  opened(opener.open(datagram));
  dropped(opener.open(datagram), 'replay');
  dropped(opener.open(datagram.slice()), 'replay');

  const counts = opener.drops.snapshot();
  assert.deepEqual(Object.keys(counts), [...DROP_REASONS]);
  assert.deepEqual(counts, {
    short: 2,
    magic: 1,
    version: 1,
    type: 1,
    mode: 1,
    session: 0, // counted by the other opener
    stale: 1,
    replay: 2,
    auth: 8,
    senders: 0,
    malformed: 0,
  });
  assert.equal(opener.drops.total, 17);
});

test('opener: reordering within the window is accepted, each sequence once', () => {
  const sealer = new PacketSealer(KEY, SESSION, 1);
  const opener = new PacketOpener(KEY, SESSION);
  const datagrams = Array.from({ length: 300 }, () => sealer.seal(MessageType.Data, BODY));
  // A deterministic shuffle: stride through the array by a step coprime with its length.
  const order = Array.from({ length: 300 }, (_, i) => (i * 7) % 300);
  for (const i of order) opened(opener.open(datagrams[i]!));
  for (const i of order) dropped(opener.open(datagrams[i]!), 'replay');
  assert.deepEqual(opener.drops.snapshot().replay, 300);
});

test('opener: window edges — the oldest in-window sequence is accepted, one older is stale', () => {
  const sealer = new PacketSealer(KEY, SESSION, 1);
  const opener = new PacketOpener(KEY, SESSION, { replayWindow: 64 });
  const datagrams = Array.from({ length: 200 }, () => sealer.seal(MessageType.Data, BODY)); // sequences 1..200
  const at = (sequence: number): Uint8Array => datagrams[sequence - 1]!;
  opened(opener.open(at(100)));
  opened(opener.open(at(37))); // 100 - 37 = 63 < 64
  dropped(opener.open(at(36)), 'stale');
  dropped(opener.open(at(1)), 'stale');
  opened(opener.open(at(101)));
  dropped(opener.open(at(37)), 'stale'); // now 64 behind
  opened(opener.open(at(38)));
  // A jump far ahead: everything before the new window is stale, even if never seen.
  opened(opener.open(at(200)));
  dropped(opener.open(at(136)), 'stale');
  opened(opener.open(at(137)));
  dropped(opener.open(at(137)), 'replay');
});

test('opener: forged datagrams neither advance a window nor take a sender slot', () => {
  const opener = new PacketOpener(KEY, SESSION, { maxSenders: 2 });
  const genuine = new PacketSealer(KEY, SESSION, 1);
  const first = genuine.seal(MessageType.Data, BODY);
  // A forger without the key, far ahead in sequence and from many sender ids.
  for (let sender = 1; sender < 50; sender++) {
    const forger = new PacketSealer(OTHER_KEY, SESSION, sender, { firstSequence: 1n << 40n });
    dropped(opener.open(forger.seal(MessageType.Data, BODY)), 'auth');
  }
  assert.equal(opener.senderCount, 0);
  opened(opener.open(first));
  opened(opener.open(new PacketSealer(KEY, SESSION, 2).seal(MessageType.Join, new Uint8Array(0))));
  dropped(
    opener.open(new PacketSealer(KEY, SESSION, 3).seal(MessageType.Join, new Uint8Array(0))),
    'senders',
  );
  assert.equal(opener.senderCount, 2);
  // Known senders carry on.
  opened(opener.open(genuine.seal(MessageType.Data, BODY)));
  assert.equal(opener.drops.get('senders'), 1);
  assert.equal(opener.drops.get('auth'), 49);
});

test('opener: each sender has its own window', () => {
  const opener = new PacketOpener(KEY, SESSION);
  const a = new PacketSealer(KEY, SESSION, 1);
  const b = new PacketSealer(KEY, SESSION, 2);
  const fromA = a.seal(MessageType.Data, BODY);
  const fromB = b.seal(MessageType.Data, BODY);
  opened(opener.open(fromA));
  opened(opener.open(fromB)); // same sequence 1, other sender
  dropped(opener.open(fromA), 'replay');
});

test('insecure plaintext: body in clear, replay window kept, refused across modes', () => {
  const sealer = PacketSealer.insecurePlaintext(SESSION, 4);
  const opener = PacketOpener.insecurePlaintext(SESSION);
  assert.equal(sealer.mode, 'plaintext');
  const datagram = sealer.seal(MessageType.Data, BODY);
  assert.equal(datagram.length, HEADER_BYTES + BODY.length);
  assert.deepEqual([datagram[0], datagram[1]], [0x56, 0x50]); // 'VP'
  assert.deepEqual(datagram.subarray(HEADER_BYTES), BODY);
  const result = opened(opener.open(datagram));
  assert.deepEqual(result.body, BODY);
  assert.equal(result.body.buffer, datagram.buffer); // a view, no copy
  dropped(opener.open(datagram), 'replay');
  dropped(opener.open(new PacketSealer(KEY, SESSION, 4).seal(MessageType.Data, BODY)), 'mode');
  dropped(new PacketOpener(KEY, SESSION).open(datagram), 'mode');
  // Relabelling a plaintext datagram as sealed does not get it accepted either.
  const relabelled = Uint8Array.from([...datagram, ...new Uint8Array(TAG_BYTES)]);
  relabelled[1] = 0x53;
  dropped(new PacketOpener(KEY, SESSION).open(relabelled), 'auth');
  dropped(opener.open(datagram.subarray(0, HEADER_BYTES - 1)), 'short');
});

test('drop counters can be shared between openers', () => {
  const drops = new DropCounters();
  const one = new PacketOpener(KEY, 1, { drops });
  const two = PacketOpener.insecurePlaintext(2, { drops });
  one.open(new Uint8Array(3));
  two.open(new Uint8Array(3));
  two.open(new PacketSealer(KEY, 2, 0).seal(MessageType.Join, new Uint8Array(0)));
  assert.equal(drops.get('short'), 2);
  assert.equal(drops.get('mode'), 1);
  drops.add('malformed'); // counted by whoever decodes the body
  assert.equal(drops.snapshot().malformed, 1);
  assert.equal(drops.total, 4);
});

test('replay window: advancing clears the stale bits of the word the new top lands in', () => {
  // Window 32 keeps a ring of two 32-bit words: sequence 66 shares its bit with 2, two words earlier.
  const window = new ReplayWindow(32);
  window.accept(2n);
  window.accept(40n);
  window.accept(67n);
  assert.equal(window.check(66n), undefined);
  assert.equal(window.check(2n), 'stale');
  window.accept(66n);
  assert.equal(window.check(66n), 'replay');
  assert.equal(window.check(40n), 'replay');
  assert.equal(window.check(35n), 'stale');
  assert.equal(window.check(36n), undefined);
});

test('property: the replay window decides as a naive set-and-maximum reference does', () => {
  // Moves sized to the window, so that walks cross the window edge and jump about one ring ahead.
  const walk = fc
    .constantFrom(32, 64, 96, 1024)
    .chain((size) =>
      fc.tuple(
        fc.constant(size),
        fc.bigInt({ min: 0n, max: 1n << 63n }),
        fc.array(
          fc.oneof(
            fc.integer({ min: -3, max: 3 }),
            fc.integer({ min: -size - 8, max: size + 8 }),
            fc.integer({ min: -3 * size, max: 3 * size }),
          ),
          { minLength: 1, maxLength: 300 },
        ),
      ),
    );
  fc.assert(
    fc.property(walk, ([size, base, moves]) => {
      const window = new ReplayWindow(size);
      const seen = new Set<bigint>();
      let top = 0n;
      let cursor = base;
      for (const move of moves) {
        cursor += BigInt(move);
        if (cursor < 0n) cursor = 0n;
        const expected =
          cursor === 0n || top - cursor >= BigInt(size) ? 'stale' : seen.has(cursor) ? 'replay' : undefined;
        assert.equal(window.check(cursor), expected, `sequence ${cursor}, top ${top}`);
        if (expected === undefined) {
          window.accept(cursor);
          seen.add(cursor);
          if (cursor > top) top = cursor;
        }
      }
    }),
    { numRuns: 500 },
  );
});
