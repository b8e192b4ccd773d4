import { bestTarget, type Capacities, place } from './placement-capacities.js';
import { type ClassMembership, type PlacementEvaluator, SMALL_CLASS } from './placement-cost.js';
import type { PlacementProblem } from './placement-problem.js';

/** Capacity-aware local search over moves, swaps and ejection chains, and the kicks between descents. */

/** Compound steps (swaps, ejection chains) per VM and sweep re-priced with fresh rows, best first. */
const COMPOUND_EVALS = 8;
const IMPROVES = -1e-9;

// ---------------------------------------------------------------------------------------------------
// Local search

/**
 * Rough cost of one sweep, for sizing the number of starts: per small class, each member visits the
 * others (move deltas, pair excess); per large class, each member scans a count row and visits the
 * members; plus the pairs of VMs weighed against each other.
 */
export function estimateSweepWork(m: ClassMembership, n: number): number {
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
export function localSearch(
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
// Kicks

/**
 * Takes every unpinned VM off one to three random targets (plus a few random others) and puts them back
 * largest first, each on its cheapest feasible target with random tie-breaks. False when a VM found
 * no room (the caller reloads the placement).
 */
export function ruinAndRecreate(caps: Capacities, ev: PlacementEvaluator, rng: () => number): boolean {
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
export function mergeTargets(caps: Capacities, ev: PlacementEvaluator, rng: () => number): void {
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
export function kick(caps: Capacities, ev: PlacementEvaluator, rng: () => number, count: number): void {
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
