import type { PageIndex } from '../plan/page-index.js';
import type { Host, Topology } from '../topology/model.js';
import type { JobScan } from './job-scan.js';
import type { SendRound } from '../plan/job-work.js';
import { liveSummary, type LiveVmResult } from './live-phase.js';
import type { RebuildOutcome } from './rebuild-phase.js';
import type { CompressionDecision, SeedResult } from '../seed/seeding.js';

/**
 * The final report of a scatter job (what `--json` prints): per VM, per target, the source's link,
 * pages by how they travelled, times. Field names are stable: scripts read them.
 */
export interface VmReport {
  readonly name: string;
  readonly target: string;
  readonly pages: number;
  readonly zeroPages: number;
  readonly sha256: string;
  /** Its share of the bytes on the source's link (the pages it needed, split among their holders). */
  readonly wireBytes: number;
  /** A running VM's migration: downtime, and its stream's pages by how they travelled. */
  readonly live?: ReturnType<typeof liveSummary>;
  readonly verified: boolean;
  /** Verified by an earlier job and left alone (`--resume`). */
  readonly alreadyVerified: boolean;
  readonly error?: string;
}

export interface TargetReport {
  readonly name: string;
  readonly vms: readonly string[];
  /** Pages its VMs needed that it already held (sent to it by nobody). */
  readonly heldPages: number;
  /**
   * Pages it needed that it received by multicast: those of the rounds it reported stored whole.
   * Fewer than planned when it was lost, or dropped from a round (it then lacked them at rebuild).
   */
  readonly multicastPages: number;
  /** Pages it needed that the plan had go to it by multicast. */
  readonly plannedMulticastPages: number;
  /** Pages it lacked at rebuild time and received over the control channel (its verdict says so). */
  readonly unicastPages: number;
  /** Pages it fetched from an agent of its site that held them. */
  readonly peerPages: number;
  /** Bytes it received from the source: each multicast round it reported stored whole, and unicast. */
  readonly wireBytes: number;
  /**
   * Multicast datagrams its receiver dropped as forged, replayed, stale, truncated or malformed (the
   * agent's log has them by reason): an attack or a misconfigured sender shows here.
   */
  readonly droppedDatagrams: number;
  readonly lost?: string;
  /** Why multicast did not reach it (its pages then went over the control channel), if it did not. */
  readonly multicastUnreached?: string;
}

export interface ScatterReport {
  readonly ok: boolean;
  /** A dry run (or a job interrupted before anything moved): the plan, nothing moved. */
  readonly planned?: { readonly dryRun: boolean };
  readonly job: string;
  readonly vms: readonly VmReport[];
  readonly targets: readonly TargetReport[];
  readonly source: {
    /** Bytes of multicast payload (batches, before packet headers) and on the wire (all datagrams). */
    readonly multicastPayloadBytes: number;
    readonly multicastWireBytes: number;
    readonly unicastBytes: number;
    readonly rounds: number;
    /** Rounds too small to pay for a multicast session, whose pages went by unicast. */
    readonly unicastRounds: number;
    readonly uniquePagesSent: number;
    /** Pages of running guests left out of their rounds: changed since the scan (sent in their stream). */
    readonly changedPages: number;
    readonly packets: { readonly data: number; readonly parity: number; readonly repair: number };
  };
  readonly compression: CompressionDecision;
  /**
   * Pages by how they travelled: zero (never), held already, multicast (raw, uniform, compressed),
   * unicast, from site peers, and left to the live stream of the one running VM holding them.
   */
  readonly pages: {
    readonly total: number;
    readonly zero: number;
    readonly held: number;
    readonly multicast: number;
    readonly unicast: number;
    readonly peer: number;
    readonly streamed: number;
    readonly raw: number;
    readonly uniform: number;
    readonly compressed: number;
  };
  readonly seconds: Readonly<
    Record<'connect' | 'scan' | 'plan' | 'seed' | 'rebuild' | 'migrate' | 'total', number>
  >;
}

/** What the coordinator knows at the job's end of the targets it reached, each by its index. */
export interface TargetOutcome {
  readonly hosts: readonly Host[];
  readonly vms: readonly VmReport[];
  readonly rounds: readonly SendRound[];
  /** Per round sent (or begun): bytes on the wire, and the targets that reported it stored whole. */
  readonly roundWireBytes: readonly number[];
  readonly roundCompleted: readonly (readonly number[])[];
  readonly heldPages: ArrayLike<number>;
  readonly plannedMulticastPages: ArrayLike<number>;
  readonly unicastPages: readonly number[];
  readonly unicastBytes: readonly number[];
  readonly peerPages: readonly number[];
  readonly droppedDatagrams: readonly number[];
  /** Why each was lost, if it was. */
  readonly lost: readonly (string | undefined)[];
  /** Why multicast did not reach each, if it did not. */
  readonly unreached?: readonly (string | undefined)[];
  /** Targets that never answered, and why. */
  readonly unreachable: readonly { readonly name: string; readonly why: string }[];
}

/**
 * The report's target rows: what each target received, as it confirmed it, beside what the plan had
 * it receive. A target lost mid-job is credited only the rounds it reported stored, not the plan's.
 */
export function targetReports(outcome: TargetOutcome): TargetReport[] {
  const multicastPages = outcome.hosts.map(() => 0);
  const multicastBytes = outcome.hosts.map(() => 0);
  outcome.roundCompleted.forEach((completed, r) => {
    const round = outcome.rounds[r];
    if (round === undefined) return;
    for (const t of completed) {
      multicastPages[t]! += round.needed[round.receivers.indexOf(t)] ?? 0;
      multicastBytes[t]! += outcome.roundWireBytes[r] ?? 0;
    }
  });
  return [
    ...outcome.hosts.map((host, t) => ({
      name: host.name,
      vms: outcome.vms.filter((vm) => vm.target === host.name).map((vm) => vm.name),
      heldPages: outcome.heldPages[t] ?? 0,
      multicastPages: multicastPages[t]!,
      plannedMulticastPages: outcome.plannedMulticastPages[t] ?? 0,
      unicastPages: outcome.unicastPages[t] ?? 0,
      peerPages: outcome.peerPages[t] ?? 0,
      wireBytes: Math.round(multicastBytes[t]! + (outcome.unicastBytes[t] ?? 0)),
      droppedDatagrams: outcome.droppedDatagrams[t] ?? 0,
      ...(outcome.lost[t] ? { lost: outcome.lost[t] } : {}),
      ...(outcome.unreached?.[t] ? { multicastUnreached: outcome.unreached[t] } : {}),
    })),
    ...outcome.unreachable.map(({ name, why }) => ({
      name,
      vms: [],
      heldPages: 0,
      multicastPages: 0,
      plannedMulticastPages: 0,
      unicastPages: 0,
      peerPages: 0,
      wireBytes: 0,
      droppedDatagrams: 0,
      lost: why,
    })),
  ];
}

/** The report of a job that moved nothing: where each VM would go. */
export function plannedReport(
  job: string,
  topology: Topology,
  targets: readonly Host[],
  scan: JobScan,
  { assignment, index }: { readonly assignment: Int32Array; readonly index: PageIndex },
  done: readonly boolean[],
  seconds: ScatterReport['seconds'],
  dryRun: boolean,
): ScatterReport {
  const vms = topology.vms.map((vm, v) => ({
    name: vm.name,
    target: targets[assignment[v]!]!.name,
    pages: scan.vms[v]!.pages.length,
    zeroPages: index.vmStats[v]!.zero,
    sha256: scan.sha256[v]!,
    wireBytes: 0,
    verified: done[v]!,
    alreadyVerified: done[v]!,
    ...(done[v] ? {} : { error: dryRun ? 'dry run: not moved' : 'interrupted before it moved' }),
  }));
  return {
    ok: vms.every((vm) => vm.verified),
    planned: { dryRun },
    job,
    vms,
    targets: targets.map((host) => ({
      name: host.name,
      vms: vms.filter((vm) => vm.target === host.name).map((vm) => vm.name),
      heldPages: 0,
      multicastPages: 0,
      plannedMulticastPages: 0,
      unicastPages: 0,
      peerPages: 0,
      wireBytes: 0,
      droppedDatagrams: 0,
    })),
    source: {
      multicastPayloadBytes: 0,
      multicastWireBytes: 0,
      unicastBytes: 0,
      rounds: 0,
      unicastRounds: 0,
      uniquePagesSent: 0,
      changedPages: 0,
      packets: { data: 0, parity: 0, repair: 0 },
    },
    compression: {
      mode: 'off',
      on: false,
      linkBitsPerSecond: 0,
      roundsCompressed: 0,
      roundBitsPerSecond: [],
    },
    pages: {
      total: 0,
      zero: 0,
      held: 0,
      multicast: 0,
      raw: 0,
      uniform: 0,
      compressed: 0,
      unicast: 0,
      peer: 0,
      streamed: 0,
    },
    seconds,
  };
}

/** What a job did, phase by phase: what its report is made of. */
export interface JobOutcome {
  readonly job: string;
  readonly topology: Topology;
  /** The targets whose agents took part, in the job's target order. */
  readonly targets: readonly Host[];
  readonly scan: JobScan;
  readonly detail: { readonly assignment: Int32Array; readonly index: PageIndex };
  /** VMs verified at their target before the job (--resume). */
  readonly done: readonly boolean[];
  readonly work: {
    readonly rounds: readonly SendRound[];
    readonly heldPages: ArrayLike<number>;
    readonly neededPages: ArrayLike<number>;
    readonly streamedPages: ArrayLike<number>;
  };
  readonly seeded: SeedResult;
  readonly rebuilt: RebuildOutcome;
  readonly migrated: ReadonlyMap<number, LiveVmResult>;
  /** Multicast bytes on the source's link attributed to each VM. */
  readonly wireBytesOfVm: ArrayLike<number>;
  /** Pages each target fetched from a site peer. */
  readonly peerPages: readonly number[];
  /** Why each target was lost, if it was. */
  readonly lost: readonly (string | undefined)[];
  /** Why the job stopped early (Ctrl-C), if it did. */
  readonly interrupted: string | undefined;
  readonly unreachable: readonly { readonly name: string; readonly why: string }[];
  readonly seconds: ScatterReport['seconds'];
}

/** The job's report: per VM, per target, and the source's link. */
export function jobReport(o: JobOutcome): ScatterReport {
  const { topology, scan, rebuilt, migrated, seeded } = o;
  const { assignment, index } = o.detail;
  const vms: VmReport[] = topology.vms.map((vm, v) => {
    const failure =
      rebuilt.errors.get(v) ?? (o.done[v] ? undefined : (o.lost[assignment[v]!] ?? o.interrupted));
    const verified = o.done[v]! || rebuilt.verified.has(v);
    return {
      name: vm.name,
      target: o.targets[assignment[v]!]!.name,
      pages: scan.vms[v]!.pages.length,
      zeroPages: index.vmStats[v]!.zero,
      sha256: scan.sha256[v]!,
      wireBytes: Math.round(
        o.wireBytesOfVm[v]! + (rebuilt.unicastBytesByVm.get(v) ?? 0) + (migrated.get(v)?.sentBytes ?? 0),
      ),
      ...(migrated.has(v) ? { live: liveSummary(migrated.get(v)!) } : {}),
      verified,
      alreadyVerified: o.done[v]!,
      ...(verified ? {} : { error: failure ?? 'not verified' }),
    };
  });
  const targets = targetReports({
    hosts: o.targets,
    vms,
    rounds: o.work.rounds,
    roundWireBytes: seeded.roundWireBytes,
    roundCompleted: seeded.roundCompleted,
    heldPages: o.work.heldPages,
    plannedMulticastPages: o.work.neededPages,
    unicastPages: rebuilt.unicastPages,
    unicastBytes: rebuilt.unicastBytesByTarget,
    peerPages: o.peerPages,
    droppedDatagrams: seeded.droppedByTarget,
    lost: o.lost,
    unreached: o.targets.map((_, t) => {
      const reasons = seeded.unheard.filter((u) => u.target === t).map((u) => u.why);
      return reasons.length > 0 ? reasons.join('; ') : undefined;
    }),
    unreachable: o.unreachable,
  });
  return {
    ok: vms.every((vm) => vm.verified),
    job: o.job,
    vms,
    targets,
    source: {
      multicastPayloadBytes: seeded.multicastPayloadBytes,
      multicastWireBytes: seeded.multicastWireBytes,
      unicastBytes: rebuilt.unicastBytes,
      rounds: seeded.rounds,
      unicastRounds: seeded.unicastRounds,
      uniquePagesSent: seeded.uniquePagesSent,
      changedPages: seeded.changedPages,
      packets: seeded.packets,
    },
    compression: seeded.compression,
    pages: {
      total: scan.vms.reduce((n, vm) => n + vm.pages.length, 0),
      zero: vms.reduce((n, vm) => n + vm.zeroPages, 0),
      held: targets.reduce((n, x) => n + x.heldPages, 0),
      multicast: seeded.uniquePagesSent,
      ...seeded.encodings,
      unicast: rebuilt.unicastPages.reduce((a, b) => a + b, 0),
      peer: o.peerPages.reduce((a, b) => a + b, 0),
      streamed: Array.from(o.work.streamedPages).reduce((a, b) => a + b, 0),
    },
    seconds: o.seconds,
  };
}
