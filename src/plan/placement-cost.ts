import { ClassMembership } from './placement-membership.js';
import type { PlacementProblem } from './placement-problem.js';

export { ClassMembership, SMALL_CLASS } from './placement-membership.js';

/**
 * The placement objective, once as a plain function (the reference) and once incrementally (what the
 * local search runs on). Both count, for every sharing class, how many distinct targets its VMs land on.
 */

/** Cost of a complete assignment: sum of privatePages + sum over classes of weight * distinct targets. */
export function placementCost(problem: PlacementProblem, assignment: Int32Array): number {
  const { vms, targets, classes } = problem;
  if (assignment.length !== vms.length) {
    throw new RangeError(`assignment has ${assignment.length} entries for ${vms.length} VMs`);
  }
  let cost = 0;
  for (let v = 0; v < vms.length; v++) {
    const t = assignment[v]!;
    if (!(t >= 0 && t < targets.length)) throw new RangeError(`VM ${v} has no target (${t})`);
    cost += vms[v]!.privatePages;
  }
  // seen[t] === c marks target t as already counted for class c, so no clearing between classes.
  const seen = new Int32Array(targets.length).fill(-1);
  for (let c = 0; c < classes.length; c++) {
    const cls = classes[c]!;
    let distinct = 0;
    for (let i = 0; i < cls.vms.length; i++) {
      const t = assignment[cls.vms[i]!]!;
      if (seen[t] !== c) {
        seen[t] = c;
        distinct++;
      }
    }
    cost += cls.weight * distinct;
  }
  return cost;
}

type CountArray = Uint8Array | Uint16Array | Uint32Array;

/**
 * Incremental cost of an assignment under single-VM moves, swaps and two-VM chains.
 *
 * A move changes the cost only where a class's count on a target leaves or reaches zero. For a large
 * class that count is kept in counts[row * targets + t], in the narrowest integer type that holds the
 * largest class; for a small class it is the number of other members on t, read from the assignment.
 *
 * The assignment may hold -1 for VMs not placed yet: constructions place VMs one by one through
 * applyMove, and the cost then covers only the placed VMs (private pages included).
 */
export class PlacementEvaluator {
  readonly membership: ClassMembership;
  readonly assignment: Int32Array;
  /**
   * stale[v] = 1 once a change may have altered moveDeltas(v): set for a moved VM and for every holder
   * of a class whose count on the source or destination passed through 0, 1 or 2 (the only counts a
   * move delta looks at). Callers caching move deltas clear it when they recompute.
   */
  readonly stale: Uint8Array;
  private readonly counts: CountArray;
  private costValue = 0;
  private readonly present: Float64Array;
  private readonly stamp: Uint32Array;
  private epoch = 0;

  constructor(source: PlacementProblem | ClassMembership, assignment?: Int32Array) {
    this.membership = source instanceof ClassMembership ? source : new ClassMembership(source);
    const m = this.membership;
    const cells = m.largeCount * m.targetCount;
    this.counts =
      m.maxLargeSize <= 0xff
        ? new Uint8Array(cells)
        : m.maxLargeSize <= 0xffff
          ? new Uint16Array(cells)
          : new Uint32Array(cells);
    this.assignment = new Int32Array(m.vmCount).fill(-1);
    this.stale = new Uint8Array(m.vmCount).fill(1);
    this.present = new Float64Array(m.targetCount);
    this.stamp = new Uint32Array(m.targetCount);
    if (assignment !== undefined) this.reset(assignment);
  }

  /** Cost of the current (possibly partial) assignment. */
  get cost(): number {
    return this.costValue;
  }

  /** Replaces the whole assignment (entries may be -1) and recounts from scratch. */
  reset(assignment: Int32Array): void {
    const m = this.membership;
    if (assignment.length !== m.vmCount) {
      throw new RangeError(`assignment has ${assignment.length} entries for ${m.vmCount} VMs`);
    }
    this.counts.fill(0);
    this.assignment.fill(-1);
    this.costValue = 0;
    for (let v = 0; v < m.vmCount; v++) {
      const t = assignment[v]!;
      if (t >= 0) this.applyMove(v, t);
    }
    this.stale.fill(1);
  }

  /** How many VMs of small-class membership k, other than its own VM, sit on target t. */
  private othersOn(k: number, t: number): number {
    const m = this.membership;
    const assignment = this.assignment;
    const others = m.others;
    let count = 0;
    for (let j = m.otherStart[k]!, end = m.otherStart[k + 1]!; j < end; j++) {
      if (assignment[others[j]!] === t) count++;
    }
    return count;
  }

  /** Cost change if `vm` moved to `toTarget` (-1 removes it). */
  moveDelta(vm: number, toTarget: number): number {
    const from = this.assignment[vm]!;
    if (from === toTarget) return 0;
    const m = this.membership;
    const T = m.targetCount;
    const counts = this.counts;
    const assignment = this.assignment;
    const others = m.others;
    let delta = from < 0 ? m.privatePages[vm]! : toTarget < 0 ? -m.privatePages[vm]! : 0;
    for (let k = m.vmClassStart[vm]!, end = m.vmClassStart[vm + 1]!; k < end; k++) {
      const w = m.memWeight[k]!;
      const large = m.memLarge[k]!;
      let joins: boolean;
      let leaves: boolean;
      if (large >= 0) {
        joins = toTarget >= 0 && counts[large * T + toTarget] === 0;
        leaves = from >= 0 && counts[large * T + from] === 1;
      } else {
        joins = toTarget >= 0;
        leaves = from >= 0;
        for (let j = m.otherStart[k]!, stop = m.otherStart[k + 1]!; j < stop; j++) {
          const t = assignment[others[j]!];
          if (t === toTarget) joins = false;
          else if (t === from) leaves = false;
        }
      }
      if (joins) delta += w;
      if (leaves) delta -= w;
    }
    return delta;
  }

  /** moveDelta for every target at once into out (out[current target] = 0), in one pass over its classes. */
  moveDeltas(vm: number, out: Float64Array): void {
    const m = this.membership;
    const T = m.targetCount;
    const counts = this.counts;
    const present = this.present;
    const stamp = this.stamp;
    const assignment = this.assignment;
    const others = m.others;
    const from = assignment[vm]!;
    present.fill(0);
    let total = 0;
    let leaving = 0;
    for (let k = m.vmClassStart[vm]!, end = m.vmClassStart[vm + 1]!; k < end; k++) {
      const w = m.memWeight[k]!;
      const large = m.memLarge[k]!;
      total += w;
      if (large >= 0) {
        const row = large * T;
        if (from >= 0 && counts[row + from] === 1) leaving += w;
        for (let t = 0; t < T; t++) if (counts[row + t]! > 0) present[t]! += w;
      } else if (m.otherStart[k + 1]! - m.otherStart[k]! === 1) {
        // Two-VM classes are the most common kind: no duplicate targets to screen out.
        const t = assignment[others[m.otherStart[k]!]!]!;
        if (t >= 0) present[t]! += w;
        if (from >= 0 && t !== from) leaving += w;
      } else {
        const e = this.nextEpoch();
        let alone = from >= 0;
        for (let j = m.otherStart[k]!, stop = m.otherStart[k + 1]!; j < stop; j++) {
          const t = assignment[others[j]!]!;
          if (t < 0 || stamp[t] === e) continue;
          stamp[t] = e;
          present[t]! += w;
          if (t === from) alone = false;
        }
        if (alone) leaving += w;
      }
    }
    const base = (from < 0 ? m.privatePages[vm]! : 0) + total - leaving;
    for (let t = 0; t < T; t++) out[t] = base - present[t]!;
    if (from >= 0) out[from] = 0;
  }

  /** Cost change if vmA and vmB (both placed) exchanged targets. */
  swapDelta(vmA: number, vmB: number): number {
    const ta = this.assignment[vmA]!;
    if (ta < 0) throw new RangeError('swapDelta needs two placed VMs');
    return this.chainDelta(vmA, vmB, ta);
  }

  /**
   * Cost change if vmA moved onto vmB's target and vmB moved on to `toTarget` (vmA's own target makes
   * it a swap). Classes holding only one of the two are independent moves; for a class holding both,
   * vmB is still on its target when vmA arrives and vmA has arrived before vmB leaves, so only vmA's
   * leaving and vmB's arriving can change its number of targets. One merge over the two sorted lists.
   */
  chainDelta(vmA: number, vmB: number, toTarget: number): number {
    const ta = this.assignment[vmA]!;
    const tb = this.assignment[vmB]!;
    const tc = toTarget;
    if (ta < 0 || tb < 0) throw new RangeError('chainDelta needs two placed VMs');
    if (ta === tb) return tc === tb ? 0 : this.moveDelta(vmB, tc);
    if (tc === tb) return this.moveDelta(vmA, tb);
    const m = this.membership;
    const T = m.targetCount;
    const counts = this.counts;
    const cls = m.memClass;
    const swap = tc === ta ? 1 : 0;
    let i = m.vmClassStart[vmA]!;
    const endA = m.vmClassStart[vmA + 1]!;
    let j = m.vmClassStart[vmB]!;
    const endB = m.vmClassStart[vmB + 1]!;
    let delta = 0;
    while (i < endA || j < endB) {
      const ca = i < endA ? cls[i]! : 0xffffffff;
      const cb = j < endB ? cls[j]! : 0xffffffff;
      if (ca === cb) {
        const w = m.memWeight[i]!;
        const large = m.memLarge[i]!;
        if (large >= 0) {
          if (counts[large * T + ta] === 1) delta -= w;
          if (counts[large * T + tc]! - swap === 0) delta += w;
        } else {
          // Counted over vmA's others, which include vmB (on tb, so on neither ta nor tc).
          if (this.othersOn(i, ta) === 0) delta -= w;
          if (this.othersOn(i, tc) === 0) delta += w;
        }
        i++;
        j++;
      } else if (ca < cb) {
        delta += this.moveTerm(i, ta, tb);
        i++;
      } else {
        delta += this.moveTerm(j, tb, tc);
        j++;
      }
    }
    return delta;
  }

  /** One membership's share of a move from `from` to `to` (both targets, distinct). */
  private moveTerm(k: number, from: number, to: number): number {
    const m = this.membership;
    const w = m.memWeight[k]!;
    const large = m.memLarge[k]!;
    let joins: boolean;
    let leaves: boolean;
    if (large >= 0) {
      const row = large * m.targetCount;
      joins = this.counts[row + to] === 0;
      leaves = this.counts[row + from] === 1;
    } else {
      joins = true;
      leaves = true;
      const assignment = this.assignment;
      const others = m.others;
      for (let j = m.otherStart[k]!, stop = m.otherStart[k + 1]!; j < stop; j++) {
        const t = assignment[others[j]!];
        if (t === to) joins = false;
        else if (t === from) leaves = false;
      }
    }
    return (joins ? w : 0) - (leaves ? w : 0);
  }

  /**
   * moveDelta(a, tb) + moveDelta(b, tc) counts a class holding both VMs as if each moved alone; the
   * compound step's true cost is higher by weight × [b is the class's only VM on tb] for a chain, plus
   * weight × [a is its only VM on ta] for a swap. Writes that excess for every other VM b at once, in
   * one pass over vm's classes: chainOut[b] and swapOut[b], so that
   *   chainDelta(vm, b, tc) = moveDelta(vm, tb) + moveDelta(b, tc) + (tc === ta ? swapOut : chainOut)[b].
   * With move deltas at hand this prices every swap and chain of vm exactly for the cost of one
   * moveDeltas call.
   */
  pairExcess(vm: number, chainOut: Float64Array, swapOut: Float64Array): void {
    const m = this.membership;
    const T = m.targetCount;
    const counts = this.counts;
    const assignment = this.assignment;
    const others = m.others;
    const ta = assignment[vm]!;
    chainOut.fill(0);
    swapOut.fill(0);
    if (ta < 0) return;
    for (let k = m.vmClassStart[vm]!, end = m.vmClassStart[vm + 1]!; k < end; k++) {
      const w = m.memWeight[k]!;
      const large = m.memLarge[k]!;
      if (large >= 0) {
        const row = large * T;
        const aloneA = counts[row + ta] === 1 ? w : 0;
        const c = m.memClass[k]!;
        for (let i = m.classStart[c]!, stop = m.classStart[c + 1]!; i < stop; i++) {
          const u = m.classMembers[i]!;
          const tu = assignment[u]!;
          if (u === vm || tu < 0) continue;
          const excess = counts[row + tu] === 1 ? w : 0;
          chainOut[u]! += excess;
          swapOut[u]! += excess + aloneA;
        }
        continue;
      }
      const first = m.otherStart[k]!;
      const stop = m.otherStart[k + 1]!;
      let aloneA = w;
      for (let j = first; j < stop; j++) if (assignment[others[j]!] === ta) aloneA = 0;
      for (let j = first; j < stop; j++) {
        const u = others[j]!;
        const tu = assignment[u]!;
        if (tu < 0) continue;
        let alone = tu !== ta;
        for (let i = first; i < stop && alone; i++)
          if (i !== j && assignment[others[i]!] === tu) alone = false;
        const excess = alone ? w : 0;
        chainOut[u]! += excess;
        swapOut[u]! += excess + aloneA;
      }
    }
  }

  /** Moves `vm` to `toTarget` (-1 removes it), keeping counts, cost and stale marks exact. */
  applyMove(vm: number, toTarget: number): void {
    const from = this.assignment[vm]!;
    if (from === toTarget) return;
    const m = this.membership;
    const T = m.targetCount;
    if (toTarget >= T) throw new RangeError(`target ${toTarget} of ${T}`);
    const counts = this.counts;
    const stale = this.stale;
    const assignment = this.assignment;
    const others = m.others;
    let cost = this.costValue + (from < 0 ? m.privatePages[vm]! : toTarget < 0 ? -m.privatePages[vm]! : 0);
    for (let k = m.vmClassStart[vm]!, end = m.vmClassStart[vm + 1]!; k < end; k++) {
      const w = m.memWeight[k]!;
      const large = m.memLarge[k]!;
      // Counts (excluding vm) left on `from` and found on `to`: a cost change at 0, a stale mark at <= 1.
      let left: number;
      let found: number;
      if (large >= 0) {
        const row = large * T;
        left = from >= 0 ? --counts[row + from]! : 2;
        found = toTarget >= 0 ? counts[row + toTarget]!++ : 2;
      } else {
        left = from >= 0 ? 0 : 2;
        found = toTarget >= 0 ? 0 : 2;
        for (let j = m.otherStart[k]!, stop = m.otherStart[k + 1]!; j < stop; j++) {
          const t = assignment[others[j]!];
          if (t === from) left++;
          else if (t === toTarget) found++;
        }
      }
      if (left === 0) cost -= w;
      if (found === 0) cost += w;
      if (left <= 1 || found <= 1) {
        if (large >= 0) {
          const c = m.memClass[k]!;
          for (let j = m.classStart[c]!, stop = m.classStart[c + 1]!; j < stop; j++) {
            stale[m.classMembers[j]!] = 1;
          }
        } else {
          for (let j = m.otherStart[k]!, stop = m.otherStart[k + 1]!; j < stop; j++) stale[others[j]!] = 1;
        }
      }
    }
    stale[vm] = 1;
    this.costValue = cost;
    assignment[vm] = toTarget;
  }

  /** Exchanges the targets of two placed VMs. */
  applySwap(vmA: number, vmB: number): void {
    const ta = this.assignment[vmA]!;
    const tb = this.assignment[vmB]!;
    this.applyMove(vmA, tb);
    this.applyMove(vmB, ta);
  }

  private nextEpoch(): number {
    if (this.epoch === 0xffffffff) {
      this.stamp.fill(0);
      this.epoch = 0;
    }
    return ++this.epoch;
  }
}
