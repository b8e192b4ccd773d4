import { VmscatterError } from '../errors.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import type { PageDigester } from '../memory/page-digest.js';
import type { StreamRecord } from '../qemu/migration-stream.js';
import { EntryType, readEntries } from './batch.js';
import { StreamDigest, StreamPageMemory, type LiveRecord } from './records.js';
import { decodePage } from '../memory/page-codec.js';
import { ZstdRuns } from '../memory/batch-zstd.js';

/**
 * The agent's half of a live stream, without I/O: LiveRecords in, QEMU's records out (to `sink`, which
 * writes them into the destination), with references put back from the store or from what the stream
 * carried before. A page of the guest's main RAM, referenced or sent in full with its digest, enters
 * the canonical digest (and the stream's memory) by that digest, unhashed, because the memory check
 * (memory-check.ts) compares that RAM itself before the guest may run; a page of any other block
 * (ROMs, which the memory check does not read) is hashed from the bytes written (the store's, or
 * those sent), so a store page gone bad on disk or a page decoded wrong shows there.
 */
export class LiveDecodeError extends VmscatterError {
  constructor(message: string) {
    super('VMS_LIVE', message);
  }
}

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

export interface LiveDecoderOptions {
  /** A held page, read into `into` or returned as is; valid until the next call. */
  readonly pageOf: (digest: Uint8Array, into: Uint8Array) => Uint8Array | undefined;
  /**
   * The held pages of many digests at once (ContentStore.readMany), where the store can read
   * neighbours together: a run's references are read before it is expanded, in a few reads
   * instead of one per page. Without it, `pageOf` serves each.
   */
  readonly readMany?: (digests: Uint8Array, count: number, into: Uint8Array, found: Uint8Array) => void;
  readonly digester: PageDigester;
  readonly sink: (record: StreamRecord) => void;
}

export class LiveStreamDecoder {
  readonly digest = new StreamDigest();
  private readonly sentBefore = new StreamPageMemory();
  private readonly hash = new Uint8Array(DIGEST_BYTES);
  /** Where the store reads a referenced page (the sink copies what it is given). */
  private readonly scratch = new Uint8Array(PAGE_SIZE);
  /** Where a packed page decodes (the sink and the stream's memory copy it). */
  private readonly decoded = new Uint8Array(PAGE_SIZE);
  /** A run's referenced pages, read ahead (readMany): digests, pages and whether each was held. */
  private refDigests = new Uint8Array(0);
  private refPages = new Uint8Array(0);
  private refFound = new Uint8Array(0);
  /** The largest RAM block of the stream's block list: the guest's main RAM. */
  private mainBlock = '';
  /** Opened at the first zstd run. */
  private zstd: ZstdRuns | undefined;

  constructor(
    private readonly vm: string,
    private readonly options: LiveDecoderOptions,
  ) {}

  /** Expands and passes on the records; throws LiveDecodeError when a page cannot be put back. */
  write(records: readonly LiveRecord[]): void {
    for (const record of records) {
      if (record.kind !== 'pages') {
        if (record.kind === 'ram-blocks' && record.blocks.length > 0)
          this.mainBlock = record.blocks.reduce((a, b) => (b.length > a.length ? b : a)).name;
        this.digest.add(record);
        this.options.sink(record);
        continue;
      }
      const { block } = record;
      const entries =
        record.zstd === undefined ? record.entries : this.unpack(record.entries, record.zstd, block);
      const readAhead = this.readAhead(entries);
      let ref = 0;
      for (const entry of readEntries(entries)) {
        const offset = entry.page * PAGE_SIZE;
        switch (entry.type) {
          case EntryType.Zero:
            this.digest.zero(block, offset, entry.value);
            this.options.sink({ kind: 'zero', block, offset, fill: entry.value });
            continue;
          case EntryType.ZeroData:
            this.digest.page(block, offset, undefined);
            this.options.sink({ kind: 'page', block, offset, data: ZERO_PAGE });
            continue;
          case EntryType.Ref: {
            const k = ref++;
            const data =
              (readAhead
                ? this.refFound[k] === 1
                  ? this.refPages.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE)
                  : undefined
                : this.options.pageOf(entry.body, this.scratch)) ?? this.sentBefore.get(entry.body);
            if (!data)
              throw new LiveDecodeError(`VM ${this.vm}: a page referenced at ${block}+${offset} is not held`);
            if (block !== this.mainBlock) this.page(block, offset, data, false, undefined);
            else {
              this.digest.page(block, offset, entry.body);
              this.options.sink({ kind: 'page', block, offset, data });
            }
            continue;
          }
          case EntryType.Raw:
            this.page(block, offset, entry.body, entry.keep, entry.digest);
            continue;
          case EntryType.Packed: {
            const data = decodePage(entry.value, entry.body, this.decoded);
            if (!data)
              throw new LiveDecodeError(`VM ${this.vm}: a packed page at ${block}+${offset} does not decode`);
            this.page(block, offset, data, entry.keep, entry.digest);
            continue;
          }
        }
      }
    }
  }

  /** A zstd run's entries (valid until the next run: pages sent in full are copied out of it). */
  private unpack(frame: Uint8Array, length: number, block: string): Uint8Array {
    this.zstd ??= ZstdRuns.open();
    if (!this.zstd)
      throw new LiveDecodeError(`VM ${this.vm}: a zstd page run came, and this host has no libzstd`);
    const entries = this.zstd.decompress(frame, length);
    if (!entries) throw new LiveDecodeError(`VM ${this.vm}: a zstd page run of ${block} does not decompress`);
    return entries;
  }

  /**
   * Reads a run's referenced pages from the store in one go, when it can (readMany): true when it
   * did, and the run's k-th reference is then slot k of refPages (refFound[k] says whether it was held;
   * one that was not may still be in the stream's memory, looked up when its turn comes).
   */
  private readAhead(entries: Uint8Array): boolean {
    const { readMany } = this.options;
    if (!readMany) return false;
    let count = 0;
    for (const entry of readEntries(entries)) {
      if (entry.type !== EntryType.Ref) continue;
      if ((count + 1) * DIGEST_BYTES > this.refDigests.length) {
        const digests = new Uint8Array(Math.max(64, 2 * (count + 1)) * DIGEST_BYTES);
        digests.set(this.refDigests);
        this.refDigests = digests;
      }
      this.refDigests.set(entry.body, count * DIGEST_BYTES);
      count++;
    }
    if (count === 0) return true;
    if (count * PAGE_SIZE > this.refPages.length) {
      this.refPages = new Uint8Array(count * PAGE_SIZE);
      this.refFound = new Uint8Array(count);
    }
    readMany(this.refDigests, count, this.refPages, this.refFound);
    return true;
  }

  /**
   * A page put back from the store (a ROM's) or sent in full with its digest (`sent`); `keep`: the
   * coordinator remembers it too. A page of the main RAM enters the stream digest and the stream's
   * memory by the digest it came with, since the memory check proves that RAM's bytes; any other page
   * is hashed here, so a page decoded wrong there shows as a stream digest mismatch.
   */
  private page(
    block: string,
    offset: number,
    data: Uint8Array,
    keep: boolean,
    sent: Uint8Array | undefined,
  ): void {
    let hash: Uint8Array = this.hash;
    if (sent !== undefined && block === this.mainBlock) hash = sent;
    else this.options.digester.digestInto(data, 0, hash, 0);
    this.digest.page(block, offset, hash);
    if (keep) this.sentBefore.remember(hash, data);
    this.options.sink({ kind: 'page', block, offset, data });
  }
}
