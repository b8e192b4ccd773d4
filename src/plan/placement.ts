import { Capacities, load } from './placement-capacities.js';
import {
  constructFirstFitDecreasing,
  constructFromClusters,
  constructGreedy,
  featureVectors,
  packExhaustively,
  sharingOrder,
} from './placement-construct.js';
import { ClassMembership, PlacementEvaluator } from './placement-cost.js';
import { checkPlacementFeasibility } from './placement-feasibility.js';
import type { Placement, PlacementProblem } from './placement-problem.js';
import { estimateSweepWork, kick, localSearch, mergeTargets, ruinAndRecreate } from './placement-search.js';
import { mulberry32 } from '../memory/prng.js';

export { checkPlacementFeasibility, placementViolations } from './placement-feasibility.js';

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

/** Work (in estimateSweepWork units) the whole search may spend, split over starts and kick rounds. */
const SEARCH_WORK_BUDGET = 3.7e8;
const MAX_STARTS = 24;
const MAX_KICK_ROUNDS = 48;
/** How far above the best cost the kick walk may wander (relative). */
const WALK_SLACK = 0.005;

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
// Seeded shuffling
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
