import type { PageIndex } from './page-index.js';
import type { SharingModel } from './sharing.js';

/**
 * The multicast schedule: which group carries each unique page, and in what order groups are sent.
 *
 * Each unique page must reach the targets of the VMs holding it: its receiver set. Receiver sets are
 * computed per sharing class (all digests of a class have the same one) and per VM for private pages.
 * When there are more receiver sets than groups, the lightest set is merged into the group that costs
 * the fewest extra deliveries (pages sent to a target that discards them), until the bound holds.
 */
export interface MulticastGroup {
  /** Target indices receiving this group, ascending. */
  readonly receivers: readonly number[];
  /** Unique pages carried. */
  readonly pages: number;
  /** Pages delivered to a receiver that does not need them (the price of merging), summed. */
  readonly extraDeliveries: number;
}

export interface MulticastSchedule {
  /** Groups in send order: widest receiver sets first, so the most widely held pages land earliest. */
  readonly groups: readonly MulticastGroup[];
  /** Group (index into groups) of each digest id; index 0 unused. */
  readonly groupOfDigest: Uint16Array;
}

export interface ScheduleInput {
  readonly index: PageIndex;
  readonly sharing: SharingModel;
  /** Target index of each VM. */
  readonly assignment: Int32Array;
  readonly targetCount: number;
  /** Most multicast groups to use (at least 1, at most 65535). */
  readonly maxGroups: number;
}

interface ReceiverSet {
  bits: Uint32Array;
  pages: number;
  /** Pages of this set that each member needs, to count extra deliveries after merging. */
  needed: Map<number, number>;
  mergedInto: number;
}

export function buildSchedule(input: ScheduleInput): MulticastSchedule {
  const { index, sharing, assignment, targetCount } = input;
  if (!(input.maxGroups >= 1 && input.maxGroups <= 0xffff))
    throw new RangeError('maxGroups must be in 1..65535');
  const words = Math.ceil(targetCount / 32);
  const sets: ReceiverSet[] = [];
  const setByKey = new Map<string, number>();
  const setOf = (targets: Iterable<number>, pages: number): number => {
    const bits = new Uint32Array(words);
    for (const t of targets) bits[t >>> 5]! |= 1 << (t & 31);
    const key = bits.join(',');
    let found = setByKey.get(key);
    if (found === undefined) {
      found = sets.length;
      setByKey.set(key, found);
      sets.push({ bits, pages: 0, needed: new Map(), mergedInto: -1 });
    }
    sets[found]!.pages += pages;
    return found;
  };
  const setOfClass = sharing.classes.map((c) => setOf(targetsOf(c.vms, assignment), c.weight));
  const setOfVm = Array.from(sharing.privatePages, (pages, vm) => setOf([assignment[vm]!], pages));
  for (const set of sets) for (const t of membersOf(set.bits)) set.needed.set(t, set.pages);

  const live = sets.map((_, i) => i).filter((i) => sets[i]!.pages > 0);
  mergeUntil(sets, live, input.maxGroups);

  const groupRoots = live.slice().sort((a, b) => {
    const sa = sets[a]!;
    const sb = sets[b]!;
    return popcount(sb.bits) - popcount(sa.bits) || sb.pages - sa.pages || a - b;
  });
  const groupOfRoot = new Map(groupRoots.map((root, g) => [root, g]));
  const groupOfSet = (set: number): number => {
    let root = set;
    while (sets[root]!.mergedInto !== -1) root = sets[root]!.mergedInto;
    return groupOfRoot.get(root)!;
  };
  const groupOfDigest = new Uint16Array(index.digestCount + 1);
  for (let id = 1; id <= index.digestCount; id++) {
    if (index.holderCount[id] === 0) continue; // an id no VM holds needs no group
    const c = sharing.classOfDigest[id]!;
    const set = c >= 0 ? setOfClass[c]! : setOfVm[index.holderVms[index.holderStart[id]!]!]!;
    groupOfDigest[id] = groupOfSet(set);
  }
  const groups = groupRoots.map((root) => {
    const set = sets[root]!;
    const receivers = membersOf(set.bits);
    let neededDeliveries = 0;
    for (const pages of set.needed.values()) neededDeliveries += pages;
    return { receivers, pages: set.pages, extraDeliveries: set.pages * receivers.length - neededDeliveries };
  });
  return { groups, groupOfDigest };
}

/** Merges the lightest live set into its cheapest partner until at most `limit` remain. */
function mergeUntil(sets: ReceiverSet[], live: number[], limit: number): void {
  while (live.length > limit) {
    let lightest = 0;
    for (let i = 1; i < live.length; i++)
      if (sets[live[i]!]!.pages < sets[live[lightest]!]!.pages) lightest = i;
    const s = sets[live[lightest]!]!;
    let best = -1;
    let bestCost = Infinity;
    for (let i = 0; i < live.length; i++) {
      if (i === lightest) continue;
      const g = sets[live[i]!]!;
      const cost = s.pages * countAndNot(g.bits, s.bits) + g.pages * countAndNot(s.bits, g.bits);
      if (cost < bestCost) [best, bestCost] = [i, cost];
    }
    const g = sets[live[best]!]!;
    for (let w = 0; w < g.bits.length; w++) g.bits[w]! |= s.bits[w]!;
    g.pages += s.pages;
    for (const [t, pages] of s.needed) g.needed.set(t, (g.needed.get(t) ?? 0) + pages);
    s.mergedInto = live[best]!;
    live.splice(lightest, 1);
  }
}

function targetsOf(vms: Uint32Array, assignment: Int32Array): number[] {
  return Array.from(vms, (vm) => assignment[vm]!);
}

function membersOf(bits: Uint32Array): number[] {
  const members: number[] = [];
  bits.forEach((word, w) => {
    for (let b = 0; b < 32; b++) if (word & (1 << b)) members.push(w * 32 + b);
  });
  return members;
}

function countAndNot(a: Uint32Array, b: Uint32Array): number {
  let n = 0;
  for (let w = 0; w < a.length; w++) n += popcount32((a[w]! & ~b[w]!) >>> 0);
  return n;
}

function popcount(bits: Uint32Array): number {
  let n = 0;
  for (const word of bits) n += popcount32(word);
  return n;
}

function popcount32(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}
