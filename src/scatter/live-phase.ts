import { DigestTable } from '../memory/digest-table.js';
import { PAGE_SIZE } from '../memory/page.js';
import { deriveDigestKey, PageDigester } from '../memory/page-digest.js';
import type { QmpClient } from '../qemu/qmp.js';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import type { Topology } from '../topology/model.js';
import type { AgentLink } from './agent-link.js';
import type { HeldDigests } from './digest-set.js';
import type { JobScan } from './job-scan.js';
import type { ScannedLiveVm } from './live-source.js';
import type { SendRound } from './job-work.js';
import { chooseCopyStrategy, type CopyDecision } from './copy-strategy.js';
import { migrateLiveVm, NOTHING_MOVED, type LiveMigrationResult } from './live-migrate.js';

/**
 * Phase 5 for running VMs: up to `maxParallel` at once, sharing the source's link evenly, each with
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
   * Pages sent in full are compressed (unless the job's compression is off): each stream is capped at
   * its share of the link, below what LZ4 compresses on one core (70-320 MB/s, page-codec.ts).
   */
  readonly compress: boolean;
  readonly onVerdict: (done: number, total: number) => void;
  readonly downtimeLimitMs?: number;
  /** Migrations at once (they share the source's link: each gets its share of the bandwidth). */
  readonly maxParallel?: number;
  /** Seconds allowed per GiB of guest memory, and what happens on expiry. */
  readonly timeoutPerGiB?: { readonly seconds: number; readonly action: 'abort' | 'stop-and-copy' };
  readonly signal?: AbortSignal;
}): Promise<Map<number, LiveVmResult>> {
  const results = new Map<number, LiveVmResult>();
  if (options.pending.length === 0) return results;
  const digester = new PageDigester(deriveDigestKey(options.secret));
  const dirty = await measureDirtyRates(options.pending.map((v) => options.scan.qmp.get(v)!));
  const parallel = Math.max(1, Math.min(options.maxParallel ?? 1, options.pending.length));
  const downtimeLimitMs = options.downtimeLimitMs ?? QEMU_DOWNTIME_LIMIT_MS;
  const bandwidth = options.bandwidthBytesPerSecond / parallel;
  const newContent = new NewContentTally(options.plan.targets.length);
  let next = 0;
  const worker = async () => {
    while (next < options.pending.length) {
      const k = next++;
      const v = options.pending[k]!;
      const vm = options.topology.vms[v]!;
      const target = options.plan.detail.assignment[v]!;
      const link = options.links[target]!;
      if (vm.source.kind !== 'qemu') continue;
      const memoryBytes = options.scan.vms[v]!.pages.length * PAGE_SIZE;
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
                command: vm.source.command,
                source: options.scan.qmp.get(v)!,
                sourceQmpSocket: vm.source.qmp,
                link,
                runDir: options.runDir,
                digester,
                holds: (digest) => options.holds(target, digest),
                onSentInFull: (digest) => newContent.sent(v, target, digest),
                maxBandwidthBytesPerSecond: bandwidth,
                compress: options.compress,
                strategy: copy.strategy,
                downtimeLimitMs,
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
        copy,
        dirtyBytesPerSecond: dirty[k]!,
        scan: options.scan.liveScans.get(v) ?? 'pmemsave',
        ...newContent.of(v),
      });
      options.onVerdict(results.size, options.pending.length);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return results;
}

export interface LiveVmResult extends LiveMigrationResult, NewContentCounts {
  /** Why each earlier attempt was rolled back (its memory check failed), oldest first. */
  readonly rollbacks: readonly string[];
  readonly copy: CopyDecision;
  readonly dirtyBytesPerSecond: number;
  readonly scan: ScannedLiveVm['method'];
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
 * Attempts after a failed memory check. QEMU 7.2's dirty tracking under multi-threaded TCG loses a
 * page now and then; a new attempt starts from a full pass, so a second failure in a row is rare.
 */
export const MEMORY_CHECK_RETRIES = 2;

/** QEMU's default downtime limit, which vmscatter leaves as it is. */
export const QEMU_DOWNTIME_LIMIT_MS = 300;
const DIRTY_RATE_SECONDS = 1;

/**
 * Each VM's dirty rate (bytes/s), measured by QEMU over one second, all VMs at once. A VM whose QEMU
 * cannot measure it (an older QEMU) counts as idle: precopy then, which is QEMU's own default.
 */
export async function measureDirtyRates(clients: readonly QmpClient[]): Promise<number[]> {
  const started = await Promise.all(
    clients.map((qmp) =>
      qmp.execute('calc-dirty-rate', { 'calc-time': DIRTY_RATE_SECONDS }).then(
        () => true,
        () => false,
      ),
    ),
  );
  await new Promise((r) => setTimeout(r, DIRTY_RATE_SECONDS * 1000 + 100));
  return Promise.all(
    clients.map(async (qmp, i) => {
      if (!started[i]) return 0;
      for (let tries = 0; tries < 50; tries++) {
        const info = (await qmp.execute('query-dirty-rate').catch(() => ({}))) as {
          status?: string;
          'dirty-rate'?: number;
        };
        if (info.status === 'measured') return (info['dirty-rate'] ?? 0) * 2 ** 20;
        await new Promise((r) => setTimeout(r, 100));
      }
      return 0;
    }),
  );
}

const notMigrated: LiveMigrationResult = { ok: false, ...NOTHING_MOVED };

/**
 * What a target holds, as far as a running VM's stream may refer to it: what it announced before the
 * job, and what rounds it completed delivered. A reference to a page the agent turns out to lack makes
 * it refuse the stream, and the VM stays at its source: so the announcement's false-positive rate is
 * what bounds how often that happens, never whether a VM is lost.
 */
export function heldForLive(
  rounds: readonly SendRound[],
  completed: readonly (readonly number[])[],
  announced: readonly (HeldDigests | undefined)[],
  table: DigestTable,
  targetCount: number,
): (target: number, digest: Uint8Array) => boolean {
  const delivered = Array.from({ length: targetCount }, () => new DigestTable(1024));
  rounds.forEach((round, r) => {
    for (const t of completed[r] ?? [])
      for (const id of round.ids) delivered[t]!.intern(table.digestOf(id), 0);
  });
  return (target, digest) =>
    delivered[target]!.lookup(digest) > 0 || announced[target]?.mayHold(digest) === true;
}

export function liveSummary(result: LiveVmResult) {
  return {
    strategy: result.copy.strategy,
    strategyReason: result.copy.why,
    scan: result.scan,
    memoryCheck: result.memoryCheck ?? null,
    rollbacks: result.rollbacks,
    dirtyBytesPerSecond: Math.round(result.dirtyBytesPerSecond),
    downtimeMs: result.downtimeMs,
    sourceDowntimeMs: result.sourceDowntimeMs,
    switchoverMs: result.switchoverMs,
    referencedPages: result.referencedPages,
    sentPages: result.sentPages,
    compressedPages: result.compressedPages,
    repeatedPages: result.repeatedPages,
    multicastablePages: result.multicastablePages,
    zeroPages: result.zeroPages,
    streamBytes: result.streamBytes,
    sentBytes: result.sentBytes,
    seconds: result.seconds,
  };
}
