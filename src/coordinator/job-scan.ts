import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { InputError, VmscatterError } from '../errors.js';
import { DigestTable } from '../memory/digest-table.js';
import { fingerprintVms } from '../memory/fingerprint.js';
import { PAGE_SIZE, type VmPages } from '../memory/page.js';
import { deriveDigestKey, PageDigester } from '../memory/page-digest.js';
import { pageCountOf } from '../memory/page-source.js';
import type { QemuMonitor } from '../qemu/qmp.js';
import { isRunning, sourceHostOf, type Topology } from '../topology/model.js';
import { ContentStore } from '../store/content-store.js';
import { imageSha256Beside } from '../memory/image-hash.js';
import { scanRunningVm } from '../live/scan.js';
import { reachRunningVm, type ScannedChecks, type ScannedLiveVm } from '../live/source.js';
import { SourcePages, type PageFile } from '../store/source-pages.js';

/**
 * Phase 3 for a whole job: image VMs fingerprinted from their files (and their SHA-256 taken, which
 * the rebuilt images are checked against), running VMs from their shared memory-backend file when they
 * have one, else from QEMU's process memory or pmemsave (live/scan.ts), all into one digest
 * table so pages shared between the two kinds are found too.
 */
export interface JobScan {
  readonly table: DigestTable;
  readonly vms: VmPages[];
  /** SHA-256 of each image VM's file; '' for a running VM (its stream is verified instead). */
  readonly sha256: string[];
  /** QMP of each running VM's source QEMU, by VM index. */
  readonly qmp: Map<number, QemuMonitor>;
  /** How each running VM was scanned, by VM index. */
  readonly liveScans: Map<number, ScannedLiveVm['method']>;
  /** Each running VM's page checks from its scan, where the addon made them, by VM index. */
  readonly liveChecks: Map<number, ScannedChecks>;
  readonly pages: SourcePages;
  close(): Promise<void>;
}

/** Running VMs scanned at once (see scanJob). */
const SCANS_AT_ONCE = 2;

export async function scanJob(
  topology: Topology,
  options: {
    readonly secret: Uint8Array;
    readonly runDir: string;
    readonly onProgress?: (done: number, total: number) => void;
    /** Running VM v's monitor answers and the guest runs: before its memory is read. */
    readonly onReached?: (v: number, monitor: QemuMonitor) => void;
    /** Ctrl-C: a scan under way stops (the guest never noticed it). */
    readonly signal?: AbortSignal;
    /** Running VMs that moved in an earlier job (they run at a target): not read, all zero pages. */
    readonly moved?: ReadonlySet<number>;
    /**
     * A running VM's source found stopped after a migration's switch-over (the coordinator of that
     * job died between the source's completion and the target's resume) is resumed there when this
     * says so: every target answered, and none runs the VM. Otherwise the scan fails naming it.
     */
    readonly mayResumeStopped?: (v: number) => boolean;
    readonly onWarning?: (line: string) => void;
  },
): Promise<JobScan> {
  const key = deriveDigestKey(options.secret);
  const table = new DigestTable(1 << 16);
  const images: { v: number; path: string }[] = [];
  const live: number[] = [];
  topology.vms.forEach((vm, v) => {
    if (vm.source.kind === 'image') images.push({ v, path: vm.source.path });
    else if (isRunning(vm.source)) live.push(v);
    else throw new InputError(`VM ${vm.name}: a synthetic source has no image yet (write it out first)`);
  });
  for (const { v, path } of images) {
    const vm = topology.vms[v]!;
    const bytes = pageCountOf({ kind: 'image', path }) * PAGE_SIZE;
    if (bytes !== vm.memoryBytes)
      throw new InputError(
        `VM ${vm.name}: memory is ${vm.memoryBytes} bytes in ${topology.file} but its image holds ${bytes}`,
      );
  }
  // The whole images' SHA-256s (what each target's rebuild is checked against) beside the pages'.
  const imageHashes = imageSha256Beside(images.map(({ path }) => path));
  imageHashes.catch(() => undefined); // awaited below; a failed fingerprint must not leave it unhandled
  const fingerprinted = await fingerprintVms(
    images.map(({ v, path }) => ({ name: topology.vms[v]!.name, source: { kind: 'image', path } })),
    { key, table, ...(options.onProgress ? { onProgress: options.onProgress } : {}) },
  );
  const vms: VmPages[] = new Array(topology.vms.length);
  const sha256 = new Array<string>(topology.vms.length).fill('');
  const hashes = await imageHashes.catch((error: unknown) => {
    throw new InputError(`hashing the images: ${(error as Error).message}`);
  });
  images.forEach(({ v }, i) => {
    vms[v] = fingerprinted.vms[i]!;
    sha256[v] = hashes[i]!;
  });
  const qmp = new Map<number, QemuMonitor>();
  const liveScans = new Map<number, ScannedLiveVm['method']>();
  const liveChecks = new Map<number, ScannedChecks>();
  const memoryFiles = new Map<number, PageFile>();
  // The running VMs' pages of this job only: what an earlier job kept is of no use now.
  const storeDir = join(options.runDir, 'source-pages');
  if (live.length > 0) rmSync(storeDir, { recursive: true, force: true });
  const store = live.length > 0 ? ContentStore.open(storeDir) : undefined;
  // One scan's failure stops the others (their QMP clients are closed below).
  const failed = new AbortController();
  const stopOnCaller = () => failed.abort(options.signal?.reason);
  if (options.signal?.aborted) stopOnCaller();
  options.signal?.addEventListener('abort', stopOnCaller, { once: true });
  try {
    const digester = new PageDigester(key);
    const scanOne = async (v: number) => {
      const vm = topology.vms[v]!;
      if (!isRunning(vm.source)) return;
      if (options.moved?.has(v)) {
        vms[v] = { name: vm.name, pages: new Uint32Array(Math.ceil(vm.memoryBytes / PAGE_SIZE)) };
        return;
      }
      const reached = await reachRunningVm(vm.name, vm.source, sourceHostOf(topology));
      qmp.set(v, reached.monitor);
      // A libvirt source left stopped by a failed switch-over is libvirt's to resume (its migration
      // failed with our stream), not ours.
      if (vm.source.kind === 'qemu')
        await resumeIfStoppedBySwitchOver(
          reached.monitor,
          vm.name,
          () => options.mayResumeStopped?.(v) ?? false,
          options.onWarning,
        );
      options.onReached?.(v, reached.monitor);
      const scanned = await scanRunningVm({
        vm: vm.name,
        qmp: reached.monitor,
        ...reached.process,
        runDir: options.runDir,
        table,
        digester,
        store: store!,
        signal: failed.signal,
      });
      vms[v] = scanned.pages;
      liveScans.set(v, scanned.method);
      if (scanned.checks) liveChecks.set(v, scanned.checks);
      if (scanned.memory)
        memoryFiles.set(v, {
          ...scanned.memory,
          changing: true,
          ...(scanned.checks ? { checks: scanned.checks.checks } : {}),
        });
    };
    // Two at a time: each keeps a thread of the pool reading and digesting its memory while the
    // event loop files what the other found, so both cores work (one VM at a time used one).
    let next = 0;
    const scanning = Array.from({ length: Math.min(SCANS_AT_ONCE, live.length) }, async () => {
      while (next < live.length && !failed.signal.aborted) await scanOne(live[next++]!);
    });
    const outcomes = await Promise.allSettled(
      scanning.map((p) => p.catch((error: unknown) => (failed.abort(error), Promise.reject(error)))),
    );
    const rejected = outcomes.find((o) => o.status === 'rejected');
    if (rejected) throw failed.signal.reason ?? rejected.reason;
  } catch (error) {
    for (const client of qmp.values()) await client.close().catch(() => undefined);
    store?.close();
    if (options.signal?.aborted)
      throw new VmscatterError(
        'VMS_INTERRUPTED',
        `${(error as Error).message} while scanning: nothing moved, every VM runs on at its source`,
        130,
      );
    throw error;
  } finally {
    options.signal?.removeEventListener('abort', stopOnCaller);
  }
  const pages = new SourcePages(
    vms,
    table,
    topology.vms.map((vm, v) =>
      vm.source.kind === 'image' ? { path: vm.source.path, base: 0, changing: false } : memoryFiles.get(v),
    ),
    key,
    store,
  );
  return {
    table,
    vms,
    sha256,
    qmp,
    liveScans,
    liveChecks,
    pages,
    close: async () => {
      pages.close();
      store?.close();
      for (const client of qmp.values()) await client.close().catch(() => undefined);
    },
  };
}

/**
 * A source QEMU in 'postmigrate' completed a migration whose target then never ran the VM (its
 * coordinator died in between, and the target's agent quit the paused destination): resumed here, it
 * runs again where it was, with every byte it had. Without proof that no target runs it, it stays.
 */
async function resumeIfStoppedBySwitchOver(
  qmp: QemuMonitor,
  vm: string,
  mayResume: () => boolean,
  onWarning?: (line: string) => void,
): Promise<void> {
  const { status } = (await qmp.execute('query-status')) as { status?: string };
  if (status !== 'postmigrate') return;
  if (!mayResume())
    throw new VmscatterError(
      'VMS_LIVE',
      `VM ${vm}: its source is stopped after a migration ('postmigrate') and not every target answered, ` +
        'so whether one runs it is unknown: nothing is done to it (start the missing agents and run again)',
    );
  await qmp.execute('cont');
  onWarning?.(
    `VM ${vm}: its source was stopped after an interrupted switch-over and no target runs it: resumed at its source`,
  );
}
