import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { pack, unpack } from 'msgpackr';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { PageDigester } from '../../src/memory/page-digest.js';
import {
  parseStream,
  StreamWriter,
  writeStream,
  type StreamRecord,
} from '../../src/qemu/migration-stream.js';
import {
  EntryType,
  EntryWriter,
  LiveBatchError,
  readEntries,
  type FullPageCodec,
} from '../../src/live/batch.js';
import { LiveDecodeError, LiveStreamDecoder } from '../../src/live/decoder.js';
import { LiveStreamEncoder, type ScanKnowledge } from '../../src/live/encoder.js';
import { DigestTable } from '../../src/memory/digest-table.js';
import { PAGE_CHECK_BYTES } from '../../src/memory/page-digest.js';
import { isLiveRecord, StreamPageMemory, type LiveRecord } from '../../src/live/records.js';
import { parseToAgent } from '../../src/wire/protocol.js';

/**
 * Both halves of a live stream against each other, in process: a QEMU stream through the coordinator's
 * encoder, the wire (msgpack and the protocol's checks) and the agent's decoder comes out as the same
 * stream, pages held at the target travelling as references, and both ends' canonical digests agree
 * exactly when the pages written are the pages QEMU sent.
 */
const key = new Uint8Array(64).fill(3);
const digester = new PageDigester(key);
const latin1 = (text: string) => Buffer.from(text, 'latin1');
const be32 = (value: number) => {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
};
const DESCRIPTION = '{"page_size": 4096, "devices": []}';
const TAIL = Buffer.concat([Buffer.from([0x00, 0x06]), be32(DESCRIPTION.length), latin1(DESCRIPTION)]);
const CONFIG = Buffer.concat([Buffer.from([0x07]), be32(13), latin1('pc-i440fx-7.2')]);

/**
 * Page i of a guest by `kinds[i]`: 0 zero, 1 uniform, 2 random-ish, 3 a copy of every other kind-3
 * page, 4 a zero record, 5 random-ish content of its own unlike kind 2's (a page rewritten).
 */
function page(kind: number, i: number): Uint8Array {
  const data = new Uint8Array(PAGE_SIZE);
  if (kind === 0 || kind === 4) return data;
  if (kind === 1) return data.fill(7);
  const seed = kind === 2 ? i : kind === 5 ? i + 5000 : 1000;
  for (let b = 0; b < PAGE_SIZE; b += 4) data[b] = (seed * 2654435761 + b * 40503) >>> 24;
  return data;
}

function stream(kinds: readonly number[]): Uint8Array {
  const pages = kinds.map((kind, i) =>
    kind === 4
      ? { kind: 'zero' as const, block: 'pc.ram', offset: i * PAGE_SIZE, fill: 0 }
      : { kind: 'page' as const, block: 'pc.ram', offset: i * PAGE_SIZE, data: page(kind, i) },
  );
  return writeStream({
    config: CONFIG,
    blocks: [
      { name: 'pc.ram', length: Math.max(1, kinds.length) * PAGE_SIZE },
      { name: 'rom', length: PAGE_SIZE },
    ],
    pages: [...pages, { kind: 'page', block: 'rom', offset: 0, data: page(2, 99) }],
    tail: TAIL,
  });
}

/** Runs `bytes` through encoder, wire and decoder; the decoder's store holds what `held` says. */
function carry(
  bytes: Uint8Array,
  held: (i: number, block: string) => boolean,
  tamper?: (data: Uint8Array) => Uint8Array,
  readAhead = false,
  codec: FullPageCodec = 'lz4',
  scanned?: ScanKnowledge,
  alsoHeld: readonly Uint8Array[] = [],
  onTheWire?: (records: LiveRecord[]) => void,
) {
  const store = new Map<string, Uint8Array>();
  for (const data of alsoHeld) {
    const d = new Uint8Array(16);
    digester.digestInto(data, 0, d, 0);
    store.set(Buffer.from(d).toString('hex'), data);
  }
  const records = parseStream(bytes).records;
  records.forEach((r) => {
    if (r.kind !== 'page') return;
    const d = new Uint8Array(16);
    digester.digestInto(r.data, 0, d, 0);
    if (held(r.offset / PAGE_SIZE, r.block))
      store.set(Buffer.from(d).toString('hex'), tamper ? tamper(r.data) : r.data);
  });
  const encoder = new LiveStreamEncoder({
    digester,
    holds: (d) => store.has(Buffer.from(d).toString('hex')),
    codec,
    ...(scanned ? { scanned } : {}),
  });
  const messages: LiveRecord[][] = [];
  for (const record of records) {
    encoder.add(record);
    if (encoder.full) messages.push(encoder.take()!.records);
  }
  const last = encoder.take();
  if (last) messages.push(last.records);
  const out: Uint8Array[] = [];
  const writer = new StreamWriter((b) => out.push(Uint8Array.from(b)));
  const decoder = new LiveStreamDecoder('g1', {
    digester,
    pageOf: (d) => store.get(Buffer.from(d).toString('hex')),
    // The store's batch read, as ContentStore.readMany answers: held slots filled, the rest marked.
    ...(readAhead
      ? {
          readMany: (digests: Uint8Array, count: number, into: Uint8Array, found: Uint8Array) => {
            for (let k = 0; k < count; k++) {
              const page = store.get(Buffer.from(digests.subarray(k * 16, (k + 1) * 16)).toString('hex'));
              found[k] = page ? 1 : 0;
              if (page) into.set(page, k * PAGE_SIZE);
            }
          },
        }
      : {}),
    sink: (r: StreamRecord) => writer.write(r),
  });
  for (const records of messages) {
    onTheWire?.(records);
    // Across the wire: msgpack both ways, then the agent's field-by-field checks.
    const message = parseToAgent(unpack(pack({ t: 'live-stream', vm: 'g1', records })));
    assert.ok(message && message.t === 'live-stream', 'a live-stream message passes the checks');
    decoder.write(message.records);
  }
  return { encoder, decoder, written: Buffer.concat(out), messages };
}

const contents = (bytes: Uint8Array) =>
  parseStream(bytes).records.map((r) =>
    r.kind === 'page'
      ? { ...r, data: Buffer.from(r.data), continued: undefined }
      : { ...r, continued: undefined },
  );

test('live stream: QEMU stream in, the same stream out; held pages go as references (read one by one or ahead); digests agree', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 300 }),
      fc.boolean(),
      fc.boolean(),
      fc.constantFrom<FullPageCodec>('none', 'lz4', 'zstd'),
      (kinds, holdEven, readAhead, codec) => {
        const bytes = stream(kinds);
        const { encoder, decoder, written } = carry(
          bytes,
          (i) => holdEven && i % 2 === 0,
          undefined,
          readAhead,
          codec,
        );
        assert.deepEqual(contents(written), contents(bytes));
        assert.equal(decoder.digest.hex(), encoder.digest.hex());
        const nonZero = kinds.filter((k) => k === 1 || k === 2 || k === 3).length + 1;
        const { referencedPages, sentPages } = encoder.counts;
        assert.equal(referencedPages + sentPages, nonZero);
        // A page content sent once goes as a reference the next time (stream memory).
        if (kinds.filter((k) => k === 3).length >= 2) assert.ok(referencedPages >= 1);
      },
    ),
    { numRuns: 60 },
  );
});

/** What a scan of `kinds` (page i of kind kinds[i], as `page` makes it) knows: checks and digest ids. */
async function scanOf(kinds: readonly number[]): Promise<ScanKnowledge> {
  const count = Math.max(1, kinds.length);
  const memory = new Uint8Array(count * PAGE_SIZE);
  kinds.forEach((kind, i) => kind !== 4 && memory.set(page(kind, i), i * PAGE_SIZE));
  const digests = new Uint8Array(count * 16);
  const zeros = new Uint8Array(count);
  const checks = new Uint8Array(count * PAGE_CHECK_BYTES);
  await digester.scanPages(undefined, memory, count, digests, zeros, checks);
  const table = new DigestTable();
  const ids = new Uint32Array(count);
  for (let i = 0; i < count; i++) if (zeros[i] === 0) ids[i] = table.intern(digests, i * 16);
  return { block: 'pc.ram', checks, ids, table };
}

test("live stream: with the scan's checks, pages unchanged since the scan are not hashed again, and the stream is the same", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 1, maxLength: 200 }),
      fc.array(fc.boolean(), { minLength: 200, maxLength: 200 }),
      fc.boolean(),
      async (scannedKinds, changed, holdEven) => {
        // The guest as the stream sees it: some pages rewritten since the scan (kind 2 at another seed
        // is new content; kind 0 and 4 pages written, non-zero ones zeroed).
        const kinds = scannedKinds.map((k, i) =>
          changed[i] ? (k === 2 ? 3 : k === 0 || k === 4 ? 2 : 4) : k,
        );
        const bytes = stream(kinds);
        const held = (i: number) => holdEven && i % 2 === 0;
        // The target also holds what the scan saw (seeded then): a page changed since must not go as that.
        const seeded = scannedKinds.flatMap((k, i) => (k === 0 || k === 4 ? [] : [page(k, i)]));
        const plain = carry(bytes, held, undefined, false, 'lz4', undefined, seeded);
        const knowing = carry(bytes, held, undefined, false, 'lz4', await scanOf(scannedKinds), seeded);
        assert.deepEqual(contents(knowing.written), contents(bytes));
        assert.equal(knowing.decoder.digest.hex(), knowing.encoder.digest.hex());
        assert.equal(knowing.encoder.digest.hex(), plain.encoder.digest.hex());
        assert.deepEqual(knowing.messages, plain.messages);
        // Every reference to a page unchanged since the scan took the scan's digest.
        const { scanDigests, referencedPages } = knowing.encoder.counts;
        const unchangedHeld = kinds.filter(
          (k, i) => !changed[i] && held(i) && (k === 1 || k === 2 || k === 3),
        );
        assert.ok(
          scanDigests >= unchangedHeld.length,
          `${scanDigests} scan digests, ${unchangedHeld.length} held`,
        );
        assert.ok(scanDigests <= referencedPages);
        assert.equal(plain.encoder.counts.scanDigests, 0);
      },
    ),
    { numRuns: 40 },
  );
});

test('live stream: of the pages sent in full, both ends remember those that may come again, and only those', async () => {
  // Scanned: a unique page, two copies of one content, a unique page, a uniform page. Since then page
  // 3 was rewritten. Nothing is held at the target.
  const scannedKinds = [2, 3, 3, 2, 1];
  const bytes = stream([2, 3, 3, 5, 1]);
  const { written, encoder, decoder, messages } = carry(
    bytes,
    () => false,
    undefined,
    false,
    'lz4',
    await scanOf(scannedKinds),
  );
  assert.deepEqual(contents(written), contents(bytes));
  assert.equal(decoder.digest.hex(), encoder.digest.hex());
  const entries = messages
    .flat()
    .filter((r) => r.kind === 'pages' && r.block === 'pc.ram')
    .flatMap((r) => [...readEntries((r as { entries: Uint8Array }).entries)])
    .map((e) => ({ page: e.page, type: e.type, keep: e.keep }));
  assert.deepEqual(entries, [
    { page: 0, type: EntryType.Packed, keep: false }, // seen once by the scan, unchanged: not again
    { page: 1, type: EntryType.Packed, keep: true }, // the scan saw its content twice
    { page: 2, type: EntryType.Ref, keep: false }, // ...and here it is again
    { page: 3, type: EntryType.Packed, keep: true }, // written since the scan: may be again
    { page: 4, type: EntryType.Packed, keep: false }, // uniform: its entry is smaller than a reference
  ]);
  // Without the scan's knowledge every page sent in full but the uniform one is remembered.
  const plain = carry(bytes, () => false, undefined, false, 'lz4');
  const kept = plain.messages
    .flat()
    .filter((r) => r.kind === 'pages' && r.block === 'pc.ram')
    .flatMap((r) => [...readEntries((r as { entries: Uint8Array }).entries)])
    .map((e) => e.keep);
  assert.deepEqual(kept, [true, true, false, true, false]);
});

test('live stream: a held ROM page that differs from what QEMU sent makes the digests differ', () => {
  const bad = (data: Uint8Array) => {
    const copy = Uint8Array.from(data);
    copy[17] = copy[17]! ^ 1;
    return copy;
  };
  // The ROM block's page (offset 0 of 'rom') is held, and bad in the store: the stream digest sees it.
  const rom = carry(stream([2, 2, 2, 2]), (_, block) => block === 'rom', bad);
  assert.equal(rom.encoder.counts.referencedPages, 1);
  assert.notEqual(rom.decoder.digest.hex(), rom.encoder.digest.hex());
  // A held page of the main RAM goes by its reference: the stream digest agrees, and what catches the
  // bad page is the memory check, which compares that RAM at both ends (memory-check.ts).
  const ram = carry(stream([2, 2, 2, 2]), (i, block) => block === 'pc.ram' && i === 1, bad);
  assert.equal(ram.decoder.digest.hex(), ram.encoder.digest.hex());
  assert.notDeepEqual(contents(ram.written), contents(stream([2, 2, 2, 2])));
});

test('live stream: a page sent in full enters the digest by the digest it came with in the main RAM, and hashed elsewhere', () => {
  // One byte of a page changed on its way (as a page decoded wrong would be), digest left as sent.
  const flipIn = (block: string) => (records: LiveRecord[]) => {
    for (const r of records) if (r.kind === 'pages' && r.block === block) r.entries[5 + 16 + 100]! ^= 1; // first entry's body
  };
  const bytes = stream([2, 2, 2]);
  const rom = carry(bytes, () => false, undefined, false, 'none', undefined, [], flipIn('rom'));
  assert.notEqual(rom.decoder.digest.hex(), rom.encoder.digest.hex(), 'a ROM page is hashed as received');
  // In the main RAM the digest it came with stands: the memory check compares that RAM instead.
  const ram = carry(bytes, () => false, undefined, false, 'none', undefined, [], flipIn('pc.ram'));
  assert.equal(ram.decoder.digest.hex(), ram.encoder.digest.hex());
  assert.notDeepEqual(contents(ram.written), contents(bytes));
});

test('live stream: with zstd, a run of pages sent in full crosses as one smaller frame, and a forged one is refused', () => {
  const kinds = Array.from({ length: 200 }, (_, i) => (i % 5 === 0 ? 1 : 2));
  const bytes = stream(kinds);
  const zstd = carry(bytes, () => false, undefined, false, 'zstd');
  const lz4 = carry(bytes, () => false, undefined, false, 'lz4');
  assert.deepEqual(contents(zstd.written), contents(bytes));
  assert.equal(zstd.decoder.digest.hex(), zstd.encoder.digest.hex());
  const runs = zstd.messages.flat().filter((r) => r.kind === 'pages' && r.block === 'pc.ram');
  assert.ok(runs.length > 0 && runs.every((r) => r.kind === 'pages' && r.zstd !== undefined));
  const wire = (messages: LiveRecord[][]) =>
    messages.flat().reduce((sum, r) => sum + (r.kind === 'pages' ? r.entries.length : 0), 0);
  assert.ok(
    wire(zstd.messages) < wire(lz4.messages),
    `zstd ${wire(zstd.messages)} < LZ4 ${wire(lz4.messages)}`,
  );
  assert.equal(zstd.encoder.counts.compressedPages, lz4.encoder.counts.compressedPages);

  const run = runs[0] as Extract<LiveRecord, { kind: 'pages' }>;
  const decode = (record: LiveRecord) =>
    new LiveStreamDecoder('g1', { digester, pageOf: () => undefined, sink: () => undefined }).write([record]);
  const flipped = Uint8Array.from(run.entries);
  flipped[flipped.length >> 1]! ^= 0x55;
  for (const forged of [
    { ...run, entries: flipped },
    { ...run, entries: run.entries.subarray(0, run.entries.length - 9) },
    { ...run, zstd: run.zstd! - 1 },
    { ...run, zstd: run.zstd! + 4096 },
  ])
    assert.throws(
      () => decode(forged),
      (error: unknown) =>
        error instanceof LiveDecodeError &&
        /does not decompress|cut short|unknown entry|not held/.test(error.message),
    );
});

test('live stream: a reference to a page nobody holds fails the VM, named', () => {
  const decoder = new LiveStreamDecoder('g1', { digester, pageOf: () => undefined, sink: () => undefined });
  const entries = new EntryWriter();
  entries.ref(5, new Uint8Array(16).fill(9));
  assert.throws(
    () => decoder.write([{ kind: 'pages', block: 'pc.ram', entries: entries.take() }]),
    (error: unknown) => error instanceof LiveDecodeError && /pc\.ram\+20480 is not held/.test(error.message),
  );
});

test('live batch: every entry kind round-trips; cut or unknown entries are refused', () => {
  const w = new EntryWriter(8); // grows as needed
  w.zero(1, 0);
  w.zeroData(2);
  w.ref(3, new Uint8Array(16).fill(1));
  w.raw(4, new Uint8Array(16).fill(4), new Uint8Array(PAGE_SIZE).fill(2));
  w.packed(5, new Uint8Array(16).fill(5), 1, new Uint8Array(8).fill(3));
  const bytes = w.take();
  assert.deepEqual(
    [...readEntries(bytes)].map((e) => [e.type, e.page, e.value, e.body.length, e.keep, [...e.digest]]),
    [
      [0, 1, 0, 0, false, []],
      [1, 2, 0, 0, false, []],
      [2, 3, 0, 16, false, []],
      [3, 4, 0, 4096, false, Array(16).fill(4)], // a page sent in full travels with its digest
      [4, 5, 1, 8, false, Array(16).fill(5)],
    ],
  );
  w.raw(6, new Uint8Array(16), new Uint8Array(PAGE_SIZE).fill(2), 0, true);
  w.packed(7, new Uint8Array(16), 1, new Uint8Array(8).fill(3), true);
  assert.deepEqual(
    [...readEntries(w.take())].map((e) => [e.type, e.page, e.keep]),
    [
      [3, 6, true],
      [4, 7, true],
    ],
  );
  // Only a page sent in full may be kept.
  for (const type of [0, 1, 2])
    assert.throws(() => [...readEntries(Uint8Array.of(type | 0x80, 0, 0, 0, 0, 0))], /a kept entry/);
  for (let cut = 1; cut < bytes.length; cut += 97)
    if (cut !== 6 && cut !== 11 && cut !== 32 && cut !== 4149)
      assert.throws(() => [...readEntries(bytes.subarray(0, cut))], LiveBatchError);
  assert.throws(() => [...readEntries(Uint8Array.of(9, 0, 0, 0, 0))], LiveBatchError);
  assert.ok(!isLiveRecord({ kind: 'page', block: 'pc.ram', offset: 0, data: new Uint8Array(4096) }));
  assert.ok(!isLiveRecord({ kind: 'pages', block: 'pc.ram', entries: new Uint8Array((8 << 20) + 1) }));
});

test("a stream's memory keeps copies of the pages it remembers, up to its capacity, across slabs", () => {
  const memory = new StreamPageMemory(600);
  const digestOf = (n: number) => {
    const digest = new Uint8Array(16);
    new DataView(digest.buffer).setUint32(0, n + 1);
    return digest;
  };
  const page = new Uint8Array(PAGE_SIZE);
  for (let n = 0; n < 700; n++) {
    page.fill(n & 0xff);
    new DataView(page.buffer).setUint32(8, n);
    memory.remember(digestOf(n), page);
  }
  page.fill(0xee); // the caller's bytes change after the call: what was remembered does not
  for (let n = 0; n < 600; n++) {
    const got = memory.get(digestOf(n));
    assert.ok(got, `page ${n} is remembered`);
    assert.equal(got.length, PAGE_SIZE);
    assert.equal(new DataView(got.buffer, got.byteOffset).getUint32(8), n);
    assert.equal(got[100], n & 0xff);
  }
  assert.equal(memory.get(digestOf(600)), undefined, 'beyond its capacity nothing more is remembered');
  assert.equal(memory.has(digestOf(650)), false);
});
