import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { InfeasiblePlacementError } from '../../src/errors.js';
import { exactPlacement } from '../../src/plan/exhaustive-placement.js';
import { placementCost } from '../../src/plan/placement-cost.js';
import type { Placement, PlacementProblem, SharingClass } from '../../src/plan/placement-problem.js';
import { placeVms } from '../../src/plan/placement.js';

const GiB = 1024 ** 3;

/**
 * Small instances (≤ 8 VMs, ≤ 3 targets) with random memory, capacities, maxVms, pins, exclusions and
 * sharing classes (any subset of two or more VMs), many of them infeasible or tight on purpose.
 */
const instance = fc
  .record({ n: fc.integer({ min: 1, max: 8 }), T: fc.integer({ min: 1, max: 3 }) })
  .chain(({ n, T }) =>
    fc.record({
      vms: fc.array(
        fc.record({
          gib: fc.integer({ min: 1, max: 4 }),
          privatePages: fc.integer({ min: 0, max: 200 }),
          // Mostly unpinned: -1 five times in six.
          pin: fc.oneof({ weight: 5, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.nat(T - 1) }),
          excluded: fc.array(fc.nat(T - 1), { maxLength: T > 1 ? 1 : 0 }),
        }),
        { minLength: n, maxLength: n },
      ),
      targets: fc.array(
        fc.record({
          gib: fc.integer({ min: 2, max: 16 }),
          maxVms: fc.oneof(
            { weight: 2, arbitrary: fc.constant(Infinity) },
            { weight: 1, arbitrary: fc.integer({ min: 0, max: 5 }) },
          ),
        }),
        { minLength: T, maxLength: T },
      ),
      classes: fc.array(
        fc.record({
          members: fc.integer({ min: 0, max: 2 ** n - 1 }),
          weight: fc.integer({ min: 1, max: 1000 }),
        }),
        { maxLength: 10 },
      ),
    }),
  )
  .map(({ vms, targets, classes }): PlacementProblem => {
    const sharing: SharingClass[] = [];
    for (const { members, weight } of classes) {
      const list = vms.flatMap((_, v) => ((members >> v) & 1 ? [v] : []));
      if (list.length >= 2) sharing.push({ vms: Uint32Array.from(list), weight });
    }
    return {
      vms: vms.map((vm, v) => ({
        name: `vm${v}`,
        memoryBytes: vm.gib * GiB,
        privatePages: vm.privatePages,
        fixedTarget: vm.pin,
        excludedTargets: vm.pin >= 0 ? [] : vm.excluded,
      })),
      targets: targets.map((t, i) => ({ name: `t${i}`, memoryBytes: t.gib * GiB, maxVms: t.maxVms })),
      classes: sharing,
    };
  });

/** Every broken constraint, checked from the problem alone (independent of placement.ts). */
function violations(problem: PlacementProblem, assignment: Int32Array): string[] {
  const out: string[] = [];
  const memory = problem.targets.map(() => 0);
  const count = problem.targets.map(() => 0);
  problem.vms.forEach((vm, v) => {
    const t = assignment[v]!;
    if (!(t >= 0 && t < problem.targets.length)) {
      out.push(`${vm.name} unplaced`);
      return;
    }
    if (vm.fixedTarget >= 0 && t !== vm.fixedTarget) out.push(`${vm.name} off its pin`);
    if (vm.excludedTargets.includes(t)) out.push(`${vm.name} on an excluded target`);
    memory[t]! += vm.memoryBytes;
    count[t]!++;
  });
  problem.targets.forEach((target, t) => {
    if (memory[t]! > target.memoryBytes) out.push(`${target.name} over memory`);
    if (count[t]! > target.maxVms) out.push(`${target.name} over maxVms`);
  });
  return out;
}

function attempt(solve: () => Placement): Placement | InfeasiblePlacementError {
  try {
    return solve();
  } catch (error) {
    if (error instanceof InfeasiblePlacementError) return error;
    throw error;
  }
}

/**
 * Measured over 120,000 cases from this generator (about 69,000 feasible, six sampling seeds):
 * placeVms found the optimum in all but four, the worst 5.2 % above it. So: no case more than
 * CASE_GAP above, at least OPTIMAL_SHARE of the cases exactly optimal, and the mean under MEAN_GAP.
 */
const CASE_GAP = 0.1;
const OPTIMAL_SHARE = 0.99;
const MEAN_GAP = 0.001;

test('property: placeVms is feasible exactly when the exhaustive solver is, and near its optimum', () => {
  const gaps: number[] = [];
  fc.assert(
    fc.property(instance, fc.nat(1000), (problem, seed) => {
      const exact = attempt(() => exactPlacement(problem));
      const placed = attempt(() => placeVms(problem, { seed }));
      if (exact instanceof InfeasiblePlacementError) {
        assert.ok(placed instanceof InfeasiblePlacementError, 'placeVms placed an infeasible instance');
        return;
      }
      assert.ok(!(placed instanceof InfeasiblePlacementError), `placeVms gave up: ${String(placed)}`);
      assert.deepEqual(violations(problem, placed.assignment), []);
      assert.equal(placed.cost, placementCost(problem, placed.assignment));
      assert.ok(placed.cost >= exact.cost, 'below the optimum: the exhaustive solver or the cost is wrong');
      const gap = exact.cost > 0 ? (placed.cost - exact.cost) / exact.cost : 0;
      assert.ok(gap <= CASE_GAP, `cost ${placed.cost} vs optimum ${exact.cost}`);
      gaps.push(gap);
    }),
    { numRuns: 1500, seed: 20240611 },
  );
  assert.ok(gaps.length > 500, `only ${gaps.length} feasible cases`);
  const mean = gaps.reduce((s, g) => s + g, 0) / gaps.length;
  const optimal = gaps.filter((g) => g === 0).length;
  assert.ok(mean <= MEAN_GAP, `mean gap ${mean}`);
  assert.ok(optimal >= OPTIMAL_SHARE * gaps.length, `optimal in ${optimal} of ${gaps.length}`);
});

test('property: placeVms is deterministic for a seed', () => {
  fc.assert(
    fc.property(instance, fc.nat(1000), (problem, seed) => {
      const a = attempt(() => placeVms(problem, { seed }));
      const b = attempt(() => placeVms(problem, { seed }));
      if (a instanceof InfeasiblePlacementError) {
        assert.ok(b instanceof InfeasiblePlacementError);
        assert.equal(b.message, a.message);
      } else {
        assert.deepEqual(b, a);
      }
    }),
    { numRuns: 100, seed: 7 },
  );
});
