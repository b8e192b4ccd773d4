import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { InfeasiblePlacementError } from '../src/errors.js';
import { exactPlacement } from '../src/plan/exhaustive-placement.js';
import { placementCost } from '../src/plan/placement-cost.js';
import type { PlacementProblem, PlacementVm, SharingClass } from '../src/plan/placement-problem.js';
import { placeVms, placementViolations } from '../src/plan/placement.js';
import { mulberry32 } from '../src/memory/prng.js';

/**
 * Placement quality on small random instances, against the exact optimum: placeVms beside two naive
 * baselines (random feasible, round-robin). `--json` prints the results as JSON; `--large` also times
 * placeVms on a 500-VM, 64-target instance.
 *
 *   node dist/bench/placement-quality.js [--json] [--large] [--instances N] [--seed S]
 */

export interface PlacementQualityOptions {
  readonly instances?: number;
  readonly seed?: number;
}

export interface MethodResult {
  readonly method: string;
  /** Instances the method placed (those with a feasible optimum). */
  readonly placed: number;
  /** Instances where its cost equals the optimum. */
  readonly optimal: number;
  /** Instances with a feasible optimum where the method found no placement. */
  readonly failed: number;
  /** Attempts that ran into a dead end (random: retries; round-robin: failures). */
  readonly infeasibleAttempts: number;
  /** (cost − optimum) / optimum over placed instances. */
  readonly meanGap: number;
  readonly maxGap: number;
  readonly ms: number;
}

export interface PlacementQualityResult {
  readonly instances: number;
  readonly seed: number;
  /** Instances with no feasible placement at all (exact solver), left out of the gaps. */
  readonly infeasibleInstances: number;
  /** Infeasible instances where placeVms did not throw InfeasiblePlacementError (should be 0). */
  readonly infeasibleDisagreements: number;
  readonly methods: readonly MethodResult[];
  readonly targets: { readonly meanGap: number; readonly maxGap: number };
  readonly pass: boolean;
  readonly wallMs: number;
}

const TARGET_MEAN_GAP = 0.01;
const TARGET_MAX_GAP = 0.05;
const RANDOM_ATTEMPTS = 100;
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

export function runPlacementQuality(options: PlacementQualityOptions = {}): PlacementQualityResult {
  const instances = options.instances ?? 200;
  const seed = options.seed ?? 1;
  // Instances come from their own stream, so they do not depend on what the baselines draw.
  const instanceRng = mulberry32(seed);
  const rng = mulberry32(seed ^ 0x5bd1e995);
  const started = performance.now();
  const names = ['exact', 'placeVms', 'random', 'round-robin'] as const;
  const acc = names.map((method) => ({
    method,
    placed: 0,
    optimal: 0,
    failed: 0,
    infeasibleAttempts: 0,
    gapSum: 0,
    maxGap: 0,
    ms: 0,
  }));
  let infeasibleInstances = 0;
  let infeasibleDisagreements = 0;

  for (let i = 0; i < instances; i++) {
    const problem = randomSmallProblem(instanceRng);
    let t0 = performance.now();
    let optimum: number;
    try {
      optimum = exactPlacement(problem).cost;
    } catch (error) {
      if (!(error instanceof InfeasiblePlacementError)) throw error;
      acc[0]!.ms += performance.now() - t0;
      infeasibleInstances++;
      try {
        placeVms(problem, { seed: i });
        infeasibleDisagreements++;
      } catch (inner) {
        if (!(inner instanceof InfeasiblePlacementError)) throw inner;
      }
      continue;
    }
    acc[0]!.ms += performance.now() - t0;

    const record = (m: number, assignment: Int32Array | null, attempts: number, ms: number): void => {
      const a = acc[m]!;
      a.ms += ms;
      a.infeasibleAttempts += attempts;
      if (assignment === null) {
        a.failed++;
        return;
      }
      const problems = placementViolations(problem, assignment);
      if (problems.length > 0) throw new Error(`${a.method} broke a constraint: ${problems.join('; ')}`);
      const gap = optimum > 0 ? (placementCost(problem, assignment) - optimum) / optimum : 0;
      a.placed++;
      if (gap <= 1e-12) a.optimal++;
      a.gapSum += gap;
      a.maxGap = Math.max(a.maxGap, gap);
    };

    t0 = performance.now();
    const exact = exactPlacement(problem);
    record(0, exact.assignment, 0, 0);

    t0 = performance.now();
    let heuristic: Int32Array | null = null;
    try {
      heuristic = placeVms(problem, { seed: i }).assignment;
    } catch (error) {
      if (!(error instanceof InfeasiblePlacementError)) throw error;
    }
    record(1, heuristic, heuristic === null ? 1 : 0, performance.now() - t0);

    t0 = performance.now();
    const random = randomFeasiblePlacement(problem, rng);
    record(2, random.assignment, random.deadEnds, performance.now() - t0);

    t0 = performance.now();
    const robin = roundRobinPlacement(problem);
    record(3, robin, robin === null ? 1 : 0, performance.now() - t0);
  }

  const methods: MethodResult[] = acc.map((a) => ({
    method: a.method,
    placed: a.placed,
    optimal: a.optimal,
    failed: a.failed,
    infeasibleAttempts: a.infeasibleAttempts,
    meanGap: a.placed > 0 ? a.gapSum / a.placed : 0,
    maxGap: a.maxGap,
    ms: a.ms,
  }));
  const ours = methods[1]!;
  const pass =
    ours.failed === 0 &&
    infeasibleDisagreements === 0 &&
    ours.meanGap <= TARGET_MEAN_GAP &&
    ours.maxGap <= TARGET_MAX_GAP;
  return {
    instances,
    seed,
    infeasibleInstances,
    infeasibleDisagreements,
    methods,
    targets: { meanGap: TARGET_MEAN_GAP, maxGap: TARGET_MAX_GAP },
    pass,
    wallMs: performance.now() - started,
  };
}

// ---------------------------------------------------------------------------------------------------
// Baselines

/** Each VM (random order) to a uniformly random target with room; retried from scratch on a dead end. */
function randomFeasiblePlacement(
  problem: PlacementProblem,
  rng: () => number,
): { assignment: Int32Array | null; deadEnds: number } {
  const { vms, targets } = problem;
  const T = targets.length;
  let deadEnds = 0;
  for (let attempt = 0; attempt < RANDOM_ATTEMPTS; attempt++) {
    const mem = new Float64Array(T);
    const count = new Float64Array(T);
    const assignment = new Int32Array(vms.length).fill(-1);
    const order = vms.map((_, v) => v);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    // Pinned VMs first: they have no choice, so they must not find their target taken.
    order.sort((a, b) => Number(vms[b]!.fixedTarget >= 0) - Number(vms[a]!.fixedTarget >= 0));
    let ok = true;
    for (const v of order) {
      const options: number[] = [];
      for (let t = 0; t < T; t++) if (fits(problem, v, t, mem, count)) options.push(t);
      if (options.length === 0) {
        ok = false;
        break;
      }
      const t = options[Math.floor(rng() * options.length)]!;
      assignment[v] = t;
      mem[t]! += vms[v]!.memoryBytes;
      count[t]!++;
    }
    if (ok) return { assignment, deadEnds };
    deadEnds++;
  }
  return { assignment: null, deadEnds };
}

/** VM i to target i mod T, or the next target round the ring that takes it; pinned VMs first. */
function roundRobinPlacement(problem: PlacementProblem): Int32Array | null {
  const { vms, targets } = problem;
  const T = targets.length;
  const mem = new Float64Array(T);
  const count = new Float64Array(T);
  const assignment = new Int32Array(vms.length).fill(-1);
  for (let v = 0; v < vms.length; v++) {
    const t = vms[v]!.fixedTarget;
    if (t < 0) continue;
    if (!fits(problem, v, t, mem, count)) return null;
    assignment[v] = t;
    mem[t]! += vms[v]!.memoryBytes;
    count[t]!++;
  }
  let next = 0;
  for (let v = 0; v < vms.length; v++) {
    if (assignment[v]! >= 0) continue;
    let k = 0;
    while (k < T && !fits(problem, v, (next + k) % T, mem, count)) k++;
    if (k === T) return null;
    const t = (next + k) % T;
    assignment[v] = t;
    mem[t]! += vms[v]!.memoryBytes;
    count[t]!++;
    next = (t + 1) % T;
  }
  return assignment;
}

function fits(
  problem: PlacementProblem,
  v: number,
  t: number,
  mem: Float64Array,
  count: Float64Array,
): boolean {
  const vm = problem.vms[v]!;
  const target = problem.targets[t]!;
  if (vm.fixedTarget >= 0 && vm.fixedTarget !== t) return false;
  if (vm.excludedTargets.includes(t)) return false;
  return mem[t]! + vm.memoryBytes <= target.memoryBytes && count[t]! + 1 <= target.maxVms;
}

// ---------------------------------------------------------------------------------------------------
// Instances

/**
 * A small instance shaped like real guests: VMs of one OS family share a large class, a few pairs or
 * triples inside a family share page cache, every VM shares some common libraries, and a little
 * sharing crosses families. Capacities leave 10–60 % slack; pins, exclusions and maxVms are sprinkled.
 */
export function randomSmallProblem(rng: () => number, maxVms = 8, maxTargets = 3): PlacementProblem {
  const int = (lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));
  const n = int(2, maxVms);
  const T = int(1, maxTargets) === 1 && rng() < 0.5 ? 1 : int(2, maxTargets);
  const F = int(1, Math.min(3, n));
  const family = Int32Array.from({ length: n }, () => int(0, F - 1));
  const sizes = [1, 2, 2, 4];
  const vmMemory = Array.from({ length: n }, () => sizes[int(0, sizes.length - 1)]! * GiB);

  const classes = new Map<string, number>();
  const addClass = (members: number[], weight: number): void => {
    const set = [...new Set(members)].sort((a, b) => a - b);
    if (set.length < 2 || weight <= 0) return;
    const key = set.join(',');
    classes.set(key, (classes.get(key) ?? 0) + weight);
  };
  for (let f = 0; f < F; f++) {
    const members = [...family.keys()].filter((v) => family[v] === f);
    addClass(members, int(200, 800));
    for (let k = int(0, 2); k > 0; k--) {
      addClass(
        members.filter(() => rng() < 0.6),
        int(10, 150),
      );
    }
  }
  addClass([...family.keys()], int(20, 150));
  for (let k = int(0, 4); k > 0; k--) {
    addClass(
      [...family.keys()].filter(() => rng() < 0.35),
      int(5, 60),
    );
  }
  const sharing: SharingClass[] = [...classes].map(([key, weight]) => ({
    vms: Uint32Array.from(key.split(',').map(Number)),
    weight,
  }));

  const total = vmMemory.reduce((s, m) => s + m, 0);
  const slack = 1.1 + rng() * 0.5;
  const share = Array.from({ length: T }, () => 0.5 + rng());
  const shareSum = share.reduce((s, x) => s + x, 0);
  const targets = share.map((x, t) => {
    const memory = Math.max(1, Math.round(((total * slack * x) / shareSum / GiB) * 2) / 2) * GiB;
    const limit = rng() < 0.3 ? int(Math.ceil(n / T), Math.ceil(n / T) + 2) : Infinity;
    return { name: `t${t + 1}`, memoryBytes: memory, maxVms: limit };
  });

  const vms: PlacementVm[] = vmMemory.map((memoryBytes, v) => {
    const fixedTarget = T > 1 && rng() < 0.1 ? int(0, T - 1) : -1;
    const excludedTargets: number[] = [];
    if (T > 1 && fixedTarget < 0) for (let t = 0; t < T; t++) if (rng() < 0.1) excludedTargets.push(t);
    return {
      name: `vm${v + 1}`,
      memoryBytes,
      privatePages: int(50, 400),
      fixedTarget,
      excludedTargets,
    };
  });
  return { vms, targets, classes: sharing };
}

/**
 * A large instance in the shape of the real workload: VMs of 256 MiB (65536 pages), targets of
 * 8 × 256 MiB taking at most 10 VMs. About a dozen OS families of uneven size; each VM has ~20 % zero
 * pages (no digest), a family image class, a class common to all VMs, classes spanning two or three
 * related families, and `classes` small classes (2–6 holders, mostly within a family) for page cache
 * and the like. The rest of each VM's pages are private.
 */
export function randomLargeProblem(
  seed: number,
  vms = 500,
  targets = 64,
  classes = 500_000,
): PlacementProblem {
  const rng = mulberry32(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));
  const pagesPerVm = (256 * MiB) / 4096;
  const F = Math.max(2, Math.round(vms / 40));
  const pull = Array.from({ length: F }, () => 0.3 + rng() * 2);
  const pullSum = pull.reduce((s, x) => s + x, 0);
  const family = Int32Array.from({ length: vms }, () => {
    let r = rng() * pullSum;
    let f = 0;
    while (f < F - 1 && (r -= pull[f]!) > 0) f++;
    return f;
  });
  const byFamily = Array.from({ length: F }, () => [] as number[]);
  for (let v = 0; v < vms; v++) byFamily[family[v]!]!.push(v);

  const shared = new Float64Array(vms);
  const out: SharingClass[] = [];
  const add = (members: Uint32Array, weight: number): void => {
    if (members.length < 2) return;
    out.push({ vms: members, weight });
    for (const v of members) shared[v]! += weight;
  };
  const all = Uint32Array.from({ length: vms }, (_, v) => v);
  add(all, 3000);
  for (const members of byFamily) add(Uint32Array.from(members), int(12_000, 24_000));
  for (let k = 0; k < Math.ceil(F / 2); k++) {
    const fams = new Set([int(0, F - 1), int(0, F - 1), int(0, F - 1)].slice(0, int(2, 3)));
    const members = [...fams].flatMap((f) => byFamily[f]!).sort((a, b) => a - b);
    add(Uint32Array.from(members), int(1000, 3000));
  }
  const scratch = new Set<number>();
  for (let c = 0; c < classes; c++) {
    const anchor = int(0, vms - 1);
    const home = byFamily[family[anchor]!]!;
    let size = 2;
    while (size < 6 && rng() < 0.45) size++;
    scratch.clear();
    scratch.add(anchor);
    for (let tries = 0; scratch.size < size && tries < 20; tries++) {
      scratch.add(rng() < 0.8 ? home[int(0, home.length - 1)]! : int(0, vms - 1));
    }
    add(Uint32Array.from(scratch).sort(), rng() < 0.7 ? 1 : int(2, 4));
  }

  const zeroPages = Math.round(pagesPerVm * 0.2);
  const vmList: PlacementVm[] = Array.from({ length: vms }, (_, v) => ({
    name: `vm${v + 1}`,
    memoryBytes: 256 * MiB,
    privatePages: Math.max(0, pagesPerVm - zeroPages - shared[v]!),
    fixedTarget: -1,
    excludedTargets: [],
  }));
  const targetList = Array.from({ length: targets }, (_, t) => ({
    name: `t${t + 1}`,
    memoryBytes: 8 * 256 * MiB,
    maxVms: 10,
  }));
  return { vms: vmList, targets: targetList, classes: out };
}

// ---------------------------------------------------------------------------------------------------
// Large-instance timing

export interface LargeInstanceResult {
  readonly vms: number;
  readonly targets: number;
  readonly classes: number;
  readonly generateMs: number;
  readonly placeMs: number;
  readonly cost: number;
  /** Cost if every VM went to its own target (nothing shared on a target): the scale of the saving. */
  readonly spreadCost: number;
  /** Resident memory once the problem is built, before placing. */
  readonly rssBeforeBytes: number;
  /** Peak resident memory of the process so far. */
  readonly peakRssBytes: number;
}

export function runLargeInstance(seed = 1, classes = 500_000): LargeInstanceResult {
  let t0 = performance.now();
  const problem = randomLargeProblem(seed, 500, 64, classes);
  const generateMs = performance.now() - t0;
  const rssBeforeBytes = process.memoryUsage().rss;
  t0 = performance.now();
  const placement = placeVms(problem, { seed });
  const placeMs = performance.now() - t0;
  const problems = placementViolations(problem, placement.assignment);
  if (problems.length > 0) throw new Error(`large instance: ${problems.join('; ')}`);
  let spreadCost = 0;
  for (const vm of problem.vms) spreadCost += vm.privatePages;
  for (const cls of problem.classes) spreadCost += cls.weight * cls.vms.length;
  return {
    vms: problem.vms.length,
    targets: problem.targets.length,
    classes: problem.classes.length,
    generateMs,
    placeMs,
    cost: placement.cost,
    spreadCost,
    rssBeforeBytes,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
}

// ---------------------------------------------------------------------------------------------------
// Command line

function percent(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

function printTable(result: PlacementQualityResult): void {
  console.log(
    `placement quality: ${result.instances} random instances (≤ 8 VMs, ≤ 3 targets), seed ${result.seed}; ` +
      `${result.infeasibleInstances} infeasible (placeVms agreed on ${
        result.infeasibleInstances - result.infeasibleDisagreements
      })`,
  );
  const header = ['method', 'mean gap', 'max gap', 'optimal', 'failed', 'dead ends', 'time'];
  const rows = result.methods.map((m) => [
    m.method,
    percent(m.meanGap),
    percent(m.maxGap),
    `${m.optimal}/${m.placed + m.failed}`,
    String(m.failed),
    String(m.infeasibleAttempts),
    `${m.ms.toFixed(0)} ms`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(line(header));
  for (const r of rows) console.log(line(r));
  const ours = result.methods[1]!;
  const verdict = (ok: boolean): string => (ok ? 'PASS' : 'MISS');
  console.log(
    `placeVms mean gap ${percent(ours.meanGap)} (target ≤ ${percent(result.targets.meanGap)}) ` +
      `${verdict(ours.meanGap <= result.targets.meanGap)}; max gap ${percent(ours.maxGap)} ` +
      `(target ≤ ${percent(result.targets.maxGap)}) ${verdict(ours.maxGap <= result.targets.maxGap)}; ` +
      `failed ${ours.failed} (target 0) ${verdict(ours.failed === 0)}`,
  );
  console.log(`overall ${verdict(result.pass)}; wall time ${result.wallMs.toFixed(0)} ms`);
}

function printLarge(r: LargeInstanceResult): void {
  console.log(
    `large instance: ${r.vms} VMs, ${r.targets} targets, ${r.classes} classes: generated in ` +
      `${(r.generateMs / 1000).toFixed(1)} s, placed in ${(r.placeMs / 1000).toFixed(1)} s (target < 20 s) ` +
      `${r.placeMs < 20_000 ? 'PASS' : 'MISS'}; cost ${r.cost} pages vs ${r.spreadCost} spread out; ` +
      `rss ${(r.rssBeforeBytes / MiB).toFixed(0)} MiB with the problem built, peak ${(r.peakRssBytes / MiB).toFixed(0)} MiB`,
  );
}

function main(argv: readonly string[]): void {
  const flag = (name: string): boolean => argv.includes(name);
  const value = (name: string): number | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? Number(argv[i + 1]) : undefined;
  };
  const result = runPlacementQuality({ instances: value('--instances'), seed: value('--seed') });
  const large = flag('--large') ? runLargeInstance(value('--seed') ?? 1, value('--classes')) : undefined;
  if (flag('--json')) {
    console.log(JSON.stringify({ quality: result, large }, null, 2));
  } else {
    printTable(result);
    if (large !== undefined) printLarge(large);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2));
}
