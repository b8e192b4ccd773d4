import type { PageIndex } from './page-index.js';
import type { SharingClass } from './placement-problem.js';

/**
 * Sharing classes: shared digests grouped by their exact holder set. Every digest of a class goes to
 * the same targets under any placement, so the planner and the scheduler work per class (thousands)
 * instead of per digest (millions).
 */
export interface SharingModel {
  readonly classes: readonly SharingClass[];
  /** Class of each digest id, or -1 for a digest held by one VM only (index 0 unused). */
  readonly classOfDigest: Int32Array;
  /** Per VM: distinct digests it alone holds. */
  readonly privatePages: Uint32Array;
}

export function buildSharingModel(index: PageIndex): SharingModel {
  const classOfDigest = new Int32Array(index.digestCount + 1).fill(-1);
  const privatePages = new Uint32Array(index.vmNames.length);
  const classes: { vms: Uint32Array; weight: number }[] = [];
  // Chained hash of holder sets: firstClass maps a hash to its first class, nextClass chains the rest.
  const firstClass = new Map<number, number>();
  const nextClass: number[] = [];
  for (let id = 1; id <= index.digestCount; id++) {
    const start = index.holderStart[id]!;
    const end = index.holderStart[id + 1]!;
    if (end - start === 1) privatePages[index.holderVms[start]!]!++;
    if (end - start < 2) continue;
    const vms = index.holderVms.subarray(start, end);
    const hash = hashVms(vms);
    let found = firstClass.get(hash) ?? -1;
    while (found !== -1 && !sameVms(classes[found]!.vms, vms)) found = nextClass[found]!;
    if (found === -1) {
      found = classes.length;
      classes.push({ vms, weight: 0 });
      nextClass.push(firstClass.get(hash) ?? -1);
      firstClass.set(hash, found);
    }
    classes[found]!.weight++;
    classOfDigest[id] = found;
  }
  return { classes, classOfDigest, privatePages };
}

function hashVms(vms: Uint32Array): number {
  let h = 0x811c9dc5;
  for (const vm of vms) h = Math.imul(h ^ vm, 0x01000193);
  return h >>> 0;
}

function sameVms(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
