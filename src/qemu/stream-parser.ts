import {
  MigCommand,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG_MASK,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  RamFlag,
  SectionType,
  STREAM_PAGE_SIZE,
  StreamError,
  commandName,
  describeRamFlags,
  formatUuid,
  type ConfigRecord,
  type RamBlock,
  type SectionKind,
  type StreamErrorReason,
  type StreamRecord,
} from './stream-records.js';

/**
 * An incremental parser of QEMU 7.2 precopy migration streams. Bytes go in by push() in any chunking;
 * records come out as soon as they are complete. Memory stays bounded: at most one record's fixed part
 * or one page (4 KiB) is held across chunks, page data and tail bytes alias the pushed chunk otherwise.
 *
 * The parsing itself is a generator that asks for exactly the bytes it needs next (`need`) and yields
 * records; push() feeds it. Everything after the RAM END section is device state without lengths, so it
 * is passed on opaque ("tail") and only its end is checked: EOF (0x00), then the VM description
 * (0x06, be32 length, JSON) ending exactly where the stream ends.
 */

/** Ask for `need` bytes, or everything there is (`need === REST`, the tail). */
interface Need {
  readonly need: number;
  readonly what: string;
}
type Step = Need | StreamRecord;
type Parse<T = void> = Generator<Step, T, Uint8Array>;

const REST = -1;
const EMPTY = new Uint8Array(0);
const MAX_MACHINE_NAME = 256;
const MAX_CAPABILITIES = 64;
const MAX_RAM_BLOCKS = 1024;
/** VM description candidates kept while reading the tail (the real one is the last one seen). */
const MAX_DESCRIPTION_CANDIDATES = 256;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

export interface StreamParserOptions {
  /** Called with each record as soon as it is complete (push() also returns them). */
  readonly onRecord?: (record: StreamRecord) => void;
  /** Accept a tail that ends with EOF and no VM description (machines with suppress-vmdesc). */
  readonly allowMissingDescription?: boolean;
}

/** What end() found. Offsets are byte offsets in the stream. */
export interface StreamEnd {
  readonly length: number;
  /** Where the tail (device state, EOF, description) starts. */
  readonly tailOffset: number;
  /** The VM description's JSON text. */
  readonly description?: { readonly offset: number; readonly length: number };
}

const need = (n: number, what: string): Need => ({ need: n, what });
const u16 = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
const u32 = (b: Uint8Array, at: number) =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
const hex = (n: number) => `0x${n.toString(16)}`;

function typeName(type: number): string {
  const name = Object.entries(SectionType).find(([, value]) => value === type)?.[0];
  return name === undefined ? `unknown section type ${hex(type)}` : `${name} (${hex(type)})`;
}

/** Iterative sections QEMU may register beside "ram", and what turns them on. */
const ITERATIVE_HINTS: Record<string, string> = {
  block: 'block migration: migrate -b or the block capability',
  'dirty-bitmap': 'the dirty-bitmaps capability',
};

export class StreamParser {
  private readonly gen: Parse;
  private request: Need;
  private partial: Uint8Array | undefined;
  private filled = 0;
  /** Bytes handed to the generator; the start of what it asks for next. */
  private consumed = 0;
  private failure: unknown;
  private finished: StreamEnd | undefined;
  private ignoreShared = false;
  private blocks: Map<string, RamBlock> | undefined;
  private lastBlock: RamBlock | undefined;
  private tailOffset: number | undefined;
  private tailLength = 0;
  private tailKeep: Uint8Array = EMPTY;
  private tailScanNext = 0;
  private candidates: { start: number; end: number }[] = [];
  private lastTailByte = -1;

  constructor(
    private readonly options: StreamParserOptions = {},
    configOnly = false,
  ) {
    this.gen = this.run(configOnly);
    this.request = this.gen.next(EMPTY).value as Need;
  }

  /** Bytes pushed so far. */
  get offset(): number {
    return this.consumed + this.filled;
  }

  /**
   * Parses `chunk` and returns the records it completed (after passing each to onRecord). Throws
   * StreamError for anything not understood; after that every call throws the same error.
   */
  push(chunk: Uint8Array): StreamRecord[] {
    if (this.failure) throw this.failure;
    if (this.finished) throw this.fail(this.offset, 'usage', 'push() after end()');
    const out: StreamRecord[] = [];
    try {
      let at = 0;
      while (true) {
        const { need: n } = this.request;
        if (n === REST) {
          if (at >= chunk.length) break;
          const bytes = chunk.subarray(at);
          at = chunk.length;
          this.feed(bytes, out);
        } else if (this.partial) {
          const take = Math.min(n - this.filled, chunk.length - at);
          this.partial.set(chunk.subarray(at, at + take), this.filled);
          this.filled += take;
          at += take;
          if (this.filled < n) break;
          const bytes = this.partial;
          this.partial = undefined;
          this.filled = 0;
          this.feed(bytes, out);
        } else if (chunk.length - at >= n) {
          const bytes = chunk.subarray(at, at + n);
          at += n;
          this.feed(bytes, out);
        } else {
          if (at >= chunk.length) break;
          this.partial = new Uint8Array(n);
          this.partial.set(chunk.subarray(at));
          this.filled = chunk.length - at;
          break;
        }
      }
    } catch (error) {
      this.failure = error;
      throw error;
    }
    return out;
  }

  /** Checks that the stream ended where a stream may end: after the VM description. */
  end(): StreamEnd {
    if (this.failure) throw this.failure;
    if (this.finished) return this.finished;
    const { need: n, what } = this.request;
    if (n !== REST) {
      const into = this.filled > 0 ? `${this.filled} of ${n} bytes into` : 'before';
      throw this.fail(this.consumed, 'truncated', `stream ended ${into} ${what} (${this.offset} bytes)`);
    }
    const tailOffset = this.tailOffset!;
    if (this.tailLength === 0) {
      throw this.fail(
        this.offset,
        'truncated',
        'stream ended right after the RAM END section: no device state',
      );
    }
    const found = this.candidates.find((c) => c.end === this.tailLength && this.lastTailByte === CLOSE_BRACE);
    if (found) {
      const description = { offset: tailOffset + found.start + 6, length: found.end - found.start - 6 };
      return (this.finished = { length: this.offset, tailOffset, description });
    }
    if (this.options.allowMissingDescription && this.lastTailByte === SectionType.EOF) {
      return (this.finished = { length: this.offset, tailOffset });
    }
    throw this.fail(
      this.offset,
      'truncated',
      `stream ended inside the device state (${this.tailLength} bytes after the RAM END section): ` +
        'no EOF (0x00) and VM description (0x06, be32 length, JSON) end it',
    );
  }

  private fail(offset: number, reason: StreamErrorReason, problem: string): StreamError {
    const error = new StreamError(offset, reason, problem);
    this.failure = error;
    return error;
  }

  /** Hands the bytes asked for to the generator and collects records until it asks for more. */
  private feed(bytes: Uint8Array, out: StreamRecord[]): void {
    this.consumed += bytes.length;
    for (let step = this.gen.next(bytes); ; step = this.gen.next(EMPTY)) {
      if (step.done) throw this.fail(this.consumed, 'usage', 'the parser has finished');
      const value = step.value;
      if (!('kind' in value)) {
        this.request = value;
        return;
      }
      out.push(value);
      this.options.onRecord?.(value);
    }
  }

  private *run(configOnly: boolean): Parse {
    if (!configOnly) {
      const header = yield need(8, 'the stream header');
      const magic = u32(header, 0);
      const version = u32(header, 4);
      if (magic !== QEMU_VM_FILE_MAGIC) {
        throw this.fail(
          0,
          'invalid',
          `not a QEMU migration stream: magic ${hex(magic)} (expected 0x5145564d, QEVM)`,
        );
      }
      if (version !== QEMU_VM_FILE_VERSION) {
        const why = version === 2 ? 'QEMU itself refuses version 2' : 'only version 3 is supported';
        throw this.fail(4, 'unsupported', `stream version ${version}: ${why}`);
      }
      yield { kind: 'header', version };
    }
    const config = yield* this.configuration();
    this.ignoreShared = config.record.ignoreShared;
    yield config.record;
    // parseConfigSection: whatever follows is not looked at.
    while (configOnly) yield need(REST, 'bytes after the configuration section');

    let ram: { sectionId: number; instanceId: number; versionId: number } | undefined;
    let type: number | undefined = config.nextType;
    let at = this.consumed - 1;
    while (true) {
      if (type === undefined) {
        at = this.consumed;
        type = (yield need(1, 'a section type'))[0]!;
      }
      const sectionType = type;
      type = undefined;
      if (sectionType === SectionType.COMMAND) {
        yield* this.command(at);
      } else if (sectionType === SectionType.START) {
        const head = yield need(5, 'the START section header');
        const sectionId = u32(head, 0);
        const idstr = latin1(yield need(head[4]!, 'the section name'));
        const ids = yield need(8, `the instance and version ids of section '${idstr}'`);
        const instanceId = u32(ids, 0);
        const versionId = u32(ids, 4);
        if (idstr !== RAM_SECTION_IDSTR) {
          const hint = ITERATIVE_HINTS[idstr] ?? 'not a RAM section';
          throw this.fail(
            at,
            'unsupported',
            `iterative section '${idstr}' (${hint}): only 'ram' is supported`,
          );
        }
        if (ram) throw this.fail(at, 'invalid', `a second START for 'ram' (section ${sectionId})`);
        if (instanceId !== 0 || versionId !== RAM_SECTION_VERSION) {
          const got = `instance ${instanceId}, version ${versionId}`;
          throw this.fail(at, 'unsupported', `'ram' section ${got} (expected instance 0, version 4)`);
        }
        ram = { sectionId, instanceId, versionId };
        yield { kind: 'section-begin', type: 'start', idstr, ...ram };
        yield* this.ramPayload('start', sectionId);
      } else if (sectionType === SectionType.PART || sectionType === SectionType.END) {
        const kind = sectionType === SectionType.PART ? 'part' : 'end';
        const sectionId = u32(yield need(4, `the ${kind.toUpperCase()} section id`), 0);
        if (!ram)
          throw this.fail(at, 'invalid', `${kind.toUpperCase()} section ${sectionId} before any START`);
        if (sectionId !== ram.sectionId) {
          const problem = `${kind.toUpperCase()} for section ${sectionId}, which no START opened (ram is ${ram.sectionId})`;
          throw this.fail(at, 'invalid', problem);
        }
        yield { kind: 'section-begin', type: kind, idstr: RAM_SECTION_IDSTR, ...ram };
        yield* this.ramPayload(kind, sectionId);
        if (kind === 'end') break;
      } else if (sectionType === SectionType.FULL) {
        const problem =
          'device state (FULL section) before the RAM END section (QEMU >= 8.0 early-setup devices?)';
        throw this.fail(at, 'unsupported', problem);
      } else if (sectionType === SectionType.EOF) {
        throw this.fail(at, 'invalid', ram ? 'EOF before the RAM END section' : 'EOF before any RAM section');
      } else {
        throw this.fail(at, 'unsupported', `${typeName(sectionType)} where a section starts`);
      }
    }

    this.tailOffset = this.consumed;
    while (true) {
      const bytes = yield need(REST, 'device state');
      this.scanTail(bytes);
      yield { kind: 'tail', bytes };
    }
  }

  /** The configuration section and the type byte after it (read to find where its subsections end). */
  private *configuration(): Parse<{ record: ConfigRecord; nextType: number }> {
    const start = this.consumed;
    const pieces: Uint8Array[] = [];
    const take = function* (n: number, what: string): Parse<Uint8Array> {
      const bytes = (yield need(n, what)).slice();
      pieces.push(bytes);
      return bytes;
    };
    const type = (yield* take(1, 'the configuration section'))[0]!;
    if (type !== SectionType.CONFIGURATION) {
      const problem = `expected the configuration section (0x07) after the header, found ${typeName(type)}`;
      throw this.fail(start, 'unsupported', problem);
    }
    const nameLength = u32(yield* take(4, 'the machine name length'), 0);
    if (nameLength === 0 || nameLength > MAX_MACHINE_NAME) {
      throw this.fail(
        start + 1,
        'invalid',
        `machine name of ${nameLength} bytes in the configuration section`,
      );
    }
    const machine = latin1(yield* take(nameLength, 'the machine name'));
    const capabilities: string[] = [];
    let uuid: string | undefined;
    const seen = new Set<string>();
    while (true) {
      const at = this.consumed;
      const next = (yield need(1, 'a section type'))[0]!;
      if (next !== SectionType.SUBSECTION) {
        const bytes = Buffer.concat(pieces);
        const ignoreShared = capabilities.includes('x-ignore-shared');
        const record: ConfigRecord = { kind: 'config', machine, capabilities, ignoreShared, bytes };
        return { record: uuid === undefined ? record : { ...record, uuid }, nextType: next };
      }
      pieces.push(Uint8Array.of(next));
      const name = latin1(yield* take((yield* take(1, 'a subsection name length'))[0]!, 'a subsection name'));
      const version = u32(yield* take(4, `the version of subsection '${name}'`), 0);
      if (seen.has(name)) throw this.fail(at, 'invalid', `configuration subsection '${name}' twice`);
      seen.add(name);
      if (version !== 1) {
        throw this.fail(
          at,
          'unsupported',
          `configuration subsection '${name}' version ${version} (expected 1)`,
        );
      }
      if (name === 'configuration/target-page-bits') {
        const bits = u32(yield* take(4, 'the target page bits'), 0);
        if (bits !== 12) throw this.fail(at, 'unsupported', `target pages of 2^${bits} bytes (only 4096)`);
      } else if (name === 'configuration/capabilities') {
        const count = u32(yield* take(4, 'the capability count'), 0);
        if (count > MAX_CAPABILITIES)
          throw this.fail(at, 'invalid', `${count} capabilities in the configuration`);
        for (let i = 0; i < count; i++) {
          const length = (yield* take(1, 'a capability name length'))[0]!;
          capabilities.push(latin1(yield* take(length, 'a capability name')));
        }
      } else if (name === 'configuration/uuid') {
        uuid = formatUuid(yield* take(16, 'the UUID'));
      } else {
        throw this.fail(at, 'unsupported', `unknown configuration subsection '${name}'`);
      }
    }
  }

  private *command(at: number): Parse {
    const head = yield need(4, 'the command header');
    const command = u16(head, 0);
    const length = u16(head, 2);
    const name = commandName(command);
    const data = (yield need(length, `the data of ${name}`)).slice();
    const accepted = { [MigCommand.OPEN_RETURN_PATH]: 0, [MigCommand.PING]: 4 } as Record<number, number>;
    if (accepted[command] === length) {
      yield { kind: 'command', command, data };
    } else if (accepted[command] !== undefined) {
      throw this.fail(at, 'invalid', `${name} command with ${length} bytes of data`);
    } else if (command >= MigCommand.POSTCOPY_ADVISE && command <= MigCommand.RECV_BITMAP) {
      throw this.fail(
        at,
        'unsupported',
        `${name} command (postcopy, COLO or packaged streams are not supported)`,
      );
    } else {
      throw this.fail(at, 'unsupported', `unknown command ${command} (${length} bytes of data)`);
    }
  }

  /** RAM records up to and including EOS, then the footer. */
  private *ramPayload(type: SectionKind, sectionId: number): Parse {
    while (true) {
      const at = this.consumed;
      const head = yield need(8, `a RAM record in the ${type.toUpperCase()} section`);
      const high = u32(head, 0);
      const low = u32(head, 4);
      const flags = low & RAM_FLAG_MASK;
      const value = high * 2 ** 32 + (low - flags);
      if (flags === RamFlag.EOS) {
        if (value !== 0) throw this.fail(at, 'invalid', `EOS record with address ${hex(value)}`);
        break;
      }
      if (flags === RamFlag.MEM_SIZE) {
        if (type !== 'start' || this.blocks) {
          throw this.fail(
            at,
            'unsupported',
            `a RAM block list (MEM_SIZE) in the ${type.toUpperCase()} section`,
          );
        }
        yield* this.blockList(at, value);
        continue;
      }
      const base = flags & ~RamFlag.CONTINUE;
      if (base !== RamFlag.ZERO && base !== RamFlag.PAGE) {
        throw this.fail(at, 'unsupported', `${describeRamFlags(flags)} is not supported`);
      }
      const continued = (flags & RamFlag.CONTINUE) !== 0;
      let block = this.lastBlock;
      if (!continued) {
        const name = latin1(yield need((yield need(1, 'a RAM block name length'))[0]!, 'a RAM block name'));
        if (!this.blocks) throw this.fail(at, 'invalid', `a page of '${name}' before the RAM block list`);
        block = this.blocks.get(name);
        if (!block)
          throw this.fail(at, 'invalid', `a page of RAM block '${name}', which the block list lacks`);
      } else if (!block) {
        throw this.fail(at, 'invalid', 'CONTINUE on the first page record: no previous RAM block');
      }
      if (value >= block.length) {
        const problem = `page offset ${hex(value)} beyond RAM block '${block.name}' (${hex(block.length)} bytes)`;
        throw this.fail(at, 'invalid', problem);
      }
      this.lastBlock = block;
      if (base === RamFlag.ZERO) {
        const fill = (yield need(1, `the fill byte of zero page ${hex(value)} of '${block.name}'`))[0]!;
        yield { kind: 'zero', block: block.name, offset: value, fill, continued };
      } else {
        const data = yield need(STREAM_PAGE_SIZE, `the data of page ${hex(value)} of '${block.name}'`);
        yield { kind: 'page', block: block.name, offset: value, data, continued };
      }
    }
    const at = this.consumed;
    const footer = yield need(5, 'the section footer');
    if (footer[0] !== SectionType.FOOTER) {
      const problem =
        `expected the section footer (0x7e) after the ${type.toUpperCase()} section's EOS, found ` +
        `${hex(footer[0]!)} (machine types before 2.3 send no footers)`;
      throw this.fail(at, 'unsupported', problem);
    }
    if (u32(footer, 1) !== sectionId) {
      throw this.fail(at, 'invalid', `footer of section ${u32(footer, 1)} ends section ${sectionId}`);
    }
    yield { kind: 'section-end', type, sectionId };
  }

  /** The MEM_SIZE list: name, used_length (and the region address with x-ignore-shared) per block. */
  private *blockList(at: number, total: number): Parse {
    const blocks: RamBlock[] = [];
    const byName = new Map<string, RamBlock>();
    const u64 = (b: Uint8Array, what: string) => {
      const value = u32(b, 0) * 2 ** 32 + u32(b, 4);
      if (!Number.isSafeInteger(value)) throw this.fail(at, 'invalid', `${what} ${hex(value)} is too large`);
      return value;
    };
    for (let remaining = total; remaining > 0;) {
      if (blocks.length >= MAX_RAM_BLOCKS)
        throw this.fail(at, 'invalid', `more than ${MAX_RAM_BLOCKS} RAM blocks`);
      const name = latin1(yield need((yield need(1, 'a RAM block name length'))[0]!, 'a RAM block name'));
      const length = u64(yield need(8, `the length of RAM block '${name}'`), `the length of '${name}'`);
      const addr = this.ignoreShared
        ? u64(yield need(8, `the address of RAM block '${name}'`), `the address of '${name}'`)
        : undefined;
      if (byName.has(name)) throw this.fail(at, 'invalid', `RAM block '${name}' twice in the block list`);
      if (name.length === 0 || length === 0) {
        throw this.fail(at, 'invalid', `RAM block '${name}' of ${length} bytes in the block list`);
      }
      if (length > remaining) {
        throw this.fail(
          at,
          'invalid',
          `RAM block lengths exceed the block list's total of ${hex(total)} bytes`,
        );
      }
      const block: RamBlock = addr === undefined ? { name, length } : { name, length, addr };
      blocks.push(block);
      byName.set(name, block);
      remaining -= length;
    }
    this.blocks = byName;
    yield { kind: 'ram-blocks', blocks };
  }

  /**
   * Notes every place in the tail that could start the VM description: 0x00 (EOF), 0x06, be32 length,
   * '{'. The one whose length ends exactly at the end of the stream is the description.
   */
  private scanTail(bytes: Uint8Array): void {
    const keep = this.tailKeep;
    const base = this.tailLength - keep.length;
    const size = keep.length + bytes.length;
    const at = (i: number) => (i < keep.length ? keep[i]! : bytes[i - keep.length]!);
    let i = Math.max(0, this.tailScanNext - base);
    for (; i + 6 < size; i++) {
      if (i >= keep.length) {
        // Jump to the next 0x00: no candidate starts anywhere else.
        const zero = bytes.indexOf(0, i - keep.length);
        if (zero < 0) {
          i = size;
          break;
        }
        i = zero + keep.length;
        if (i + 6 >= size) break; // looked at again with the next chunk
      }
      if (at(i) !== 0 || at(i + 1) !== SectionType.VMDESCRIPTION || at(i + 6) !== OPEN_BRACE) continue;
      const length = ((at(i + 2) << 24) | (at(i + 3) << 16) | (at(i + 4) << 8) | at(i + 5)) >>> 0;
      this.candidates.push({ start: base + i, end: base + i + 6 + length });
      if (this.candidates.length > MAX_DESCRIPTION_CANDIDATES) this.candidates.shift();
    }
    this.tailScanNext = base + i;
    this.tailLength += bytes.length;
    this.candidates = this.candidates.filter((c) => c.end >= this.tailLength);
    this.tailKeep =
      bytes.length >= 6 ? bytes.slice(bytes.length - 6) : Buffer.concat([keep, bytes]).subarray(-6).slice();
    if (bytes.length > 0) this.lastTailByte = bytes[bytes.length - 1]!;
  }
}

/** Parses a whole stream held in memory (or given as chunks): every record, and what end() found. */
export function parseStream(
  input: Uint8Array | Iterable<Uint8Array>,
  options: Omit<StreamParserOptions, 'onRecord'> = {},
): { records: StreamRecord[]; end: StreamEnd } {
  const parser = new StreamParser(options);
  const records: StreamRecord[] = [];
  for (const chunk of input instanceof Uint8Array ? [input] : input) {
    for (const record of parser.push(chunk)) records.push(record);
  }
  return { records, end: parser.end() };
}

/** Reads a configuration section given as its bytes (type byte 0x07 first), as the writer gets it. */
export function parseConfigSection(bytes: Uint8Array): ConfigRecord {
  const parser = new StreamParser({}, true);
  const records = parser.push(Buffer.concat([bytes, Uint8Array.of(SectionType.COMMAND)]));
  const config = records.find((record): record is ConfigRecord => record.kind === 'config');
  if (!config) throw new StreamError(bytes.length, 'truncated', 'the configuration section is incomplete');
  if (config.bytes.length !== bytes.length) {
    const extra = bytes.length - config.bytes.length;
    throw new StreamError(config.bytes.length, 'invalid', `${extra} bytes after the configuration section`);
  }
  return config;
}
