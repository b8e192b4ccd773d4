/**
 * Planning at fleet scale from synthetic fingerprints: 500 VMs x 256 MiB onto 64 targets by default.
 * Times every planning stage (page tables, index, sharing classes, placement, schedule, traffic) and
 * the peak memory, and compares the placement's cost with round-robin and random placements of the
 * same VMs measured in the same run.
 *
 * Target (issue "Foundation"): <= 30 s wall time for 500 VMs x 64 targets x 256 MiB.
 */
import { DigestTable } from '../src/memory/digest-table.js';
import { PAGE_SIZE, type VmPages } from '../src/memory/page.js';
import { Prng } from '../src/memory/prng.js';
import { syntheticPageTable } from '../src/memory/synthetic.js';
import { buildPageIndex } from '../src/plan/page-index.js';
import { placeVms } from '../src/plan/placement.js';
import { placementCost } from '../src/plan/placement-cost.js';
import type { PlacementProblem } from '../src/plan/placement-problem.js';
import { buildSchedule } from '../src/plan/schedule.js';
import { buildSharingModel } from '../src/plan/sharing.js';
import { modelTraffic } from '../src/plan/traffic.js';

export interface ScaleOptions {
  readonly vms?: number;
  readonly targets?: number;
  readonly vmBytes?: number;
  readonly families?: number;
  readonly maxGroups?: number;
  readonly seed?: number;
}

export interface ScaleResult {
  readonly vms: number;
  readonly targets: number;
  readonly pages: number;
  readonly distinctDigests: number;
  readonly sharingClasses: number;
  readonly seconds: Record<string, number>;
  readonly totalSeconds: number;
  readonly peakRssBytes: number;
  readonly cost: { readonly plan: number; readonly roundRobin: number; readonly random: number };
  readonly sourceBytes: { readonly naive: number; readonly dedup: number; readonly plan: number };
  readonly groups: number;
}

export function runPlacementScale(options: ScaleOptions = {}): ScaleResult {
  const vmCount = options.vms ?? 500;
  const targetCount = options.targets ?? 64;
  const vmBytes = options.vmBytes ?? 256 * 2 ** 20;
  const families = options.families ?? 10;
  const seed = options.seed ?? 1;
  const pageCount = vmBytes / PAGE_SIZE;
  // Room for the fleet with some slack, so capacity binds but never makes the job infeasible.
  const maxVms = Math.ceil((vmCount / targetCount) * 1.25);
  let peakRss = process.memoryUsage().rss;
  const seconds: Record<string, number> = {};
  const stage = <T>(name: string, run: () => T): T => {
    const start = performance.now();
    const result = run();
    seconds[name] = (performance.now() - start) / 1000;
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
    return result;
  };
  const table = new DigestTable(vmCount * pageCount * 0.4);
  const vms = stage('page tables', () =>
    Array.from({ length: vmCount }, (_, v): VmPages => {
      const family = `family-${v % families}`;
      const spec = {
        seed: seed * 100003 + v,
        family,
        zeroShare: 0.3,
        osShare: 0.4,
        commonShare: 0.05,
        duplicateShare: 0.02,
      };
      return syntheticPageTable({ name: `vm-${v}`, pageCount, spec }, table);
    }),
  );
  const index = stage('index', () => buildPageIndex(vms, table.size));
  const sharing = stage('sharing classes', () => buildSharingModel(index));
  const problem: PlacementProblem = {
    vms: vms.map((vm, v) => ({
      name: vm.name,
      memoryBytes: vmBytes,
      privatePages: sharing.privatePages[v]!,
      fixedTarget: -1,
      excludedTargets: [],
    })),
    targets: Array.from({ length: targetCount }, (_, t) => ({
      name: `t${t}`,
      memoryBytes: maxVms * vmBytes,
      maxVms,
    })),
    classes: sharing.classes,
  };
  const placement = stage('placement', () => placeVms(problem, { seed }));
  const schedule = stage('schedule', () =>
    buildSchedule({
      index,
      sharing,
      assignment: placement.assignment,
      targetCount,
      maxGroups: options.maxGroups ?? 64,
    }),
  );
  const traffic = stage('traffic', () =>
    modelTraffic({
      index,
      schedule,
      assignment: placement.assignment,
      sourceBitsPerSecond: 10e9,
      targetBitsPerSecond: new Array<number>(targetCount).fill(10e9),
    }),
  );
  const roundRobin = Int32Array.from({ length: vmCount }, (_, v) => v % targetCount);
  const random = randomFeasible(vmCount, targetCount, maxVms, new Prng(seed));
  return {
    vms: vmCount,
    targets: targetCount,
    pages: vmCount * pageCount,
    distinctDigests: table.size,
    sharingClasses: sharing.classes.length,
    seconds,
    totalSeconds: Object.values(seconds).reduce((a, b) => a + b, 0),
    peakRssBytes: peakRss,
    cost: {
      plan: placement.cost,
      roundRobin: placementCost(problem, roundRobin),
      random: placementCost(problem, random),
    },
    sourceBytes: { naive: traffic.naive.source, dedup: traffic.dedup.source, plan: traffic.plan.source },
    groups: schedule.groups.length,
  };
}

/** A random placement within the VM-count bound (the only constraint binding in this instance). */
function randomFeasible(vms: number, targets: number, maxVms: number, rng: Prng): Int32Array {
  const load = new Array<number>(targets).fill(0);
  return Int32Array.from({ length: vms }, () => {
    let t = rng.below(targets);
    while (load[t]! >= maxVms) t = (t + 1) % targets;
    load[t]!++;
    return t;
  });
}
