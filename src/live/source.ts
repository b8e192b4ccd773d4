import { existsSync } from 'node:fs';
import { VmscatterError } from '../errors.js';
import type { DigestTable } from '../memory/digest-table.js';
import { DIGEST_BYTES, isZeroPage, PAGE_SIZE, ZERO_PAGE_ID, type VmPages } from '../memory/page.js';
import { PAGE_CHECK_BYTES, type PageDigester } from '../memory/page-digest.js';
import type { GuestRamMethod } from '../qemu/guest-ram.js';
import { connectQmp, type QemuMonitor, type QmpClient } from '../qemu/qmp.js';
import { LibvirtMonitor } from '../libvirt/monitor.js';
import { domainPid, domainState } from '../libvirt/domain.js';
import type { Host, RunningVmSource } from '../topology/model.js';
import type { ContentStore } from '../store/content-store.js';
import { copyBytes } from '../copy-bytes.js';

/**
 * The source side of live VMs: reaching a running QEMU, and collecting the fingerprints (and, for a
 * job, the bytes) of its pages as a scan reads them (scan.ts).
 */
export class LiveSourceError extends VmscatterError {
  constructor(message: string) {
    super('VMS_LIVE', message);
  }
}

export interface ScannedLiveVm {
  readonly pages: VmPages;
  /** How the memory was read (qemu/guest-ram.ts). */
  readonly method: GuestRamMethod;
  /**
   * Where page i of `pages` can be read again while the VM runs (at `base + i * PAGE_SIZE` of
   * `path`: its memory file or its QEMU's process memory); undefined when it was read by pmemsave,
   * whose pages were kept in the store instead. What is read there later may have changed since.
   */
  readonly memory?: GuestMemoryFile;
  /** Each page's check as the scan read it (PageDigester.digestChecked), where the addon made them. */
  readonly checks?: ScannedChecks;
}

/**
 * The checks of a scanned VM's main RAM block (`block`, as QEMU's stream names it): page i's at
 * checks[8 i..], 0 where there is none (a zero page, or one the stream found changed). With the scan's
 * page table they give a page's digest without hashing it again while its check holds.
 */
export interface ScannedChecks {
  readonly block: string;
  readonly checks: Uint8Array;
}

/** A running guest's RAM block as a file: page i at byte `base + i * PAGE_SIZE` of `path`. */
export interface GuestMemoryFile {
  readonly path: string;
  readonly base: number;
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
 * A running VM's monitor, and how its QEMU process is found (its QMP socket, or libvirt's pid file):
 * a QEMU of its own through its QMP socket, a libvirt domain through the source's libvirt, which must
 * run it.
 */
export async function reachRunningVm(
  name: string,
  source: RunningVmSource,
  sourceHost: Host,
): Promise<{ monitor: QemuMonitor; process: { qmpSocket: string } | { pid: number } }> {
  if (source.kind === 'qemu')
    return { monitor: await connectSourceQmp(source.qmp, name), process: { qmpSocket: source.qmp } };
  // The topology lets a libvirt domain be only where the source host has a libvirt (validate.ts).
  const uri = sourceHost.libvirt!;
  const state = await domainState(uri, source.domain);
  if (state !== 'running' && state !== 'paused')
    throw new LiveSourceError(
      state === 'absent'
        ? `VM ${name}: no domain ${source.domain} at the source's libvirt ${uri} (moved already, or a typo?)`
        : `VM ${name}: domain ${source.domain} at ${uri} is '${state}', not running: nothing to migrate`,
    );
  return { monitor: new LibvirtMonitor(uri, source.domain), process: { pid: domainPid(source.domain) } };
}

/**
 * Fingerprints a running VM's pages as they come (in any order, any number of times: the last copy of
 * a page wins) and keeps the bytes of every distinct page in the store, when there is one (a plan
 * keeps nothing).
 */
export class LivePageCollector {
  private pageTable = new Uint32Array(0);
  /** Page i's check at [8 i..] (PageDigester.scanPages), 0 where none was made. */
  private pageChecks = new Uint8Array(0);
  private readonly digest = new Uint8Array(DIGEST_BYTES);
  private readonly batchDigests: Uint8Array[] = [];
  private readonly batchPages: Uint8Array[] = [];

  constructor(
    private readonly table: DigestTable,
    private readonly digester: PageDigester,
    private readonly store: ContentStore | undefined,
  ) {}

  /** Sizes the page table: a page never given to `page` stays a zero page. */
  reset(pageCount: number): void {
    this.pageTable = new Uint32Array(pageCount);
    this.pageChecks = new Uint8Array(pageCount * PAGE_CHECK_BYTES);
  }

  /** Where scanPages writes the checks of the pages from page `first` on (a view of the table). */
  checksFrom(first: number): Uint8Array {
    return this.pageChecks.subarray(first * PAGE_CHECK_BYTES);
  }

  /** Page `index` holds `data[offset..offset+PAGE_SIZE)`; a zero page may be given as `undefined`. */
  page(index: number, data: Uint8Array | undefined, offset = 0): void {
    if (data === undefined || isZeroPage(data, offset)) this.pageTable[index] = ZERO_PAGE_ID;
    else {
      this.digester.digestInto(data, offset, this.digest, 0);
      this.digested(index, this.digest, data, offset);
    }
  }

  /** Page `index`, not a zero page, holds `data[offset..offset+PAGE_SIZE)` of digest `digest`. */
  digested(index: number, digest: Uint8Array, data: Uint8Array, offset: number): void {
    const { table, store } = this;
    const known = table.lookup(digest);
    this.pageTable[index] = known > 0 ? known : table.intern(digest, 0);
    if (store !== undefined && !store.has(digest)) {
      this.batchDigests.push(copyBytes(digest));
      this.batchPages.push(copyBytes(data, offset, offset + PAGE_SIZE));
      if (this.batchDigests.length >= 1024) this.flush();
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

  checks(block: string): ScannedChecks {
    return { block, checks: this.pageChecks };
  }
}

/** What scanning a running VM needs, whichever way it is read. */
export interface LiveScanOptions {
  readonly vm: string;
  readonly qmp: QemuMonitor;
  /** Its QMP socket (finds the QEMU process, whose memory is the fastest to read). */
  readonly qmpSocket?: string;
  /** Its QEMU's pid, where known otherwise (a libvirt domain's). */
  readonly pid?: number;
  /** Where QEMU may write pmemsave output (a private directory is made below it). */
  readonly runDir: string;
  readonly table: DigestTable;
  readonly digester: PageDigester;
  /**
   * Keeps the bytes of every distinct page that cannot be read again later (a job's scan by pmemsave;
   * a plan keeps none, and a VM whose memory is a file to this process is read again at seeding).
   */
  readonly store?: ContentStore;
  /** Ctrl-C: the scan stops (the guest never noticed it). */
  readonly signal?: AbortSignal;
}
