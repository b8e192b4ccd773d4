import { parseConfigSection } from './stream-parser.js';
import {
  DEFAULT_RAM_SECTION_ID,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG_MASK,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  RamFlag,
  SectionType,
  STREAM_PAGE_SIZE,
  StreamError,
  type CommandRecord,
  type PageRecord,
  type RamBlock,
  type SectionKind,
  type StreamRecord,
  type ZeroRecord,
} from './stream-records.js';

/**
 * Writes QEMU 7.2 precopy migration streams record by record into a sink. Records from StreamParser
 * written back in the same order give the same bytes; pages may also be replaced, dropped or reordered,
 * and the writer sets CONTINUE itself (a page record names its block only when the previous page record
 * in the stream, in whatever section, had another block). Misuse (a page outside a RAM section, a block
 * the list lacks, sections out of order) throws StreamError with reason 'usage'.
 */

type Stage = 'header' | 'config' | 'sections' | 'tail';

export class StreamWriter {
  private written = 0;
  private stage: Stage = 'header';
  private open: { type: SectionKind; sectionId: number } | undefined;
  private ram: { sectionId: number; instanceId: number; versionId: number } | undefined;
  private blocks: Map<string, RamBlock> | undefined;
  private ignoreShared = false;
  private lastBlock: string | undefined;

  private readonly scratch: Buffer | undefined;

  /**
   * `sink` gets each record's bytes as one buffer (tail bytes as given, not copied). With `sinkCopies`
   * the sink copies them before it returns, so page heads are built in one reused buffer instead of a
   * new one each (the agent writes thousands a message), and a page record comes as two calls: its
   * head, then the page bytes as given.
   */
  constructor(
    private readonly sink: (bytes: Uint8Array) => void,
    options: { readonly sinkCopies?: boolean } = {},
  ) {
    // The longest head: offset and flags, a block name's length byte and name, a zero page's fill.
    if (options.sinkCopies) this.scratch = Buffer.allocUnsafe(8 + 1 + 255 + 1);
  }

  /** Bytes written so far. */
  get offset(): number {
    return this.written;
  }

  /** Whether the RAM END section is written (what follows is tail bytes). */
  get inTail(): boolean {
    return this.stage === 'tail';
  }

  header(version = QEMU_VM_FILE_VERSION): void {
    this.expectStage('header', 'the header');
    const bytes = Buffer.alloc(8);
    bytes.writeUInt32BE(QEMU_VM_FILE_MAGIC, 0);
    bytes.writeUInt32BE(version, 4);
    this.emit(bytes);
    this.stage = 'config';
  }

  /** The configuration section as received (type byte 0x07 first); it is parsed to check it. */
  config(bytes: Uint8Array): void {
    this.expectStage('config', 'the configuration section');
    let config;
    try {
      config = parseConfigSection(bytes);
    } catch (error) {
      throw error instanceof StreamError ? this.usage(`bad configuration section: ${error.message}`) : error;
    }
    this.ignoreShared = config.ignoreShared;
    this.emit(bytes);
    this.stage = 'sections';
  }

  command(command: number, data: Uint8Array): void {
    this.expectStage('sections', 'a command');
    if (this.open) throw this.usage('a command inside a section');
    if (data.length > 0xffff) throw this.usage(`a command with ${data.length} bytes of data`);
    const bytes = Buffer.alloc(5 + data.length);
    bytes[0] = SectionType.COMMAND;
    bytes.writeUInt16BE(command, 1);
    bytes.writeUInt16BE(data.length, 3);
    bytes.set(data, 5);
    this.emit(bytes);
  }

  /**
   * Opens a RAM section. START takes idstr 'ram' and QEMU's instance and version (0, 4) by default;
   * PART and END continue the section START opened (sectionId defaults to its id).
   */
  beginSection(
    type: SectionKind,
    sectionId = this.ram?.sectionId ?? DEFAULT_RAM_SECTION_ID,
    start: { readonly idstr?: string; readonly instanceId?: number; readonly versionId?: number } = {},
  ): void {
    this.expectStage('sections', `a ${type.toUpperCase()} section`);
    if (this.open) throw this.usage(`${type.toUpperCase()} inside the open ${this.open.type.toUpperCase()}`);
    if (type === 'start') {
      if (this.ram) throw this.usage('a second START section');
      const idstr = start.idstr ?? RAM_SECTION_IDSTR;
      if (idstr !== RAM_SECTION_IDSTR) throw this.usage(`a START for '${idstr}': only 'ram' is written`);
      this.ram = {
        sectionId,
        instanceId: start.instanceId ?? 0,
        versionId: start.versionId ?? RAM_SECTION_VERSION,
      };
      const name = Buffer.from(idstr, 'latin1');
      const bytes = Buffer.alloc(14 + name.length);
      bytes[0] = SectionType.START;
      bytes.writeUInt32BE(sectionId, 1);
      bytes[5] = name.length;
      bytes.set(name, 6);
      bytes.writeUInt32BE(this.ram.instanceId, 6 + name.length);
      bytes.writeUInt32BE(this.ram.versionId, 10 + name.length);
      this.emit(bytes);
    } else {
      if (!this.ram) throw this.usage(`${type.toUpperCase()} before START`);
      if (sectionId !== this.ram.sectionId) {
        throw this.usage(
          `${type.toUpperCase()} for section ${sectionId}; START opened ${this.ram.sectionId}`,
        );
      }
      const bytes = Buffer.alloc(5);
      bytes[0] = type === 'part' ? SectionType.PART : SectionType.END;
      bytes.writeUInt32BE(sectionId, 1);
      this.emit(bytes);
    }
    this.open = { type, sectionId };
  }

  /** The MEM_SIZE block list (in START); blocks carry `addr` exactly when x-ignore-shared is on. */
  ramBlocks(blocks: readonly RamBlock[]): void {
    if (this.open?.type !== 'start' || this.blocks) throw this.usage('a RAM block list outside START');
    let total = 0;
    const parts: Buffer[] = [];
    const byName = new Map<string, RamBlock>();
    for (const block of blocks) {
      if (byName.has(block.name)) throw this.usage(`RAM block '${block.name}' twice`);
      if (!Number.isSafeInteger(block.length) || block.length <= 0) {
        throw this.usage(`RAM block '${block.name}' of length ${block.length}`);
      }
      if ((block.addr !== undefined) !== this.ignoreShared) {
        const want = this.ignoreShared
          ? 'needs an address (x-ignore-shared)'
          : 'has an address without x-ignore-shared';
        throw this.usage(`RAM block '${block.name}' ${want}`);
      }
      const name = this.blockName(block.name);
      const part = Buffer.alloc(1 + name.length + (block.addr === undefined ? 8 : 16));
      part[0] = name.length;
      part.set(name, 1);
      writeU64(part, 1 + name.length, block.length);
      if (block.addr !== undefined) writeU64(part, 9 + name.length, block.addr);
      parts.push(part);
      byName.set(block.name, block);
      total += block.length;
    }
    if (total % STREAM_PAGE_SIZE !== 0 || !Number.isSafeInteger(total)) {
      throw this.usage(`RAM blocks total ${total} bytes, not a multiple of ${STREAM_PAGE_SIZE}`);
    }
    const head = Buffer.alloc(8);
    writeU64(head, 0, total, RamFlag.MEM_SIZE);
    this.emit(Buffer.concat([head, ...parts]));
    this.blocks = byName;
  }

  /** A full page. `continued` as in PageRecord: absent lets the writer choose. */
  page(block: string, offset: number, data: Uint8Array, continued?: boolean): void {
    if (data.length !== STREAM_PAGE_SIZE) throw this.usage(`a page of ${data.length} bytes`);
    if (this.scratch) {
      // The sink copies: the head and the page go to it apart, so the page is copied once, not twice.
      this.emit(this.pageHead(block, offset, RamFlag.PAGE, 0, continued));
      this.emit(data);
      return;
    }
    const bytes = this.pageHead(block, offset, RamFlag.PAGE, STREAM_PAGE_SIZE, continued);
    bytes.set(data, bytes.length - STREAM_PAGE_SIZE);
    this.emit(bytes);
  }

  /** A page of `fill` bytes (QEMU sends 0 only). */
  zero(block: string, offset: number, fill = 0, continued?: boolean): void {
    if (!Number.isInteger(fill) || fill < 0 || fill > 0xff) throw this.usage(`zero page fill ${fill}`);
    const bytes = this.pageHead(block, offset, RamFlag.ZERO, 1, continued);
    bytes[bytes.length - 1] = fill;
    this.emit(bytes);
  }

  /** Closes the open section: EOS, then the footer. After END, only tail bytes follow. */
  endSection(): void {
    if (!this.open) throw this.usage('no section is open');
    const bytes = Buffer.alloc(13);
    writeU64(bytes, 0, 0, RamFlag.EOS);
    bytes[8] = SectionType.FOOTER;
    bytes.writeUInt32BE(this.open.sectionId, 9);
    this.emit(bytes);
    if (this.open.type === 'end') this.stage = 'tail';
    this.open = undefined;
  }

  /** Device state, EOF and VM description after the RAM END section, as received. */
  tail(bytes: Uint8Array): void {
    this.expectStage('tail', 'tail bytes');
    if (bytes.length > 0) this.emit(bytes);
  }

  /** Writes a parsed record; a stream's records in their order give back its bytes. */
  write(record: StreamRecord): void {
    switch (record.kind) {
      case 'header':
        return this.header(record.version);
      case 'config':
        return this.config(record.bytes);
      case 'command':
        return this.command(record.command, record.data);
      case 'section-begin':
        return this.beginSection(record.type, record.sectionId, record);
      case 'ram-blocks':
        return this.ramBlocks(record.blocks);
      case 'page':
        return this.page(record.block, record.offset, record.data, record.continued);
      case 'zero':
        return this.zero(record.block, record.offset, record.fill, record.continued);
      case 'section-end':
        if (this.open?.type !== record.type)
          throw this.usage(`end of a ${record.type.toUpperCase()} not open`);
        return this.endSection();
      case 'tail':
        return this.tail(record.bytes);
    }
  }

  private pageHead(block: string, offset: number, flag: number, extra: number, continued?: boolean): Buffer {
    if (!this.open) throw this.usage(`a page of '${block}' outside a RAM section`);
    const known = this.blocks?.get(block);
    if (!known) throw this.usage(`a page of RAM block '${block}', which the block list lacks`);
    if (
      !Number.isSafeInteger(offset) ||
      offset < 0 ||
      offset % STREAM_PAGE_SIZE !== 0 ||
      offset >= known.length
    ) {
      throw this.usage(`page offset ${offset} in RAM block '${block}' of ${known.length} bytes`);
    }
    const useContinue = this.lastBlock === block && continued !== false;
    const name = useContinue ? undefined : this.blockName(block);
    const nameBytes = name ? 1 + name.length : 0;
    const length = 8 + nameBytes + extra;
    const bytes = this.scratch ? this.scratch.subarray(0, length) : Buffer.allocUnsafe(length);
    writeU64(bytes, 0, offset, flag | (useContinue ? RamFlag.CONTINUE : 0));
    if (name) {
      bytes[8] = name.length;
      bytes.set(name, 9);
    }
    this.lastBlock = block;
    return bytes;
  }

  private blockName(name: string): Buffer {
    const bytes = Buffer.from(name, 'latin1');
    if (bytes.length === 0 || bytes.length > 255 || bytes.toString('latin1') !== name) {
      throw this.usage(`RAM block name '${name}' (1 to 255 latin1 characters)`);
    }
    return bytes;
  }

  private expectStage(stage: Stage, what: string): void {
    if (this.stage === stage) return;
    const next =
      this.stage === 'tail' ? 'tail bytes' : this.stage === 'sections' ? 'sections' : `the ${this.stage}`;
    throw this.usage(`${what} out of order (the writer expects ${next} next)`);
  }

  private usage(problem: string): StreamError {
    return new StreamError(this.written, 'usage', `writer: ${problem}`);
  }

  private emit(bytes: Uint8Array): void {
    this.written += bytes.length;
    this.sink(bytes);
  }
}

/** be64 (value | flags) at `at`; value is a multiple of the page size (or a byte count for MEM_SIZE). */
function writeU64(bytes: Buffer, at: number, value: number, flags = 0): void {
  const high = Math.floor(value / 2 ** 32);
  const low = value - high * 2 ** 32;
  bytes.writeUInt32BE(high, at);
  bytes.writeUInt32BE((low | (flags & RAM_FLAG_MASK)) >>> 0, at + 4);
}

/** A stream to synthesise: what a parsed stream holds, with pages in any order. */
export interface StreamImage {
  readonly version?: number;
  /** The configuration section's bytes as received (type byte 0x07 first). */
  readonly config: Uint8Array;
  /** Commands before the RAM START (OPEN_RETURN_PATH, PING), as received. */
  readonly commands?: readonly { readonly command: number; readonly data: Uint8Array }[];
  /** The RAM START's section id, instance and version (default: QEMU 7.2's 2, 0, 4). */
  readonly ramSection?: {
    readonly sectionId: number;
    readonly instanceId?: number;
    readonly versionId?: number;
  };
  readonly blocks: readonly RamBlock[];
  /** Written in this order; a later copy of a page overrides an earlier one at the destination. */
  readonly pages: Iterable<PageRecord | ZeroRecord>;
  /** Everything after the RAM END section, as received. */
  readonly tail: Uint8Array | readonly Uint8Array[];
}

/**
 * Writes `image` as one stream: header, configuration, commands, RAM START with the block list, one
 * PART with every page, an empty RAM END, the tail. Returns the bytes written.
 */
export function writeStreamTo(image: StreamImage, sink: (bytes: Uint8Array) => void): number {
  const writer = new StreamWriter(sink);
  writer.header(image.version);
  writer.config(image.config);
  for (const { command, data } of image.commands ?? []) writer.command(command, data);
  const section = image.ramSection;
  writer.beginSection('start', section?.sectionId ?? DEFAULT_RAM_SECTION_ID, section ?? {});
  writer.ramBlocks(image.blocks);
  writer.endSection();
  writer.beginSection('part');
  for (const page of image.pages) {
    if (page.kind === 'page') writer.page(page.block, page.offset, page.data);
    else writer.zero(page.block, page.offset, page.fill);
  }
  writer.endSection();
  writer.beginSection('end');
  writer.endSection();
  for (const bytes of image.tail instanceof Uint8Array ? [image.tail] : image.tail) writer.tail(bytes);
  return writer.offset;
}

/** writeStreamTo into one buffer. */
export function writeStream(image: StreamImage): Buffer {
  const parts: Uint8Array[] = [];
  writeStreamTo(image, (bytes) => parts.push(bytes));
  return Buffer.concat(parts);
}

/** What a parsed stream holds, for writeStream: pages in stream order, every copy. */
export function streamImage(records: Iterable<StreamRecord>): StreamImage {
  let config: Uint8Array | undefined;
  let version: number | undefined;
  let ramSection: StreamImage['ramSection'];
  let blocks: readonly RamBlock[] | undefined;
  const commands: CommandRecord[] = [];
  const pages: (PageRecord | ZeroRecord)[] = [];
  const tail: Uint8Array[] = [];
  for (const record of records) {
    if (record.kind === 'header') version = record.version;
    else if (record.kind === 'config') config = record.bytes;
    else if (record.kind === 'command') commands.push(record);
    else if (record.kind === 'section-begin' && record.type === 'start') ramSection = record;
    else if (record.kind === 'ram-blocks') blocks = record.blocks;
    else if (record.kind === 'page' || record.kind === 'zero') pages.push(record);
    else if (record.kind === 'tail') tail.push(record.bytes);
  }
  if (!config || !blocks || tail.length === 0) {
    const missing = !config ? 'configuration section' : !blocks ? 'RAM block list' : 'tail';
    throw new StreamError(0, 'usage', `streamImage: the records hold no ${missing}`);
  }
  return { version, config, commands, ramSection, blocks, pages, tail };
}

/** The last copy of each page (by block and offset), in the order of those last copies. */
export function latestPages<T extends PageRecord | ZeroRecord>(pages: Iterable<T>): T[] {
  const latest = new Map<string, T>();
  for (const page of pages) {
    const key = `${page.block}\0${page.offset}`;
    latest.delete(key);
    latest.set(key, page);
  }
  return [...latest.values()];
}
