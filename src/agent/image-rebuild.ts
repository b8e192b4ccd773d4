import { createHash } from 'node:crypto';
import { closeSync, fsync, ftruncateSync, openSync, rmSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { promisify } from 'node:util';
import { VmscatterError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import { DiskFullError } from '../store/content-store.js';
import { writeFully, PRIVATE_FILE_MODE } from '../store/file-io.js';
import { ZERO_ENTRY } from '../wire/manifest.js';

/**
 * Rebuilds a VM's memory image at a target from its manifest and the pages the target holds, and
 * verifies it. Zero pages are never written (the file is sparse), the image is hashed in page order as
 * it is written, and it only takes its final name when its digest equals the source's: a half-written
 * or wrong image is never left where a finished one would be.
 */
export interface RebuildRequest {
  /** Where the finished image goes. */
  readonly path: string;
  /** Page entries from the manifest: a unique-page index, or ZERO_ENTRY. */
  readonly entries: Int32Array;
  /** The bytes of unique page `index`, or undefined when the target does not hold it. */
  readonly pageFor: (index: number) => Uint8Array | undefined;
  /**
   * The bytes of many unique pages at once (`count` indices into `into`, page k at k * PAGE_SIZE;
   * found[k] = 1 where held), where the store reads neighbours together (ContentStore.readMany):
   * a run of the image costs a few reads instead of one per page. Without it, `pageFor` serves each.
   */
  readonly readMany?: (indices: Int32Array, count: number, into: Uint8Array, found: Uint8Array) => void;
  /** SHA-256 of the whole image at the source (hex). */
  readonly expectedSha256: string;
  /** How bytes reach the file: writeFully, unless a test makes the disk fill up. */
  readonly write?: (fd: number, bytes: Uint8Array, position: number) => void;
  /** The job ended: the rebuild stops and leaves nothing (a job's end may come mid-rebuild). */
  readonly signal?: AbortSignal;
}

export interface RebuildResult {
  readonly sha256: string;
  readonly zeroPages: number;
  readonly writtenPages: number;
}

export class RebuildError extends VmscatterError {
  constructor(message: string) {
    super('VMS_REBUILD', message);
  }
}

const zeroPage = new Uint8Array(PAGE_SIZE);
const RUN_PAGES = 256;
/**
 * The event loop runs between runs of this many pages (4 MiB): a rebuild of gigabytes on a busy CPU
 * takes seconds, and the agent's control channel must keep its heartbeats going meanwhile, or the
 * coordinator takes the agent for lost.
 */
const YIELD_PAGES = 1024;
const fsyncAsync = promisify(fsync);
/** Entries whose pages are read ahead together (ReadAhead). */
const READ_AHEAD_PAGES = 1024;

/** The pages of a stretch of the manifest, read in one batch; handed out in the stretch's order. */
class ReadAhead {
  private readonly indices = new Int32Array(READ_AHEAD_PAGES);
  private readonly pages = new Uint8Array(READ_AHEAD_PAGES * PAGE_SIZE);
  private readonly found = new Uint8Array(READ_AHEAD_PAGES);
  private count = 0;
  private taken = 0;

  constructor(
    private readonly readMany: (
      indices: Int32Array,
      count: number,
      into: Uint8Array,
      found: Uint8Array,
    ) => void,
  ) {}

  /** Reads the non-zero entries of `entries`. */
  read(entries: Int32Array): void {
    this.count = 0;
    this.taken = 0;
    for (const entry of entries) if (entry !== ZERO_ENTRY) this.indices[this.count++] = entry;
    if (this.count > 0) this.readMany(this.indices, this.count, this.pages, this.found);
  }

  /** The next non-zero entry's page, or undefined when it is not held. */
  next(): Uint8Array | undefined {
    const k = this.taken++;
    return this.found[k] === 1 ? this.pages.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE) : undefined;
  }
}

export async function rebuildImage(request: RebuildRequest): Promise<RebuildResult> {
  const partial = `${request.path}.partial`;
  const write = request.write ?? writeFully;
  const fd = openSync(partial, 'w', PRIVATE_FILE_MODE);
  let finished = false;
  try {
    ftruncateSync(fd, request.entries.length * PAGE_SIZE);
    const hash = createHash('sha256');
    let zeroPages = 0;
    // Runs of consecutive non-zero pages are gathered and written at once: one system call per run
    // (up to 1 MiB), not per page; zero runs are skipped, leaving holes.
    const run = new Uint8Array(RUN_PAGES * PAGE_SIZE);
    let runStart = 0;
    let runPages = 0;
    const flush = () => {
      if (runPages > 0) write(fd, run.subarray(0, runPages * PAGE_SIZE), runStart * PAGE_SIZE);
      runPages = 0;
    };
    const ahead = request.readMany ? new ReadAhead(request.readMany) : undefined;
    for (let page = 0; page < request.entries.length; page++) {
      if (page % YIELD_PAGES === YIELD_PAGES - 1) {
        await yieldToEventLoop();
        if (request.signal?.aborted) throw new RebuildError(`${request.path}: stopped, the job ended`);
      }
      if (ahead && page % READ_AHEAD_PAGES === 0)
        ahead.read(request.entries.subarray(page, page + READ_AHEAD_PAGES));
      const entry = request.entries[page]!;
      if (entry === ZERO_ENTRY) {
        zeroPages++;
        hash.update(zeroPage);
        flush();
        continue;
      }
      const bytes = ahead ? ahead.next() : request.pageFor(entry);
      if (!bytes)
        throw new RebuildError(`${request.path}: page ${page} needs unique page ${entry}, which is not held`);
      hash.update(bytes);
      if (runPages === RUN_PAGES) flush();
      if (runPages === 0) runStart = page;
      run.set(bytes, runPages++ * PAGE_SIZE);
    }
    flush();
    // In the thread pool: flushing a large image to disk takes a while.
    await fsyncAsync(fd);
    const sha256 = hash.digest('hex');
    if (sha256 !== request.expectedSha256) {
      throw new RebuildError(
        `${request.path}: rebuilt image digest ${sha256} differs from the source's ${request.expectedSha256}`,
      );
    }
    if (request.signal?.aborted) throw new RebuildError(`${request.path}: stopped, the job ended`);
    closeSync(fd);
    finished = true;
    // In the thread pool too: renaming over the image an earlier job left can take seconds on a busy
    // machine (under two busy loops, 1.2 s of an agent's CPU profile was this call, and VMs took 6-10 s
    // each), and on the event loop it held the agent's heartbeats with it.
    await rename(partial, request.path);
    return { sha256, zeroPages, writtenPages: request.entries.length - zeroPages };
  } catch (error) {
    if (!finished) closeSync(fd);
    rmSync(partial, { force: true });
    if ((error as NodeJS.ErrnoException).code === 'ENOSPC')
      throw new DiskFullError(request.path, 'writing the VM image');
    throw error;
  }
}
