import { InfeasiblePlacementError } from '../errors.js';
import { placementCost } from './placement-cost.js';
import type { Placement, PlacementProblem } from './placement-problem.js';

/**
 * The reference optimum for small instances: every assignment that meets the constraints, costed by
 * placementCost. Deliberately naive (no bounds, no symmetry breaking) so it shares no cleverness, and
 * so no bugs, with placeVms.
 */

/** Largest targets^VMs this solver enumerates (3^10: ten VMs on three targets). */
export const MAX_EXHAUSTIVE_ASSIGNMENTS = 3 ** 10;

export function exactPlacement(problem: PlacementProblem): Placement {
  const { vms, targets } = problem;
  const n = vms.length;
  const T = targets.length;
  if (n === 0) return { assignment: new Int32Array(0), cost: 0 };
  if (T === 0) throw new InfeasiblePlacementError(`${n} VMs but no targets`);
  if (T ** n > MAX_EXHAUSTIVE_ASSIGNMENTS) {
    throw new RangeError(
      `exactPlacement enumerates ${T}^${n} assignments, over ${MAX_EXHAUSTIVE_ASSIGNMENTS}`,
    );
  }

  const usedMemory = new Float64Array(T);
  const usedVms = new Float64Array(T);
  const assignment = new Int32Array(n);
  let best: Int32Array | null = null;
  let bestCost = Infinity;

  // Depth-first with pruning only on constraints, so every feasible leaf is costed.
  const visit = (v: number): void => {
    if (v === n) {
      const cost = placementCost(problem, assignment);
      if (cost < bestCost) {
        bestCost = cost;
        best = assignment.slice();
      }
      return;
    }
    const vm = vms[v]!;
    for (let t = 0; t < T; t++) {
      if (vm.fixedTarget >= 0 && vm.fixedTarget !== t) continue;
      if (vm.excludedTargets.includes(t)) continue;
      const target = targets[t]!;
      if (usedMemory[t]! + vm.memoryBytes > target.memoryBytes || usedVms[t]! + 1 > target.maxVms) continue;
      usedMemory[t]! += vm.memoryBytes;
      usedVms[t]!++;
      assignment[v] = t;
      visit(v + 1);
      usedMemory[t]! -= vm.memoryBytes;
      usedVms[t]!--;
    }
  };
  visit(0);

  const found = best as Int32Array | null;
  if (found === null) {
    throw new InfeasiblePlacementError(
      `no assignment of the ${n} VMs to the ${T} targets meets every memory, maxVms, pin and exclusion constraint`,
    );
  }
  return { assignment: found, cost: bestCost };
}
