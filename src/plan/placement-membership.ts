import type { PlacementProblem } from './placement-problem.js';

/**
 * Classes of at most this many VMs are "small": each member keeps the other members inline, and their
 * per-target counts are read off the assignment instead of stored. The expected instances have
 * 10^5–10^6 classes, nearly all of two or three VMs (page cache and the like), and a few dozen large
 * ones (OS images, common libraries). Inline members turn the random count-table reads that dominated
 * every delta into sequential reads, and leave the classes × targets count table to the large classes.
 * Cost: at most SMALL_CLASS - 1 extra uint32 per membership.
 */
export const SMALL_CLASS = 8;

/**
 * The class structure of a problem as flat CSR arrays, built once and shared by every evaluator of the
 * problem (restarts reuse it).
 *
 * A membership is one (VM, class) pair; a VM's memberships are contiguous and in ascending class order,
 * which lets two VMs' lists be merged to find the classes they share. Per membership: the class, its
 * weight (copied, so a pass over a VM's classes reads sequentially), and for a small class the other
 * members; for a large class its row in the evaluator's count table.
 */
export class ClassMembership {
  readonly vmCount: number;
  readonly targetCount: number;
  readonly classCount: number;
  readonly weights: Float64Array;
  readonly privatePages: Float64Array;
  readonly classStart: Uint32Array;
  readonly classMembers: Uint32Array;
  /** Memberships of VM v: vmClassStart[v] .. vmClassStart[v + 1]. */
  readonly vmClassStart: Uint32Array;
  readonly memClass: Uint32Array;
  readonly memWeight: Float64Array;
  /** Other members of a small class: others[otherStart[k] .. otherStart[k + 1]]; empty for large. */
  readonly otherStart: Uint32Array;
  readonly others: Uint32Array;
  /** Row of a large class in the count table, -1 for a small one. */
  readonly memLarge: Int32Array;
  readonly largeCount: number;
  readonly maxLargeSize: number;
  constructor(problem: PlacementProblem) {
    const { vms, targets, classes } = problem;
    const n = vms.length;
    const C = classes.length;
    this.vmCount = n;
    this.targetCount = targets.length;
    this.classCount = C;
    this.privatePages = Float64Array.from(vms, (vm) => vm.privatePages);
    this.weights = Float64Array.from(classes, (cls) => cls.weight);

    let memberships = 0;
    let otherCount = 0;
    let largeCount = 0;
    let maxLarge = 0;
    const largeOf = new Int32Array(C).fill(-1);
    for (let c = 0; c < C; c++) {
      const size = classes[c]!.vms.length;
      memberships += size;
      if (size <= SMALL_CLASS) otherCount += size * (size - 1);
      else {
        largeOf[c] = largeCount++;
        if (size > maxLarge) maxLarge = size;
      }
    }
    this.largeCount = largeCount;
    this.maxLargeSize = maxLarge;

    this.classStart = new Uint32Array(C + 1);
    this.classMembers = new Uint32Array(memberships);
    const perVm = new Uint32Array(n + 1);
    let at = 0;
    for (let c = 0; c < C; c++) {
      const members = classes[c]!.vms;
      this.classStart[c] = at;
      for (let i = 0; i < members.length; i++) {
        const v = members[i]!;
        if (v >= n) throw new RangeError(`class ${c} names VM ${v} of ${n}`);
        this.classMembers[at++] = v;
        perVm[v + 1]!++;
      }
    }
    this.classStart[C] = at;
    for (let v = 0; v < n; v++) perVm[v + 1]! += perVm[v]!;
    this.vmClassStart = perVm;

    this.memClass = new Uint32Array(memberships);
    this.memWeight = new Float64Array(memberships);
    this.memLarge = new Int32Array(memberships);
    const fill = perVm.slice(0, n);
    // Classes are visited in ascending order, so every VM's memberships come out sorted by class.
    for (let c = 0; c < C; c++) {
      const weight = classes[c]!.weight;
      for (let i = this.classStart[c]!; i < this.classStart[c + 1]!; i++) {
        const k = fill[this.classMembers[i]!]!++;
        this.memClass[k] = c;
        this.memWeight[k] = weight;
        this.memLarge[k] = largeOf[c]!;
      }
    }

    this.otherStart = new Uint32Array(memberships + 1);
    this.others = new Uint32Array(otherCount);
    let o = 0;
    for (let v = 0; v < n; v++) {
      for (let k = perVm[v]!; k < perVm[v + 1]!; k++) {
        this.otherStart[k] = o;
        const c = this.memClass[k]!;
        if (largeOf[c]! >= 0) continue;
        for (let i = this.classStart[c]!; i < this.classStart[c + 1]!; i++) {
          const u = this.classMembers[i]!;
          if (u !== v) this.others[o++] = u;
        }
      }
    }
    this.otherStart[memberships] = o;
  }

  /** Number of VMs in class c. */
  classSize(c: number): number {
    return this.classStart[c + 1]! - this.classStart[c]!;
  }
}
