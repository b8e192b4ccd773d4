import { InfeasiblePlacementError } from '../errors.js';
import type { VmPages } from '../memory/page.js';
import type { Topology } from '../topology/model.js';
import { buildPageIndex, setSharingStats, type PageIndex, type SetSharingStats } from './page-index.js';
import { placeVms } from './placement.js';
import type { PlacementProblem } from './placement-problem.js';
import { buildSchedule, type MulticastSchedule } from './schedule.js';
import { buildSharingModel, type SharingModel } from './sharing.js';
import { modelTraffic, type TrafficModel } from './traffic.js';

/**
 * The scatter plan: a pure function of (fingerprints, topology, options). It can be printed without
 * moving anything, and the scatter itself executes exactly this.
 */
export interface PlanOptions {
  /** Most multicast groups (bounded also by the topology's multicast range). */
  readonly maxGroups: number;
  /** Seed for placement's clustering, so a plan is reproducible. */
  readonly seed: number;
}

export const defaultPlanOptions: PlanOptions = { maxGroups: 16, seed: 1 };

export interface PlannedTarget {
  readonly name: string;
  readonly vms: readonly string[];
  readonly memoryBytes: number;
  readonly capacityBytes: number;
  /** Distinct non-zero pages its VMs need. */
  readonly neededPages: number;
}

export interface PlannedGroup {
  readonly address: string;
  readonly port: number;
  readonly receivers: readonly string[];
  readonly pages: number;
  readonly extraDeliveries: number;
}

export interface ScatterPlan {
  /** VM name -> target name, in topology order. */
  readonly placement: Readonly<Record<string, string>>;
  readonly targets: readonly PlannedTarget[];
  /** Multicast groups in send order. */
  readonly groups: readonly PlannedGroup[];
  readonly sharing: SetSharingStats;
  readonly traffic: TrafficModel;
  /** Internals the scatter phases execute; not part of the printed plan. */
  readonly detail: {
    readonly index: PageIndex;
    readonly sharingModel: SharingModel;
    readonly assignment: Int32Array;
    readonly schedule: MulticastSchedule;
  };
}

export function buildScatterPlan(
  topology: Topology,
  vms: readonly VmPages[],
  digestCount: number,
  options: PlanOptions = defaultPlanOptions,
): ScatterPlan {
  const source = topology.hosts.find((h) => h.role === 'source');
  const targets = topology.hosts.filter((h) => h.role === 'target');
  if (!source || targets.length === 0) {
    throw new InfeasiblePlacementError(
      `${topology.file}: a plan needs one source host and at least one target`,
    );
  }
  const index = buildPageIndex(vms, digestCount);
  const sharingModel = buildSharingModel(index);
  const targetIndex = new Map(targets.map((t, i) => [t.name, i]));
  const problem: PlacementProblem = {
    vms: topology.vms.map((vm, v) => ({
      name: vm.name,
      memoryBytes: vm.memoryBytes,
      privatePages: sharingModel.privatePages[v]!,
      fixedTarget: vm.fixedTarget === undefined ? -1 : targetIndex.get(vm.fixedTarget)!,
      excludedTargets: vm.excludedTargets.map((name) => targetIndex.get(name)!),
    })),
    targets: targets.map((t) => ({ name: t.name, memoryBytes: t.memoryBytes, maxVms: t.maxVms })),
    classes: sharingModel.classes,
  };
  const { assignment } = placeVms(problem, { seed: options.seed });
  const maxGroups = Math.max(1, Math.min(options.maxGroups, topology.multicast.size));
  const schedule = buildSchedule({
    index,
    sharing: sharingModel,
    assignment,
    targetCount: targets.length,
    maxGroups,
  });
  const traffic = modelTraffic({
    index,
    schedule,
    assignment,
    sourceBitsPerSecond: source.linkBitsPerSecond,
    targetBitsPerSecond: targets.map((t) => t.linkBitsPerSecond),
  });
  const needed = neededPagesPerTarget(sharingModel, assignment, targets.length);
  const placement: Record<string, string> = {};
  topology.vms.forEach((vm, v) => (placement[vm.name] = targets[assignment[v]!]!.name));
  return {
    placement,
    targets: targets.map((t, i) => {
      const mine = topology.vms.filter((_, v) => assignment[v] === i);
      return {
        name: t.name,
        vms: mine.map((vm) => vm.name),
        memoryBytes: mine.reduce((sum, vm) => sum + vm.memoryBytes, 0),
        capacityBytes: t.memoryBytes,
        neededPages: needed[i]!,
      };
    }),
    groups: schedule.groups.map((g, i) => ({
      address: ipv4Plus(topology.multicast.base, i),
      port: topology.multicast.port,
      receivers: g.receivers.map((t) => targets[t]!.name),
      pages: g.pages,
      extraDeliveries: g.extraDeliveries,
    })),
    sharing: setSharingStats(index),
    traffic,
    detail: { index, sharingModel, assignment, schedule },
  };
}

/** Distinct non-zero digests each target needs: its VMs' private pages plus every class it touches. */
function neededPagesPerTarget(sharing: SharingModel, assignment: Int32Array, targetCount: number): number[] {
  const needed = new Array<number>(targetCount).fill(0);
  sharing.privatePages.forEach((pages, vm) => (needed[assignment[vm]!]! += pages));
  const seen = new Int32Array(targetCount).fill(-1);
  sharing.classes.forEach((c, i) => {
    for (const vm of c.vms) {
      const t = assignment[vm]!;
      if (seen[t] === i) continue;
      seen[t] = i;
      needed[t]! += c.weight;
    }
  });
  return needed;
}

/** The IPv4 address `offset` after `base` (the topology loader checks the range stays multicast). */
export function ipv4Plus(base: string, offset: number): string {
  const value = base.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0) + offset;
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}
