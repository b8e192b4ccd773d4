import type { PlacementEvaluator } from './placement-cost.js';
import type { PlacementProblem } from './placement-problem.js';

/** Capacity bookkeeping: target loads kept beside the evaluator while VMs are placed and moved. */

/** Target limits and loads as typed arrays, plus which targets each VM may use at all. */
export class Capacities {
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
export function startEmpty(problem: PlacementProblem, caps: Capacities, ev: PlacementEvaluator): void {
  const n = problem.vms.length;
  ev.reset(new Int32Array(n).fill(-1));
  caps.clear();
  for (let v = 0; v < n; v++) {
    const t = caps.pinned[v]!;
    if (t >= 0) place(caps, ev, v, t);
  }
}

/** Sets evaluator and loads to a complete assignment. */
export function load(caps: Capacities, ev: PlacementEvaluator, assignment: Int32Array): void {
  ev.reset(assignment);
  caps.clear();
  for (let v = 0; v < assignment.length; v++) caps.add(v, assignment[v]!);
}

export function place(caps: Capacities, ev: PlacementEvaluator, v: number, t: number): void {
  ev.applyMove(v, t);
  caps.add(v, t);
}

/**
 * Feasible target of least marginal cost for an unplaced VM, or -1. Ties go to the target with the most
 * free memory, so a VM that shares nothing with placed VMs opens room for its own family.
 */
export function bestTarget(
  caps: Capacities,
  v: number,
  deltas: Float64Array,
  rng: (() => number) | null,
): number {
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
