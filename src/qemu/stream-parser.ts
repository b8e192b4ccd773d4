import {
  DEFAULT_STREAM_LIMITS,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG_MASK,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  RamFlag,
  SectionType,
  STREAM_PAGE_SIZE,
  StreamError,
  describeRamFlags,
  type ConfigRecord,
  type RamBlock,
  type SectionKind,
  type StreamErrorReason,
  type StreamLimits,
  type StreamRecord,
} from './stream-records.js';
import {
  EMPTY,
  REST,
  hex,
  latin1,
  need,
  readBlockList,
  readCommand,
  readConfiguration,
  typeName,
  u32,
  type Need,
  type Parse,
} from './stream-sections.js';
import { TailScanner } from './stream-tail.js';
import { readPageRun, type PageSink } from './stream-page-run.js';

export type { PageSink } from './stream-page-run.js';

/**
 * An incremental parser of QEMU 7.2 precopy migration streams. Bytes go in by push() in any chunking;
 * records come out as soon as they are complete. Memory stays bounded: at most one record's fixed part
 * or one page (4 KiB) is held across chunks, page data and tail bytes alias the pushed chunk otherwise.
 *
 * The parsing itself is a generator that asks for exactly the bytes it needs next (`need`) and yields
 * records; push() feeds it. Every length it reads is checked against its StreamLimits bound before it
 * asks for the bytes. Everything after the RAM END section is device state without lengths, so it is
 * passed on opaque ("tail") and only its end is checked: EOF (0x00), then the VM description (0x06,
 * be32 length, JSON), and nothing after it (stream-tail.ts).
 *
 * This module keeps what depends on where the stream is (the sections seen, the RAM blocks, the block
 * of the last page); parts that read the same wherever they occur are in stream-sections.ts (the
 * configuration section, commands, the block list) and the end check on the tail in stream-tail.ts.
 */

export interface StreamParserOptions {
  /** Called with each record as soon as it is complete (push() also returns them). */
  readonly onRecord?: (record: StreamRecord) => void;
  /**
   * Takes page and zero records the fast path reads (PageSink); push() then does not return those,
   * so a caller that gives a sink takes every other record through onRecord, in order.
   */
  readonly pages?: PageSink;
  /** Accept a tail that ends with EOF and no VM description (machines with suppress-vmdesc). */
  readonly allowMissingDescription?: boolean;
  /** Bounds on lengths and counts in the stream (DEFAULT_STREAM_LIMITS for those not given). */
  readonly limits?: Partial<StreamLimits>;
}

/** What end() found. Offsets are byte offsets in the stream. */
export interface StreamEnd {
  readonly length: number;
  /** Where the tail (device state, EOF, description) starts. */
  readonly tailOffset: number;
  /** The VM description's JSON text (the EOF byte is just before its 0x06 and be32 length). */
  readonly description?: { readonly offset: number; readonly length: number };
}

/** What the RAM payload's loop asks for: one object per section kind, not one per record. */
const RAM_RECORD: Record<'part' | 'end', Need> = {
  part: { need: 8, what: 'a RAM record in the PART section', ramRecord: true },
  end: { need: 8, what: 'a RAM record in the END section', ramRecord: true },
};

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
  private tail: TailScanner | undefined;
  private readonly limits: StreamLimits;

  constructor(
    private readonly options: StreamParserOptions = {},
    configOnly = false,
  ) {
    this.limits = { ...DEFAULT_STREAM_LIMITS, ...options.limits };
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
        // The fast path (stream-page-run.ts): whole records continuing the last page's block.
        if (this.request.ramRecord && this.options.pages && this.lastBlock && !this.partial) {
          const from = at;
          at = readPageRun(chunk, at, this.lastBlock, this.options.pages);
          this.consumed += at - from;
        }
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

  /**
   * Whether the stream is whole (its VM description arrived) before its sender closes it: a source
   * with a return path keeps the stream open until it is answered.
   */
  get complete(): boolean {
    return this.failure === undefined && (this.tail?.complete ?? false);
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
    const found = this.tail!.finish(this.options.allowMissingDescription);
    if (typeof found === 'string') throw this.fail(this.offset, 'truncated', found);
    if (found.description) {
      const description = { offset: found.description.offset, length: found.description.length };
      return (this.finished = { length: this.offset, tailOffset, description });
    }
    return (this.finished = { length: this.offset, tailOffset });
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
    const config = yield* readConfiguration(() => this.consumed, this.limits);
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
        yield* readCommand(at);
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
        yield* this.ramStart(sectionId);
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

    yield* this.deviceState();
  }

  /** The tail, passed on as it comes; bytes after the VM description are refused before they are. */
  private *deviceState(): Parse {
    this.tailOffset = this.consumed;
    const tail = (this.tail = new TailScanner(this.limits, this.tailOffset));
    while (true) {
      const bytes = yield need(REST, 'device state');
      const scan = tail.scan(bytes);
      if (scan.kind === 'trailing') {
        const { offset, length, eof } = scan.description;
        const problem =
          `data after the end of the stream: the VM description at byte ${offset} (${length} bytes, ` +
          `after EOF at byte ${eof}) ends it at byte ${scan.at}`;
        throw this.fail(scan.at, 'invalid', problem);
      }
      yield { kind: 'tail', bytes };
    }
  }

  /** The START payload: the block list and the EOS after it (readBlockList), then the footer. */
  private *ramStart(sectionId: number): Parse {
    const at = this.consumed;
    const { flags, value } = ramHead(yield need(8, 'the RAM block list (MEM_SIZE)'));
    if (flags !== RamFlag.MEM_SIZE) {
      const problem = `the RAM START section begins with RAM flags ${hex(flags)}, not the block list (MEM_SIZE)`;
      throw this.fail(at, 'invalid', problem);
    }
    const list = yield* readBlockList(at, value, this.ignoreShared, this.limits);
    this.blocks = list.byName;
    yield { kind: 'ram-blocks', blocks: list.blocks };
    yield* this.footer('start', sectionId);
  }

  /** PART and END payloads: page records up to and including EOS, then the footer. */
  private *ramPayload(type: 'part' | 'end', sectionId: number): Parse {
    while (true) {
      const head = yield RAM_RECORD[type];
      // Where this record starts: the fast path may have read records since the request was made.
      const at = this.consumed - head.length;
      const { flags, value } = ramHead(head);
      if (flags === RamFlag.EOS) {
        if (value !== 0) throw this.fail(at, 'invalid', `EOS record with address ${hex(value)}`);
        break;
      }
      if (flags === RamFlag.MEM_SIZE) {
        const problem = `a RAM block list (MEM_SIZE) in the ${type.toUpperCase()} section`;
        throw this.fail(at, 'unsupported', problem);
      }
      const base = flags & ~RamFlag.CONTINUE;
      if (base !== RamFlag.ZERO && base !== RamFlag.PAGE) {
        throw this.fail(at, 'unsupported', `${describeRamFlags(flags)} is not supported`);
      }
      const continued = (flags & RamFlag.CONTINUE) !== 0;
      const block = continued ? this.lastBlock : yield* this.namedBlock(at);
      if (!block) throw this.fail(at, 'invalid', 'CONTINUE on the first page record: no previous RAM block');
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
    yield* this.footer(type, sectionId);
  }

  /** The block a page record without CONTINUE names (u8 length, name; the length needs no bound). */
  private *namedBlock(at: number): Parse<RamBlock> {
    const name = latin1(yield need((yield need(1, 'a RAM block name length'))[0]!, 'a RAM block name'));
    if (!this.blocks) throw this.fail(at, 'invalid', `a page of '${name}' before the RAM block list`);
    const block = this.blocks.get(name);
    if (!block) throw this.fail(at, 'invalid', `a page of RAM block '${name}', which the block list lacks`);
    return block;
  }

  /** The section footer (0x7e, be32 section id) after a RAM section's EOS. */
  private *footer(type: SectionKind, sectionId: number): Parse {
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
}

/** A RAM record's be64 head: flags in the low 12 bits, an offset (or the MEM_SIZE total) above. */
function ramHead(head: Uint8Array): { flags: number; value: number } {
  const high = u32(head, 0);
  const low = u32(head, 4);
  const flags = low & RAM_FLAG_MASK;
  return { flags, value: high * 2 ** 32 + (low - flags) };
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
