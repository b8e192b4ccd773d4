import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MessageType,
  WIRE_VERSION,
  type Message,
  type PacketHeader,
  type SymbolMessage,
} from '../../src/transport/messages.js';
import {
  HEADER_BYTES,
  MAX_OBJECT_LENGTH,
  MAX_SEQUENCE,
  MAX_SYMBOL_SIZE,
  MAX_U32,
  SYMBOL_FIXED_BYTES,
  TAG_BYTES,
  decodeHeader,
  decodeMessage,
  encodeHeader,
  encodeMessage,
  isDecodeFailure,
  maxSymbolSize,
  type DecodeFailure,
} from '../../src/transport/wire-codec.js';

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

function fromHex(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
}

function roundTrip(message: Message): Message {
  const decoded = decodeMessage(message.type, encodeMessage(message));
  assert.ok(!isDecodeFailure(decoded), `decode failed: ${(decoded as DecodeFailure).reason}`);
  return decoded;
}

function failure(type: number, body: Uint8Array, pattern: RegExp): void {
  const decoded = decodeMessage(type, body);
  assert.ok(isDecodeFailure(decoded), `expected a failure, got ${JSON.stringify(decoded)}`);
  assert.match(decoded.reason, pattern);
}

function symbol(overrides: Partial<SymbolMessage> = {}): SymbolMessage {
  return {
    type: MessageType.Data,
    objectId: 1,
    objectLength: 10,
    block: 0,
    index: 0,
    blockSymbols: 1,
    payload: new Uint8Array([1, 2, 3]),
    ...overrides,
  };
}

/** One valid message of each type, used for truncation and trailing-byte checks. */
const samples: Message[] = [
  { type: MessageType.Announce, symbolSize: 1416, blockSymbols: 32, objectCount: 3, totalBytes: 123_456 },
  symbol(),
  {
    type: MessageType.Parity,
    objectId: 9,
    objectLength: 99,
    block: 2,
    index: 40,
    blockSymbols: 32,
    payload: new Uint8Array([9, 9]),
  },
  {
    type: MessageType.Heartbeat,
    sentAtMicros: 1_700_000_000_000_000,
    objectsSent: 4,
    rateBytesPerSecond: 1e9,
  },
  {
    type: MessageType.Nak,
    gaps: [{ objectId: 1, block: 2, missing: 3 }],
    echoMicros: 5,
    echoDelayMicros: 6,
    lossPpm: 7,
  },
  {
    type: MessageType.Status,
    objectsComplete: 1,
    echoMicros: 2,
    echoDelayMicros: 3,
    lossPpm: 4,
    receiveRate: 5,
  },
  { type: MessageType.Complete },
  { type: MessageType.Join },
  { type: MessageType.Leave },
  { type: MessageType.Done, dropped: [3, 4] },
];

test('header: golden bytes, big-endian, 20 bytes', () => {
  const header: PacketHeader = {
    version: WIRE_VERSION,
    type: MessageType.Data,
    session: 0x01020304,
    sender: 0x0a0b0c0d,
    sequence: 0x1112131415161718n,
  };
  const bytes = encodeHeader(header);
  assert.equal(HEADER_BYTES, 20);
  assert.equal(hex(bytes), '5653' + '02' + '02' + '01020304' + '0a0b0c0d' + '1112131415161718');
  assert.equal(hex(encodeHeader(header, 'plaintext')).slice(0, 4), '5650');
  assert.deepEqual(decodeHeader(bytes), { ...header, mode: 'sealed' });
});

test('header: boundary values round-trip in both modes, bytes after the header ignored', () => {
  for (const mode of ['sealed', 'plaintext'] as const) {
    for (const [session, sender, sequence] of [
      [0, 0, 0n],
      [MAX_U32, MAX_U32, MAX_SEQUENCE],
      [1, 2, 2n ** 32n],
    ] as const) {
      for (const type of [MessageType.Announce, MessageType.Done]) {
        const header: PacketHeader = { version: WIRE_VERSION, type, session, sender, sequence };
        const bytes = new Uint8Array(HEADER_BYTES + 5);
        bytes.set(encodeHeader(header, mode));
        assert.deepEqual(decodeHeader(bytes), { ...header, mode });
      }
    }
  }
});

test('header: short, bad magic, version and type are refused with their code', () => {
  const good = encodeHeader({
    version: WIRE_VERSION,
    type: MessageType.Join,
    session: 1,
    sender: 2,
    sequence: 3n,
  });
  const expect = (bytes: Uint8Array, code: string): void => {
    const decoded = decodeHeader(bytes);
    assert.ok(isDecodeFailure(decoded));
    assert.equal((decoded as { code: string }).code, code);
  };
  expect(new Uint8Array(0), 'short');
  expect(good.subarray(0, HEADER_BYTES - 1), 'short');
  for (const magic of [0x0000, 0x5654, 0x5356, 0xffff]) {
    const bytes = good.slice();
    new DataView(bytes.buffer).setUint16(0, magic);
    expect(bytes, 'magic');
  }
  for (const version of [0, WIRE_VERSION + 1, 255]) {
    const bytes = good.slice();
    bytes[2] = version;
    expect(bytes, 'version');
  }
  for (const type of [0, 11, 128, 255]) {
    const bytes = good.slice();
    bytes[3] = type;
    expect(bytes, 'type');
  }
});

test('header: encoder refuses values the layout cannot carry', () => {
  const base: PacketHeader = { version: 1, type: MessageType.Join, session: 1, sender: 1, sequence: 1n };
  assert.throws(() => encodeHeader({ ...base, session: MAX_U32 + 1 }), RangeError);
  assert.throws(() => encodeHeader({ ...base, sender: -1 }), RangeError);
  assert.throws(() => encodeHeader({ ...base, sequence: MAX_SEQUENCE + 1n }), RangeError);
  assert.throws(() => encodeHeader({ ...base, sequence: -1n }), RangeError);
  assert.throws(() => encodeHeader({ ...base, type: 42 as MessageType }), RangeError);
  assert.throws(() => encodeHeader({ ...base, version: 256 }), RangeError);
});

test('messages: golden bytes of a Data symbol', () => {
  const bytes = encodeMessage(
    symbol({ objectId: 7, objectLength: 0x0102_0304_0506, block: 5, index: 2, blockSymbols: 4 }),
  );
  assert.equal(hex(bytes), '00000007' + '0000010203040506' + '00000005' + '02' + '04' + '0003' + '010203');
  assert.equal(bytes.length, SYMBOL_FIXED_BYTES + 3);
});

test('messages: every type round-trips with boundary values', () => {
  const cases: Message[] = [
    ...samples,
    { type: MessageType.Announce, symbolSize: 1, blockSymbols: 1, objectCount: 0, totalBytes: 0 },
    {
      type: MessageType.Announce,
      symbolSize: MAX_SYMBOL_SIZE,
      blockSymbols: 255,
      objectCount: MAX_U32,
      totalBytes: MAX_OBJECT_LENGTH,
    },
    { type: MessageType.Announce, symbolSize: 8, blockSymbols: 4, objectCount: 2, totalBytes: 9, more: true },
    symbol({ objectId: 0, objectLength: 0, block: 0, index: 0, blockSymbols: 1, payload: new Uint8Array(0) }),
    symbol({
      objectId: MAX_U32,
      objectLength: MAX_OBJECT_LENGTH,
      block: MAX_U32,
      index: 254,
      blockSymbols: 255,
      payload: new Uint8Array(MAX_SYMBOL_SIZE).fill(0xa5),
    }),
    {
      type: MessageType.Parity,
      objectId: MAX_U32,
      objectLength: MAX_OBJECT_LENGTH,
      block: MAX_U32,
      index: 254,
      blockSymbols: 1,
      payload: new Uint8Array(0),
    },
    {
      type: MessageType.Parity,
      objectId: 0,
      objectLength: 0,
      block: 0,
      index: 1,
      blockSymbols: 1,
      payload: new Uint8Array(1),
    },
    // A parity row of an object's last block, which holds fewer than blockSymbols source symbols.
    {
      type: MessageType.Parity,
      objectId: 1,
      objectLength: 5000,
      block: 3,
      index: 3,
      blockSymbols: 32,
      payload: new Uint8Array(16),
    },
    { type: MessageType.Heartbeat, sentAtMicros: 0, objectsSent: 0, rateBytesPerSecond: 0 },
    {
      type: MessageType.Heartbeat,
      sentAtMicros: MAX_SAFE,
      objectsSent: MAX_U32,
      rateBytesPerSecond: MAX_SAFE,
    },
    { type: MessageType.Nak, gaps: [], echoMicros: 0, echoDelayMicros: 0, lossPpm: 0 },
    {
      type: MessageType.Nak,
      gaps: Array.from({ length: 1000 }, (_, i) => ({
        objectId: MAX_U32 - i,
        block: i * 4099,
        missing: (i % 255) + 1,
      })),
      echoMicros: MAX_SAFE,
      echoDelayMicros: MAX_U32,
      lossPpm: 1_000_000,
    },
    {
      type: MessageType.Status,
      objectsComplete: 0,
      echoMicros: 0,
      echoDelayMicros: 0,
      lossPpm: 0,
      receiveRate: 0,
    },
    {
      type: MessageType.Status,
      objectsComplete: MAX_U32,
      echoMicros: MAX_SAFE,
      echoDelayMicros: MAX_U32,
      lossPpm: 1_000_000,
      receiveRate: MAX_SAFE,
    },
    { type: MessageType.Done, dropped: [] },
    {
      type: MessageType.Done,
      dropped: Array.from({ length: 5000 }, (_, i) => (i * 858_993) % (MAX_U32 + 1)),
    },
    { type: MessageType.Done, dropped: [0, MAX_U32] },
  ];
  for (const message of cases) assert.deepEqual(roundTrip(message), message);
});

test('messages: decoded symbol payloads are views of the body, not copies', () => {
  const body = encodeMessage(symbol({ payload: new Uint8Array([5, 6, 7, 8]) }));
  const decoded = decodeMessage(MessageType.Data, body);
  assert.ok(!isDecodeFailure(decoded) && decoded.type === MessageType.Data);
  assert.equal(decoded.payload.buffer, body.buffer);
  assert.equal(decoded.payload.byteOffset, body.byteOffset + SYMBOL_FIXED_BYTES);
  // ...also when the body is itself a view at an offset into a larger buffer (a datagram).
  const datagram = new Uint8Array(body.length + 30);
  datagram.set(body, 20);
  const inner = decodeMessage(MessageType.Data, datagram.subarray(20, 20 + body.length));
  assert.ok(!isDecodeFailure(inner) && inner.type === MessageType.Data);
  assert.deepEqual(Array.from(inner.payload), [5, 6, 7, 8]);
  assert.equal(inner.payload.byteOffset, 20 + SYMBOL_FIXED_BYTES);
});

test('messages: every truncation and any trailing byte is refused', () => {
  for (const message of samples) {
    const bytes = encodeMessage(message);
    for (let length = 0; length < bytes.length; length++) {
      assert.ok(
        isDecodeFailure(decodeMessage(message.type, bytes.subarray(0, length))),
        `${message.type}@${length}`,
      );
    }
    const longer = new Uint8Array(bytes.length + 1);
    longer.set(bytes);
    failure(message.type, longer, /trailing/);
  }
});

test('messages: unknown types are refused', () => {
  for (const type of [0, 11, 255, -1, 1.5, NaN]) failure(type, new Uint8Array(0), /unknown message type/);
});

test('messages: out-of-range fields are refused with a reason', () => {
  const put = (message: Message, at: number, bytes: number[]): Uint8Array => {
    const body = encodeMessage(message);
    body.set(bytes, at);
    return body;
  };
  const [announce, data, parity, heartbeat, nak, status] = samples as [
    Message,
    Message,
    Message,
    Message,
    Message,
    Message,
  ];
  failure(MessageType.Announce, put(announce, 0, [0, 0]), /symbolSize 0/);
  failure(MessageType.Announce, put(announce, 2, [0]), /blockSymbols 0/);
  failure(MessageType.Announce, put(announce, 7, [0, 1, 0, 0]), /totalBytes exceeds 2\^48-1/);
  failure(MessageType.Announce, put(announce, 15, [0x02]), /Announce flags 0x2: unknown bits set/);
  // Symbol layout: objectId 0..4, objectLength 4..12, block 12..16, index 16, blockSymbols 17, length 18..20.
  failure(MessageType.Data, put(data, 17, [0]), /blockSymbols 0/);
  failure(MessageType.Data, put(data, 16, [255, 255]), /index 255 exceeds 254/);
  failure(MessageType.Data, put(data, 16, [3, 3]), /Data index 3 is not below blockSymbols 3/);
  failure(MessageType.Parity, put(parity, 16, [0, 3]), /Parity index 0 is a source row/);
  failure(MessageType.Data, put(data, 4, [0, 1, 0, 0, 0, 0, 0, 0]), /objectLength exceeds 2\^48-1/);
  failure(MessageType.Data, put(data, 4, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), /objectLength/);
  failure(MessageType.Data, put(data, 18, [0, 4]), /payload of 4 bytes, only 3 left/);
  failure(MessageType.Data, put(data, 18, [0xff, 0xff]), /payload of 65535 bytes/);
  failure(MessageType.Data, put(data, 18, [0, 2]), /1 trailing bytes/);
  failure(
    MessageType.Heartbeat,
    put(heartbeat, 0, [0, 0x20, 0, 0, 0, 0, 0, 0]),
    /sentAtMicros exceeds 2\^53-1/,
  );
  failure(MessageType.Heartbeat, put(heartbeat, 12, [0xff]), /rateBytesPerSecond exceeds/);
  failure(MessageType.Nak, put(nak, 0, [0xff]), /echoMicros exceeds/);
  failure(MessageType.Nak, put(nak, 12, [0, 0x0f, 0x42, 0x41]), /lossPpm 1000001 exceeds 1000000/);
  failure(
    MessageType.Nak,
    put(nak, 16, [0xff, 0xff, 0xff, 0xff]),
    /claims 4294967295 gaps, body holds at most 1/,
  );
  failure(MessageType.Nak, put(nak, 16, [0, 0, 0, 2]), /claims 2 gaps, body holds at most 1/);
  failure(MessageType.Nak, put(nak, 28, [0]), /misses 0 symbols/);
  failure(MessageType.Status, put(status, 16, [0xff, 0xff, 0xff, 0xff]), /lossPpm/);
  failure(MessageType.Status, put(status, 20, [0xff]), /receiveRate exceeds/);
  failure(MessageType.Done, fromHex('ffffffff'), /claims 4294967295 receivers, body holds at most 0/);
  failure(MessageType.Done, fromHex('00000002 00000001 000000'), /claims 2 receivers, body holds at most 1/);
  failure(MessageType.Complete, new Uint8Array(1), /1 trailing bytes after Complete/);
});

test('messages: encoder refuses values the format cannot carry', () => {
  const bad: Message[] = [
    { type: MessageType.Announce, symbolSize: 0, blockSymbols: 1, objectCount: 0, totalBytes: 0 },
    { type: MessageType.Announce, symbolSize: 1, blockSymbols: 256, objectCount: 0, totalBytes: 0 },
    {
      type: MessageType.Announce,
      symbolSize: 1,
      blockSymbols: 1,
      objectCount: 0,
      totalBytes: MAX_OBJECT_LENGTH + 1,
    },
    symbol({ blockSymbols: 0 }),
    symbol({ index: 255, blockSymbols: 255 }),
    symbol({ index: 1, blockSymbols: 1 }),
    { ...symbol({ index: 0, blockSymbols: 1 }), type: MessageType.Parity },
    symbol({ objectLength: MAX_OBJECT_LENGTH + 1 }),
    symbol({ objectId: MAX_U32 + 1 }),
    symbol({ block: 1.5 }),
    symbol({ payload: new Uint8Array(MAX_SYMBOL_SIZE + 1) }),
    { type: MessageType.Heartbeat, sentAtMicros: MAX_SAFE + 1, objectsSent: 0, rateBytesPerSecond: 0 },
    { type: MessageType.Heartbeat, sentAtMicros: 0, objectsSent: 0, rateBytesPerSecond: 12.5 },
    {
      type: MessageType.Nak,
      gaps: [{ objectId: 0, block: 0, missing: 0 }],
      echoMicros: 0,
      echoDelayMicros: 0,
      lossPpm: 0,
    },
    { type: MessageType.Nak, gaps: [], echoMicros: 0, echoDelayMicros: 0, lossPpm: 1_000_001 },
    {
      type: MessageType.Status,
      objectsComplete: -1,
      echoMicros: 0,
      echoDelayMicros: 0,
      lossPpm: 0,
      receiveRate: 0,
    },
    { type: MessageType.Done, dropped: [MAX_U32 + 1] },
  ];
  for (const message of bad) assert.throws(() => encodeMessage(message), RangeError, JSON.stringify(message));
});

test('maxSymbolSize: a largest symbol datagram fills the path MTU exactly', () => {
  assert.equal(maxSymbolSize(1500), 1416);
  assert.equal(maxSymbolSize(9000), 8916);
  assert.equal(maxSymbolSize(1500, 'ipv6'), 1396);
  for (const [mtu, ip] of [
    [1500, 20],
    [9000, 20],
    [1280, 40],
  ] as const) {
    const size = maxSymbolSize(mtu, ip === 20 ? 'ipv4' : 'ipv6');
    const body = encodeMessage(symbol({ payload: new Uint8Array(size) }));
    assert.equal(ip + 8 + HEADER_BYTES + body.length + TAG_BYTES, mtu);
  }
  assert.throws(() => maxSymbolSize(84), RangeError);
  assert.throws(() => maxSymbolSize(1500.5), RangeError);
  assert.throws(() => maxSymbolSize(70_000), RangeError);
  assert.equal(maxSymbolSize(85), 1);
});
