import { closeSync, fstatSync, ftruncateSync, fsyncSync } from 'node:fs';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { DigestTable } from '../memory/digest-table.js';
import { ensurePrivateDir, openForUpdate, readFully, writeFully } from './file-io.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';

/** Pages one read of readMany takes at most (1 MiB). */
const MAX_RUN_PAGES = 256;

/** A store's page bytes, page i at i * PAGE_SIZE, in its directory. */
export const PAGES_FILE = 'pages.bin';

/**
 * A target's content store: page contents keyed by digest, on disk, surviving restarts, so a resumed
 * job does not send again what an agent holds. Memory holds only the digest index (about 21 bytes per
 * page); page bytes live in one append-only file and are read back on demand.
 *
 * Two files: `pages.bin` (page i at i*4096) and `digests.bin` (digest i at i*16). A page is written
 * before its digest, so after a crash the digest file is never ahead of the page file; on opening, the
 * shorter of the two decides, and a torn tail is cut off. Nothing is ever reported as held that is not
 * wholly on disk.
 */
export class DiskFullError extends VmscatterError {
  /** `doing` says what was being written, as the user needs to know which disk to free. */
  constructor(path: string, doing = 'storing pages') {
    super('VMS_DISK_FULL', `${path}: no space left on device while ${doing}`);
  }
}

export class ContentStore {
  private readonly index: DigestTable;
  /** Where putMany gathers a batch's new pages when some are held already (grown, reused). */
  private scratchPages = new Uint8Array(0);
  private scratchDigests = new Uint8Array(0);
  private count: number;

  private constructor(
    private readonly dir: string,
    private readonly pagesFd: number,
    private readonly digestsFd: number,
  ) {
    const pages = Math.floor(fstatSync(pagesFd).size / PAGE_SIZE);
    const digests = Math.floor(fstatSync(digestsFd).size / DIGEST_BYTES);
    this.count = Math.min(pages, digests);
    ftruncateSync(pagesFd, this.count * PAGE_SIZE);
    ftruncateSync(digestsFd, this.count * DIGEST_BYTES);
    this.index = new DigestTable(Math.max(1024, this.count));
    const chunk = new Uint8Array(DIGEST_BYTES * 65536);
    for (let first = 0; first < this.count; first += 65536) {
      const n = Math.min(65536, this.count - first);
      readFully(
        digestsFd,
        chunk,
        n * DIGEST_BYTES,
        first * DIGEST_BYTES,
        'content store file shorter than its index',
      );
      for (let i = 0; i < n; i++) this.index.intern(chunk, i * DIGEST_BYTES);
    }
  }

  /** Opens (creating if needed) the store in `dir`. */
  static open(dir: string): ContentStore {
    try {
      ensurePrivateDir(dir);
      return new ContentStore(
        dir,
        openForUpdate(join(dir, PAGES_FILE)),
        openForUpdate(join(dir, 'digests.bin')),
      );
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new VmscatterError('VMS_STORE', `${dir}: cannot open the content store (${code ?? error})`);
    }
  }

  /** Pages held. */
  get size(): number {
    return this.count;
  }

  has(digest: Uint8Array): boolean {
    return this.index.lookup(digest) > 0;
  }

  /** The page with this digest (read into `into` when given), or undefined. */
  get(digest: Uint8Array, into?: Uint8Array): Uint8Array | undefined {
    const id = this.index.lookup(digest);
    if (id <= 0) return undefined;
    const page = into ?? new Uint8Array(PAGE_SIZE);
    readFully(
      this.pagesFd,
      page,
      PAGE_SIZE,
      (id - 1) * PAGE_SIZE,
      'content store file shorter than its index',
    );
    return page;
  }

  /**
   * Reads the held pages among `count` digests (16 bytes each from digests[0]) into `into`, page k at
   * k * PAGE_SIZE, and sets found[k] to 1 for those held (0 for the rest, whose slots are left as they
   * are). One read per run of pages that lie next to each other in pages.bin: pages that arrived
   * together mostly do, so a VM's pages cost a few reads instead of one each.
   */
  readMany(digests: Uint8Array, count: number, into: Uint8Array, found: Uint8Array): void {
    let runStart = 0; // first slot of the open run
    let runIndex = -1; // its first page in pages.bin; -1: no open run
    let runLength = 0;
    const flush = () => {
      if (runIndex < 0) return;
      readFully(
        this.pagesFd,
        into.subarray(runStart * PAGE_SIZE, (runStart + runLength) * PAGE_SIZE),
        runLength * PAGE_SIZE,
        runIndex * PAGE_SIZE,
        'content store file shorter than its index',
      );
      runIndex = -1;
    };
    for (let k = 0; k < count; k++) {
      const index = this.index.lookup(digests, k * DIGEST_BYTES) - 1;
      found[k] = index >= 0 ? 1 : 0;
      if (index < 0) {
        flush();
        continue;
      }
      if (runIndex >= 0 && index === runIndex + runLength && runLength < MAX_RUN_PAGES) {
        runLength++;
        continue;
      }
      flush();
      runStart = k;
      runIndex = index;
      runLength = 1;
    }
    flush();
  }

  /** Where the page with this digest sits in pages.bin (a page number), or -1 when it is not held. */
  indexOf(digest: Uint8Array): number {
    return this.index.lookup(digest) - 1;
  }

  /** The file holding the pages (page i at i * PAGE_SIZE). */
  get pagesPath(): string {
    return join(this.dir, PAGES_FILE);
  }

  /** Stores a page; false when it was held already. Throws DiskFullError when the disk is full. */
  put(digest: Uint8Array, page: Uint8Array): boolean {
    if (digest.length !== DIGEST_BYTES || page.length !== PAGE_SIZE) {
      throw new RangeError(`a page is ${PAGE_SIZE} bytes with a ${DIGEST_BYTES}-byte digest`);
    }
    if (this.has(digest)) return false;
    try {
      writeFully(this.pagesFd, page, this.count * PAGE_SIZE);
      writeFully(this.digestsFd, digest, this.count * DIGEST_BYTES);
    } catch (error) {
      // Cut back to what is whole, so the store stays consistent, then say why.
      ftruncateSync(this.pagesFd, this.count * PAGE_SIZE);
      ftruncateSync(this.digestsFd, this.count * DIGEST_BYTES);
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(this.dir);
      throw error;
    }
    this.index.intern(digest, 0);
    this.count++;
    return true;
  }

  /**
   * Stores the pages of a batch (`digests`: 16 bytes each, `pages`: 4096 bytes each, same order) that
   * are not held yet, with one write per file: a batch of a thousand pages costs two system calls, not
   * two thousand. Returns the digests newly stored (16 bytes each, in store order: `digests` itself or
   * a view of this store's scratch, valid until the next putMany). Throws
   * DiskFullError when the disk is full, having stored none of the batch.
   */
  putMany(digests: Uint8Array, pages: Uint8Array): Uint8Array {
    const n = digests.length / DIGEST_BYTES;
    if (!Number.isInteger(n) || pages.length !== n * PAGE_SIZE) {
      throw new RangeError(`a batch has one ${PAGE_SIZE}-byte page per ${DIGEST_BYTES}-byte digest`);
    }
    const fresh: number[] = [];
    const seen = new DigestTable(Math.max(16, n));
    for (let i = 0; i < n; i++) {
      if (this.index.lookup(digests, i * DIGEST_BYTES) > 0 || seen.lookup(digests, i * DIGEST_BYTES) > 0)
        continue;
      seen.intern(digests, i * DIGEST_BYTES);
      fresh.push(i);
    }
    if (fresh.length === 0) return new Uint8Array(0);
    // All new (the common case): written as given. Else the new ones gathered into this store's
    // scratch arrays, reused from batch to batch.
    let newPages = pages;
    let newDigests = digests;
    if (fresh.length < n) {
      if (this.scratchPages.length < fresh.length * PAGE_SIZE) {
        this.scratchPages = new Uint8Array(n * PAGE_SIZE);
        this.scratchDigests = new Uint8Array(n * DIGEST_BYTES);
      }
      newPages = this.scratchPages.subarray(0, fresh.length * PAGE_SIZE);
      newDigests = this.scratchDigests.subarray(0, fresh.length * DIGEST_BYTES);
      fresh.forEach((i, k) => {
        newPages.set(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), k * PAGE_SIZE);
        newDigests.set(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), k * DIGEST_BYTES);
      });
    }
    try {
      writeFully(this.pagesFd, newPages, this.count * PAGE_SIZE);
      writeFully(this.digestsFd, newDigests, this.count * DIGEST_BYTES);
    } catch (error) {
      ftruncateSync(this.pagesFd, this.count * PAGE_SIZE);
      ftruncateSync(this.digestsFd, this.count * DIGEST_BYTES);
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(this.dir);
      throw error;
    }
    for (let k = 0; k < fresh.length; k++) this.index.intern(newDigests, k * DIGEST_BYTES);
    this.count += fresh.length;
    return newDigests;
  }

  /** Every digest held, in the order stored (for announcing them to a coordinator). */
  *digests(): Generator<Uint8Array> {
    for (let id = 1; id <= this.count; id++) yield this.index.digestOf(id).slice();
  }

  /** Makes everything stored so far durable. */
  flush(): void {
    fsyncSync(this.pagesFd);
    fsyncSync(this.digestsFd);
  }

  close(): void {
    closeSync(this.pagesFd);
    closeSync(this.digestsFd);
  }
}
