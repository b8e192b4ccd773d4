import {
  closeSync,
  existsSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { DigestTable } from '../memory/digest-table.js';
import { DIGEST_BYTES } from '../memory/page.js';
import { ContentStore, DiskFullError, PAGES_FILE } from './content-store.js';
import { ensurePrivateDir, openForUpdate, PRIVATE_FILE_MODE, readFully, writeFully } from './file-io.js';

/**
 * An agent's template store: the pages that occur in most VMs (OS images, libraries, zeroed slabs),
 * kept across jobs so a later job need not send them again. Bounded: `compact()` keeps the
 * `capacityPages` pages of highest weight, where a page's weight is the number of VMs that held it in the
 * job that last offered it (ties: the page offered most recently stays).
 *
 * On disk, under `dir`:
 *   CURRENT            the name of the live generation, e.g. "gen-000007\n"
 *   gen-000007/        a ContentStore (pages.bin, digests.bin) and weights.bin
 * weights.bin holds one 12-byte record per page, in the ContentStore's order: the weight (u32) and the
 * offer sequence number (u64, for "most recent"), little-endian. It is written after the page, so after a
 * crash it may be short: a page without a record has weight 0 and is the first to go at compaction.
 *
 * Compaction writes the kept pages into a new generation, `gen-000008.tmp/`, makes it durable, renames it
 * to `gen-000008/`, and then replaces CURRENT by renaming a new file over it: that rename is the commit.
 * A crash before it leaves CURRENT naming the old, untouched generation; a crash after it, the new,
 * complete one. Opening removes every other generation directory (leftovers of either case).
 *
 * Memory holds digest indexes and two numbers per page, never page bytes: about 21 + 21 + 12 bytes per
 * page (the ContentStore's index; this store's mirror of it, which maps a digest to its record, as
 * ContentStore does not expose its ids; the weight and sequence number). Compaction must run between jobs only: a page announced as held must stay until the
 * job that relies on it is over. One process at a time may open a store.
 */
export interface TemplateStoreOptions {
  /** Pages kept by `compact()` (between compactions the store may hold more). */
  readonly capacityPages: number;
}

const CURRENT = 'CURRENT';
const CURRENT_TEMP = 'CURRENT.tmp';

/**
 * The file holding the live generation's page bytes under a template store's directory (what a test
 * or benchmark watches grow while an agent receives pages); `none/pages.bin` before the first.
 */
export function livePagesFile(root: string): string {
  const current = join(root, CURRENT);
  const generation = existsSync(current) ? readFileSync(current, 'utf8').trim() : 'none';
  return join(root, generation, PAGES_FILE);
}
const WEIGHTS = 'weights.bin';
const RECORD_BYTES = 12;
/** Records apart that reweighMany still writes as one run (a file page of them). */
const RUN_GAP_RECORDS = Math.floor(4096 / RECORD_BYTES);
const GENERATION = /^gen-(\d{6,})$/;
const OWNED_ENTRY = /^gen-\d{6,}(\.tmp)?$/;
const MAX_WEIGHT = 2 ** 32 - 1;

function checkWeight(weight: number): void {
  if (!Number.isInteger(weight) || weight < 1 || weight > MAX_WEIGHT) {
    throw new RangeError(`page weight ${weight}: expected a whole number from 1 to 2^32-1`);
  }
}

/** One generation, open: its ContentStore, a mirror of its index (digest -> record) and the records. */
class Generation {
  readonly ids: DigestTable;
  weights: Uint32Array;
  sequences: Float64Array;
  latestSequence = 0;

  private constructor(
    readonly number: number,
    readonly pages: ContentStore,
    readonly weightsFd: number,
  ) {
    const count = pages.size;
    this.ids = new DigestTable(Math.max(1024, count));
    for (const digest of pages.digests()) this.ids.intern(digest, 0);
    // The weights file follows the pages: cut what is past them and a torn record, zero-fill what a
    // crash left out.
    const whole = Math.floor(fstatSync(weightsFd).size / RECORD_BYTES);
    ftruncateSync(weightsFd, Math.min(whole, count) * RECORD_BYTES);
    ftruncateSync(weightsFd, count * RECORD_BYTES);
    this.weights = new Uint32Array(Math.max(1024, count));
    this.sequences = new Float64Array(this.weights.length);
    const chunk = new Uint8Array(RECORD_BYTES * 65536);
    const view = new DataView(chunk.buffer);
    for (let first = 0; first < count; first += 65536) {
      const n = Math.min(65536, count - first);
      readFully(
        weightsFd,
        chunk,
        n * RECORD_BYTES,
        first * RECORD_BYTES,
        'template weights file shorter than expected',
      );
      for (let i = 0; i < n; i++) {
        this.weights[first + i] = view.getUint32(i * RECORD_BYTES, true);
        const sequence = Number(view.getBigUint64(i * RECORD_BYTES + 4, true));
        this.sequences[first + i] = sequence;
        this.latestSequence = Math.max(this.latestSequence, sequence);
      }
    }
  }

  static open(root: string, number: number): Generation {
    const dir = join(root, generationName(number));
    const pages = ContentStore.open(dir);
    let weightsFd: number | undefined;
    try {
      weightsFd = openForUpdate(join(dir, WEIGHTS));
      return new Generation(number, pages, weightsFd);
    } catch (error) {
      pages.close();
      if (weightsFd !== undefined) closeSync(weightsFd);
      if (error instanceof VmscatterError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      throw new VmscatterError('VMS_STORE', `${dir}: cannot open the template store (${code ?? error})`);
    }
  }

  /** Records the weight and sequence of page `id` (1-based), growing the arrays as needed. */
  record(id: number, weight: number, sequence: number): void {
    if (id > this.weights.length) {
      const length = Math.max(id, Math.floor(this.weights.length * 1.5));
      const weights = new Uint32Array(length);
      weights.set(this.weights);
      const sequences = new Float64Array(length);
      sequences.set(this.sequences);
      this.weights = weights;
      this.sequences = sequences;
    }
    this.weights[id - 1] = weight;
    this.sequences[id - 1] = sequence;
  }

  close(): void {
    this.pages.close();
    closeSync(this.weightsFd);
  }
}

export class TemplateStore {
  private nextSequence: number;
  private closed = false;

  private constructor(
    private readonly root: string,
    private live: Generation,
    readonly capacityPages: number,
  ) {
    this.nextSequence = live.latestSequence + 1;
  }

  /** Opens (creating if needed) the template store in `dir`, dropping what an interrupted compaction left. */
  static open(dir: string, options: TemplateStoreOptions): TemplateStore {
    const { capacityPages } = options;
    if (!Number.isInteger(capacityPages) || capacityPages < 0 || capacityPages > 2 ** 32 - 2) {
      throw new RangeError(`template store capacity ${capacityPages}: expected a whole number of pages`);
    }
    let generation: number;
    try {
      ensurePrivateDir(dir);
      generation = readCurrent(dir) ?? 0;
      removeLeftovers(dir, generation);
      if (generation === 0) {
        generation = 1;
        mkdirSync(join(dir, generationName(generation)), { mode: 0o700 });
        syncDirectory(dir);
        writeCurrent(dir, generation);
      }
    } catch (error) {
      if (error instanceof VmscatterError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      throw new VmscatterError('VMS_STORE', `${dir}: cannot open the template store (${code ?? error})`);
    }
    return new TemplateStore(dir, Generation.open(dir, generation), capacityPages);
  }

  /** Pages held (may exceed the capacity until the next `compact()`). */
  get size(): number {
    return this.live.pages.size;
  }

  holds(digest: Uint8Array): boolean {
    return this.live.ids.lookup(digest) > 0;
  }

  /** The page with this digest, or undefined. */
  get(digest: Uint8Array, into?: Uint8Array): Uint8Array | undefined {
    return this.live.pages.get(digest, into);
  }

  /** Reads the held pages among `count` digests into `into` (ContentStore.readMany). */
  readMany(digests: Uint8Array, count: number, into: Uint8Array, found: Uint8Array): void {
    this.live.pages.readMany(digests, count, into, found);
  }

  /** The weight recorded for a held page, or undefined. */
  weightOf(digest: Uint8Array): number | undefined {
    const id = this.live.ids.lookup(digest);
    return id > 0 ? this.live.weights[id - 1] : undefined;
  }

  /**
   * Offers a page that `weight` VMs held in the current job. A page not held is stored; for a page held
   * already, the weight is replaced (popularity now, not at some past job) and it counts as the most
   * recent. True when the page was stored. Throws DiskFullError when the disk is full.
   */
  offer(digest: Uint8Array, page: Uint8Array, weight: number): boolean {
    checkWeight(weight);
    const live = this.live;
    const stored = live.ids.lookup(digest) <= 0;
    if (stored) {
      live.pages.put(digest, page); // checks the sizes; on a full disk throws, having stored nothing
      live.ids.intern(digest, 0);
    }
    this.reweigh(digest, weight);
    return stored;
  }

  /**
   * Stores the pages of a batch not held yet (see ContentStore.putMany), each with `weight`, in one
   * write per file; pages held already keep their weight. Returns how many were stored.
   */
  offerMany(digests: Uint8Array, pages: Uint8Array, weight: number): number {
    checkWeight(weight);
    const live = this.live;
    const fresh = live.pages.putMany(digests, pages);
    const n = fresh.length / DIGEST_BYTES;
    if (n === 0) return 0;
    const records = new Uint8Array(n * RECORD_BYTES);
    const view = new DataView(records.buffer);
    let firstId = 0;
    for (let k = 0; k < n; k++) {
      const id = live.ids.intern(fresh, k * DIGEST_BYTES);
      if (k === 0) firstId = id;
      const sequence = this.nextSequence++;
      live.record(id, weight, sequence);
      view.setUint32(k * RECORD_BYTES, weight, true);
      view.setBigUint64(k * RECORD_BYTES + 4, BigInt(sequence), true);
    }
    try {
      // New pages take consecutive ids at the end, so their records are one contiguous write.
      writeFully(live.weightsFd, records, (firstId - 1) * RECORD_BYTES);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(this.root);
      throw error;
    }
    return n;
  }

  /**
   * Sets the weight of a held page (how many VMs of the current job hold it) and makes it the most
   * recent; false when the page is not held.
   */
  reweigh(digest: Uint8Array, weight: number): boolean {
    checkWeight(weight);
    const live = this.live;
    const id = live.ids.lookup(digest);
    if (id <= 0) return false;
    const sequence = this.nextSequence++;
    live.record(id, weight, sequence);
    const record = new Uint8Array(RECORD_BYTES);
    const view = new DataView(record.buffer);
    view.setUint32(0, weight, true);
    view.setBigUint64(4, BigInt(sequence), true);
    try {
      writeFully(live.weightsFd, record, (id - 1) * RECORD_BYTES);
    } catch (error) {
      // The page is held either way; only its weight may be lost (0 at the next opening).
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(this.root);
      throw error;
    }
    return true;
  }

  /**
   * Reweighs many pages at once: digest i of `digests` (16 bytes each) gets `weightOf(i)` (0: left
   * alone), in the order given. The records go to disk in runs of neighbouring ids, not one write per
   * page: a VM's manifest names tens of thousands of pages, and a write each held the agent's event
   * loop for seconds on a busy machine (its heartbeats starved, the coordinator took it for lost).
   * Returns how many were held.
   */
  reweighMany(digests: Uint8Array, weightOf: (i: number) => number): number {
    const live = this.live;
    const ids: number[] = [];
    for (let i = 0; i * DIGEST_BYTES < digests.length; i++) {
      const weight = weightOf(i);
      if (weight === 0) continue;
      checkWeight(weight);
      const id = live.ids.lookup(digests, i * DIGEST_BYTES);
      if (id <= 0) continue;
      live.record(id, weight, this.nextSequence++);
      ids.push(id);
    }
    ids.sort((a, b) => a - b);
    // Runs of ids closer than a file page apart are written whole (the records between are rewritten
    // with what memory holds of them, which is what the file holds).
    for (let start = 0; start < ids.length;) {
      let end = start;
      while (end + 1 < ids.length && ids[end + 1]! - ids[end]! <= RUN_GAP_RECORDS) end++;
      this.writeRecords(ids[start]!, ids[end]!);
      start = end + 1;
    }
    return ids.length;
  }

  /** Writes the records of ids first..last from memory. */
  private writeRecords(first: number, last: number): void {
    const live = this.live;
    const records = new Uint8Array((last - first + 1) * RECORD_BYTES);
    const view = new DataView(records.buffer);
    for (let id = first; id <= last; id++) {
      const at = (id - first) * RECORD_BYTES;
      view.setUint32(at, live.weights[id - 1]!, true);
      view.setBigUint64(at + 4, BigInt(live.sequences[id - 1]!), true);
    }
    try {
      writeFully(live.weightsFd, records, (first - 1) * RECORD_BYTES);
    } catch (error) {
      // The pages are held either way; only their weights may be lost (0 at the next opening).
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(this.root);
      throw error;
    }
  }

  /**
   * When over capacity, keeps the `capacityPages` pages of highest weight (ties: most recently offered)
   * in a new generation and switches to it atomically; returns the number of pages dropped (0 when within
   * capacity). Needs disk space for the kept pages beside the current ones; when that fails
   * (DiskFullError) the store is as it was. Call between jobs only.
   */
  compact(): number {
    const old = this.live;
    const count = old.pages.size;
    if (count <= this.capacityPages) return 0;
    const { weights, sequences } = old;
    const order = new Uint32Array(count);
    for (let i = 0; i < count; i++) order[i] = i;
    order.sort((a, b) => weights[b]! - weights[a]! || sequences[b]! - sequences[a]!);
    const kept = order.subarray(0, this.capacityPages);
    kept.sort((a, b) => sequences[a]! - sequences[b]!); // oldest first, as they were offered

    const next = old.number + 1;
    const temp = join(this.root, `${generationName(next)}.tmp`);
    const final = join(this.root, generationName(next));
    try {
      rmSync(temp, { recursive: true, force: true });
      writeGeneration(temp, old, kept);
      renameSync(temp, final);
      syncDirectory(this.root);
    } catch (error) {
      rmSync(temp, { recursive: true, force: true });
      rmSync(final, { recursive: true, force: true });
      throw storeError(this.root, error);
    }
    try {
      writeCurrent(this.root, next); // the commit
    } catch (error) {
      rmSync(join(this.root, CURRENT_TEMP), { force: true });
      // The rename may have happened with only the directory sync failing: follow CURRENT.
      if (readCurrent(this.root) !== next) {
        rmSync(final, { recursive: true, force: true });
        throw storeError(this.root, error);
      }
    }
    old.close();
    this.live = Generation.open(this.root, next);
    rmSync(join(this.root, generationName(old.number)), { recursive: true, force: true });
    return count - kept.length;
  }

  /** Every digest held, in the order stored (for announcements; see digest-set.ts). */
  *digests(): Generator<Uint8Array> {
    const ids = this.live.ids;
    for (let id = 1; id <= ids.size; id++) yield ids.digestOf(id).slice();
  }

  /** Every digest held, packed into one array of size * 16 bytes (no object per digest). */
  packedDigests(): Uint8Array {
    const ids = this.live.ids;
    const out = new Uint8Array(ids.size * DIGEST_BYTES);
    for (let id = 1; id <= ids.size; id++) out.set(ids.digestOf(id), (id - 1) * DIGEST_BYTES);
    return out;
  }

  /** Makes everything offered so far durable. */
  flush(): void {
    this.live.pages.flush();
    fsyncSync(this.live.weightsFd);
  }

  /** Flushes and closes the store (a second call does nothing). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.flush();
    } finally {
      this.live.close();
    }
  }
}

/** Writes the pages `kept` (0-based indices into `from`) as a complete, durable generation in `dir`. */
function writeGeneration(dir: string, from: Generation, kept: Uint32Array): void {
  const target = ContentStore.open(dir);
  const records = new Uint8Array(kept.length * RECORD_BYTES);
  const view = new DataView(records.buffer);
  try {
    kept.forEach((index, k) => {
      const digest = from.ids.digestOf(index + 1);
      const page = from.pages.get(digest);
      if (page === undefined) throw new VmscatterError('VMS_STORE', `${dir}: template index out of step`);
      target.put(digest, page);
      view.setUint32(k * RECORD_BYTES, from.weights[index]!, true);
      view.setBigUint64(k * RECORD_BYTES + 4, BigInt(from.sequences[index]!), true);
    });
    target.flush();
  } finally {
    target.close();
  }
  const fd = openSync(join(dir, WEIGHTS), 'w', PRIVATE_FILE_MODE);
  try {
    writeFully(fd, records, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  syncDirectory(dir);
}

function storeError(root: string, error: unknown): unknown {
  if (error instanceof DiskFullError || (error as NodeJS.ErrnoException).code === 'ENOSPC') {
    return new DiskFullError(root);
  }
  return error;
}

function generationName(generation: number): string {
  return `gen-${String(generation).padStart(6, '0')}`;
}

/** The live generation named by CURRENT, or undefined when there is none yet (a new store). */
function readCurrent(root: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(join(root, CURRENT), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const match = GENERATION.exec(text.trim());
  const generation = match === null ? NaN : Number(match[1]);
  if (!Number.isSafeInteger(generation) || generation < 1) {
    throw new VmscatterError('VMS_STORE', `${join(root, CURRENT)}: not a template store generation`);
  }
  let entries: string[];
  try {
    entries = readdirSync(join(root, generationName(generation)));
  } catch {
    throw new VmscatterError(
      'VMS_STORE',
      `${root}: ${generationName(generation)} named by CURRENT is missing`,
      5,
    );
  }
  if (!entries.includes('pages.bin') && generation > 1) {
    throw new VmscatterError('VMS_STORE', `${root}: ${generationName(generation)} is not a content store`);
  }
  return generation;
}

/** Removes generations other than the live one and half-written ones: leftovers of interrupted compactions. */
function removeLeftovers(root: string, live: number): void {
  for (const entry of readdirSync(root)) {
    if (entry === CURRENT_TEMP || (OWNED_ENTRY.test(entry) && entry !== generationName(live))) {
      rmSync(join(root, entry), { recursive: true, force: true });
    }
  }
}

/** Replaces CURRENT atomically: a new file made durable, renamed over the old, and the rename made durable. */
function writeCurrent(root: string, generation: number): void {
  const temp = join(root, CURRENT_TEMP);
  const fd = openSync(temp, 'w', PRIVATE_FILE_MODE);
  try {
    writeFully(fd, new TextEncoder().encode(`${generationName(generation)}\n`), 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, join(root, CURRENT));
  syncDirectory(root);
}

function syncDirectory(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
