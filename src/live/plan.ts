import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { DigestTable } from '../memory/digest-table.js';
import type { FingerprintResult } from '../memory/fingerprint.js';
import { PAGE_SIZE, type VmPages } from '../memory/page.js';
import { PageDigester } from '../memory/page-digest.js';
import { scanTopology } from '../memory/scan.js';
import type { QemuMonitor } from '../qemu/qmp.js';
import { isRunning, sourceHostOf, type Topology } from '../topology/model.js';
import {
  chooseCopyStrategy,
  finalPassLimitMs,
  QEMU_DOWNTIME_LIMIT_MS,
  type CopyDecision,
} from './copy-strategy.js';
import { scanRunningVm } from './scan.js';
import { startDirtyRates } from './dirty-rate.js';
import { reachRunningVm, type ScannedLiveVm } from './source.js';

/**
 * What `vmscatter plan` learns of running VMs: their pages (read as a job would, from the shared
 * memory file, QEMU's process memory or pmemsave, so nothing moves), their dirty rates, and the copy
 * strategy a job would choose for each with the bandwidth it would get.
 */
export interface LiveCopyPlan {
  readonly vm: string;
  readonly scan: ScannedLiveVm['method'];
  readonly dirtyBytesPerSecond: number;
  /** The VM's share of the source's link: a job migrates every running VM at once. */
  readonly bandwidthBytesPerSecond: number;
  readonly copy: CopyDecision;
}

/** Scans every VM of a topology, running ones included, into one digest table. */
export async function scanForPlan(
  topology: Topology,
  options: {
    readonly key: Uint8Array;
    readonly onProgress?: (done: number, total: number) => void;
    /** Ctrl-C: a scan under way stops (the guest never noticed it). */
    readonly signal?: AbortSignal;
  },
): Promise<FingerprintResult & { readonly live: LiveCopyPlan[] }> {
  const running = topology.vms.flatMap((vm, v) => (isRunning(vm.source) ? [v] : []));
  const table = new DigestTable(1 << 16);
  const others = topology.vms.flatMap((vm, v) => (isRunning(vm.source) ? [] : [v]));
  const scanned = await scanTopology(
    { ...topology, vms: others.map((v) => topology.vms[v]!) },
    { key: options.key, table, ...(options.onProgress ? { onProgress: options.onProgress } : {}) },
  );
  const vms: VmPages[] = new Array(topology.vms.length);
  others.forEach((v, i) => (vms[v] = scanned.vms[i]!));
  const clients: QemuMonitor[] = [];
  const runDir = mkdtempSync(join(tmpdir(), 'vmscatter-plan-'));
  try {
    const digester = new PageDigester(options.key);
    const methods: ScannedLiveVm['method'][] = [];
    for (const v of running) {
      const vm = topology.vms[v]!;
      if (!isRunning(vm.source)) continue;
      const reached = await reachRunningVm(vm.name, vm.source, sourceHostOf(topology));
      clients.push(reached.monitor);
      const live = await scanRunningVm({
        vm: vm.name,
        qmp: reached.monitor,
        ...reached.process,
        runDir,
        table,
        digester,
        ...(options.signal ? { signal: options.signal } : {}),
      });
      vms[v] = live.pages;
      methods.push(live.method);
    }
    const dirty = await startDirtyRates(clients).rates();
    const source = topology.hosts.find((h) => h.role === 'source')!;
    const bandwidth = source.linkBitsPerSecond / 8 / Math.max(1, running.length);
    const live = running.map((v, i) => ({
      vm: topology.vms[v]!.name,
      scan: methods[i]!,
      dirtyBytesPerSecond: dirty[i]!,
      bandwidthBytesPerSecond: bandwidth,
      copy: chooseCopyStrategy({
        memoryBytes: vms[v]!.pages.length * PAGE_SIZE,
        dirtyBytesPerSecond: dirty[i]!,
        bandwidthBytesPerSecond: bandwidth,
        downtimeLimitMs: finalPassLimitMs(QEMU_DOWNTIME_LIMIT_MS),
      }),
    }));
    const totalPages = vms.reduce((sum, vm) => sum + vm.pages.length, 0);
    return { table, vms, totalPages, live };
  } catch (error) {
    if (options.signal?.aborted)
      throw new VmscatterError('VMS_INTERRUPTED', `${(error as Error).message}: the plan stopped`);
    throw error;
  } finally {
    for (const qmp of clients) await qmp.close().catch(() => undefined);
    rmSync(runDir, { recursive: true, force: true });
  }
}
