import { createHash, type Hash } from 'node:crypto';
import { DigestTable } from '../memory/digest-table.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { StreamRecord } from '../qemu/migration-stream.js';

/**
 * A live migration stream as it travels from the coordinator to a target agent: QEMU's records, except
 * that page and zero records travel in runs of one RAM block packed into byte arrays (batch.ts),
 * where a page the target already holds is its digest (a reference) that the agent puts back before
 * writing the stream into the destination QEMU.
 *
 * Both ends hash the stream in one canonical form, so before the destination resumes they can agree
 * that what it loaded is, record for record and in order, what the source sent: every record that is
 * not a page as QEMU's stream carries it, and every page as its position and its keyed page digest
 * (16 bytes), which each end computes from the bytes it read or wrote (one hash per page at each end;
 * the guest memory itself is compared apart, memory-check.ts).
 */
export type LiveRecord =
  | Exclude<StreamRecord, { kind: 'page' } | { kind: 'zero' }>
  | {
      readonly kind: 'pages';
      readonly block: string;
      /** The run's entries (batch.ts), or with `zstd` one zstd frame of them. */
      readonly entries: Uint8Array;
      /** Present when `entries` is a zstd frame: the entries' length once decompressed. */
      readonly zstd?: number;
    };

const encoder = new TextEncoder();
const FLUSH_BYTES = 64 << 10;

/** A running digest of a stream in canonical form; pages are buffered so hashing is in bulk. */
export class StreamDigest {
  private readonly hash: Hash = createHash('sha256');
  private readonly buffer = new Uint8Array(FLUSH_BYTES + 64);
  private readonly view = new DataView(this.buffer.buffer);
  private at = 0;
  private block = '';
  private readonly scratch = new DataView(new ArrayBuffer(8));

  /** A page record: its position and keyed digest (undefined for a page of zeros). */
  page(block: string, offset: number, digest: Uint8Array | undefined): void {
    this.position(block, digest === undefined ? 0x44 : 0x50, offset);
    if (digest !== undefined) {
      this.buffer.set(digest.subarray(0, 16), this.at);
      this.at += 16;
    }
    this.spill();
  }

  /** A zero record. */
  zero(block: string, offset: number, fill: number): void {
    this.position(block, 0x5a, offset);
    this.buffer[this.at++] = fill;
    this.spill();
  }

  /** Any record that is not a page or zero record, as QEMU's stream carries it. */
  add(record: LiveRecord): void {
    this.flush();
    this.block = '';
    const h = this.hash;
    h.update(encoder.encode(record.kind));
    switch (record.kind) {
      case 'config':
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
        for (const block of record.blocks) {
          h.update(encoder.encode(block.name));
          this.number(block.length);
        }
        return;
      case 'pages':
        throw new RangeError('page runs are added page by page');
    }
  }

  /** The digest so far, hex. */
  hex(): string {
    this.flush();
    return this.hash.copy().digest('hex');
  }

  private position(block: string, tag: number, offset: number): void {
    if (block !== this.block) {
      const name = encoder.encode(block);
      this.flush();
      this.hash.update(Uint8Array.of(0xb0, name.length));
      this.hash.update(name);
      this.block = block;
    }
    this.buffer[this.at] = tag;
    this.view.setFloat64(this.at + 1, offset, true);
    this.at += 9;
  }

  private spill(): void {
    if (this.at >= FLUSH_BYTES) this.flush();
  }

  private flush(): void {
    if (this.at === 0) return;
    this.hash.update(this.buffer.subarray(0, this.at));
    this.at = 0;
  }

  private number(value: number): void {
    this.scratch.setFloat64(0, value);
    this.hash.update(new Uint8Array(this.scratch.buffer, 0, 8));
  }
}

/** The most a page run may hold: a message stands for at most 4 MiB of stream, a page at most 4117 bytes. */
export const MAX_BATCH_BYTES = 8 << 20;

/** Whether a value off the network is a record this codec could write; refuses anything else. */
export function isLiveRecord(value: unknown): value is LiveRecord {
  if (typeof value !== 'object' || value === null) return false;
  const r = value as Record<string, unknown>;
  const str = (v: unknown) => typeof v === 'string' && v.length <= 255;
  const uint = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  const bytes = (v: unknown) => v instanceof Uint8Array;
  switch (r.kind) {
    case 'pages':
      return (
        str(r.block) &&
        bytes(r.entries) &&
        (r.entries as Uint8Array).length <= MAX_BATCH_BYTES &&
        (r.zstd === undefined || (uint(r.zstd) && (r.zstd as number) <= MAX_BATCH_BYTES))
      );
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
 * too. The coordinator marks which pages sent in full to remember (KEEP in batch.ts: those that may
 * come again, not uniform ones), and both ends remember the first STREAM_MEMORY_PAGES distinct ones,
 * in stream order; the coordinator keeps only the digests, the agent the pages as well.
 */
export class StreamPageMemory {
  private readonly ids = new DigestTable(1024);
  /**
   * The agent's copies, PAGES_PER_SLAB to an array: one allocation per 256 pages, not one per page
   * (each would be memory outside V8's heap, and enough of those between two collections sets off a
   * full one).
   */
  private readonly slabs: Uint8Array[] = [];

  constructor(private readonly capacity = STREAM_MEMORY_PAGES) {}

  has(digest: Uint8Array): boolean {
    return this.ids.lookup(digest) > 0;
  }

  /** Remembers a page sent in full, copying its bytes when given (the agent's side). */
  remember(digest: Uint8Array, page?: Uint8Array): void {
    if (this.ids.size >= this.capacity || this.has(digest)) return;
    const id = this.ids.intern(digest, 0);
    if (page === undefined) return;
    const slot = id - 1;
    const slab = Math.floor(slot / PAGES_PER_SLAB);
    this.slabs[slab] ??= new Uint8Array(PAGES_PER_SLAB * PAGE_SIZE);
    this.slabs[slab].set(page.subarray(0, PAGE_SIZE), (slot % PAGES_PER_SLAB) * PAGE_SIZE);
  }

  /** The page remembered with this digest (a view, valid while this memory lives). */
  get(digest: Uint8Array): Uint8Array | undefined {
    const id = this.ids.lookup(digest);
    if (id <= 0) return undefined;
    const slot = id - 1;
    const at = (slot % PAGES_PER_SLAB) * PAGE_SIZE;
    return this.slabs[Math.floor(slot / PAGES_PER_SLAB)]?.subarray(at, at + PAGE_SIZE);
  }
}

const PAGES_PER_SLAB = 256;
