import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  MigCommand,
  StreamParser,
  StreamWriter,
  type StreamRecord,
} from '../../src/qemu/migration-stream.js';
import { LiveStreamEncoder } from '../../src/live/encoder.js';
import type { FullPageCodec } from '../../src/live/batch.js';
import { PageDigester } from '../../src/memory/page-digest.js';
import type { LiveRecord } from '../../src/live/records.js';

/**
 * QEMU's stream is read into one buffer that every read overwrites (src/live/stream-socket.ts): the
 * parser and the encoder must keep nothing of a chunk after push() returns. Random streams, cut into
 * random chunks, go through both with each chunk in a fresh buffer and with each in one shared buffer
 * that is scribbled over right after push(): the messages and the stream digest must be the same.
 */

const PAGE = 4096;
const blocks = [
  { name: 'pc.ram', length: 64 * PAGE },
  { name: '/rom@etc/acpi/tables', length: 4 * PAGE },
];

function streamOf(
  ops: readonly { block: number; page: number; kind: number; seed: number }[][],
  tail: Uint8Array,
) {
  const parts: Uint8Array[] = [];
  const writer = new StreamWriter((bytes) => parts.push(bytes.slice()));
  const ram = { idstr: 'ram', sectionId: 2, instanceId: 0, versionId: 4 };
  const machine = Buffer.from('pc-q35-7.2', 'latin1');
  const records: StreamRecord[] = [
    { kind: 'header', version: 3 },
    {
      kind: 'config',
      machine: '',
      capabilities: [],
      ignoreShared: false,
      bytes: Buffer.concat([Buffer.from([7, 0, 0, 0, machine.length]), machine]),
    },
    { kind: 'command', command: MigCommand.OPEN_RETURN_PATH, data: new Uint8Array(0) },
    { kind: 'section-begin', type: 'start', ...ram },
    { kind: 'ram-blocks', blocks },
    { kind: 'section-end', type: 'start', sectionId: 2 },
  ];
  ops.forEach((section, i) => {
    const type = i === ops.length - 1 ? 'end' : 'part';
    records.push({ kind: 'section-begin', type, ...ram });
    for (const op of section) {
      const block = blocks[op.block % blocks.length]!;
      const offset = (op.page % (block.length / PAGE)) * PAGE;
      if (op.kind === 0) records.push({ kind: 'zero', block: block.name, offset, fill: 0 });
      else {
        // kind 1: content shared by seed (repeats), 2: all zero bytes, 3: unique to its place.
        const data = Buffer.alloc(PAGE, op.kind === 2 ? 0 : op.seed);
        if (op.kind === 3) data.writeUInt32LE(offset + 1, 8 + (op.seed % 64) * 4);
        records.push({ kind: 'page', block: block.name, offset, data });
      }
    }
    records.push({ kind: 'section-end', type, sectionId: 2 });
  });
  const json = Buffer.from('{"devices": []}');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length);
  records.push({
    kind: 'tail',
    bytes: Buffer.concat([
      Buffer.from([4]),
      tail.map((b) => (b === 6 ? 7 : b)),
      Buffer.from([0, 6]),
      length,
      json,
    ]),
  });
  for (const record of records) writer.write(record);
  return Buffer.concat(parts);
}

function encode(stream: Uint8Array, sizes: readonly number[], codec: FullPageCodec, shared: boolean) {
  const digester = new PageDigester(new Uint8Array(64).fill(9));
  const encoder = new LiveStreamEncoder({ digester, holds: (d) => d[0]! < 32, codec });
  const parser = new StreamParser({ onRecord: (record) => encoder.add(record), pages: encoder });
  // A Buffer, as a socket reads into (whose slice() is a view, not a copy).
  const read = Buffer.alloc(Math.max(...sizes));
  const messages: LiveRecord[][] = [];
  for (let at = 0, i = 0; at < stream.length; i++) {
    const piece = stream.subarray(at, at + sizes[i % sizes.length]!);
    at += piece.length;
    if (shared) {
      read.set(piece);
      parser.push(read.subarray(0, piece.length));
      read.fill(0xa5);
    } else parser.push(piece.slice());
    if (encoder.full) messages.push(encoder.take()!.records);
  }
  parser.end();
  const last = encoder.take();
  if (last) messages.push(last.records);
  return { digest: encoder.digest.hex(), messages: JSON.stringify(messages, bytesAsHex) };
}

/** JSON of messages with every byte array as hex (a Buffer reaches a replacer as its toJSON form). */
function bytesAsHex(_: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  const json = value as { type?: unknown; data?: unknown } | null;
  if (json?.type === 'Buffer' && Array.isArray(json.data))
    return Buffer.from(json.data as number[]).toString('hex');
  return value;
}

const opArb = fc.record({
  block: fc.nat({ max: 5 }),
  page: fc.nat(),
  kind: fc.integer({ min: 0, max: 3 }),
  seed: fc.integer({ min: 0, max: 255 }),
});

test('a stream read into one reused buffer encodes as one read into fresh buffers', () => {
  fc.assert(
    fc.property(
      fc.array(fc.array(opArb, { maxLength: 40 }), { minLength: 1, maxLength: 4 }),
      fc.uint8Array({ maxLength: 300 }),
      fc.array(fc.integer({ min: 1, max: 9000 }), { minLength: 1, maxLength: 6 }),
      fc.constantFrom<FullPageCodec>('none', 'lz4', 'zstd'),
      (ops, tail, sizes, codec) => {
        const stream = streamOf(ops, tail);
        assert.deepEqual(encode(stream, sizes, codec, true), encode(stream, sizes, codec, false));
      },
    ),
    { numRuns: 300 },
  );
});
