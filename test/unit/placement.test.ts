import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InfeasiblePlacementError } from '../../src/errors.js';
import { exactPlacement } from '../../src/plan/exhaustive-placement.js';
import {
  ClassMembership,
  PlacementEvaluator,
  placementCost,
  SMALL_CLASS,
} from '../../src/plan/placement-cost.js';
import type {
  PlacementProblem,
  PlacementTarget,
  PlacementVm,
  SharingClass,
} from '../../src/plan/placement-problem.js';
import { placeVms, placementViolations } from '../../src/plan/placement.js';
import { mulberry32 } from '../../src/memory/prng.js';

const GiB = 1024 ** 3;

function vm(name: string, gib: number, extra: Partial<PlacementVm> = {}): PlacementVm {
  return { name, memoryBytes: gib * GiB, privatePages: 10, fixedTarget: -1, excludedTargets: [], ...extra };
}

function target(name: string, gib: number, maxVms = Infinity): PlacementTarget {
  return { name, memoryBytes: gib * GiB, maxVms };
}

function cls(vms: number[], weight: number): SharingClass {
  return { vms: Uint32Array.from(vms), weight };
}

function rejects(problem: PlacementProblem, message: string | RegExp): void {
  assert.throws(
    () => placeVms(problem),
    (error: unknown) => {
      assert.ok(error instanceof InfeasiblePlacementError, String(error));
      if (typeof message === 'string') assert.equal(error.message, message);
      else assert.match(error.message, message);
      return true;
    },
  );
}

/** Three families of four VMs (heavy in-family classes, light cross-family ones), three targets of four. */
function threeFamilies(): PlacementProblem {
  const vms = Array.from({ length: 12 }, (_, v) => vm(`f${Math.floor(v / 4)}-${v % 4}`, 2));
  const classes = [
    cls([0, 1, 2, 3], 5000),
    cls([4, 5, 6, 7], 4000),
    cls([8, 9, 10, 11], 3000),
    cls([0, 1], 300),
    cls([6, 7], 200),
    // Cross-family sharing that tempts a mixed placement but is worth less than the families.
    cls([3, 4], 800),
    cls([7, 8, 11], 600),
    cls([0, 4, 8], 100),
  ];
  return { vms, targets: [target('t1', 8), target('t2', 8), target('t3', 8)], classes };
}

test('two families sharing pages each land together, at the optimum', () => {
  const problem: PlacementProblem = {
    vms: [vm('a1', 2), vm('b1', 2), vm('a2', 2), vm('b2', 2)],
    targets: [target('t1', 4), target('t2', 4)],
    classes: [cls([0, 2], 1000), cls([1, 3], 900), cls([0, 1, 2, 3], 50), cls([0, 1], 200)],
  };
  const placement = placeVms(problem);
  const a = placement.assignment;
  assert.equal(a[0], a[2]);
  assert.equal(a[1], a[3]);
  assert.notEqual(a[0], a[1]);
  assert.equal(placement.cost, 40 + 1000 + 900 + 2 * 50 + 2 * 200);
  assert.equal(placement.cost, exactPlacement(problem).cost);
  assert.equal(placement.cost, placementCost(problem, a));
});

test('three families of four on three targets of four: each family on its own target', () => {
  const problem = threeFamilies();
  const { assignment, cost } = placeVms(problem, { seed: 7 });
  for (let f = 0; f < 3; f++) {
    const home = assignment[4 * f]!;
    for (let i = 1; i < 4; i++) assert.equal(assignment[4 * f + i], home, `family ${f}`);
  }
  assert.equal(new Set(assignment).size, 3);
  // Families together: each family class once; the cross-family classes span 2, 2 and 3 targets.
  assert.equal(cost, 120 + 5000 + 4000 + 3000 + 300 + 200 + 2 * 800 + 2 * 600 + 3 * 100);
});

test('the result is deterministic for a seed', () => {
  const problem = threeFamilies();
  assert.deepEqual(placeVms(problem, { seed: 3 }), placeVms(problem, { seed: 3 }));
});

test('pins are respected and the pinned VM draws its family', () => {
  const problem: PlacementProblem = {
    vms: [vm('a1', 1, { fixedTarget: 2 }), vm('a2', 1), vm('a3', 1), vm('b1', 1), vm('b2', 1)],
    targets: [target('t1', 4), target('t2', 4), target('t3', 3)],
    classes: [cls([0, 1, 2], 1000), cls([3, 4], 1000)],
  };
  const { assignment } = placeVms(problem);
  assert.equal(assignment[0], 2);
  assert.equal(assignment[1], 2);
  assert.equal(assignment[2], 2);
  assert.equal(assignment[3], assignment[4]);
  assert.notEqual(assignment[3], 2);
  assert.deepEqual(placementViolations(problem, assignment), []);
});

test('exclusions are respected even when they split a family', () => {
  const problem: PlacementProblem = {
    vms: [vm('a1', 1), vm('a2', 1, { excludedTargets: [0] }), vm('a3', 1, { excludedTargets: [1] })],
    targets: [target('t1', 8), target('t2', 8)],
    classes: [cls([0, 1, 2], 1000), cls([0, 2], 500)],
  };
  const { assignment, cost } = placeVms(problem);
  assert.notEqual(assignment[1], 0);
  assert.notEqual(assignment[2], 1);
  assert.equal(assignment[0], assignment[2]);
  assert.equal(cost, exactPlacement(problem).cost);
});

test('maxVms forces a split, and swaps find the best one when both targets are full', () => {
  // Two VMs per target; the greedy pairing (0,1) leaves (2,3) apart from their heavy partners.
  const problem: PlacementProblem = {
    vms: [vm('v0', 1), vm('v1', 1), vm('v2', 1), vm('v3', 1)],
    targets: [target('t1', 16, 2), target('t2', 16, 2)],
    classes: [cls([0, 1], 100), cls([0, 2], 700), cls([1, 3], 700), cls([2, 3], 100)],
  };
  const { assignment, cost } = placeVms(problem);
  assert.equal(assignment[0], assignment[2]);
  assert.equal(assignment[1], assignment[3]);
  assert.equal(cost, exactPlacement(problem).cost);
});

test('one target, and no sharing classes, still place every VM', () => {
  const one: PlacementProblem = {
    vms: [vm('a', 1), vm('b', 2)],
    targets: [target('t1', 4)],
    classes: [cls([0, 1], 30)],
  };
  assert.deepEqual(placeVms(one), { assignment: Int32Array.from([0, 0]), cost: 50 });

  const vms = Array.from({ length: 500 }, (_, v) => vm(`v${v}`, 0.25));
  const targets = Array.from({ length: 64 }, (_, t) => target(`t${t}`, 2, 10));
  const started = performance.now();
  const none = placeVms({ vms, targets, classes: [] });
  assert.ok(performance.now() - started < 2000);
  assert.equal(none.cost, 5000);
  assert.deepEqual(placementViolations({ vms, targets, classes: [] }, none.assignment), []);
  assert.deepEqual(placeVms({ vms: [], targets, classes: [] }), { assignment: new Int32Array(0), cost: 0 });
});

test('infeasible: a VM that fits on no target names every target and why', () => {
  rejects(
    {
      vms: [vm('web-1', 1), vm('web-3', 4, { excludedTargets: [0] })],
      targets: [target('t1', 8), target('t2', 2), target('t3', 8, 0)],
      classes: [],
    },
    'VM web-3 (4.0 GiB) fits on no target: t1 excluded, t2 has 2.0 GiB, t3 takes no VMs (maxVms 0)',
  );
});

test('infeasible: VMs pinned beyond a target’s memory or VM count', () => {
  rejects(
    {
      vms: [vm('db-1', 3, { fixedTarget: 1 }), vm('web', 1)],
      targets: [target('t1', 8), target('t2', 1)],
      classes: [],
    },
    'VM db-1 is pinned to t2 but t2 holds 1.0 GiB and the VMs pinned there need 3.0 GiB',
  );
  rejects(
    {
      vms: [vm('db-1', 1, { fixedTarget: 1 }), vm('db-2', 2, { fixedTarget: 1 })],
      targets: [target('t1', 8), target('t2', 2)],
      classes: [],
    },
    'VMs db-1, db-2 are pinned to t2 but t2 holds 2.0 GiB and the VMs pinned there need 3.0 GiB',
  );
  rejects(
    {
      vms: [vm('db-1', 1, { fixedTarget: 0 }), vm('db-2', 1, { fixedTarget: 0 })],
      targets: [target('t1', 8, 1), target('t2', 8)],
      classes: [],
    },
    'VMs db-1, db-2 are pinned to t1 but t1 takes at most 1 VM (maxVms)',
  );
  rejects(
    {
      vms: [vm('db-1', 1, { fixedTarget: 0, excludedTargets: [0] })],
      targets: [target('t1', 8)],
      classes: [],
    },
    'VM db-1 is pinned to t1 and also excludes it',
  );
  rejects(
    { vms: [vm('db-1', 1, { fixedTarget: 4 })], targets: [target('t1', 8)], classes: [] },
    'VM db-1 is pinned to target #4, which does not exist (1 target)',
  );
});

test('infeasible: totals of VM count and memory', () => {
  rejects(
    {
      vms: Array.from({ length: 18 }, (_, v) => vm(`v${v}`, 1)),
      targets: [target('t1', 64, 8), target('t2', 64, 8)],
      classes: [],
    },
    '18 VMs but the targets take at most 16 VMs in all (maxVms)',
  );
  rejects(
    {
      vms: Array.from({ length: 10 }, (_, v) => vm(`v${v}`, 4)),
      targets: [target('t1', 16), target('t2', 16)],
      classes: [],
    },
    'VMs need 40.0 GiB but targets hold 32.0 GiB in all',
  );
  rejects({ vms: [vm('a', 1)], targets: [], classes: [] }, '1 VM but no targets');
});

test('infeasible: sums fit but the VMs cannot be packed (both solvers agree)', () => {
  const problem: PlacementProblem = {
    vms: [vm('a', 3), vm('b', 3), vm('c', 3)],
    targets: [target('t1', 5), target('t2', 5)],
    classes: [cls([0, 1, 2], 10)],
  };
  rejects(problem, /^The 3 VMs \(9\.0 GiB\) could not be packed onto the 2 targets: no arrangement fits/);
  assert.throws(() => exactPlacement(problem), InfeasiblePlacementError);
});

test('packing that only a search finds: first-fit decreasing fails, placeVms does not', () => {
  // Decreasing first fit: 5+4 on t1, 4+3+2 on t2, and the last 2 fits nowhere; 5+3+2 and 4+4+2 fit.
  const problem: PlacementProblem = {
    vms: [vm('a', 5), vm('b', 4), vm('c', 4), vm('d', 3), vm('e', 2), vm('f', 2)],
    targets: [target('t1', 10), target('t2', 10)],
    classes: [cls([0, 1], 10)],
  };
  const placement = placeVms(problem);
  assert.deepEqual(placementViolations(problem, placement.assignment), []);
  assert.equal(placement.cost, exactPlacement(problem).cost);
});

test('exactPlacement refuses instances it cannot enumerate', () => {
  const vms = Array.from({ length: 11 }, (_, v) => vm(`v${v}`, 1));
  assert.throws(
    () => exactPlacement({ vms, targets: [target('a', 99), target('b', 99), target('c', 99)], classes: [] }),
    RangeError,
  );
});

/** Random instance with classes on both sides of SMALL_CLASS, and a random partial or full assignment. */
function randomInstance(rng: () => number, n: number, T: number): PlacementProblem {
  const int = (lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));
  const vms = Array.from({ length: n }, (_, v) => vm(`v${v}`, 1, { privatePages: int(0, 50) }));
  const targets = Array.from({ length: T }, (_, t) => target(`t${t}`, 64));
  const classes: SharingClass[] = [];
  for (let c = int(5, 40); c > 0; c--) {
    const size = rng() < 0.3 ? int(SMALL_CLASS + 1, n) : int(2, Math.min(SMALL_CLASS, n));
    const members = new Set<number>();
    while (members.size < size) members.add(int(0, n - 1));
    classes.push(
      cls(
        [...members].sort((a, b) => a - b),
        int(1, 100),
      ),
    );
  }
  return { vms, targets, classes };
}

test('evaluator deltas equal differences of the full cost on random instances', () => {
  const rng = mulberry32(42);
  const deltas = new Float64Array(8);
  for (let round = 0; round < 40; round++) {
    const n = 14 + Math.floor(rng() * 10);
    const T = 2 + Math.floor(rng() * 6);
    const problem = randomInstance(rng, n, T);
    const assignment = Int32Array.from({ length: n }, () => Math.floor(rng() * T));
    const ev = new PlacementEvaluator(new ClassMembership(problem), assignment);
    const chain = new Float64Array(n);
    const swap = new Float64Array(n);
    assert.equal(ev.cost, placementCost(problem, assignment));
    for (let step = 0; step < 30; step++) {
      const a = Math.floor(rng() * n);
      const b = Math.floor(rng() * n);
      const t = Math.floor(rng() * T);
      const current = ev.assignment.slice();
      const base = placementCost(problem, current);

      const moved = current.slice();
      moved[a] = t;
      assert.equal(ev.moveDelta(a, t), placementCost(problem, moved) - base, 'moveDelta');
      ev.moveDeltas(a, deltas);
      for (let u = 0; u < T; u++) {
        const alt = current.slice();
        alt[a] = u;
        assert.equal(deltas[u], placementCost(problem, alt) - base, 'moveDeltas');
      }

      const swapped = current.slice();
      swapped[a] = current[b]!;
      swapped[b] = current[a]!;
      assert.equal(ev.swapDelta(a, b), placementCost(problem, swapped) - base, 'swapDelta');

      if (a !== b) {
        const chained = current.slice();
        chained[a] = current[b]!;
        chained[b] = t;
        const exact = placementCost(problem, chained) - base;
        assert.equal(ev.chainDelta(a, b, t), exact, 'chainDelta');
        if (current[a] !== current[b] && t !== current[b]) {
          const rowB = new Float64Array(T);
          ev.moveDeltas(a, deltas);
          ev.moveDeltas(b, rowB);
          ev.pairExcess(a, chain, swap);
          const excess = t === current[a] ? swap[b]! : chain[b]!;
          assert.equal(deltas[current[b]!]! + rowB[t]! + excess, exact, 'pairExcess');
        }
      }

      // Apply a move or a swap and check the running cost and the stale marks.
      const rowsBefore = Array.from({ length: n }, (_, v) => {
        const row = new Float64Array(T);
        ev.moveDeltas(v, row);
        return row;
      });
      ev.stale.fill(0);
      if (rng() < 0.5) ev.applyMove(a, t);
      else ev.applySwap(a, b);
      assert.equal(ev.cost, placementCost(problem, ev.assignment), 'running cost');
      for (let v = 0; v < n; v++) {
        if (ev.stale[v] === 1) continue;
        const row = new Float64Array(T);
        ev.moveDeltas(v, row);
        assert.deepEqual(row, rowsBefore[v], `VM ${v} not marked stale but its move deltas changed`);
      }
    }
  }
});

test('evaluator handles unplaced VMs (-1) for constructions', () => {
  const rng = mulberry32(9);
  const problem = randomInstance(rng, 16, 4);
  const ev = new PlacementEvaluator(problem);
  assert.equal(ev.cost, 0);
  const order = Array.from({ length: 16 }, (_, v) => v).sort(() => rng() - 0.5);
  for (const v of order) {
    const t = Math.floor(rng() * 4);
    const costBefore: number = ev.cost;
    const expected = ev.moveDelta(v, t);
    ev.applyMove(v, t);
    assert.equal(ev.cost - costBefore, expected);
  }
  assert.equal(ev.cost, placementCost(problem, ev.assignment));
  const v = order[0]!;
  const costPlaced = ev.cost;
  const removal = ev.moveDelta(v, -1);
  ev.applyMove(v, -1);
  assert.equal(ev.cost - costPlaced, removal);
});
