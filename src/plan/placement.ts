import { kmeans } from 'ml-kmeans';
import { InfeasiblePlacementError } from '../errors.js';
import { ClassMembership, PlacementEvaluator, SMALL_CLASS } from './placement-cost.js';
import type { Placement, PlacementProblem } from './placement-problem.js';

/**
 * Sharing-aware placement: which target each VM goes to so that the pages the VMs share cross the
 * network as few times as possible, within every target's memory, VM count, pins and exclusions.
 *
 * Shape: feasibility checks with precise messages; a few constructions (k-means over the heaviest
 * sharing classes mapped onto targets, greedy by marginal cost, randomised greedy), each improved by
 * capacity-aware local search over moves, swaps and ejection chains; then kick rounds (random moves,
 * merged targets, emptied and refilled targets) each followed by the same descent; best kept. The
 * number of starts and kicks follows a work budget sized from the instance, so small instances get
 * many and the 500-VM, 64-target case a few. Deterministic for a given seed: no clock in any decision.
 */

export interface PlaceOptions {
  /** Seed of the k-means initialisation and the randomised starts (default 1). */
  readonly seed?: number;
  /** Upper bound on the sweeps of each local-search descent (default 100). */
  readonly maxSweeps?: number;
}

/** Most dimensions of a k-means feature vector: the heaviest classes carry the family structure. */
const FEATURE_CLASSES = 64;
/** Work (in estimateSweepWork units) the whole search may spend, split over starts and kick rounds. */
const SEARCH_WORK_BUDGET = 3.7e8;
const MAX_STARTS = 24;
const MAX_KICK_ROUNDS = 48;
/** How far above the best cost the kick walk may wander (relative). */
const WALK_SLACK = 0.005;
/** Compound steps (swaps, ejection chains) per VM and sweep re-priced with fresh rows, best first. */
const COMPOUND_EVALS = 8;
/** Search steps the exact packing fallback may take before giving up. */
const PACKING_STEPS = 2_000_000;
const IMPROVES = -1e-9;

export function placeVms(problem: PlacementProblem, options: PlaceOptions = {}): Placement {
  const seed = (options.seed ?? 1) >>> 0;
  const maxSweeps = options.maxSweeps ?? 100;
  checkPlacementFeasibility(problem);
  const n = problem.vms.length;
  const T = problem.targets.length;
  if (n === 0) return { assignment: new Int32Array(0), cost: 0 };

  const caps = new Capacities(problem);
  const membership = new ClassMembership(problem);
  const ev = new PlacementEvaluator(membership);

  if (T === 1 || membership.classCount === 0) {
    // Every feasible packing costs the same here, so the first one found is optimal.
    const packed = constructFirstFitDecreasing(problem, caps, ev) ?? packExhaustively(problem, caps, ev);
    return { assignment: packed.slice(), cost: ev.cost };
  }

  const sweepWork = estimateSweepWork(membership, n);
  // Measured on the 500-VM, 64-target instance: a start (construction and its descent) costs about
  // twenty sweeps, a kick round about eight. The budget buys three starts and one kick round there,
  // and the caps on small instances.
  const starts = Math.max(2, Math.min(MAX_STARTS, Math.floor(SEARCH_WORK_BUDGET / (sweepWork * 20))));
  const left = SEARCH_WORK_BUDGET - starts * sweepWork * 20;
  const kickRounds = Math.max(0, Math.min(MAX_KICK_ROUNDS, Math.floor(left / (sweepWork * 8))));
  const rng = mulberry32(seed ^ 0x9e3779b9);
  const features = featureVectors(problem, membership);

  let best: Int32Array | null = null;
  let bestCost = Infinity;
  for (let s = 0; s < starts; s++) {
    let built: Int32Array | null;
    if (s === 1) built = constructGreedy(problem, caps, ev, sharingOrder(membership, problem), null);
    else if (s % 2 === 0) built = constructFromClusters(problem, caps, ev, features, (seed + s * 7919) >>> 0);
    else built = constructGreedy(problem, caps, ev, shuffled(n, rng), rng);
    if (built === null) continue;
    localSearch(problem, caps, ev, maxSweeps);
    if (ev.cost < bestCost) {
      bestCost = ev.cost;
      best = ev.assignment.slice();
    }
  }
  if (best === null) {
    // The heuristics could not pack the VMs; packExhaustively throws when nothing can.
    if (constructFirstFitDecreasing(problem, caps, ev) === null) packExhaustively(problem, caps, ev);
    localSearch(problem, caps, ev, maxSweeps);
    bestCost = ev.cost;
    best = ev.assignment.slice();
  }

  // Iterated local search: kick the best placement out of its basin, descend again, keep improvements.
  // Reaches placements that need several coordinated moves (a family regrouped across full targets).
  // Kicks rotate through emptying targets and refilling them greedily, a few random moves, and merging
  // one target's VMs into another. The
  // walk goes on from a result slightly worse than the best too: the same groups on other targets are
  // often one kick away from a better arrangement that the best itself is not.
  let current = best;
  for (let round = 0; round < kickRounds; round++) {
    load(caps, ev, current);
    const kind = round % 3;
    if (kind === 1) kick(caps, ev, rng, 2 + Math.floor(rng() * 2));
    else if (kind === 2) mergeTargets(caps, ev, rng);
    else if (!ruinAndRecreate(caps, ev, rng)) continue;
    // A visiting order of its own, so the descent does not fall back into the basin it came from.
    localSearch(problem, caps, ev, maxSweeps, shuffled(n, rng));
    if (ev.cost < bestCost) {
      bestCost = ev.cost;
      best = ev.assignment.slice();
      current = best;
    } else if (ev.cost <= bestCost * (1 + WALK_SLACK)) {
      current = ev.assignment.slice();
    }
  }
  return { assignment: best, cost: bestCost };
}

// ---------------------------------------------------------------------------------------------------
// Feasibility

/**
 * Throws InfeasiblePlacementError for a constraint that no placement can meet, naming the VM or target
 * at fault. Passing does not prove a packing exists (that is bin packing); placeVms searches for one.
 */
export function checkPlacementFeasibility(problem: PlacementProblem): void {
  const { vms, targets } = problem;
  const T = targets.length;
  if (vms.length === 0) return;
  if (T === 0) throw new InfeasiblePlacementError(`${plural(vms.length, 'VM')} but no targets`);

  for (const vm of vms) {
    for (const x of vm.excludedTargets) {
      if (!Number.isInteger(x) || x < 0 || x >= T) {
        throw new InfeasiblePlacementError(
          `VM ${vm.name} excludes target #${x}, which does not exist (${plural(T, 'target')})`,
        );
      }
    }
    if (vm.fixedTarget >= 0) {
      const t = vm.fixedTarget;
      const target = targets[t];
      if (!Number.isInteger(t) || target === undefined) {
        throw new InfeasiblePlacementError(
          `VM ${vm.name} is pinned to target #${t}, which does not exist (${plural(T, 'target')})`,
        );
      }
      if (vm.excludedTargets.includes(t)) {
        throw new InfeasiblePlacementError(`VM ${vm.name} is pinned to ${target.name} and also excludes it`);
      }
      continue;
    }
    const reasons: string[] = [];
    let fits = false;
    for (let t = 0; t < T; t++) {
      const target = targets[t]!;
      if (vm.excludedTargets.includes(t)) reasons.push(`${target.name} excluded`);
      else if (target.maxVms < 1) reasons.push(`${target.name} takes no VMs (maxVms ${target.maxVms})`);
      else if (target.memoryBytes < vm.memoryBytes) {
        reasons.push(`${target.name} has ${formatBytes(target.memoryBytes)}`);
      } else fits = true;
    }
    if (!fits) {
      throw new InfeasiblePlacementError(
        `VM ${vm.name} (${formatBytes(vm.memoryBytes)}) fits on no target: ${reasons.join(', ')}`,
      );
    }
  }

  for (let t = 0; t < T; t++) {
    const target = targets[t]!;
    const pinned = vms.filter((vm) => vm.fixedTarget === t);
    if (pinned.length === 0) continue;
    const names = pinned.map((vm) => vm.name).join(', ');
    const subject = pinned.length === 1 ? `VM ${names} is` : `VMs ${names} are`;
    const need = pinned.reduce((sum, vm) => sum + vm.memoryBytes, 0);
    if (need > target.memoryBytes) {
      throw new InfeasiblePlacementError(
        `${subject} pinned to ${target.name} but ${target.name} holds ${formatBytes(target.memoryBytes)} ` +
          `and the VMs pinned there need ${formatBytes(need)}`,
      );
    }
    if (pinned.length > target.maxVms) {
      throw new InfeasiblePlacementError(
        `${subject} pinned to ${target.name} but ${target.name} takes at most ${plural(target.maxVms, 'VM')} (maxVms)`,
      );
    }
  }

  const slots = targets.reduce((sum, t) => sum + Math.max(0, t.maxVms), 0);
  if (vms.length > slots) {
    throw new InfeasiblePlacementError(
      `${plural(vms.length, 'VM')} but the targets take at most ${plural(slots, 'VM')} in all (maxVms)`,
    );
  }
  const need = vms.reduce((sum, vm) => sum + vm.memoryBytes, 0);
  const have = targets.reduce((sum, t) => sum + t.memoryBytes, 0);
  if (need > have) {
    throw new InfeasiblePlacementError(
      `VMs need ${formatBytes(need)} but targets hold ${formatBytes(have)} in all`,
    );
  }
}

/** Every constraint the assignment breaks, as messages (empty when it is a valid placement). */
export function placementViolations(problem: PlacementProblem, assignment: Int32Array): string[] {
  const { vms, targets } = problem;
  const out: string[] = [];
  if (assignment.length !== vms.length)
    return [`assignment has ${assignment.length} entries for ${vms.length} VMs`];
  const mem = new Float64Array(targets.length);
  const count = new Float64Array(targets.length);
  for (let v = 0; v < vms.length; v++) {
    const vm = vms[v]!;
    const t = assignment[v]!;
    const target = targets[t];
    if (target === undefined) {
      out.push(`VM ${vm.name} has no target`);
      continue;
    }
    if (vm.fixedTarget >= 0 && vm.fixedTarget !== t) out.push(`VM ${vm.name} is pinned elsewhere`);
    if (vm.excludedTargets.includes(t)) out.push(`VM ${vm.name} is on excluded ${target.name}`);
    mem[t]! += vm.memoryBytes;
    count[t]!++;
  }
  for (let t = 0; t < targets.length; t++) {
    const target = targets[t]!;
    if (mem[t]! > target.memoryBytes) out.push(`${target.name} is over its memory`);
    if (count[t]! > target.maxVms) out.push(`${target.name} is over maxVms`);
  }
  return out;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

function formatBytes(bytes: number): string {
  const GiB = 1024 ** 3;
  if (bytes >= GiB || bytes === 0) return `${(bytes / GiB).toFixed(1)} GiB`;
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------------------------------------------
// Capacity bookkeeping

/** Target limits and loads as typed arrays, plus which targets each VM may use at all. */
class Capacities {
  readonly vmMemory: Float64Array;
  readonly pinned: Int32Array;
  readonly memory: Float64Array;
  readonly maxVms: Float64Array;
  readonly usedMemory: Float64Array;
  readonly usedVms: Float64Array;
  /** allowed[v * T + t] = 1 when v may go to t (not excluded; only its pin if pinned). */
  readonly allowed: Uint8Array;
  readonly T: number;

  constructor(problem: PlacementProblem) {
    const { vms, targets } = problem;
    const T = targets.length;
    this.T = T;
    this.vmMemory = Float64Array.from(vms, (vm) => vm.memoryBytes);
    this.pinned = Int32Array.from(vms, (vm) => vm.fixedTarget);
    this.memory = Float64Array.from(targets, (t) => t.memoryBytes);
    this.maxVms = Float64Array.from(targets, (t) => t.maxVms);
    this.usedMemory = new Float64Array(T);
    this.usedVms = new Float64Array(T);
    this.allowed = new Uint8Array(vms.length * T);
    for (let v = 0; v < vms.length; v++) {
      const vm = vms[v]!;
      for (let t = 0; t < T; t++) {
        const ok = vm.fixedTarget >= 0 ? vm.fixedTarget === t : !vm.excludedTargets.includes(t);
        this.allowed[v * T + t] = ok ? 1 : 0;
      }
    }
  }

  clear(): void {
    this.usedMemory.fill(0);
    this.usedVms.fill(0);
  }

  fits(v: number, t: number): boolean {
    return (
      this.allowed[v * this.T + t] === 1 &&
      this.usedMemory[t]! + this.vmMemory[v]! <= this.memory[t]! &&
      this.usedVms[t]! + 1 <= this.maxVms[t]!
    );
  }

  /** Whether v (now on ta) and w (now on tb) may exchange targets. */
  swapFits(v: number, ta: number, w: number, tb: number): boolean {
    const T = this.T;
    if (this.allowed[v * T + tb] !== 1 || this.allowed[w * T + ta] !== 1) return false;
    const dv = this.vmMemory[v]!;
    const dw = this.vmMemory[w]!;
    return (
      this.usedMemory[ta]! - dv + dw <= this.memory[ta]! && this.usedMemory[tb]! - dw + dv <= this.memory[tb]!
    );
  }

  /** Whether a may move onto b's target tb while b moves on to tc (neither ta nor tb). */
  chainFits(a: number, tb: number, b: number, tc: number): boolean {
    const T = this.T;
    if (this.allowed[a * T + tb] !== 1 || this.allowed[b * T + tc] !== 1) return false;
    return (
      this.usedMemory[tb]! - this.vmMemory[b]! + this.vmMemory[a]! <= this.memory[tb]! &&
      this.usedMemory[tc]! + this.vmMemory[b]! <= this.memory[tc]! &&
      this.usedVms[tc]! + 1 <= this.maxVms[tc]!
    );
  }

  add(v: number, t: number): void {
    this.usedMemory[t]! += this.vmMemory[v]!;
    this.usedVms[t]!++;
  }

  remove(v: number, t: number): void {
    this.usedMemory[t]! -= this.vmMemory[v]!;
    this.usedVms[t]!--;
  }

  freeMemory(t: number): number {
    return this.memory[t]! - this.usedMemory[t]!;
  }
}

/** Empties evaluator and loads, then places the pinned VMs (the checks guarantee they fit). */
function startEmpty(problem: PlacementProblem, caps: Capacities, ev: PlacementEvaluator): void {
  const n = problem.vms.length;
  ev.reset(new Int32Array(n).fill(-1));
  caps.clear();
  for (let v = 0; v < n; v++) {
    const t = caps.pinned[v]!;
    if (t >= 0) place(caps, ev, v, t);
  }
}

/** Sets evaluator and loads to a complete assignment. */
function load(caps: Capacities, ev: PlacementEvaluator, assignment: Int32Array): void {
  ev.reset(assignment);
  caps.clear();
  for (let v = 0; v < assignment.length; v++) caps.add(v, assignment[v]!);
}

/**
 * Takes every unpinned VM off one to three random targets (plus a few random others) and puts them back
 * largest first, each on its cheapest feasible target with random tie-breaks. False when a VM found
 * no room (the caller reloads the placement).
 */
function ruinAndRecreate(caps: Capacities, ev: PlacementEvaluator, rng: () => number): boolean {
  const n = ev.assignment.length;
  const T = caps.T;
  const emptied = new Uint8Array(T);
  for (let k = 1 + Math.floor(rng() * Math.min(T, 3)); k > 0;) {
    const t = Math.floor(rng() * T);
    if (emptied[t] === 0) {
      emptied[t] = 1;
      k--;
    }
  }
  const removed: number[] = [];
  for (let v = 0; v < n; v++) {
    if (caps.pinned[v]! >= 0) continue;
    const t = ev.assignment[v]!;
    if (emptied[t] === 1 || rng() < 0.05) {
      removed.push(v);
      caps.remove(v, t);
      ev.applyMove(v, -1);
    }
  }
  for (let i = removed.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [removed[i], removed[j]] = [removed[j]!, removed[i]!];
  }
  // Largest first (random among equals), so the refill packs about as well as first-fit decreasing.
  removed.sort((a, b) => caps.vmMemory[b]! - caps.vmMemory[a]!);
  const deltas = new Float64Array(T);
  for (const v of removed) {
    ev.moveDeltas(v, deltas);
    const t = bestTarget(caps, v, deltas, rng);
    if (t < 0) return false;
    place(caps, ev, v, t);
  }
  return true;
}

/**
 * Moves every unpinned VM of one random target that may go to another random target and fits there:
 * regroups a whole cluster at once, which single moves cannot when each of them alone costs more.
 */
function mergeTargets(caps: Capacities, ev: PlacementEvaluator, rng: () => number): void {
  const T = caps.T;
  if (T < 2) return;
  const from = Math.floor(rng() * T);
  const to = (from + 1 + Math.floor(rng() * (T - 1))) % T;
  for (let v = 0; v < ev.assignment.length; v++) {
    if (ev.assignment[v] !== from || caps.pinned[v]! >= 0 || !caps.fits(v, to)) continue;
    caps.remove(v, from);
    ev.applyMove(v, to);
    caps.add(v, to);
  }
}

/** `count` random feasible moves or swaps of unpinned VMs, whatever they cost. */
function kick(caps: Capacities, ev: PlacementEvaluator, rng: () => number, count: number): void {
  const n = ev.assignment.length;
  const T = caps.T;
  for (let done = 0, tries = 0; done < count && tries < count * 8; tries++) {
    const a = Math.floor(rng() * n);
    const ta = ev.assignment[a]!;
    const t = Math.floor(rng() * T);
    if (caps.pinned[a]! >= 0 || t === ta) continue;
    if (caps.fits(a, t)) {
      caps.remove(a, ta);
      ev.applyMove(a, t);
      caps.add(a, t);
      done++;
      continue;
    }
    // Full target: swap with a VM found there, scanning from a random point.
    const from = Math.floor(rng() * n);
    let b = -1;
    for (let i = 0; i < n && b < 0; i++) {
      const c = (from + i) % n;
      if (ev.assignment[c] === t && caps.pinned[c]! < 0 && caps.swapFits(a, ta, c, t)) b = c;
    }
    if (b < 0) continue;
    caps.remove(a, ta);
    caps.remove(b, t);
    ev.applySwap(a, b);
    caps.add(a, t);
    caps.add(b, ta);
    done++;
  }
}

function place(caps: Capacities, ev: PlacementEvaluator, v: number, t: number): void {
  ev.applyMove(v, t);
  caps.add(v, t);
}

/**
 * Feasible target of least marginal cost for an unplaced VM, or -1. Ties go to the target with the most
 * free memory, so a VM that shares nothing with placed VMs opens room for its own family.
 */
function bestTarget(caps: Capacities, v: number, deltas: Float64Array, rng: (() => number) | null): number {
  let best = -1;
  let bestDelta = Infinity;
  let bestFree = -Infinity;
  let ties = 0;
  for (let t = 0; t < caps.T; t++) {
    if (!caps.fits(v, t)) continue;
    const d = deltas[t]!;
    const free = caps.freeMemory(t);
    if (d < bestDelta - 1e-9) {
      best = t;
      bestDelta = d;
      bestFree = free;
      ties = 1;
    } else if (d <= bestDelta + 1e-9) {
      if (rng !== null) {
        // Reservoir choice among equally cheap targets: the randomised starts differ here.
        if (rng() * ++ties < 1) best = t;
      } else if (free > bestFree) {
        best = t;
        bestFree = free;
      }
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------
// Constructions: each leaves ev and caps holding a complete assignment, or returns null.

/** VMs by how much they share (weight × other holders over their classes), most first. */
function sharingOrder(m: ClassMembership, problem: PlacementProblem): Int32Array {
  const n = m.vmCount;
  const score = new Float64Array(n);
  for (let v = 0; v < n; v++) {
    let s = 0;
    for (let k = m.vmClassStart[v]!; k < m.vmClassStart[v + 1]!; k++) {
      s += m.memWeight[k]! * (m.classSize(m.memClass[k]!) - 1);
    }
    score[v] = s;
  }
  const order = Int32Array.from({ length: n }, (_, v) => v);
  return order.sort(
    (a, b) => score[b]! - score[a]! || problem.vms[b]!.memoryBytes - problem.vms[a]!.memoryBytes || a - b,
  );
}

function constructGreedy(
  problem: PlacementProblem,
  caps: Capacities,
  ev: PlacementEvaluator,
  order: Int32Array,
  rng: (() => number) | null,
): Int32Array | null {
  startEmpty(problem, caps, ev);
  const deltas = new Float64Array(caps.T);
  for (const v of order) {
    if (caps.pinned[v]! >= 0) continue;
    ev.moveDeltas(v, deltas);
    const t = bestTarget(caps, v, deltas, rng);
    if (t < 0) return null;
    place(caps, ev, v, t);
  }
  return ev.assignment;
}

/**
 * Per VM, a vector over the heaviest sharing classes (weight × (holders − 1)): sqrt(weight) where the
 * VM holds the class, L2-normalised, so VMs that share most of their heavy pages end up close. Null
 * when the vectors cannot separate anything (no classes).
 */
function featureVectors(problem: PlacementProblem, m: ClassMembership): number[][] | null {
  const C = m.classCount;
  if (C === 0) return null;
  const D = Math.min(FEATURE_CLASSES, C);
  const heft = new Float64Array(C);
  for (let c = 0; c < C; c++) heft[c] = m.weights[c]! * (m.classStart[c + 1]! - m.classStart[c]! - 1);
  const top = topIndices(heft, D);
  const data = problem.vms.map(() => new Array<number>(D).fill(0));
  for (let j = 0; j < D; j++) {
    const c = top[j]!;
    const value = Math.sqrt(m.weights[c]!);
    for (let i = m.classStart[c]!; i < m.classStart[c + 1]!; i++) data[m.classMembers[i]!]![j] = value;
  }
  for (const row of data) {
    const norm = Math.hypot(...row);
    if (norm > 0) for (let j = 0; j < D; j++) row[j] = row[j]! / norm;
  }
  return data;
}

/** Indices of the k largest values (ties by index), without sorting all of them. */
function topIndices(values: Float64Array, k: number): Int32Array {
  const heap: number[] = [];
  const worse = (a: number, b: number): boolean =>
    values[a]! < values[b]! || (values[a] === values[b] && a > b);
  const siftDown = (i: number): void => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && worse(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && worse(heap[r]!, heap[m]!)) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
  };
  for (let c = 0; c < values.length; c++) {
    if (heap.length < k) {
      heap.push(c);
      for (let i = heap.length - 1; i > 0;) {
        const p = (i - 1) >> 1;
        if (!worse(heap[i]!, heap[p]!)) break;
        [heap[i], heap[p]] = [heap[p]!, heap[i]!];
        i = p;
      }
    } else if (worse(heap[0]!, c)) {
      heap[0] = c;
      siftDown(0);
    }
  }
  return Int32Array.from(heap).sort((a, b) => values[b]! - values[a]! || a - b);
}

/** k-means cluster of each unpinned VM (all 0 when clustering cannot apply). */
function clusterVms(features: number[][] | null, k: number, seed: number): Int32Array {
  const n = features?.length ?? 0;
  const out = new Int32Array(n);
  if (features === null) return out;
  // kmeans++ needs as many distinct points as clusters (it samples by distance to chosen centres).
  const distinct = new Set(features.map((row) => row.join(','))).size;
  const K = Math.min(k, distinct);
  if (K <= 1) return out;
  try {
    const result = kmeans(features, K, { seed, initialization: 'kmeans++', maxIterations: 50 });
    for (let v = 0; v < n; v++) out[v] = result.clusters[v] ?? 0;
  } catch {
    // A degenerate input for the library: one cluster, so the greedy overflow handling decides.
    out.fill(0);
  }
  return out;
}

/**
 * Clusters onto targets: pins first; then clusters by total memory, each to the target (not yet taken
 * by a cluster, while any are left) where it adds least to the cost, ties to the most free memory; a
 * VM that does not fit there goes to its best feasible target by marginal cost.
 */
function constructFromClusters(
  problem: PlacementProblem,
  caps: Capacities,
  ev: PlacementEvaluator,
  features: number[][] | null,
  seed: number,
): Int32Array | null {
  const n = problem.vms.length;
  const T = caps.T;
  startEmpty(problem, caps, ev);
  const cluster = clusterVms(features, Math.min(T, n), seed);
  const groups = new Map<number, number[]>();
  for (let v = 0; v < n; v++) {
    if (caps.pinned[v]! >= 0) continue;
    const g = groups.get(cluster[v]!);
    if (g === undefined) groups.set(cluster[v]!, [v]);
    else g.push(v);
  }
  const memoryOf = (g: number[]): number => g.reduce((s, v) => s + caps.vmMemory[v]!, 0);
  const ordered = [...groups.values()].sort((a, b) => memoryOf(b) - memoryOf(a) || a[0]! - b[0]!);
  const taken = new Uint8Array(T);
  let takenCount = 0;
  const deltas = new Float64Array(T);
  const sum = new Float64Array(T);
  for (const group of ordered) {
    group.sort((a, b) => caps.vmMemory[b]! - caps.vmMemory[a]! || a - b);
    sum.fill(0);
    for (const v of group) {
      ev.moveDeltas(v, deltas);
      for (let t = 0; t < T; t++) sum[t]! += deltas[t]!;
    }
    let home = -1;
    for (let t = 0; t < T; t++) {
      if (takenCount < T && taken[t] === 1) continue;
      if (
        home < 0 ||
        sum[t]! < sum[home]! - 1e-9 ||
        (sum[t]! <= sum[home]! + 1e-9 && caps.freeMemory(t) > caps.freeMemory(home))
      ) {
        home = t;
      }
    }
    if (taken[home] === 0) takenCount++;
    taken[home] = 1;
    for (const v of group) {
      if (caps.fits(v, home)) {
        place(caps, ev, v, home);
        continue;
      }
      ev.moveDeltas(v, deltas);
      const t = bestTarget(caps, v, deltas, null);
      if (t < 0) return null;
      place(caps, ev, v, t);
    }
  }
  return ev.assignment;
}

/** First-fit decreasing by memory over the targets each VM may use: the packing fallback. */
function constructFirstFitDecreasing(
  problem: PlacementProblem,
  caps: Capacities,
  ev: PlacementEvaluator,
): Int32Array | null {
  const n = problem.vms.length;
  startEmpty(problem, caps, ev);
  const order = Int32Array.from({ length: n }, (_, v) => v).sort(
    (a, b) => caps.vmMemory[b]! - caps.vmMemory[a]! || a - b,
  );
  for (const v of order) {
    if (caps.pinned[v]! >= 0) continue;
    let t = 0;
    while (t < caps.T && !caps.fits(v, t)) t++;
    if (t === caps.T) return null;
    place(caps, ev, v, t);
  }
  return ev.assignment;
}

/**
 * Depth-first search over packings (largest VMs first), for when the heuristics found none. Exhaustive
 * on small instances; on large ones it gives up after PACKING_STEPS and says so.
 */
function packExhaustively(problem: PlacementProblem, caps: Capacities, ev: PlacementEvaluator): Int32Array {
  const n = problem.vms.length;
  const T = caps.T;
  startEmpty(problem, caps, ev);
  const order = Int32Array.from({ length: n }, (_, v) => v)
    .filter((v) => caps.pinned[v]! < 0)
    .sort((a, b) => caps.vmMemory[b]! - caps.vmMemory[a]! || a - b);
  const at = new Int32Array(order.length).fill(-1);
  let depth = 0;
  let steps = 0;
  while (depth >= 0 && depth < order.length) {
    if (++steps > PACKING_STEPS) break;
    const v = order[depth]!;
    if (at[depth]! >= 0) caps.remove(v, at[depth]!);
    let t = at[depth]! + 1;
    while (t < T && !caps.fits(v, t)) t++;
    if (t < T) {
      caps.add(v, t);
      at[depth] = t;
      depth++;
    } else {
      at[depth] = -1;
      depth--;
    }
  }
  if (depth === order.length) {
    for (let i = 0; i < order.length; i++) ev.applyMove(order[i]!, at[i]!);
    return ev.assignment;
  }
  const total = problem.vms.reduce((s, vm) => s + vm.memoryBytes, 0);
  const why =
    depth < 0
      ? "no arrangement fits every target's memory and maxVms with the pins and exclusions"
      : `no arrangement found in ${PACKING_STEPS} search steps`;
  throw new InfeasiblePlacementError(
    `The ${plural(n, 'VM')} (${formatBytes(total)}) could not be packed onto the ${plural(T, 'target')}: ${why}`,
  );
}

// ---------------------------------------------------------------------------------------------------
// Local search

/**
 * Rough cost of one sweep, for sizing the number of starts: per small class, each member visits the
 * others (move deltas, pair excess); per large class, each member scans a count row and visits the
 * members; plus the pairs of VMs weighed against each other.
 */
function estimateSweepWork(m: ClassMembership, n: number): number {
  let work = n * n + n * m.targetCount;
  for (let c = 0; c < m.classCount; c++) {
    const size = m.classSize(c);
    work += size <= SMALL_CLASS ? size * size : size * (size + m.targetCount);
  }
  return work;
}

/**
 * Sweeps over the movable VMs; for each, the best improving step that keeps every target within its
 * limits: a move, a swap, or an ejection chain (a onto b's target, b on to a third one; needed when
 * targets are full). Every compound step of a is priced as D[a][tb] + D[b][tc] + the excess over the
 * classes a and b share (evaluator.pairExcess, one pass for all b), where D is the matrix of move
 * deltas. D is refreshed at the start of each sweep and per visited VM, for the rows the evaluator
 * marked stale; other rows may go stale within a sweep (nearly every move touches some small class of
 * nearly every VM, so keeping every row exact would cost a full refresh per step), so the few best
 * candidates are re-priced with a fresh row before one is taken. A sweep without change ran on exact
 * rows throughout: a local optimum for moves, swaps and chains.
 */
function localSearch(
  problem: PlacementProblem,
  caps: Capacities,
  ev: PlacementEvaluator,
  maxSweeps: number,
  order: Int32Array | null = null,
): void {
  const n = problem.vms.length;
  const T = caps.T;
  const movable: number[] = [];
  for (const v of order ?? Int32Array.from({ length: n }, (_, i) => i))
    if (caps.pinned[v]! < 0) movable.push(v);
  if (movable.length === 0) return;
  const D = new Float64Array(n * T);
  // rowMin[b]: cheapest move of b anywhere, to skip b wholesale when no compound step with it can win.
  const rowMin = new Float64Array(n);
  const stale = ev.stale;
  stale.fill(1);
  const fresh = (v: number): void => {
    if (stale[v] === 0) return;
    stale[v] = 0;
    const row = D.subarray(v * T, v * T + T);
    ev.moveDeltas(v, row);
    const home = ev.assignment[v]!;
    let min = Infinity;
    for (let t = 0; t < T; t++) if (t !== home && row[t]! < min) min = row[t]!;
    rowMin[v] = min;
  };
  const shortlist = new Shortlist(COMPOUND_EVALS);
  const chainExcess = new Float64Array(n);
  const swapExcess = new Float64Array(n);

  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    for (const v of movable) fresh(v);
    let improved = false;
    for (const a of movable) {
      const ta = ev.assignment[a]!;
      fresh(a);
      const base = a * T;
      let best = IMPROVES;
      let moveTo = -1;
      for (let t = 0; t < T; t++) {
        if (t !== ta && D[base + t]! < best && caps.fits(a, t)) {
          best = D[base + t]!;
          moveTo = t;
        }
      }

      ev.pairExcess(a, chainExcess, swapExcess);
      shortlist.clear();
      for (const b of movable) {
        const tb = ev.assignment[b]!;
        if (tb === ta || caps.allowed[base + tb] !== 1) continue;
        const chain = D[base + tb]! + chainExcess[b]!;
        if (chain + rowMin[b]! >= Math.min(best, shortlist.limit())) continue;
        const swap = D[base + tb]! + swapExcess[b]!;
        for (let tc = 0; tc < T; tc++) {
          if (tc === tb) continue;
          const value = (tc === ta ? swap : chain) + D[b * T + tc]!;
          if (value >= best || value >= shortlist.limit()) continue;
          if (tc === ta ? !caps.swapFits(a, ta, b, tb) : !caps.chainFits(a, tb, b, tc)) continue;
          shortlist.add(value, b * T + tc);
        }
      }
      let partner = -1;
      let partnerTo = -1;
      for (let i = 0; i < shortlist.size; i++) {
        const code = shortlist.codes[i]!;
        const b = Math.floor(code / T);
        const tc = code - b * T;
        fresh(b);
        const tb = ev.assignment[b]!;
        const exact = D[base + tb]! + (tc === ta ? swapExcess[b]! : chainExcess[b]!) + D[b * T + tc]!;
        if (exact < best) {
          best = exact;
          partner = b;
          partnerTo = tc;
        }
      }

      if (partner >= 0) {
        const tb = ev.assignment[partner]!;
        caps.remove(a, ta);
        caps.remove(partner, tb);
        ev.applyMove(a, tb);
        ev.applyMove(partner, partnerTo);
        caps.add(a, tb);
        caps.add(partner, partnerTo);
        improved = true;
      } else if (moveTo >= 0) {
        caps.remove(a, ta);
        ev.applyMove(a, moveTo);
        caps.add(a, moveTo);
        improved = true;
      }
    }
    if (!improved) return;
  }
}

/** The `capacity` lowest (bound, code) pairs seen since clear(), ascending; ties keep arrival order. */
class Shortlist {
  readonly bounds: Float64Array;
  readonly codes: Int32Array;
  size = 0;

  constructor(readonly capacity: number) {
    this.bounds = new Float64Array(capacity);
    this.codes = new Int32Array(capacity);
  }

  clear(): void {
    this.size = 0;
  }

  /** Bound a new entry must beat to get in. */
  limit(): number {
    return this.size < this.capacity ? Infinity : this.bounds[this.capacity - 1]!;
  }

  add(bound: number, code: number): void {
    let i = this.size < this.capacity ? this.size++ : this.capacity - 1;
    while (i > 0 && this.bounds[i - 1]! > bound) {
      this.bounds[i] = this.bounds[i - 1]!;
      this.codes[i] = this.codes[i - 1]!;
      i--;
    }
    this.bounds[i] = bound;
    this.codes[i] = code;
  }
}

// ---------------------------------------------------------------------------------------------------
// Seeded randomness (own copy: this module may not import outside its allowed set)

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffled(n: number, rng: () => number): Int32Array {
  const out = Int32Array.from({ length: n }, (_, v) => v);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const x = out[i]!;
    out[i] = out[j]!;
    out[j] = x;
  }
  return out;
}
