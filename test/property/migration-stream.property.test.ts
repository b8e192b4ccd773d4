import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  MigCommand,
  StreamError,
  StreamParser,
  StreamWriter,
  type RamBlock,
  type StreamRecord,
} from '../../src/qemu/migration-stream.js';

/**
 * Random streams (blocks, configuration subsections, commands, PART sections of pages and zero pages in
 * any order, device-state tails) written by the writer, then parsed in random chunkings.
 */

const PAGE = 4096;
const latin1 = (text: string) => Buffer.from(text, 'latin1');

interface Model {
  readonly config: Uint8Array;
  readonly ignoreShared: boolean;
  readonly commands: { command: number; data: Uint8Array }[];
  readonly sectionId: number;
  readonly blocks: RamBlock[];
  /** PART sections, then the END section (last); each a list of page operations. */
  readonly sections: { block: number; page: number; zero: boolean; seed: number }[][];
  readonly tail: Uint8Array;
}

const blockName = fc.string({
  unit: fc.integer({ min: 1, max: 255 }).map((code) => String.fromCharCode(code)),
  minLength: 1,
  maxLength: 40,
});

function configBytes(uuid: Uint8Array | undefined, ignoreShared: boolean): Buffer {
  const machine = latin1('pc-q35-7.2');
  const parts: Uint8Array[] = [Buffer.from([0x07, 0, 0, 0, machine.length]), machine];
  const subsection = (name: string, fields: Uint8Array) =>
    parts.push(Buffer.from([0x05, name.length]), latin1(name), Buffer.from([0, 0, 0, 1]), fields);
  if (ignoreShared) {
    subsection(
      'configuration/capabilities',
      Buffer.concat([Buffer.from([0, 0, 0, 1, 15]), latin1('x-ignore-shared')]),
    );
  }
  if (uuid) subsection('configuration/uuid', uuid);
  return Buffer.concat(parts);
}

/** Device bytes (no 0x06, so nothing in them looks like a VM description), EOF, then the description. */
function tailBytes(device: Uint8Array, text: string): Buffer {
  const json = Buffer.from(`{"devices": ${JSON.stringify(text)}}`);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length);
  const state = Buffer.from(device.map((byte) => (byte === 0x06 ? 0x07 : byte)));
  return Buffer.concat([Buffer.from([0x04]), state, Buffer.from([0x00, 0x06]), length, json]);
}

const tailArb = fc
  .tuple(fc.uint8Array({ maxLength: 400 }), fc.string({ maxLength: 200 }))
  .map(([device, text]) => tailBytes(device, text));

const modelArb: fc.Arbitrary<Model> = fc
  .record(
    {
      uuid: fc.option(fc.uint8Array({ minLength: 16, maxLength: 16 }), { nil: undefined }),
      ignoreShared: fc.boolean(),
      returnPath: fc.boolean(),
      ping: fc.option(fc.integer({ min: 0, max: 0xffffffff }), { nil: undefined }),
      sectionId: fc.nat({ max: 0xffffffff }),
      blocks: fc.uniqueArray(
        fc.record({ name: blockName, pages: fc.integer({ min: 1, max: 8 }), addr: fc.nat({ max: 2 ** 40 }) }),
        { selector: (block) => block.name, minLength: 1, maxLength: 4 },
      ),
      sections: fc.array(
        fc.array(
          fc.record({
            block: fc.nat(),
            page: fc.nat(),
            zero: fc.boolean(),
            seed: fc.integer({ min: 0, max: 255 }),
          }),
          { maxLength: 12 },
        ),
        { minLength: 1, maxLength: 5 },
      ),
      tail: tailArb,
    },
    { noNullPrototype: true },
  )
  .map((r) => {
    const commands: { command: number; data: Uint8Array }[] = [];
    if (r.returnPath) commands.push({ command: MigCommand.OPEN_RETURN_PATH, data: new Uint8Array(0) });
    if (r.ping !== undefined) {
      const data = Buffer.alloc(4);
      data.writeUInt32BE(r.ping);
      commands.push({ command: MigCommand.PING, data });
    }
    const blocks = r.blocks.map((b) =>
      r.ignoreShared
        ? { name: b.name, length: b.pages * PAGE, addr: b.addr * PAGE }
        : { name: b.name, length: b.pages * PAGE },
    );
    const sections = r.sections.map((ops) =>
      ops.map((op) => {
        const block = op.block % blocks.length;
        return { ...op, block, page: op.page % (blocks[block]!.length / PAGE) };
      }),
    );
    return {
      config: configBytes(r.uuid, r.ignoreShared),
      ignoreShared: r.ignoreShared,
      commands,
      sectionId: r.sectionId,
      blocks,
      sections,
      tail: r.tail,
    };
  });

function pageData(seed: number, offset: number): Buffer {
  const data = Buffer.alloc(PAGE, seed);
  data.writeUInt32BE(offset, 0);
  return data;
}

/** The records the model stands for, with CONTINUE as the writer sets it: same block as the last page. */
function modelRecords(model: Model): StreamRecord[] {
  const ram = { idstr: 'ram', sectionId: model.sectionId, instanceId: 0, versionId: 4 };
  const records: StreamRecord[] = [
    { kind: 'header', version: 3 },
    { kind: 'config', machine: '', capabilities: [], ignoreShared: model.ignoreShared, bytes: model.config },
    ...model.commands.map((c): StreamRecord => ({ kind: 'command', ...c })),
    { kind: 'section-begin', type: 'start', ...ram },
    { kind: 'ram-blocks', blocks: model.blocks },
    { kind: 'section-end', type: 'start', sectionId: model.sectionId },
  ];
  let last: string | undefined;
  model.sections.forEach((ops, i) => {
    const type = i === model.sections.length - 1 ? 'end' : 'part';
    records.push({ kind: 'section-begin', type, ...ram });
    for (const op of ops) {
      const block = model.blocks[op.block]!.name;
      const offset = op.page * PAGE;
      const continued = last === block;
      last = block;
      records.push(
        op.zero
          ? { kind: 'zero', block, offset, fill: op.seed, continued }
          : { kind: 'page', block, offset, data: pageData(op.seed, offset), continued },
      );
    }
    records.push({ kind: 'section-end', type, sectionId: model.sectionId });
  });
  records.push({ kind: 'tail', bytes: model.tail });
  return records;
}

function write(records: readonly StreamRecord[]): Buffer {
  const parts: Uint8Array[] = [];
  const writer = new StreamWriter((bytes) => parts.push(bytes));
  for (const record of records) {
    // The writer chooses CONTINUE itself; config fields other than bytes are not written.
    if (record.kind === 'page' || record.kind === 'zero') writer.write({ ...record, continued: undefined });
    else writer.write(record);
  }
  return Buffer.concat(parts);
}

/** Comparable form: buffers as Buffers, tail records merged, config reduced to its bytes. */
function normalise(records: readonly StreamRecord[]): unknown[] {
  const tail = Buffer.concat(records.flatMap((r) => (r.kind === 'tail' ? [r.bytes] : [])));
  const out: unknown[] = records
    .filter((r) => r.kind !== 'tail')
    .map((r) => {
      if (r.kind === 'config')
        return { kind: 'config', bytes: Buffer.from(r.bytes), ignoreShared: r.ignoreShared };
      if (r.kind === 'page') return { ...r, data: Buffer.from(r.data) };
      if (r.kind === 'command') return { ...r, data: Buffer.from(r.data) };
      return r;
    });
  out.push({ kind: 'tail', bytes: tail });
  return out;
}

/** Cuts `bytes` into chunks of the given sizes, cycling, and parses them. */
function parseChunked(
  bytes: Uint8Array,
  sizes: readonly number[],
): { records: StreamRecord[]; parser: StreamParser } {
  const parser = new StreamParser();
  const records: StreamRecord[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const size = sizes[i % sizes.length]!;
    records.push(...parser.push(bytes.subarray(at, at + size)));
    at += size;
  }
  return { records, parser };
}

/**
 * As parseChunked, through the parser's fast path: a page sink takes the page and zero records it
 * reads whole (made back into records here, as CONTINUE records), onRecord everything else, in order.
 */
function parseChunkedFast(
  bytes: Uint8Array,
  sizes: readonly number[],
): { records: StreamRecord[]; parser: StreamParser } {
  const records: StreamRecord[] = [];
  const parser = new StreamParser({
    onRecord: (record) => records.push(record),
    pages: {
      page: (block, offset, data, at) =>
        records.push({ kind: 'page', block, offset, data: data.slice(at, at + PAGE), continued: true }),
      zero: (block, offset, fill) => records.push({ kind: 'zero', block, offset, fill, continued: true }),
    },
  });
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const size = sizes[i % sizes.length]!;
    parser.push(bytes.subarray(at, at + size));
    at += size;
  }
  return { records, parser };
}

/** What parsing gives: the records, or the error (reason and offset) and the records before it. */
function parseOutcome(parse: () => { records: StreamRecord[]; parser: StreamParser }): unknown {
  let records: StreamRecord[] = [];
  try {
    const parsed = parse();
    records = parsed.records;
    parsed.parser.end();
    return { records: normalise(records) };
  } catch (error) {
    if (!(error instanceof StreamError)) throw error;
    return { error: [error.reason, error.offset, error.message] };
  }
}

const chunkSizes = fc.array(fc.oneof(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 1, max: 9000 })), {
  minLength: 1,
  maxLength: 20,
});

test('property: written streams parse back to the same records in any chunking, and rewrite byte-identical', () => {
  fc.assert(
    fc.property(modelArb, chunkSizes, (model, sizes) => {
      const expected = modelRecords(model);
      const bytes = write(expected);
      const { records, parser } = parseChunked(bytes, sizes);
      const info = parser.end();
      assert.equal(info.length, bytes.length);
      assert.deepEqual(normalise(records), normalise(expected));
      // Parsed records (CONTINUE kept as read) write back the same bytes.
      const parts: Uint8Array[] = [];
      const writer = new StreamWriter((chunk) => parts.push(chunk));
      for (const record of records) writer.write(record);
      assert.deepEqual(Buffer.concat(parts), bytes);
    }),
    { numRuns: 300 },
  );
});

test('property: the fast path (a page sink) reads every stream, whole, cut or corrupted, as the generator does', () => {
  fc.assert(
    fc.property(
      modelArb,
      chunkSizes,
      fc.option(fc.nat(), { nil: undefined }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
      (model, sizes, cutSeed, edits) => {
        const whole = write(modelRecords(model));
        const bytes = whole.subarray(0, cutSeed === undefined ? whole.length : cutSeed % whole.length);
        edits.forEach(([at, value]) => bytes.length > 0 && (bytes[at % bytes.length] = value));
        assert.deepEqual(
          parseOutcome(() => parseChunkedFast(bytes, sizes)),
          parseOutcome(() => parseChunked(bytes, sizes)),
        );
      },
    ),
    { numRuns: 500 },
  );
});

test('property: the fast path refuses a CONTINUE page beyond its block where the generator does', () => {
  fc.assert(
    fc.property(
      modelArb,
      chunkSizes,
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      (model, sizes, pick, high) => {
        const bytes = write(modelRecords(model));
        // Where each CONTINUE page record's head starts: its record ends where the parser then stands.
        const heads: number[] = [];
        const finder: StreamParser = new StreamParser({
          onRecord: (r) => r.kind === 'page' && r.continued && heads.push(finder.offset - 8 - PAGE),
        });
        finder.push(bytes);
        fc.pre(heads.length > 0);
        bytes[heads[pick % heads.length]! + 3] = high; // the offset's high word: far beyond any block
        assert.deepEqual(
          parseOutcome(() => parseChunkedFast(bytes, sizes)),
          parseOutcome(() => parseChunked(bytes, sizes)),
        );
      },
    ),
    { numRuns: 300 },
  );
});

test('property: a stream cut anywhere is refused at end() with a truncation error; push never throws', () => {
  fc.assert(
    fc.property(modelArb, chunkSizes, fc.nat(), (model, sizes, cutSeed) => {
      const bytes = write(modelRecords(model));
      const cut = cutSeed % bytes.length;
      const { parser } = parseChunked(bytes.subarray(0, cut), sizes);
      assert.throws(
        () => parser.end(),
        (error) => error instanceof StreamError && error.reason === 'truncated' && error.offset <= cut,
      );
    }),
    { numRuns: 500 },
  );
});

test('property: corrupted streams give a StreamError or records that rewrite to the same bytes, never a crash', () => {
  fc.assert(
    fc.property(
      modelArb,
      chunkSizes,
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
      (model, sizes, edits) => {
        const bytes = write(modelRecords(model));
        // Most edits land in page data; half of them aim at the first 200 bytes (headers, block list).
        edits.forEach(
          ([at, value], i) => (bytes[i % 2 ? at % Math.min(200, bytes.length) : at % bytes.length] = value),
        );
        let records: StreamRecord[];
        try {
          const parsed = parseChunked(bytes, sizes);
          parsed.parser.end();
          records = parsed.records;
        } catch (error) {
          assert.ok(error instanceof StreamError, `not a StreamError: ${String(error)}`);
          return;
        }
        const parts: Uint8Array[] = [];
        const writer = new StreamWriter((chunk) => parts.push(chunk));
        for (const record of records) writer.write(record);
        assert.deepEqual(Buffer.concat(parts), bytes);
      },
    ),
    { numRuns: 1000 },
  );
});

/** A small seeded generator (mulberry32): the adversarial test is the same on every run. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Two fixed streams: a plain one, and one with every optional part (uuid, x-ignore-shared, commands). */
function adversarialModels(): Model[] {
  const ping = Buffer.from([0, 0, 0, 1]);
  const device = Buffer.from('0000000102030405ff00000000000000007e00000000', 'hex');
  const pages = [
    [
      { block: 0, page: 1, zero: false, seed: 1 },
      { block: 0, page: 2, zero: true, seed: 0 },
      { block: 1, page: 0, zero: false, seed: 2 },
    ],
    [{ block: 1, page: 0, zero: true, seed: 0 }],
  ];
  const plain: Model = {
    config: configBytes(undefined, false),
    ignoreShared: false,
    commands: [],
    sectionId: 2,
    blocks: [
      { name: 'pc.ram', length: 4 * PAGE },
      { name: '/rom@etc/acpi/tables', length: PAGE },
    ],
    sections: pages,
    tail: tailBytes(device, 'timer'),
  };
  return [
    plain,
    {
      ...plain,
      config: configBytes(Buffer.alloc(16, 0xab), true),
      ignoreShared: true,
      commands: [
        { command: MigCommand.OPEN_RETURN_PATH, data: new Uint8Array(0) },
        { command: MigCommand.PING, data: ping },
      ],
      blocks: plain.blocks.map((block, i) => ({ ...block, addr: i * 2 ** 32 })),
    },
  ];
}

/** What parsing gives, comparable across chunkings: the records and end, or the StreamError's fields. */
function outcome(bytes: Uint8Array, cuts: readonly number[], what: string): unknown {
  const parser = new StreamParser();
  const records: StreamRecord[] = [];
  try {
    let from = 0;
    for (const cut of [...cuts, bytes.length]) {
      records.push(...parser.push(bytes.subarray(from, cut)));
      from = cut;
    }
    return { records: normalise(records), end: parser.end() };
  } catch (error) {
    // Anything else (RangeError, TypeError, a parser bug) fails the test, named by the mutation.
    if (!(error instanceof StreamError)) assert.fail(`${what}: ${String(error)}`);
    return { code: error.code, reason: error.reason, offset: error.offset, message: error.message };
  }
}

/**
 * Fields whose every change must be reported as that field's problem, not as what the bytes it
 * misplaces look like: [first byte, end, what the error must say].
 */
function blamed(model: Model, bytes: Uint8Array): [number, number, RegExp][] {
  const machineLength = 9; // after the header and the configuration section's type byte
  const commands = model.commands.reduce((sum, command) => sum + 5 + command.data.length, 0);
  const memSize = 8 + model.config.length + commands + 17; // after the START header
  const description = bytes.length - (model.tail.length - model.tail.lastIndexOf(0x06)) - 1;
  assert.equal(bytes[memSize + 7]! & 0xff, 0x04, 'MEM_SIZE flag where the block list starts');
  assert.deepEqual([bytes[description], bytes[description + 1]], [0x00, 0x06], 'EOF, VMDESCRIPTION');
  return [
    [machineLength, machineLength + 4, /configuration section: .*machine name length/],
    // The total's bytes above the 12 flag bits.
    [memSize, memSize + 6, /RAM total \d+ bytes does not match the blocks' lengths/],
    // EOF, 0x06 and the description's length.
    [description, description + 6, /stream ended inside the device state/],
  ];
}

/** Every position outside page data: the headers, lengths and counts a parser could trip on. */
function structurePositions(bytes: Uint8Array): number[] {
  const data = new Uint8Array(bytes.length);
  for (const record of new StreamParser().push(bytes)) {
    if (record.kind !== 'page') continue;
    const at = record.data.byteOffset - bytes.byteOffset;
    data.fill(1, at, at + record.data.length);
  }
  return [...data.keys()].filter((at) => data[at] === 0);
}

test('adversarial: every single-byte change outside page data gives records or a StreamError, the same in any chunking', () => {
  const random = seeded(0x5eed);
  let cases = 0;
  for (const model of adversarialModels()) {
    const bytes = write(modelRecords(model));
    const fields = blamed(model, bytes);
    for (const at of structurePositions(bytes)) {
      const field = fields.find(([from, to]) => at >= from && at < to);
      const old = bytes[at]!;
      // Bit flips low and high, the extremes, and off by one: lengths grow, shrink and wrap.
      const values = new Set([
        old ^ 0x01,
        old ^ 0x10,
        old ^ 0x80,
        0x00,
        0xff,
        (old + 1) & 0xff,
        (old - 1) & 0xff,
      ]);
      values.delete(old);
      for (const value of values) {
        const mutated = Buffer.from(bytes);
        mutated[at] = value;
        const what = `byte ${at} ${old} -> ${value}`;
        const whole = outcome(mutated, [], what);
        if (field) assert.match((whole as { message?: string }).message ?? 'parsed', field[2], what);
        for (let round = 0; round < 3; round++) {
          const cuts = Array.from({ length: 1 + Math.floor(random() * 6) }, () =>
            Math.floor(random() * mutated.length),
          ).sort((a, b) => a - b);
          assert.deepEqual(outcome(mutated, cuts, what), whole, `${what}, cut at ${cuts.join(',')}`);
        }
        cases++;
      }
    }
  }
  assert.ok(cases > 1000, `only ${cases} mutations`);
});
