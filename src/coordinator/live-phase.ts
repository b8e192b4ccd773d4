import { DigestTable } from '../memory/digest-table.js';
import { PAGE_SIZE } from '../memory/page.js';
import { deriveDigestKey, PageDigester } from '../memory/page-digest.js';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import { isRunning, type Host, type RunningVmSource, type Topology } from '../topology/model.js';
import type { AgentLink } from '../wire/agent-link.js';
import type { JobScan } from './job-scan.js';
import type { ScannedLiveVm } from '../live/source.js';
import type { SendRound } from '../plan/job-work.js';
import {
  chooseCopyStrategy,
  finalPassLimitMs,
  QEMU_DOWNTIME_LIMIT_MS,
  type CopyDecision,
} from '../live/copy-strategy.js';
import { startDirtyRates, type DirtyRateProbe } from '../live/dirty-rate.js';
import { migrateLiveVm, NOTHING_MOVED, STEP_TIMEOUT_MS, type LiveMigrationResult } from '../live/migrate.js';
import type { MigrationSource } from '../live/migration-source.js';
import { qemuMigrationSource } from '../live/source-qemu.js';
import { libvirtMigrationSource } from '../live/source-libvirt.js';
import type { CopyStrategy } from '../live/copy-strategy.js';
import type { ScanKnowledge } from '../live/encoder.js';
import type { QemuMonitor } from '../qemu/qmp.js';
import { SwitchoverGate, WireBudget } from '../live/flow.js';
import type { FullPageCodec } from '../live/batch.js';
import { ZstdRuns } from '../memory/batch-zstd.js';
import type { CompressionMode } from '../memory/page-codec.js';

/**
 * Phase 6 for running VMs: all at once by default (`maxParallel` bounds it), sharing the source's link
 * (one budget on the bytes that cross it, WireBudget), each with
 * the copy strategy its measured dirty rate calls for, and each sent by reference to what its target
 * holds: pages announced before the job, and pages multicast to it in rounds it reported complete.
 */
export async function migrateLiveVms(options: {
  readonly pending: readonly number[];
  readonly topology: Topology;
  readonly scan: JobScan;
  readonly plan: ScatterPlan;
  readonly links: readonly AgentLink[];
  readonly runDir: string;
  readonly secret: Uint8Array;
  readonly holds: (target: number, digest: Uint8Array) => boolean;
  readonly bandwidthBytesPerSecond: number;
  /**
   * How each target's stream compresses pages sent in full (by target index; 'none' when the job's
   * compression is off): each stream is capped at its share of the link, below what either codec
   * compresses on one core (batch-zstd.ts, page-codec.ts).
   */
  readonly codecOf: (target: number) => FullPageCodec;
  readonly onVerdict: (done: number, total: number) => void;
  /** How long a VM may be down for its switch-over (ms; default 300): QEMU gets finalPassLimitMs of it. */
  readonly downtimeLimitMs?: number;
  /** Migrations at once (default: all; they share the source's link). */
  readonly maxParallel?: number;
  /**
   * Dirty rates of `pending`'s VMs in that order, measured since the scan reached them
   * (DirtyRatesAsReached); measured here otherwise.
   */
  readonly dirtyRates?: DirtyRateProbe;
  /** Seconds allowed per GiB of guest memory, and what happens on expiry. */
  readonly timeoutPerGiB?: { readonly seconds: number; readonly action: 'abort' | 'stop-and-copy' };
  readonly signal?: AbortSignal;
}): Promise<Map<number, LiveVmResult>> {
  const results = new Map<number, LiveVmResult>();
  if (options.pending.length === 0) return results;
  const digester = new PageDigester(deriveDigestKey(options.secret));
  const probe = options.dirtyRates ?? startDirtyRates(options.pending.map((v) => options.scan.qmp.get(v)!));
  const dirty = await probe.rates();
  const parallel = Math.max(
    1,
    Math.min(options.maxParallel ?? options.pending.length, options.pending.length),
  );
  // The job's downtime target covers the whole switch-over; QEMU's limit is its final pass's share.
  const downtimeLimitMs = finalPassLimitMs(options.downtimeLimitMs ?? QEMU_DOWNTIME_LIMIT_MS);
  // Each VM's share of the link, for its copy strategy; the link itself is one budget for all.
  const bandwidth = options.bandwidthBytesPerSecond / parallel;
  const wire = new WireBudget(options.bandwidthBytesPerSecond);
  const switchovers = new SwitchoverGate();
  const newContent = new NewContentTally(options.plan.targets.length);
  let next = 0;
  const worker = async () => {
    while (next < options.pending.length) {
      const k = next++;
      const v = options.pending[k]!;
      const vm = options.topology.vms[v]!;
      const target = options.plan.detail.assignment[v]!;
      const link = options.links[target]!;
      if (!isRunning(vm.source)) continue;
      const running = vm.source;
      const memoryBytes = options.scan.vms[v]!.pages.length * PAGE_SIZE;
      const codec = options.codecOf(target);
      const copy = chooseCopyStrategy({
        memoryBytes,
        dirtyBytesPerSecond: dirty[k]!,
        bandwidthBytesPerSecond: bandwidth,
        downtimeLimitMs,
      });
      // Ctrl-C: migrations not started yet stay where they are. A memory check that failed rolled the
      // VM back to its source, which runs on; another attempt resends every page, so it is tried again.
      const rollbacks: string[] = [];
      let migrated: LiveMigrationResult;
      for (;;) {
        migrated =
          link.lost || options.signal?.aborted
            ? { ...notMigrated, error: link.lost ?? 'interrupted before it started' }
            : await migrateLiveVm({
                vm: vm.name,
                source: migrationSourceOf({
                  vm: vm.name,
                  source: running,
                  monitor: options.scan.qmp.get(v)!,
                  sourceHost: options.topology.hosts.find((h) => h.role === 'source')!,
                  targetHost: link.host,
                  runDir: options.runDir,
                  // The last attempt copies with the guest stopped: no page can change behind the copy.
                  strategy: rollbacks.length >= MEMORY_CHECK_RETRIES ? 'stop-and-copy' : copy.strategy,
                  downtimeLimitMs,
                  // A retry after a failed memory check runs QEMU's stream at the VM's share of the link.
                  ...(rollbacks.length > 0 ? { qemuMaxBandwidth: bandwidth } : {}),
                }),
                link,
                runDir: options.runDir,
                digester,
                ...scanKnowledge(options.scan, v),
                holds: (digest) => options.holds(target, digest),
                onSentInFull: (digest) => newContent.sent(v, target, digest),
                wire,
                switchovers,
                codec,
                strategy: rollbacks.length >= MEMORY_CHECK_RETRIES ? 'stop-and-copy' : copy.strategy,
                ...(options.timeoutPerGiB
                  ? {
                      timeout: {
                        ms: options.timeoutPerGiB.seconds * 1000 * Math.max(1, memoryBytes / 2 ** 30),
                        action: options.timeoutPerGiB.action,
                      },
                    }
                  : {}),
                ...(options.signal ? { signal: options.signal } : {}),
              });
        if (!migrated.memoryMismatch || rollbacks.length >= MEMORY_CHECK_RETRIES) break;
        rollbacks.push(migrated.error ?? 'memory differs');
      }
      results.set(v, {
        ...migrated,
        rollbacks,
        copy:
          rollbacks.length >= MEMORY_CHECK_RETRIES
            ? {
                ...copy,
                strategy: 'stop-and-copy',
                why: `its memory check failed ${rollbacks.length} times: copied with the guest stopped`,
              }
            : copy,
        dirtyBytesPerSecond: dirty[k]!,
        scan: options.scan.liveScans.get(v) ?? 'pmemsave',
        codec,
        ...newContent.of(v),
      });
      options.onVerdict(results.size, options.pending.length);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return results;
}

/** The source end of one attempt: the VM's own QEMU, or its libvirt domain. */
function migrationSourceOf(options: {
  readonly vm: string;
  readonly source: RunningVmSource;
  readonly monitor: QemuMonitor;
  readonly sourceHost: Host;
  readonly targetHost: Host;
  readonly runDir: string;
  readonly strategy: CopyStrategy;
  readonly downtimeLimitMs: number;
  readonly qemuMaxBandwidth?: number;
}): MigrationSource {
  const { vm, source, strategy, downtimeLimitMs } = options;
  if (source.kind === 'qemu')
    return qemuMigrationSource({
      vm,
      command: source.command,
      monitor: options.monitor,
      qmpSocket: source.qmp,
      runDir: options.runDir,
      strategy,
      downtimeLimitMs,
      ...(options.qemuMaxBandwidth === undefined ? {} : { qemuMaxBandwidth: options.qemuMaxBandwidth }),
      stepTimeoutMs: STEP_TIMEOUT_MS,
    });
  // The topology lets a libvirt domain go only from and to hosts with a libvirt (topology/validate.ts).
  return libvirtMigrationSource({
    vm,
    domain: source.domain,
    uri: options.sourceHost.libvirt!,
    targetUri: options.targetHost.libvirt!,
    // libvirt copies live: its domains have no stop-and-copy here, so QEMU throttles the guest instead.
    autoConverge: true,
    downtimeLimitMs,
    stepTimeoutMs: STEP_TIMEOUT_MS,
  });
}

export interface LiveVmResult extends LiveMigrationResult, NewContentCounts {
  /** Why each earlier attempt was rolled back (its memory check failed), oldest first. */
  readonly rollbacks: readonly string[];
  readonly copy: CopyDecision;
  readonly dirtyBytesPerSecond: number;
  readonly scan: ScannedLiveVm['method'];
  /** How its stream compressed pages sent in full. */
  readonly codec: FullPageCodec;
}

/**
 * A target's stream codec: none when the job's compression is off; zstd runs where both ends have
 * libzstd (the agent names it in 'ready'); else LZ4 per page. 'adaptive' compresses: each stream is
 * capped at its share of the link, below what either codec compresses on one core.
 */
export function fullPageCodec(
  mode: CompressionMode,
  agentCodecs: readonly string[],
  zstdHere = ZstdRuns.available(),
): FullPageCodec {
  if (mode === 'off') return 'none';
  return zstdHere && agentCodecs.includes('zstd') ? 'zstd' : 'lz4';
}

/** Of a VM's pages sent as data: how many repeated content already sent as data during the job. */
export interface NewContentCounts {
  /** ...to the same target (a reference to the copy sent before would have done). */
  readonly repeatedPages: number;
  /** ...to another target only (one multicast would have carried both). */
  readonly multicastablePages: number;
}

/**
 * Content no target held, sent during the live migrations: tallied to measure what multicasting it
 * (or referring back to it) during the migrations would save, which decides whether that is worth
 * building (see docs/ARCHITECTURE.md).
 */
export class NewContentTally {
  /** Pairs tallied at most (a measurement, so bounded: 4M pairs are 16 GiB of new content). */
  static readonly MAX_PAIRS = 1 << 22;
  private readonly ids = new DigestTable(1024);
  private readonly atTarget = new Set<number>();
  private readonly counts = new Map<number, { repeatedPages: number; multicastablePages: number }>();

  constructor(private readonly targetCount: number) {}

  sent(vm: number, target: number, digest: Uint8Array): void {
    if (this.atTarget.size >= NewContentTally.MAX_PAIRS) return;
    const known = this.ids.lookup(digest);
    const id = known > 0 ? known : this.ids.intern(digest, 0);
    const key = id * this.targetCount + target;
    let counts = this.counts.get(vm);
    if (counts === undefined) this.counts.set(vm, (counts = { repeatedPages: 0, multicastablePages: 0 }));
    if (this.atTarget.has(key)) counts.repeatedPages++;
    else if (known > 0) counts.multicastablePages++;
    this.atTarget.add(key);
  }

  of(vm: number): NewContentCounts {
    return this.counts.get(vm) ?? { repeatedPages: 0, multicastablePages: 0 };
  }
}

/**
 * Attempts after a failed memory check. QEMU 7.2's dirty tracking under multi-threaded TCG loses pages
 * now and then (plain QEMU-to-QEMU here: 5 of 12 migrations of a self-checking 2-vCPU guest with the
 * stream unthrottled, 0 of 12 at 125 MB/s). The second attempt runs precopy again with QEMU's stream
 * capped at the VM's share of the link; the last copies with the guest stopped (stop-and-copy, a
 * downtime of the whole copy), where no page can change behind the copy.
 */
export const MEMORY_CHECK_RETRIES = 2;

const notMigrated: LiveMigrationResult = {
  ok: false,
  ...NOTHING_MOVED,
  throttlePercent: 0,
  migrationDirtyBytesPerSecond: 0,
};

/**
 * What a target holds, as far as a running VM's stream may refer to it: the announced pages it
 * confirmed holding (held-confirmation.ts: never an announcement's "may hold" alone, whose false
 * positives would make it refuse the stream), and what rounds it completed delivered (not the pages a
 * round left out). Exact: a page outside both goes in full.
 */
export function heldForLive(
  rounds: readonly SendRound[],
  seeded: {
    readonly roundCompleted: readonly (readonly number[])[];
    readonly roundChanged: readonly Uint32Array[];
  },
  confirmed: readonly (DigestTable | undefined)[],
  table: DigestTable,
  targetCount: number,
): (target: number, digest: Uint8Array) => boolean {
  const delivered = Array.from({ length: targetCount }, () => new DigestTable(1024));
  rounds.forEach((round, r) => {
    // Pages a round left out (changed since the scan) reached no one.
    const changed = new Set(seeded.roundChanged[r] ?? []);
    for (const t of seeded.roundCompleted[r] ?? [])
      for (const id of round.ids) if (!changed.has(id)) delivered[t]!.intern(table.digestOf(id), 0);
  });
  return (target, digest) =>
    delivered[target]!.lookup(digest) > 0 || (confirmed[target]?.lookup(digest) ?? 0) > 0;
}

export function liveSummary(result: LiveVmResult) {
  return {
    strategy: result.copy.strategy,
    strategyReason: result.copy.why,
    scan: result.scan,
    memoryCheck: result.memoryCheck ?? null,
    rollbacks: result.rollbacks,
    dirtyBytesPerSecond: Math.round(result.dirtyBytesPerSecond),
    migrationDirtyBytesPerSecond: Math.round(result.migrationDirtyBytesPerSecond),
    throttlePercent: result.throttlePercent,
    downtimeMs: result.downtimeMs,
    sourceDowntimeMs: result.sourceDowntimeMs,
    switchoverMs: result.switchoverMs,
    switchoverSteps: result.switchoverSteps ?? null,
    referencedPages: result.referencedPages,
    scanDigests: result.scanDigests,
    sentPages: result.sentPages,
    compressedPages: result.compressedPages,
    codec: result.codec,
    repeatedPages: result.repeatedPages,
    multicastablePages: result.multicastablePages,
    zeroPages: result.zeroPages,
    streamBytes: result.streamBytes,
    sentBytes: result.sentBytes,
    seconds: result.seconds,
  };
}

/** What the scan knew of VM v's pages for its stream (one hash per page), where it made checks. */
function scanKnowledge(scan: JobScan, v: number): { scanned?: ScanKnowledge } {
  const checks = scan.liveChecks.get(v);
  return checks ? { scanned: { ...checks, ids: scan.vms[v]!.pages, table: scan.table } } : {};
}
