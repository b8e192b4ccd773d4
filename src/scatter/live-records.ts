import { createHash, type Hash } from 'node:crypto';
import { DigestTable } from '../memory/digest-table.js';
import type { StreamRecord } from '../qemu/migration-stream.js';

/**
 * A live migration stream as it travels from the coordinator to a target agent: the records of QEMU's
 * stream, except that a page the target already holds travels as its digest (a reference) and the
 * agent puts the page back before writing the stream into the destination QEMU.
 *
 * Both ends hash the stream in one canonical form (every record as QEMU's stream carries it, pages
 * expanded), so before the destination resumes they can agree that what it loaded is, record for
 * record and in order, what the source sent.
 */
export type LiveRecord =
  | StreamRecord
  | { readonly kind: 'ref'; readonly block: string; readonly offset: number; readonly digest: Uint8Array }
  /** A page sent in full but encoded (page-codec.ts: LZ4 or a uniform word), smaller than the page. */
  | {
      readonly kind: 'packed';
      readonly block: string;
      readonly offset: number;
      readonly encoding: number;
      readonly payload: Uint8Array;
    };

const encoder = new TextEncoder();

/** A running digest of a stream in canonical form. */
export class StreamDigest {
  private readonly hash: Hash = createHash('sha256');
  private readonly scratch = new DataView(new ArrayBuffer(16));

  /** Adds a record as QEMU's stream carries it (a reference must be expanded first). */
  add(record: StreamRecord): void {
    const h = this.hash;
    h.update(encoder.encode(record.kind));
    switch (record.kind) {
      case 'page':
        this.position(record.block, record.offset);
        h.update(record.data);
        return;
      case 'zero':
        this.position(record.block, record.offset);
        h.update(Uint8Array.of(record.fill));
        return;
      case 'config':
        h.update(record.bytes);
        return;
      case 'tail':
        h.update(record.bytes);
        return;
      case 'command':
        this.number(record.command);
        h.update(record.data);
        return;
      case 'header':
        this.number(record.version);
        return;
      case 'section-begin':
      case 'section-end':
        h.update(encoder.encode(record.type));
        this.number(record.sectionId);
        return;
      case 'ram-blocks':
        for (const block of record.blocks) this.position(block.name, block.length);
        return;
    }
  }

  /** The digest so far, hex. */
  hex(): string {
    return this.hash.copy().digest('hex');
  }

  private position(block: string, offset: number): void {
    this.hash.update(encoder.encode(block));
    this.number(offset);
  }

  private number(value: number): void {
    this.scratch.setFloat64(0, value);
    this.hash.update(new Uint8Array(this.scratch.buffer, 0, 8));
  }
}

/** Whether a value off the network is a record this codec could write; refuses anything else. */
export function isLiveRecord(value: unknown): value is LiveRecord {
  if (typeof value !== 'object' || value === null) return false;
  const r = value as Record<string, unknown>;
  const str = (v: unknown) => typeof v === 'string' && v.length <= 255;
  const uint = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  const bytes = (v: unknown) => v instanceof Uint8Array;
  switch (r.kind) {
    case 'page':
      return str(r.block) && uint(r.offset) && bytes(r.data) && (r.data as Uint8Array).length === 4096;
    case 'ref':
      return str(r.block) && uint(r.offset) && bytes(r.digest) && (r.digest as Uint8Array).length === 16;
    case 'packed':
      return (
        str(r.block) &&
        uint(r.offset) &&
        uint(r.encoding) &&
        bytes(r.payload) &&
        (r.payload as Uint8Array).length < 4096
      );
    case 'zero':
      return str(r.block) && uint(r.offset) && uint(r.fill) && (r.fill as number) < 256;
    case 'config':
    case 'tail':
      return bytes(r.bytes);
    case 'command':
      return uint(r.command) && bytes(r.data);
    case 'header':
      return uint(r.version);
    case 'section-begin':
      return str(r.type) && uint(r.sectionId) && str(r.idstr) && uint(r.instanceId) && uint(r.versionId);
    case 'section-end':
      return str(r.type) && uint(r.sectionId);
    case 'ram-blocks':
      return (
        Array.isArray(r.blocks) &&
        r.blocks.length <= 1024 &&
        r.blocks.every((b: unknown) => {
          const block = b as Record<string, unknown>;
          return typeof b === 'object' && b !== null && str(block.name) && uint(block.length);
        })
      );
    default:
      return false;
  }
}

/** Distinct pages a stream remembers: 16,384 (64 MiB at the agent, per VM migrating to it). */
export const STREAM_MEMORY_PAGES = 16_384;

/**
 * The pages a VM's stream has carried in full, remembered alike at both ends, so that a later page
 * with the same content (a guest rewriting what it wrote, or a page written twice) goes as a reference
 * too. Both ends remember the first STREAM_MEMORY_PAGES distinct non-zero pages sent in full, in
 * stream order, so they agree on what is remembered without telling each other; the coordinator keeps
 * only the digests, the agent the pages as well.
 */
export class StreamPageMemory {
  private readonly ids = new DigestTable(1024);
  private readonly pages: Uint8Array[] = [];

  constructor(private readonly capacity = STREAM_MEMORY_PAGES) {}

  has(digest: Uint8Array): boolean {
    return this.ids.lookup(digest) > 0;
  }

  /** Remembers a page sent in full (its bytes only when given: the agent's side). */
  remember(digest: Uint8Array, page?: Uint8Array): void {
    if (this.ids.size >= this.capacity || this.has(digest)) return;
    const id = this.ids.intern(digest, 0);
    if (page !== undefined) this.pages[id] = page;
  }

  get(digest: Uint8Array): Uint8Array | undefined {
    const id = this.ids.lookup(digest);
    return id > 0 ? this.pages[id] : undefined;
  }
}
