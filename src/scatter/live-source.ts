import { existsSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import type { DigestTable } from '../memory/digest-table.js';
import { DIGEST_BYTES, isZeroPage, PAGE_SIZE, ZERO_PAGE_ID, type VmPages } from '../memory/page.js';
import type { PageDigester } from '../memory/page-digest.js';
import { StreamParser, type RamBlock, type StreamRecord } from '../qemu/migration-stream.js';
import { connectQmp, type QmpClient } from '../qemu/qmp.js';
import type { ContentStore } from './content-store.js';

/**
 * The source side of live VMs: reading a running QEMU's memory through its own migration stream.
 *
 * Scan: QEMU migrates into a unix socket of ours; the first pass of precopy carries every page once
 * (zero pages as zero records), so once every page of every RAM block has been seen the migration is
 * cancelled and the guest never noticed beyond the copy's CPU cost. Each page is fingerprinted, and
 * the bytes of every distinct page are kept in a content store at the source for seeding.
 */
export class LiveSourceError extends VmscatterError {
  constructor(message: string) {
    super('VMS_LIVE', message, 7);
  }
}

export interface ScannedLiveVm {
  readonly pages: VmPages;
  /** How the memory was read: its shared memory-backend file, or a scan migration. */
  readonly method: 'memory-file' | 'migration';
  /** RAM blocks in stream order, with the first page index of each in `pages`. */
  readonly blocks: readonly { readonly block: RamBlock; readonly firstPage: number }[];
}

const SCAN_TIMEOUT_MS = 10 * 60_000;

/** Opens a unix socket at `path` for QEMU's outgoing stream and resolves with the first connection. */
export function streamListener(path: string): { accepted: Promise<net.Socket>; close: () => void } {
  rmSync(path, { force: true });
  const server = net.createServer();
  const accepted = new Promise<net.Socket>((resolve, reject) => {
    server.once('connection', (socket) => resolve(socket));
    server.once('error', reject);
  });
  server.listen(path);
  return {
    accepted,
    close: () => {
      server.close();
      rmSync(path, { force: true });
    },
  };
}

export async function connectSourceQmp(path: string, vm: string): Promise<QmpClient> {
  if (!existsSync(path))
    throw new LiveSourceError(`VM ${vm}: no QMP socket at ${path} (is the VM running, with -qmp there?)`);
  try {
    return await connectQmp(path, { connectTimeoutMs: 10_000 });
  } catch (error) {
    throw new LiveSourceError(`VM ${vm}: cannot reach its QEMU at ${path}: ${(error as Error).message}`);
  }
}

/**
 * Fingerprints a running VM's pages as they come (in any order, any number of times: the last copy of
 * a page wins) and keeps the bytes of every distinct page in the store, when there is one (a plan
 * keeps nothing).
 */
export class LivePageCollector {
  private pageTable = new Uint32Array(0);
  private seen = new Uint8Array(0);
  private covered = 0;
  private readonly digest = new Uint8Array(DIGEST_BYTES);
  private readonly batchDigests: Uint8Array[] = [];
  private readonly batchPages: Uint8Array[] = [];

  constructor(
    private readonly table: DigestTable,
    private readonly digester: PageDigester,
    private readonly store: ContentStore | undefined,
  ) {}

  /** Sizes the page table; every page of the VM must then be seen once before `complete`. */
  reset(pageCount: number): void {
    this.pageTable = new Uint32Array(pageCount);
    this.seen = new Uint8Array(pageCount);
    this.covered = 0;
  }

  get pageCount(): number {
    return this.pageTable.length;
  }

  get complete(): boolean {
    return this.covered === this.pageTable.length;
  }

  get coveredPages(): number {
    return this.covered;
  }

  /** Page `index` holds `data[offset..offset+PAGE_SIZE)`; a zero page may be given as `undefined`. */
  page(index: number, data: Uint8Array | undefined, offset = 0): void {
    let id = ZERO_PAGE_ID;
    if (data !== undefined && !isZeroPage(data, offset)) {
      const { digest, table, store } = this;
      this.digester.digestInto(data, offset, digest, 0);
      const known = table.lookup(digest);
      id = known > 0 ? known : table.intern(digest, 0);
      if (store !== undefined && !store.has(digest)) {
        this.batchDigests.push(digest.slice());
        this.batchPages.push(data.slice(offset, offset + PAGE_SIZE));
        if (this.batchDigests.length >= 1024) this.flush();
      }
    }
    this.pageTable[index] = id;
    if (!this.seen[index]) {
      this.seen[index] = 1;
      this.covered++;
    }
  }

  /** Stores what is batched; call once the scan is over. */
  flush(): void {
    const { batchDigests, batchPages } = this;
    if (batchDigests.length === 0 || this.store === undefined) return;
    const digests = new Uint8Array(batchDigests.length * DIGEST_BYTES);
    const pages = new Uint8Array(batchPages.length * PAGE_SIZE);
    batchDigests.forEach((d, i) => digests.set(d, i * DIGEST_BYTES));
    batchPages.forEach((p, i) => pages.set(p, i * PAGE_SIZE));
    this.store.putMany(digests, pages);
    batchDigests.length = 0;
    batchPages.length = 0;
  }

  pages(vm: string): VmPages {
    return { name: vm, pages: this.pageTable };
  }
}

/** What scanning a running VM needs, whichever way it is read. */
export interface LiveScanOptions {
  readonly vm: string;
  readonly qmp: QmpClient;
  /** Where a scan migration's socket goes. */
  readonly runDir: string;
  readonly table: DigestTable;
  readonly digester: PageDigester;
  /** Keeps the bytes of every distinct page (a job's scan; a plan keeps none). */
  readonly store?: ContentStore;
  /** Ctrl-C: the scan stops, and the guest is left as it was found. */
  readonly signal?: AbortSignal;
}

/** Scans a running VM's memory through a migration that is cancelled once every page was seen. */
export async function scanLiveVm(options: LiveScanOptions): Promise<ScannedLiveVm> {
  const { qmp } = options;
  mkdirSync(options.runDir, { recursive: true });
  const path = join(options.runDir, `${options.vm}.scan`);
  const listener = streamListener(path);
  const parser = new StreamParser({ allowMissingDescription: true });
  const collector = new LivePageCollector(options.table, options.digester, options.store);
  let blocks: { block: RamBlock; firstPage: number }[] = [];
  const baseOf = new Map<string, number>();
  const onRecord = (record: StreamRecord) => {
    if (record.kind === 'ram-blocks') {
      let total = 0;
      blocks = record.blocks.map((block) => {
        const entry = { block, firstPage: total };
        baseOf.set(block.name, total);
        total += Math.ceil(block.length / PAGE_SIZE);
        return entry;
      });
      collector.reset(total);
      return;
    }
    if (record.kind !== 'page' && record.kind !== 'zero') return;
    const index = baseOf.get(record.block)! + record.offset / PAGE_SIZE;
    collector.page(index, record.kind === 'page' ? record.data : undefined);
  };
  const before = (await qmp.execute('query-status')) as { status?: string };
  const parameters = (await qmp.execute('query-migrate-parameters')) as { 'downtime-limit'?: number };
  try {
    // A downtime limit of 0 keeps QEMU from switching over by itself once the first pass is done
    // (it still does when no page at all is dirty: the status check below covers that).
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': 0 });
    await qmp.execute('migrate', { uri: `unix:${path}` });
    const socket = await withTimeout(listener.accepted, 30_000, `VM ${options.vm}: QEMU did not connect`);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new LiveSourceError(`VM ${options.vm}: scan took over ${SCAN_TIMEOUT_MS / 1000} s`)),
        SCAN_TIMEOUT_MS,
      );
      const abort = () => {
        clearTimeout(timer);
        socket.destroy();
        reject(options.signal?.reason ?? new Error('interrupted'));
      };
      if (options.signal?.aborted) return abort();
      options.signal?.addEventListener('abort', abort, { once: true });
      socket.once('close', () => options.signal?.removeEventListener('abort', abort));
      socket.on('data', (chunk: Buffer) => {
        try {
          for (const record of parser.push(chunk)) onRecord(record);
        } catch (error) {
          clearTimeout(timer);
          socket.destroy();
          reject(error);
          return;
        }
        if (blocks.length > 0 && collector.complete) {
          clearTimeout(timer);
          socket.destroy();
          resolve();
        }
      });
      socket.once('close', () => {
        clearTimeout(timer);
        if (!collector.complete || blocks.length === 0)
          reject(
            new LiveSourceError(
              `VM ${options.vm}: the scan stream ended after ${collector.coveredPages} pages`,
            ),
          );
      });
    });
    collector.flush();
  } finally {
    await qmp.execute('migrate_cancel').catch(() => undefined);
    listener.close();
    try {
      await waitMigrationSettled(qmp);
    } finally {
      await restoreAfterScan(qmp, before.status, parameters['downtime-limit']);
    }
  }
  return { pages: collector.pages(options.vm), blocks, method: 'migration' };
}

/**
 * Leaves the VM as the scan found it: its downtime limit as it was, and running if it was running
 * (a scan migration that completed before it could be cancelled stopped the guest at the switch-over;
 * nothing was lost, the guest only paused for a moment).
 */
async function restoreAfterScan(qmp: QmpClient, status: string | undefined, downtimeLimit?: number) {
  if (downtimeLimit !== undefined)
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': downtimeLimit });
  if (status !== 'running') return;
  // Just after a completion QEMU may still be finishing it, when `cont` is refused: wait that out.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const now = (await qmp.execute('query-status')) as { status?: string };
    if (now.status === 'running') return;
    if (now.status !== 'finish-migrate' || Date.now() > deadline) return void (await qmp.execute('cont'));
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until the source's migration is no longer active (after a cancel or a completion). */
export async function waitMigrationSettled(qmp: QmpClient, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = (await qmp.execute('query-migrate')) as { status?: string };
    const status = info.status ?? 'none';
    if (!['setup', 'active', 'cancelling', 'pre-switchover', 'device', 'wait-unplug'].includes(status))
      return status;
    if (Date.now() > deadline) return status;
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new LiveSourceError(`${what} within ${ms / 1000} s`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}
