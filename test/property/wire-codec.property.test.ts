import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MessageType, type Message } from '../../src/transport/messages.js';
import { PacketOpener, PacketSealer } from '../../src/transport/packet-crypto.js';
import {
  HEADER_BYTES,
  MAX_OBJECT_LENGTH,
  MAX_SEQUENCE,
  MAX_U32,
  decodeHeader,
  decodeMessage,
  encodeHeader,
  encodeMessage,
  isDecodeFailure,
} from '../../src/transport/wire-codec.js';

const u32 = fc.integer({ min: 0, max: MAX_U32 });
const safe = fc.oneof(fc.nat(), fc.constantFrom(0, Number.MAX_SAFE_INTEGER), fc.maxSafeNat());
const length48 = fc.oneof(
  fc.nat(),
  fc.constantFrom(0, MAX_OBJECT_LENGTH),
  fc.integer({ min: 0, max: MAX_OBJECT_LENGTH }),
);
const ppm = fc.integer({ min: 0, max: 1_000_000 });
const payload = fc.uint8Array({ maxLength: 1500 });

const symbolMessage: fc.Arbitrary<Message> = fc
  .record(
    {
      data: fc.boolean(),
      objectId: u32,
      objectLength: length48,
      block: u32,
      blockSymbols: fc.integer({ min: 1, max: 255 }),
      row: fc.nat(),
      payload,
    },
    { noNullPrototype: true },
  )
  .map(({ data, row, blockSymbols, ...rest }) => ({
    ...rest,
    blockSymbols,
    type: data ? MessageType.Data : MessageType.Parity,
    // Parity rows start at the block's own k, which is below blockSymbols in an object's last block.
    index: data ? row % blockSymbols : 1 + (row % 254),
  }));

const message: fc.Arbitrary<Message> = fc.oneof(
  fc.record(
    {
      type: fc.constant(MessageType.Announce as const),
      symbolSize: fc.integer({ min: 1, max: 0xffff }),
      blockSymbols: fc.integer({ min: 1, max: 255 }),
      objectCount: u32,
      totalBytes: length48,
    },
    { noNullPrototype: true },
  ),
  symbolMessage,
  fc.record(
    {
      type: fc.constant(MessageType.Heartbeat as const),
      sentAtMicros: safe,
      objectsSent: u32,
      rateBytesPerSecond: safe,
    },
    { noNullPrototype: true },
  ),
  fc.record(
    {
      type: fc.constant(MessageType.Nak as const),
      gaps: fc.array(
        fc.record(
          { objectId: u32, block: u32, missing: fc.integer({ min: 1, max: 255 }) },
          { noNullPrototype: true },
        ),
        {
          maxLength: 200,
        },
      ),
      echoMicros: safe,
      echoDelayMicros: u32,
      lossPpm: ppm,
    },
    { noNullPrototype: true },
  ),
  fc.record(
    {
      type: fc.constant(MessageType.Status as const),
      objectsComplete: u32,
      echoMicros: safe,
      echoDelayMicros: u32,
      lossPpm: ppm,
      receiveRate: safe,
    },
    { noNullPrototype: true },
  ),
  fc.constantFrom<Message>(
    { type: MessageType.Complete },
    { type: MessageType.Join },
    { type: MessageType.Leave },
  ),
  fc.record(
    { type: fc.constant(MessageType.Done as const), dropped: fc.array(u32, { maxLength: 300 }) },
    { noNullPrototype: true },
  ),
);

const anyType = fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: -1, max: 300 }));
const KEY = new Uint8Array(32).fill(7);

test('property: arbitrary messages round-trip', () => {
  fc.assert(
    fc.property(message, (m) => {
      assert.deepEqual(decodeMessage(m.type, encodeMessage(m)), m);
    }),
    { numRuns: 1000 },
  );
});

test('property: arbitrary bytes never make decodeMessage throw; what decodes re-encodes to the same bytes', () => {
  fc.assert(
    fc.property(anyType, fc.uint8Array({ maxLength: 64 }), (type, body) => {
      const decoded = decodeMessage(type, body);
      if (!isDecodeFailure(decoded)) assert.deepEqual(encodeMessage(decoded), body);
    }),
    { numRuns: 3000 },
  );
});

test('property: a valid body with a mutated count or length field never throws and never over-reads', () => {
  fc.assert(
    fc.property(message, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }), (m, at, bytes) => {
      const body = encodeMessage(m);
      if (body.length === 0) return;
      const mutated = body.slice();
      mutated.set(bytes.subarray(0, Math.max(0, body.length - (at % body.length))), at % body.length);
      const decoded = decodeMessage(m.type, mutated);
      if (!isDecodeFailure(decoded)) assert.deepEqual(encodeMessage(decoded), mutated);
    }),
    { numRuns: 1000 },
  );
});

test('property: arbitrary bytes never make decodeHeader throw; what decodes re-encodes to the same bytes', () => {
  const headerish = fc.oneof(
    fc.uint8Array({ maxLength: 40 }),
    // Plausible prefixes reach the later checks instead of stopping at the magic.
    fc
      .tuple(
        fc.constantFrom([0x56, 0x53], [0x56, 0x50]),
        fc.integer({ min: 0, max: 2 }),
        fc.uint8Array({ maxLength: 30 }),
      )
      .map(([magic, version, rest]) => Uint8Array.from([...magic, version, ...rest])),
  );
  fc.assert(
    fc.property(headerish, (bytes) => {
      const decoded = decodeHeader(bytes);
      if (!isDecodeFailure(decoded)) {
        assert.deepEqual(encodeHeader(decoded, decoded.mode), bytes.subarray(0, HEADER_BYTES));
      }
    }),
    { numRuns: 3000 },
  );
});

test('property: arbitrary bytes never make open throw; they are dropped', () => {
  const opener = new PacketOpener(KEY, 5);
  const plain = PacketOpener.insecurePlaintext(5);
  const sealer = new PacketSealer(KEY, 5, 1);
  const prefix = sealer.seal(MessageType.Join, new Uint8Array(0)).subarray(0, HEADER_BYTES);
  const datagram = fc.oneof(
    fc.uint8Array({ maxLength: 80 }),
    // A genuine header (right magic, version, session) followed by junk reaches authentication.
    fc.uint8Array({ maxLength: 80 }).map((rest) => Uint8Array.from([...prefix, ...rest])),
  );
  fc.assert(
    fc.property(datagram, (bytes) => {
      const result = opener.open(bytes);
      assert.ok('drop' in result, `accepted ${Buffer.from(bytes).toString('hex')}`);
      plain.open(bytes); // accepts some (no integrity in clear), but must not throw
    }),
    { numRuns: 3000 },
  );
});

test('property: a sealed datagram with a flipped byte, truncated or extended is dropped', () => {
  const mutation = fc.oneof(
    fc.record(
      { kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) },
      { noNullPrototype: true },
    ),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }, { noNullPrototype: true }),
    fc.record(
      { kind: fc.constant('extend' as const), tail: fc.uint8Array({ minLength: 1, maxLength: 40 }) },
      { noNullPrototype: true },
    ),
  );
  fc.assert(
    fc.property(
      message,
      fc.bigInt({ min: 1n, max: MAX_SEQUENCE }),
      u32,
      mutation,
      (m, firstSequence, sender, change) => {
        const sealer = new PacketSealer(KEY, 9, sender, { firstSequence });
        const opener = new PacketOpener(KEY, 9);
        const datagram = sealer.seal(m.type, encodeMessage(m));
        let bad: Uint8Array;
        if (change.kind === 'flip') {
          bad = datagram.slice();
          const at = change.at % datagram.length;
          bad[at] = bad[at]! ^ change.mask;
        } else if (change.kind === 'truncate') {
          bad = datagram.subarray(0, change.at % datagram.length);
        } else {
          bad = Uint8Array.from([...datagram, ...change.tail]);
        }
        assert.ok('drop' in opener.open(bad));
        // The rejected copy changed no state: the genuine datagram still opens, once.
        const opened = opener.open(datagram);
        assert.ok('body' in opened);
        assert.deepEqual(decodeMessage(opened.header.type, opened.body), m);
        assert.deepEqual(opener.open(datagram), { drop: 'replay' });
      },
    ),
    { numRuns: 1000 },
  );
});
