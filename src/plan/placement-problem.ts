/**
 * The placement problem in the compact form the planner works on.
 *
 * Two digests held by exactly the same set of VMs cost the same under every placement, so shared
 * digests are grouped into classes by holder set: the cost of a placement is
 *   sum over VMs of privatePages  +  sum over classes of weight * (number of distinct targets of its VMs)
 * pages that must reach the targets. privatePages (distinct non-zero digests held by that VM alone)
 * does not depend on the placement but is part of every reported cost.
 */

export interface PlacementVm {
  readonly name: string;
  readonly memoryBytes: number;
  /** Distinct non-zero digests only this VM holds. */
  readonly privatePages: number;
  /** Index into targets of a pinned placement, or -1. */
  readonly fixedTarget: number;
  /** Indices into targets this VM must not go to. */
  readonly excludedTargets: readonly number[];
}

export interface PlacementTarget {
  readonly name: string;
  readonly memoryBytes: number;
  /** Most VMs this target may take (Infinity for no limit). */
  readonly maxVms: number;
}

export interface SharingClass {
  /** Sorted indices of the VMs that hold every digest of this class (at least two). */
  readonly vms: Uint32Array;
  /** Number of distinct digests in the class. */
  readonly weight: number;
}

export interface PlacementProblem {
  readonly vms: readonly PlacementVm[];
  readonly targets: readonly PlacementTarget[];
  readonly classes: readonly SharingClass[];
}

export interface Placement {
  /** Target index of each VM. */
  readonly assignment: Int32Array;
  /** Distinct non-zero pages that must reach the targets, summed over targets (the objective). */
  readonly cost: number;
}
