import { DIGEST_BYTES, isZeroPage, PAGE_SIZE } from '../memory/page.js';
import type { PageDigester } from '../memory/page-digest.js';
import type { StreamRecord } from '../qemu/migration-stream.js';
import { EntryWriter, type FullPageCodec } from './batch.js';
import { ZstdRuns } from '../memory/batch-zstd.js';
import { StreamDigest, StreamPageMemory, type LiveRecord } from './records.js';
import { PageEncoding } from '../memory/page-codec.js';

/**
 * The coordinator's half of a live stream, without I/O: QEMU's records in, messages of LiveRecords
 * out. A page the target holds, or one this stream already carried in full (StreamPageMemory), goes as
 * its digest; any other page in full, compressed as the target's codec allows (LZ4 per page, or zstd
 * over the whole run: FullPageCodec) where that shrinks it. One keyed digest per page,
 * which serves the reference decision and the canonical stream digest alike.
 */
export interface LiveEncoderCounts {
  referencedPages: number;
  sentPages: number;
  compressedPages: number;
  zeroPages: number;
}

/** A message goes once it holds this many bytes for the wire... */
export const MESSAGE_BYTES = 1 << 20;
/**
 * ...or stands for this much of QEMU's stream (references put back): so when QEMU stops the guest for
 * the last pass, the destination is at most a few messages behind, not a backlog of expanded references.
 */
export const MESSAGE_STREAM_BYTES = 4 << 20;

export class LiveStreamEncoder {
  readonly counts: LiveEncoderCounts = { referencedPages: 0, sentPages: 0, compressedPages: 0, zeroPages: 0 };
  readonly digest = new StreamDigest();
  private readonly sentBefore = new StreamPageMemory();
  private readonly hash = new Uint8Array(DIGEST_BYTES);
  private readonly entries = new EntryWriter();
  private records: LiveRecord[] = [];
  private block = '';
  private wireBytes = 0;
  private streamBytes = 0;
  /** Pages of the current run sent in full as they are (a zstd run compresses them). */
  private rawInRun = 0;
  private readonly zstd: ZstdRuns | undefined;

  constructor(
    private readonly options: {
      readonly digester: PageDigester;
      /** Whether the target holds the page with this digest. */
      readonly holds: (digest: Uint8Array) => boolean;
      /** Told of every page sent as data (not held at the target), by its digest. */
      readonly onSentInFull?: (digest: Uint8Array) => void;
      /**
       * How pages sent in full are compressed (uniform pages always go as one word); 'zstd' where this
       * process has no libzstd is 'lz4'.
       */
      readonly codec: FullPageCodec;
    },
  ) {
    this.zstd = options.codec === 'zstd' ? ZstdRuns.open() : undefined;
  }

  /** Whether a message is due (take it). */
  get full(): boolean {
    return this.wireBytes + this.entries.length >= MESSAGE_BYTES || this.streamBytes >= MESSAGE_STREAM_BYTES;
  }

  add(record: StreamRecord): void {
    if (record.kind === 'page' || record.kind === 'zero') {
      if (record.block !== this.block) {
        this.closeRun();
        this.block = record.block;
      }
      const page = record.offset / PAGE_SIZE;
      this.streamBytes += PAGE_SIZE;
      if (record.kind === 'zero') {
        this.counts.zeroPages++;
        this.entries.zero(page, record.fill);
        this.digest.zero(record.block, record.offset, record.fill);
        return;
      }
      const data = record.data;
      if (isZeroPage(data, 0)) {
        this.counts.zeroPages++;
        this.entries.zeroData(page);
        this.digest.page(record.block, record.offset, undefined);
        return;
      }
      const { hash } = this;
      this.options.digester.digestInto(data, 0, hash, 0);
      this.digest.page(record.block, record.offset, hash);
      if (this.options.holds(hash) || this.sentBefore.has(hash)) {
        this.counts.referencedPages++;
        this.entries.ref(page, hash);
        return;
      }
      this.counts.sentPages++;
      this.sentBefore.remember(hash.slice());
      this.options.onSentInFull?.(hash);
      const perPage = this.options.codec === 'lz4' || (this.options.codec === 'zstd' && !this.zstd);
      if (this.entries.full(page, data, perPage) !== PageEncoding.Raw) this.counts.compressedPages++;
      else this.rawInRun++;
      return;
    }
    this.closeRun();
    this.block = '';
    const copy = copyRecord(record);
    this.digest.add(copy);
    this.records.push(copy);
    this.wireBytes += 24 + ('bytes' in copy ? copy.bytes.length : 'data' in copy ? copy.data.length : 0);
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
    const entries = this.entries.take();
    const packed = this.zstd && this.rawInRun > 0 ? this.zstd.compress(entries) : undefined;
    if (packed) this.counts.compressedPages += this.rawInRun;
    this.rawInRun = 0;
    this.records.push(
      packed
        ? { kind: 'pages', block: this.block, entries: packed, zstd: entries.length }
        : { kind: 'pages', block: this.block, entries },
    );
    this.wireBytes += (packed ?? entries).length + 16 + this.block.length;
  }
}

/** Records that may alias the parser's chunk are copied before they are queued. */
function copyRecord(record: Exclude<StreamRecord, { kind: 'page' | 'zero' }>): LiveRecord {
  if (record.kind === 'tail' || record.kind === 'config') return { ...record, bytes: record.bytes.slice() };
  if (record.kind === 'command') return { ...record, data: record.data.slice() };
  return record;
}
