import { DIGEST_BYTES, isZeroPage, PAGE_SIZE, ZERO_PAGE_ID } from '../memory/page.js';
import type { DigestTable } from '../memory/digest-table.js';
import type { PageDigester } from '../memory/page-digest.js';
import type { PageSink, StreamRecord } from '../qemu/migration-stream.js';
import { EntryWriter, type FullPageCodec } from './batch.js';
import { ZstdRuns } from '../memory/batch-zstd.js';
import { StreamDigest, StreamPageMemory, type LiveRecord } from './records.js';
import { PageEncoding } from '../memory/page-codec.js';
import { copyBytes } from '../copy-bytes.js';

/**
 * The coordinator's half of a live stream, without I/O: QEMU's records in, messages of LiveRecords
 * out. A page the target holds, or one this stream already carried in full (StreamPageMemory), goes as
 * its digest; any other page in full with its digest, compressed as the target's codec allows (LZ4
 * per page, or zstd over the whole run: FullPageCodec) where that shrinks it. One keyed digest per
 * page (the scan's where the page's check held), which serves the reference decision, the agent's
 * stream memory and the canonical stream digest alike.
 */
export interface LiveEncoderCounts {
  referencedPages: number;
  sentPages: number;
  compressedPages: number;
  zeroPages: number;
  /** Pages whose digest came from the scan (their check held), not hashed again. */
  scanDigests: number;
}

/**
 * What the scan saw of the VM's main RAM block (`block`): page i's check at checks[8 i..] (0: none)
 * and its digest's id in `ids` (the scan's page table, ids of `table`). A page whose check still
 * holds has the scan's digest: it is not hashed again to be referred to.
 */
export interface ScanKnowledge {
  readonly block: string;
  readonly checks: Uint8Array;
  readonly ids: Uint32Array;
  readonly table: DigestTable;
}

/** A message goes once it holds this many bytes for the wire... */
export const MESSAGE_BYTES = 1 << 20;
/**
 * ...or stands for this much of QEMU's stream (references put back): so when QEMU stops the guest for
 * the last pass, the destination is at most a few messages behind, not a backlog of expanded references.
 */
export const MESSAGE_STREAM_BYTES = 4 << 20;

export class LiveStreamEncoder implements PageSink {
  readonly counts: LiveEncoderCounts = {
    referencedPages: 0,
    sentPages: 0,
    compressedPages: 0,
    zeroPages: 0,
    scanDigests: 0,
  };
  readonly digest = new StreamDigest();
  private readonly sentBefore = new StreamPageMemory();
  /** How often (0, 1, 2 for more) the scan saw each digest id in this VM, made at the first need. */
  private scanRepeats: Uint8Array | undefined;
  private readonly hash = new Uint8Array(DIGEST_BYTES);
  private readonly entries = new EntryWriter();
  private records: LiveRecord[] = [];
  private block = '';
  private wireBytes = 0;
  private streamBytes = 0;
  /** Pages of the current run sent in full as they are (a zstd run compresses them). */
  private rawInRun = 0;
  private readonly zstd: ZstdRuns | undefined;
  /** Pages sent in full are LZ4-compressed one by one (else raw, for a zstd run or for none). */
  private readonly perPage: boolean;

  constructor(
    private readonly options: {
      readonly digester: PageDigester;
      /** Whether the target holds the page with this digest. */
      readonly holds: (digest: Uint8Array) => boolean;
      /** Told of every page sent as data (not held at the target), by its digest. */
      readonly onSentInFull?: (digest: Uint8Array) => void;
      /** The scan's checks and digests, where it made checks (PageDigester.digestChecked). */
      readonly scanned?: ScanKnowledge;
      /**
       * How pages sent in full are compressed (uniform pages always go as one word); 'zstd' where this
       * process has no libzstd is 'lz4'.
       */
      readonly codec: FullPageCodec;
    },
  ) {
    this.zstd = options.codec === 'zstd' ? ZstdRuns.open() : undefined;
    this.perPage = options.codec === 'lz4' || (options.codec === 'zstd' && !this.zstd);
  }

  /** Whether a message is due (take it); a zstd run counts at its length before compression. */
  get full(): boolean {
    return this.wireBytes + this.entries.length >= MESSAGE_BYTES || this.streamBytes >= MESSAGE_STREAM_BYTES;
  }

  add(record: StreamRecord): void {
    if (record.kind === 'page') return this.page(record.block, record.offset, record.data, 0);
    if (record.kind === 'zero') return this.zero(record.block, record.offset, record.fill);
    this.closeRun();
    this.block = '';
    const copy = copyRecord(record);
    this.digest.add(copy);
    this.records.push(copy);
    this.wireBytes += 24 + ('bytes' in copy ? copy.bytes.length : 'data' in copy ? copy.data.length : 0);
  }

  /** A zero record (PageSink: the parser's fast path calls it directly). */
  zero(block: string, offset: number, fill: number): void {
    const page = this.startPage(block, offset);
    this.counts.zeroPages++;
    this.entries.zero(page, fill);
    this.digest.zero(block, offset, fill);
  }

  /** A page record whose data is bytes[at..] (PageSink); nothing is kept of `bytes` after the call. */
  page(block: string, offset: number, bytes: Uint8Array, at: number): void {
    const page = this.startPage(block, offset);
    if (isZeroPage(bytes, at)) {
      this.counts.zeroPages++;
      this.entries.zeroData(page);
      this.digest.page(block, offset, undefined);
      return;
    }
    const { hash } = this;
    const scanId = this.scanDigest(block, offset, bytes, at);
    if (scanId > 0) this.counts.scanDigests++;
    this.digest.page(block, offset, hash);
    if (this.options.holds(hash) || this.sentBefore.has(hash)) {
      this.counts.referencedPages++;
      this.entries.ref(page, hash);
      return;
    }
    this.counts.sentPages++;
    this.options.onSentInFull?.(hash);
    const keep = this.mayRepeat(scanId);
    const encoding = this.entries.full(page, hash, bytes, this.perPage, at, keep);
    if (keep && encoding !== PageEncoding.Uniform) this.sentBefore.remember(hash);
    if (encoding !== PageEncoding.Raw) this.counts.compressedPages++;
    else this.rawInRun++;
  }

  /**
   * Puts the page's digest in `hash`: the scan's when its check still holds (returns the scan's id
   * of it), else its own (returns 0).
   */
  private scanDigest(block: string, offset: number, bytes: Uint8Array, at: number): number {
    const { scanned, digester } = this.options;
    const index = offset / PAGE_SIZE;
    if (scanned === undefined || block !== scanned.block || index >= scanned.ids.length) {
      digester.digestInto(bytes, at, this.hash, 0);
      return 0;
    }
    if (!digester.digestChecked(bytes, at, scanned.checks, index, this.hash)) return 0;
    const id = scanned.ids[index]!;
    if (id > ZERO_PAGE_ID) {
      scanned.table.copyDigest(id, this.hash);
      return id;
    }
    digester.digestInto(bytes, at, this.hash, 0); // a check without a digest: never made so
    return 0;
  }

  /**
   * Whether a page sent in full may come again in this stream, so both ends remember it: unless the
   * scan saw its content (scanId) at no other page of the VM, it may (a page written since the scan
   * can be written again, or copied). Remembering only these keeps the agent's memory of a stream
   * to the pages a reference can want.
   */
  private mayRepeat(scanId: number): boolean {
    const { scanned } = this.options;
    if (scanId === 0 || scanned === undefined) return true;
    if (this.scanRepeats === undefined) {
      const repeats = new Uint8Array(scanned.table.size + 1);
      for (const id of scanned.ids) if (repeats[id]! < 2) repeats[id]!++;
      this.scanRepeats = repeats;
    }
    return (this.scanRepeats[scanId] ?? 2) >= 2;
  }

  /** The page number of a page record, in a run of its block. */
  private startPage(block: string, offset: number): number {
    if (block !== this.block) {
      this.closeRun();
      this.block = block;
    }
    this.streamBytes += PAGE_SIZE;
    return offset / PAGE_SIZE;
  }

  /** The records gathered since the last take, with their size on the wire; undefined when none. */
  take(): { readonly records: LiveRecord[]; readonly wireBytes: number } | undefined {
    this.closeRun();
    if (this.records.length === 0) return undefined;
    const message = { records: this.records, wireBytes: this.wireBytes };
    this.records = [];
    this.wireBytes = 0;
    this.streamBytes = 0;
    return message;
  }

  private closeRun(): void {
    if (this.entries.count === 0) return;
    // A zstd run is compressed from the writer's own buffer: only the frame is a new array.
    const length = this.entries.length;
    const frame = this.zstd && this.rawInRun > 0 ? this.zstd.compress(this.entries.written()) : undefined;
    let record: LiveRecord;
    if (frame) {
      this.counts.compressedPages += this.rawInRun;
      this.entries.clear();
      record = { kind: 'pages', block: this.block, entries: frame, zstd: length };
    } else record = { kind: 'pages', block: this.block, entries: this.entries.take() };
    this.rawInRun = 0;
    this.records.push(record);
    this.wireBytes += record.entries.length + 16 + this.block.length;
  }
}

/** Records that may alias the parser's chunk are copied before they are queued. */
function copyRecord(record: Exclude<StreamRecord, { kind: 'page' | 'zero' }>): LiveRecord {
  if (record.kind === 'tail' || record.kind === 'config')
    return { ...record, bytes: copyBytes(record.bytes) };
  if (record.kind === 'command') return { ...record, data: copyBytes(record.data) };
  return record;
}
