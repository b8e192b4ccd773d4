import { kmeans } from 'ml-kmeans';
import { InfeasiblePlacementError } from '../errors.js';
import { bestTarget, type Capacities, place, startEmpty } from './placement-capacities.js';
import type { ClassMembership, PlacementEvaluator } from './placement-cost.js';
import { formatBytes, plural } from './placement-feasibility.js';
import type { PlacementProblem } from './placement-problem.js';

/** Constructions: each leaves ev and caps holding a complete assignment, or returns null. */

/** Most dimensions of a k-means feature vector: the heaviest classes carry the family structure. */
const FEATURE_CLASSES = 64;
/** Search steps the exact packing fallback may take before giving up. */
const PACKING_STEPS = 2_000_000;

/** VMs by how much they share (weight × other holders over their classes), most first. */
export function sharingOrder(m: ClassMembership, problem: PlacementProblem): Int32Array {
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

export function constructGreedy(
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
export function featureVectors(problem: PlacementProblem, m: ClassMembership): number[][] | null {
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
export function constructFromClusters(
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
export function constructFirstFitDecreasing(
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
export function packExhaustively(
  problem: PlacementProblem,
  caps: Capacities,
  ev: PlacementEvaluator,
): Int32Array {
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
