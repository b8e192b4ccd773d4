import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  latestPages,
  parseConfigSection,
  parseStream,
  streamImage,
  StreamError,
  StreamParser,
  StreamWriter,
  writeStream,
  type PageRecord,
  type StreamErrorReason,
  type StreamRecord,
  type ZeroRecord,
} from '../../src/qemu/migration-stream.js';

/**
 * Hand-built streams, byte by byte as QEMU 7.2 lays them out (independent of the writer), so parser and
 * writer are each checked against the format and not only against each other.
 */

const PAGE = 4096;
const latin1 = (text: string) => Buffer.from(text, 'latin1');
const u8 = (...values: number[]) => Buffer.from(values);
const be16 = (value: number) => Buffer.from([value >> 8, value & 0xff]);
const be32 = (value: number) => {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value >>> 0);
  return bytes;
};
const be64 = (value: number) => {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(BigInt(value));
  return bytes;
};
const name = (text: string) => Buffer.concat([u8(text.length), latin1(text)]);
const pageData = (seed: number) => Buffer.alloc(PAGE, seed);
const cat = (...parts: Uint8Array[]) => Buffer.concat(parts);

const HEADER = cat(latin1('QEVM'), be32(3));
const MACHINE = 'pc-i440fx-7.2';
const CONFIG = cat(u8(0x07), be32(MACHINE.length), latin1(MACHINE));
const UUID_CONFIG = cat(
  CONFIG,
  u8(0x05),
  name('configuration/uuid'),
  be32(1),
  Buffer.from('123456789abcdef00123456789abcdef', 'hex'),
);
const IGNORE_SHARED_CONFIG = cat(
  CONFIG,
  u8(0x05),
  name('configuration/capabilities'),
  be32(1),
  be32(1),
  name('x-ignore-shared'),
);
const SECTION = 2;
const footer = (id = SECTION) => cat(u8(0x7e), be32(id));
const EOS = be64(0x10);
const start = (id = SECTION, idstr = 'ram') => cat(u8(0x01), be32(id), name(idstr), be32(0), be32(4));
const part = (id = SECTION) => cat(u8(0x02), be32(id));
const end = (id = SECTION) => cat(u8(0x03), be32(id));
const blockList = (blocks: [string, number, number?][]) =>
  cat(
    be64(blocks.reduce((sum, [, length]) => sum + length, 0) + 0x04),
    ...blocks.map(([block, length, addr]) =>
      addr === undefined ? cat(name(block), be64(length)) : cat(name(block), be64(length), be64(addr)),
    ),
  );
const page = (offset: number, data: Uint8Array, block?: string) =>
  block === undefined ? cat(be64(offset + 0x08 + 0x20), data) : cat(be64(offset + 0x08), name(block), data);
const zero = (offset: number, block?: string) =>
  block === undefined ? cat(be64(offset + 0x02 + 0x20), u8(0)) : cat(be64(offset + 0x02), name(block), u8(0));
const DESCRIPTION = '{"page_size": 4096, "devices": []}';
const TAIL = cat(
  u8(0x04),
  be32(0),
  name('timer'),
  be32(0),
  be32(2),
  Buffer.from('0000000102030405000000000000000000', 'hex'),
  footer(0),
  u8(0x00),
  u8(0x06),
  be32(DESCRIPTION.length),
  latin1(DESCRIPTION),
);
const BLOCKS: [string, number][] = [
  ['pc.ram', 4 * PAGE],
  ['rom', PAGE],
];

/** Two PART sections; CONTINUE exactly when the previous page record had the same block, across sections. */
const CANONICAL = cat(
  HEADER,
  CONFIG,
  start(),
  blockList(BLOCKS),
  EOS,
  footer(),
  part(),
  page(PAGE, pageData(1), 'pc.ram'),
  zero(2 * PAGE),
  page(0, pageData(2), 'rom'),
  EOS,
  footer(),
  part(),
  zero(0), // still 'rom': CONTINUE reaches across the section boundary
  page(3 * PAGE, pageData(3), 'pc.ram'),
  EOS,
  footer(),
  end(),
  page(0, pageData(4)),
  EOS,
  footer(),
  TAIL,
);

const ramSection = { idstr: 'ram', sectionId: SECTION, instanceId: 0, versionId: 4 };
const EXPECTED: StreamRecord[] = [
  { kind: 'header', version: 3 },
  { kind: 'config', machine: MACHINE, capabilities: [], ignoreShared: false, bytes: CONFIG },
  { kind: 'section-begin', type: 'start', ...ramSection },
  { kind: 'ram-blocks', blocks: BLOCKS.map(([block, length]) => ({ name: block, length })) },
  { kind: 'section-end', type: 'start', sectionId: SECTION },
  { kind: 'section-begin', type: 'part', ...ramSection },
  { kind: 'page', block: 'pc.ram', offset: PAGE, data: pageData(1), continued: false },
  { kind: 'zero', block: 'pc.ram', offset: 2 * PAGE, fill: 0, continued: true },
  { kind: 'page', block: 'rom', offset: 0, data: pageData(2), continued: false },
  { kind: 'section-end', type: 'part', sectionId: SECTION },
  { kind: 'section-begin', type: 'part', ...ramSection },
  { kind: 'zero', block: 'rom', offset: 0, fill: 0, continued: true },
  { kind: 'page', block: 'pc.ram', offset: 3 * PAGE, data: pageData(3), continued: false },
  { kind: 'section-end', type: 'part', sectionId: SECTION },
  { kind: 'section-begin', type: 'end', ...ramSection },
  { kind: 'page', block: 'pc.ram', offset: 0, data: pageData(4), continued: true },
  { kind: 'section-end', type: 'end', sectionId: SECTION },
  { kind: 'tail', bytes: TAIL },
];

/** Records with page data, config and tail bytes as plain Buffers, so deepEqual compares contents. */
function plain(records: readonly StreamRecord[]): unknown[] {
  return records.map((record) => {
    if (record.kind === 'page') return { ...record, data: Buffer.from(record.data) };
    if (record.kind === 'config') return { ...record, bytes: Buffer.from(record.bytes) };
    if (record.kind === 'tail' || record.kind === 'command') return { ...record };
    return record;
  });
}

/** Tail records merged into one, as records from different chunkings compare. */
function mergeTail(records: readonly StreamRecord[]): unknown[] {
  const tail = records.flatMap((record) => (record.kind === 'tail' ? [record.bytes] : []));
  const rest = records.filter((record) => record.kind !== 'tail');
  return plain(tail.length ? [...rest, { kind: 'tail', bytes: Buffer.concat(tail) }] : rest);
}

function rewrite(records: Iterable<StreamRecord>): Buffer {
  const parts: Uint8Array[] = [];
  const writer = new StreamWriter((bytes) => parts.push(bytes));
  for (const record of records) writer.write(record);
  return Buffer.concat(parts);
}

/** Parses `bytes` in one chunk, expecting a StreamError of `reason` at `offset` whose message matches. */
function assertRefused(
  bytes: Uint8Array,
  reason: StreamErrorReason,
  message: RegExp,
  offset?: number,
): StreamError {
  const parser = new StreamParser();
  let error: unknown;
  try {
    parser.push(bytes);
    parser.end();
  } catch (caught) {
    error = caught;
  }
  assert.ok(error instanceof StreamError, `expected a StreamError, got ${String(error)}`);
  assert.equal(error.reason, reason, error.message);
  assert.match(error.message, message);
  assert.equal(error.code, 'VMS_STREAM');
  assert.equal(error.exitCode, 7);
  if (offset !== undefined) assert.equal(error.offset, offset, error.message);
  // The parser stays failed with the same error.
  assert.throws(
    () => parser.push(u8(0)),
    (again) => again === error,
  );
  assert.throws(
    () => parser.end(),
    (again) => again === error,
  );
  return error;
}

/** The canonical stream up to its RAM END footer, with `body` in place of the two PART sections. */
function withParts(...body: Uint8Array[]): Buffer {
  return cat(HEADER, CONFIG, start(), blockList(BLOCKS), EOS, footer(), ...body, end(), EOS, footer(), TAIL);
}
const AFTER_START = HEADER.length + CONFIG.length + start().length + blockList(BLOCKS).length + 8 + 5;

test('a canonical stream parses into the records it holds, and writes back byte-identical', () => {
  const { records, end: info } = parseStream(CANONICAL);
  assert.deepEqual(plain(records), plain(EXPECTED));
  assert.equal(info.length, CANONICAL.length);
  assert.equal(info.tailOffset, CANONICAL.length - TAIL.length);
  assert.deepEqual(info.description, {
    offset: CANONICAL.length - DESCRIPTION.length,
    length: DESCRIPTION.length,
  });
  assert.deepEqual(rewrite(records), CANONICAL);
  // The writer, choosing CONTINUE itself, writes the same bytes from records without the flag.
  assert.deepEqual(
    rewrite(
      records.map((record) => {
        if (record.kind !== 'page' && record.kind !== 'zero') return record;
        const { continued: _continued, ...rest } = record;
        return rest;
      }),
    ),
    CANONICAL,
  );
});

test('any chunking gives the same records; onRecord sees each as it completes', () => {
  const whole = mergeTail(parseStream(CANONICAL).records);
  for (const size of [1, 2, 3, 7, 8, 9, 100, 4095, 4096, 4097, 5000]) {
    const seen: StreamRecord[] = [];
    const parser = new StreamParser({ onRecord: (record) => seen.push(record) });
    const returned: StreamRecord[] = [];
    for (let at = 0; at < CANONICAL.length; at += size) {
      returned.push(...parser.push(CANONICAL.subarray(at, at + size)));
    }
    parser.end();
    assert.deepEqual(mergeTail(returned), whole, `chunks of ${size}`);
    assert.deepEqual(seen, returned);
    assert.deepEqual(rewrite(returned), CANONICAL);
  }
});

test('page data split across chunks is copied, data in one chunk is not', () => {
  const parser = new StreamParser();
  const firstPage = HEADER.length + CONFIG.length + start().length + blockList(BLOCKS).length + 13 + 5;
  const cut = firstPage + 8 + 7 + 100; // head, name, then 100 bytes into the data
  const chunk = Buffer.from(CANONICAL.subarray(0, cut));
  parser.push(chunk);
  const [record] = parser.push(Buffer.from(CANONICAL.subarray(cut, cut + PAGE)));
  assert.equal(record?.kind, 'page');
  chunk.fill(0xee); // the caller reuses its buffer: the split page was copied
  assert.deepEqual(Buffer.from((record as PageRecord).data), pageData(1));
});

test('a page record that names its block although it could continue keeps that form', () => {
  const bytes = withParts(
    part(),
    page(0, pageData(5), 'pc.ram'),
    page(PAGE, pageData(6), 'pc.ram'),
    EOS,
    footer(),
  );
  const { records } = parseStream(bytes);
  const pages = records.filter((record): record is PageRecord => record.kind === 'page');
  assert.deepEqual(
    pages.map((p) => p.continued),
    [false, false],
  );
  assert.deepEqual(rewrite(records), bytes);
});

test('commands before the RAM START (return path, ping) are records and round-trip', () => {
  const commands = cat(u8(0x08), be16(1), be16(0), u8(0x08), be16(2), be16(4), be32(1));
  const bytes = cat(HEADER, CONFIG, commands, CANONICAL.subarray(HEADER.length + CONFIG.length));
  const { records } = parseStream(bytes);
  assert.deepEqual(
    records.filter((record) => record.kind === 'command').map((record) => plain([record])[0]),
    [
      { kind: 'command', command: 1, data: Buffer.alloc(0) },
      { kind: 'command', command: 2, data: be32(1) },
    ],
  );
  assert.deepEqual(rewrite(records), bytes);
});

test('configuration subsections: uuid and capabilities (x-ignore-shared adds block addresses)', () => {
  const uuid = parseStream(cat(HEADER, UUID_CONFIG, CANONICAL.subarray(HEADER.length + CONFIG.length)));
  const config = uuid.records.find((record) => record.kind === 'config');
  assert.equal(config?.kind === 'config' && config.uuid, '12345678-9abc-def0-0123-456789abcdef');
  assert.deepEqual(parseConfigSection(UUID_CONFIG).bytes, UUID_CONFIG);

  const blocks: [string, number, number][] = [
    ['mem', 4 * PAGE, 0],
    ['pc.bios', PAGE, 0xfffc0000],
  ];
  const shared = cat(
    HEADER,
    IGNORE_SHARED_CONFIG,
    start(),
    blockList(blocks),
    EOS,
    footer(),
    end(),
    page(0, pageData(9), 'pc.bios'),
    EOS,
    footer(),
    TAIL,
  );
  const { records } = parseStream(shared);
  const parsed = parseConfigSection(IGNORE_SHARED_CONFIG);
  assert.deepEqual(parsed.capabilities, ['x-ignore-shared']);
  assert.equal(parsed.ignoreShared, true);
  assert.deepEqual(
    records.find((record) => record.kind === 'ram-blocks'),
    { kind: 'ram-blocks', blocks: blocks.map(([block, length, addr]) => ({ name: block, length, addr })) },
  );
  assert.deepEqual(rewrite(records), shared);
  // The same block list without the capability reads the addresses as names and lengths: refused.
  assert.throws(
    () => parseStream(cat(HEADER, CONFIG, shared.subarray(HEADER.length + IGNORE_SHARED_CONFIG.length))),
    StreamError,
  );
});

test('writeStream: pages in any order, one PART, CONTINUE set by the writer; latestPages keeps last copies', () => {
  const { records } = parseStream(CANONICAL);
  const image = streamImage(records);
  const reversed = [...latestPages(image.pages)].reverse();
  const bytes = writeStream({ ...image, pages: reversed });
  const again = parseStream(bytes).records;
  const pages = again.filter(
    (record): record is PageRecord | ZeroRecord => record.kind === 'page' || record.kind === 'zero',
  );
  assert.deepEqual(
    pages.map((p) => [p.block, p.offset, p.continued]),
    [
      ['pc.ram', 0, false],
      ['pc.ram', 3 * PAGE, true],
      ['rom', 0, false], // the zero copy of rom@0, which came after its page copy
      ['pc.ram', 2 * PAGE, false],
      ['pc.ram', PAGE, true],
    ],
  );
  assert.equal(pages[2]?.kind, 'zero');
  assert.deepEqual(
    again
      .filter((record) => record.kind === 'section-begin')
      .map((record) => record.kind === 'section-begin' && record.type),
    ['start', 'part', 'end'],
  );
  assert.ok(bytes.subarray(bytes.length - TAIL.length).equals(TAIL));
});

test('refusals name what they met and where', () => {
  const at = AFTER_START + 5; // first record of the first PART
  const withRecord = (head: number, rest: Uint8Array = u8()) =>
    withParts(part(), cat(be64(head), name('pc.ram'), rest), EOS, footer());
  assertRefused(withRecord(0x40, u8(1, 0, 0)), 'unsupported', /XBZRLE page \(RAM flags 0x40/, at);
  assertRefused(withRecord(0x100, be32(0)), 'unsupported', /compressed page \(RAM flags 0x100/, at);
  assertRefused(withRecord(0x200), 'unsupported', /MULTIFD_FLUSH/, at);
  assertRefused(withRecord(0x80), 'unsupported', /RDMA hook/, at);
  assertRefused(withRecord(0x01), 'unsupported', /obsolete FULL/, at);
  assertRefused(withRecord(0x0a), 'unsupported', /unknown RAM flag combination 0xa/, at);
  assertRefused(withRecord(0x04), 'unsupported', /block list \(MEM_SIZE\) in the PART section/, at);
  assertRefused(withRecord(0x10 + 0x1000), 'invalid', /EOS record with address 0x1000/, at);

  assertRefused(
    cat(HEADER.subarray(0, 4), be32(4), CANONICAL.subarray(8)),
    'unsupported',
    /stream version 4/,
    4,
  );
  assertRefused(cat(HEADER.subarray(0, 4), be32(2)), 'unsupported', /refuses version 2/, 4);
  assertRefused(cat(latin1('QEVX'), be32(3)), 'invalid', /not a QEMU migration stream/, 0);
  assertRefused(cat(HEADER, start()), 'unsupported', /expected the configuration section \(0x07\)/, 8);

  const afterConfig = HEADER.length + CONFIG.length;
  assertRefused(cat(HEADER, CONFIG, u8(0x09)), 'unsupported', /unknown section type 0x9/, afterConfig);
  assertRefused(cat(HEADER, CONFIG, u8(0x06)), 'unsupported', /VMDESCRIPTION \(0x6\)/, afterConfig);
  assertRefused(
    cat(HEADER, CONFIG, start(3, 'block')),
    'unsupported',
    /iterative section 'block' \(block migration/,
  );
  assertRefused(
    cat(HEADER, CONFIG, start(4, 'dirty-bitmap')),
    'unsupported',
    /'dirty-bitmap' \(the dirty-bitmaps/,
  );
  assertRefused(
    cat(HEADER, CONFIG, u8(0x04), be32(0), name('timer')),
    'unsupported',
    /FULL section\) before the RAM END/,
  );
  assertRefused(cat(HEADER, CONFIG, u8(0x00)), 'invalid', /EOF before any RAM section/, afterConfig);
  assertRefused(cat(HEADER, CONFIG, part()), 'invalid', /PART section 2 before any START/);
  assertRefused(withParts(part(7)), 'invalid', /PART for section 7, which no START opened/, AFTER_START);
  assertRefused(withParts(start()), 'invalid', /a second START for 'ram'/, AFTER_START);
  assertRefused(
    cat(HEADER, CONFIG, u8(0x01), be32(2), name('ram'), be32(0), be32(5)),
    'unsupported',
    /'ram' section instance 0, version 5/,
  );
  assertRefused(
    cat(HEADER, CONFIG, u8(0x08), be16(3), be16(0)),
    'unsupported',
    /POSTCOPY_ADVISE command/,
    afterConfig,
  );
  assertRefused(cat(HEADER, CONFIG, u8(0x08), be16(8), be16(0)), 'unsupported', /ENABLE_COLO command/);
  assertRefused(cat(HEADER, CONFIG, u8(0x08), be16(11), be16(0)), 'unsupported', /unknown command 11/);
  assertRefused(
    cat(HEADER, CONFIG, u8(0x08), be16(2), be16(1), u8(0)),
    'invalid',
    /PING command with 1 bytes/,
  );
  assertRefused(
    cat(HEADER, CONFIG, u8(0x05), name('configuration/other'), be32(1)),
    'unsupported',
    /unknown configuration subsection 'configuration\/other'/,
    afterConfig,
  );
  assertRefused(
    cat(HEADER, CONFIG, u8(0x05), name('configuration/target-page-bits'), be32(1), be32(16)),
    'unsupported',
    /target pages of 2\^16 bytes/,
  );

  assertRefused(
    withParts(part(), EOS, footer(3)),
    'invalid',
    /footer of section 3 ends section 2/,
    AFTER_START + 13,
  );
  assertRefused(withParts(part(), EOS, part()), 'unsupported', /expected the section footer \(0x7e\)/);
  assertRefused(
    withParts(part(), page(0, pageData(1), 'nope')),
    'invalid',
    /RAM block 'nope', which the block list lacks/,
    at,
  );
  assertRefused(
    withParts(part(), page(PAGE, pageData(1), 'rom')),
    'invalid',
    /page offset 0x1000 beyond RAM block 'rom'/,
    at,
  );
  assertRefused(withParts(part(), zero(0)), 'invalid', /CONTINUE on the first page record/, at);
  assertRefused(
    cat(HEADER, CONFIG, start(), be64(2 * PAGE + 4), name('a'), be64(3 * PAGE)),
    'invalid',
    /RAM total 8192 bytes does not match the blocks' lengths: block 'a' of 12288 bytes brings them to 12288/,
  );
});

test('a stream cut at any byte is refused at end(), never by push, and never hangs', () => {
  for (let cut = 0; cut < CANONICAL.length; cut++) {
    const parser = new StreamParser();
    parser.push(CANONICAL.subarray(0, Math.floor(cut / 2)));
    parser.push(CANONICAL.subarray(Math.floor(cut / 2), cut));
    assert.throws(
      () => parser.end(),
      (error) => error instanceof StreamError && error.reason === 'truncated' && error.offset <= cut,
      `cut at ${cut}`,
    );
  }
  const parser = new StreamParser();
  parser.push(CANONICAL.subarray(0, 1000));
  assert.throws(
    () => parser.end(),
    /stream ended 889 of 4096 bytes into the data of page 0x1000 of 'pc.ram' \(1000 bytes\)/,
  );
});

test('the tail must end with EOF and the VM description unless allowMissingDescription', () => {
  const noDescription = cat(CANONICAL.subarray(0, CANONICAL.length - DESCRIPTION.length - 5));
  assert.equal(noDescription[noDescription.length - 1], 0x00);
  assertRefused(noDescription, 'truncated', /no EOF \(0x00\) and VM description/);
  const { end: info } = parseStream(noDescription, { allowMissingDescription: true });
  assert.equal(info.description, undefined);
  assertRefused(
    withParts().subarray(0, withParts().length - TAIL.length),
    'truncated',
    /right after the RAM END/,
  );
});

test('push after end() and a throwing onRecord leave the parser failed', () => {
  const parser = new StreamParser();
  parser.push(CANONICAL);
  parser.end();
  assert.throws(
    () => parser.push(u8(0)),
    (error) => error instanceof StreamError && error.reason === 'usage',
  );

  const boom = new Error('consumer failed');
  const failing = new StreamParser({
    onRecord: (record) => {
      if (record.kind === 'config') throw boom;
    },
  });
  assert.throws(
    () => failing.push(CANONICAL),
    (error) => error === boom,
  );
  assert.throws(
    () => failing.push(CANONICAL),
    (error) => error === boom,
  );
});

test('the writer refuses misuse with StreamError', () => {
  const usage = (fn: (writer: StreamWriter) => void, message: RegExp) =>
    assert.throws(
      () => fn(new StreamWriter(() => undefined)),
      (error) => error instanceof StreamError && error.reason === 'usage' && message.test(error.message),
    );
  const ready = (writer: StreamWriter) => {
    writer.header();
    writer.config(CONFIG);
    writer.beginSection('start');
    writer.ramBlocks(BLOCKS.map(([block, length]) => ({ name: block, length })));
  };
  usage((w) => w.config(CONFIG), /configuration section out of order \(the writer expects the header next\)/);
  usage((w) => (w.header(), w.config(cat(CONFIG, u8(1)))), /1 bytes after the configuration section/);
  usage((w) => (w.header(), w.config(CONFIG), w.page('pc.ram', 0, pageData(0))), /outside a RAM section/);
  usage((w) => (ready(w), w.page('nope', 0, pageData(0))), /RAM block 'nope', which the block list lacks/);
  usage((w) => (ready(w), w.page('rom', PAGE, pageData(0))), /page offset 4096 in RAM block 'rom'/);
  usage((w) => (ready(w), w.page('rom', 0, new Uint8Array(10))), /a page of 10 bytes/);
  usage((w) => (ready(w), w.tail(u8(0))), /tail bytes out of order \(the writer expects sections next\)/);
  usage((w) => (w.header(), w.config(CONFIG), w.beginSection('part')), /PART before START/);
  usage(
    (w) => (
      w.header(),
      w.config(CONFIG),
      w.beginSection('start'),
      w.ramBlocks([{ name: 'a', length: PAGE, addr: 0 }])
    ),
    /has an address without x-ignore-shared/,
  );
  usage(
    (w) => (
      w.header(),
      w.config(IGNORE_SHARED_CONFIG),
      w.beginSection('start'),
      w.ramBlocks([{ name: 'a', length: PAGE }])
    ),
    /needs an address \(x-ignore-shared\)/,
  );
  usage(
    (w) => (w.header(), w.config(CONFIG), w.beginSection('start'), w.ramBlocks([{ name: 'a', length: 100 }])),
    /not a multiple of 4096/,
  );
});

/** Where the canonical stream's parts start. */
const MACHINE_LENGTH_AT = HEADER.length + 1;
const MEM_SIZE_AT = HEADER.length + CONFIG.length + start().length;
const DESCRIPTION_AT = CANONICAL.length - DESCRIPTION.length;

/** `bytes` cut into chunks of `size` and parsed; the error thrown (by push or end) or undefined. */
function errorInChunks(bytes: Uint8Array, size: number, options = {}): StreamError | undefined {
  const parser = new StreamParser(options);
  try {
    for (let at = 0; at < bytes.length; at += size) parser.push(bytes.subarray(at, at + size));
    parser.end();
  } catch (error) {
    assert.ok(error instanceof StreamError, `not a StreamError: ${String(error)}`);
    return error;
  }
  return undefined;
}

test('a stream followed by a copy of itself, or by any byte, is refused where its VM description ends', () => {
  const after =
    `data after the end of the stream: the VM description at byte ${DESCRIPTION_AT} ` +
    `\\(${DESCRIPTION.length} bytes, after EOF at byte ${DESCRIPTION_AT - 6}\\) ends it at byte ${CANONICAL.length}`;
  for (const extra of [CANONICAL, u8(0), u8(0x0a), latin1('QEVM'), TAIL]) {
    const error = assertRefused(cat(CANONICAL, extra), 'invalid', new RegExp(after), CANONICAL.length);
    // The same error in any chunking: the description found is never one inside the copy.
    for (const size of [1, 5, 7, 100, 4096, CANONICAL.length - 1, CANONICAL.length, CANONICAL.length + 1]) {
      assert.equal(errorInChunks(cat(CANONICAL, extra), size)?.message, error.message, `chunks of ${size}`);
    }
  }
  // Without a description, a stream may end with any EOF byte: what follows cannot be told from device
  // state. With one, the copy is refused even when descriptions are optional.
  const options = { allowMissingDescription: true };
  assert.equal(errorInChunks(cat(CANONICAL, CANONICAL), 1000, options)?.offset, CANONICAL.length);
});

test('as from a socket: bytes after the VM description fail the push that brings them, not only end()', () => {
  const parser = new StreamParser();
  const records = parser.push(CANONICAL);
  assert.equal(records.at(-1)?.kind, 'tail');
  // QEMU's socket would close here; one that goes on is refused at once, before its bytes are passed on.
  assert.throws(
    () => parser.push(HEADER),
    (error) =>
      error instanceof StreamError && error.offset === CANONICAL.length && error.reason === 'invalid',
  );
  assert.throws(() => parser.end(), /data after the end of the stream/);

  // The description split over chunks ends the stream at its last byte, in whatever chunk that is.
  for (const cut of [DESCRIPTION_AT - 6, DESCRIPTION_AT - 3, DESCRIPTION_AT, CANONICAL.length - 1]) {
    const split = new StreamParser();
    split.push(CANONICAL.subarray(0, cut));
    split.push(CANONICAL.subarray(cut));
    assert.deepEqual(split.end().description, { offset: DESCRIPTION_AT, length: DESCRIPTION.length });
    const more = new StreamParser();
    more.push(CANONICAL.subarray(0, cut));
    assert.throws(
      () => more.push(cat(CANONICAL.subarray(cut), u8(0))),
      (error) => error instanceof StreamError && error.offset === CANONICAL.length,
    );
  }
});

test('look-alikes of the VM description in device state are passed over; only well-formed JSON ends a stream', () => {
  const header = (length: number) => cat(u8(0x00, 0x06), be32(length));
  const lookalikes = cat(
    header(2),
    latin1('{}'), // QEMU's description is never empty
    header(12),
    latin1('{"a": 1} xyz'), // closes before its length
    header(9),
    latin1('{"a": 1}}'), // closes twice
    header(8),
    latin1('{"a":\x01}'), // not JSON
    header(0xffffffff),
    latin1('{"open'), // longer than the stream
    header(6),
    latin1('{"a"]}'),
  );
  const device = cat(u8(0x04), be32(0), name('timer'), lookalikes, footer(0));
  const bytes = cat(
    CANONICAL.subarray(0, CANONICAL.length - TAIL.length),
    device,
    TAIL.subarray(TAIL.length - DESCRIPTION.length - 6),
  );
  const expected = { offset: bytes.length - DESCRIPTION.length, length: DESCRIPTION.length };
  for (const size of [1, 3, 7, 64, bytes.length]) {
    const parser = new StreamParser();
    for (let at = 0; at < bytes.length; at += size) parser.push(bytes.subarray(at, at + size));
    assert.deepEqual(parser.end().description, expected, `chunks of ${size}`);
  }
  // Without the real description after them, the look-alikes do not end the stream.
  assertRefused(
    cat(CANONICAL.subarray(0, CANONICAL.length - TAIL.length), device),
    'truncated',
    /inside the device state/,
  );
  // A description longer than maxDescriptionBytes is not looked for: the error says so.
  assert.match(
    errorInChunks(CANONICAL, 100, { limits: { maxDescriptionBytes: 10 } })?.message ?? '',
    new RegExp(
      `the last header, at byte ${DESCRIPTION_AT - 6}, declares 34 bytes, over maxDescriptionBytes 10`,
    ),
  );
});

test('a corrupt machine name length is reported as one, with the offset of the length', () => {
  const withLength = (length: number) => {
    const bytes = Buffer.from(CANONICAL);
    bytes.writeUInt32BE(length, MACHINE_LENGTH_AT);
    return bytes;
  };
  // 13 with bit 4 flipped: the name takes 16 bytes of the START section, up to its 0x04, which read as
  // a section type was once reported as device state before the RAM END section.
  assertRefused(
    withLength(13 ^ 0x10),
    'invalid',
    /configuration section: machine name length 29 runs past the name: byte 26 \(0x1\) is no name character \(a corrupt length\?\)/,
    MACHINE_LENGTH_AT,
  );
  assertRefused(
    withLength(12),
    'invalid',
    /configuration section: the machine name length 12 \('pc-i440fx-7\.'\) is followed by 0x32 \('2'\) at byte 25, which starts no section: a corrupt length\?/,
    MACHINE_LENGTH_AT,
  );
  assertRefused(withLength(0), 'invalid', /machine name length 0: an empty name/, MACHINE_LENGTH_AT);
  // Over the limit: refused on the length alone, before any of the name is asked for or held.
  for (const length of [257, 13 | 0x01000000, 0xffffffff]) {
    const parser = new StreamParser();
    assert.throws(
      () => parser.push(withLength(length).subarray(0, MACHINE_LENGTH_AT + 4)),
      (error) =>
        error instanceof StreamError &&
        error.offset === MACHINE_LENGTH_AT &&
        error.message.includes(`machine name length ${length} exceeds maxMachineNameBytes (256)`),
    );
  }
  assert.match(
    errorInChunks(CANONICAL, 5, { limits: { maxMachineNameBytes: 12 } })?.message ?? '',
    /machine name length 13 exceeds maxMachineNameBytes \(12\)/,
  );
  // A capability count one too high reads the START section as a capability name.
  const twoCapabilities = Buffer.from(IGNORE_SHARED_CONFIG);
  twoCapabilities.writeUInt32BE(2, IGNORE_SHARED_CONFIG.length - 20);
  assertRefused(
    cat(HEADER, twoCapabilities, start()),
    'invalid',
    /capability 2 of 2: name length 1 runs past the name/,
    HEADER.length + IGNORE_SHARED_CONFIG.length,
  );
  // Shortened, the capability leaves name characters where a section type belongs.
  const shortCapability = Buffer.from(IGNORE_SHARED_CONFIG);
  shortCapability[IGNORE_SHARED_CONFIG.length - 16] = 14;
  assertRefused(
    cat(HEADER, shortCapability, start()),
    'invalid',
    /the subsection 'configuration\/capabilities' is followed by 0x64 \('d'\)/,
  );
});

test("a RAM total that does not match the blocks' lengths is reported as such, at the total", () => {
  const withTotal = (total: number) => {
    const bytes = Buffer.from(CANONICAL);
    bytes.writeBigUInt64BE(BigInt(total + 0x04), MEM_SIZE_AT);
    return bytes;
  };
  // Enlarged, the list runs into the EOS; its 0x00 was once read as an empty block name and the EOS's
  // last byte and the footer as "RAM block '' of 4222 bytes".
  assertRefused(
    withTotal(6 * PAGE),
    'invalid',
    /RAM total 24576 bytes does not match the blocks' lengths 20480 \(2 blocks, then an empty name where a block would start\)/,
    MEM_SIZE_AT,
  );
  assertRefused(
    withTotal(4 * PAGE),
    'invalid',
    /RAM total 16384 bytes does not match the blocks' lengths: the total is reached after 1 block, then 0x03726f6d00000000 where EOS belongs/,
    MEM_SIZE_AT,
  );
  assertRefused(
    withTotal(2 * PAGE),
    'invalid',
    /RAM total 8192 bytes does not match the blocks' lengths: block 'pc.ram' of 16384 bytes brings them to 16384/,
    MEM_SIZE_AT,
  );
  assertRefused(
    cat(HEADER, CONFIG, start(), page(0, pageData(1), 'pc.ram')),
    'invalid',
    /the RAM START section begins with RAM flags 0x8, not the block list \(MEM_SIZE\)/,
    MEM_SIZE_AT,
  );
  assertRefused(
    cat(HEADER, CONFIG, start(), blockList(BLOCKS), zero(0), EOS, footer()),
    'invalid',
    /the total is reached after 2 blocks, then 0x0000000000000022 where EOS belongs/,
  );
  assert.match(
    errorInChunks(CANONICAL, 64, { limits: { maxRamBlocks: 1 } })?.message ?? '',
    /RAM block list: more than maxRamBlocks \(1\) blocks/,
  );
});

test('a command is checked on its header: a wrong or unknown one is refused before its data is read', () => {
  const afterConfig = HEADER.length + CONFIG.length;
  for (const [head, message] of [
    [cat(be16(11), be16(0xffff)), /unknown command 11 \(65535 bytes of data\)/],
    [cat(be16(2), be16(0xffff)), /PING command with 65535 bytes of data/],
    [cat(be16(3), be16(16)), /POSTCOPY_ADVISE command/],
  ] as const) {
    const parser = new StreamParser();
    assert.throws(
      () => parser.push(cat(HEADER, CONFIG, u8(0x08), head)),
      (error) => error instanceof StreamError && error.offset === afterConfig && message.test(error.message),
    );
  }
});
