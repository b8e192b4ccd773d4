import { ZERO_PAGE_ID, type VmPages } from '../memory/page.js';

/**
 * The index of digests to the VMs that hold them, and the sharing figures derived from it.
 *
 * Digest ids are dense (1..digestCount, from one DigestTable), so everything here is a typed array
 * indexed by id: holders are kept in CSR form (holderStart[id] .. holderStart[id+1] in holderVms).
 */
export interface PageIndex {
  readonly vmNames: readonly string[];
  readonly digestCount: number;
  /** Number of distinct VMs holding each digest (index 0 unused). */
  readonly holderCount: Uint32Array;
  /** Times each digest occurs across all pages of all VMs. */
  readonly occurrences: Uint32Array;
  /** CSR offsets into holderVms, length digestCount + 2. */
  readonly holderStart: Uint32Array;
  /** VM indices holding each digest, ascending within a digest. */
  readonly holderVms: Uint32Array;
  readonly vmStats: readonly VmSharingStats[];
}

/** How one VM's pages split: pages = zero + duplicateWithin + shared + unique. */
export interface VmSharingStats {
  readonly name: string;
  readonly pages: number;
  readonly zero: number;
  /** Non-zero pages repeating another page of the same VM. */
  readonly duplicateWithin: number;
  /** Distinct non-zero digests also held by another VM. */
  readonly shared: number;
  /** Distinct non-zero digests held by this VM alone. */
  readonly unique: number;
}

export function buildPageIndex(vms: readonly VmPages[], digestCount: number): PageIndex {
  const holderCount = new Uint32Array(digestCount + 1);
  const occurrences = new Uint32Array(digestCount + 1);
  // lastVm[id] = 1 + the last VM that counted id, so each VM counts each digest once.
  const lastVm = new Uint32Array(digestCount + 1);
  vms.forEach((vm, v) => {
    const mark = v + 1;
    for (const id of vm.pages) {
      if (id === ZERO_PAGE_ID) continue;
      occurrences[id]!++;
      if (lastVm[id] !== mark) {
        lastVm[id] = mark;
        holderCount[id]!++;
      }
    }
  });
  const holderStart = new Uint32Array(digestCount + 2);
  for (let id = 1; id <= digestCount; id++) holderStart[id + 1] = holderStart[id]! + holderCount[id]!;
  const holderVms = new Uint32Array(holderStart[digestCount + 1]!);
  const fill = holderStart.slice(0, digestCount + 1);
  lastVm.fill(0);
  vms.forEach((vm, v) => {
    const mark = v + 1;
    for (const id of vm.pages) {
      if (id === ZERO_PAGE_ID || lastVm[id] === mark) continue;
      lastVm[id] = mark;
      holderVms[fill[id]!++] = v;
    }
  });
  const vmStats = vms.map((vm, v) => vmSharingStats(vm, v + 1, holderCount, lastVm));
  return {
    vmNames: vms.map((vm) => vm.name),
    digestCount,
    holderCount,
    occurrences,
    holderStart,
    holderVms,
    vmStats,
  };
}

function vmSharingStats(
  vm: VmPages,
  mark: number,
  holderCount: Uint32Array,
  seen: Uint32Array,
): VmSharingStats {
  let zero = 0;
  let duplicateWithin = 0;
  let shared = 0;
  let unique = 0;
  // seen[] holds the last marks of the fill pass; marks of this pass are negated to stay distinct.
  const passMark = (0x80000000 | mark) >>> 0;
  for (const id of vm.pages) {
    if (id === ZERO_PAGE_ID) zero++;
    else if (seen[id] === passMark) duplicateWithin++;
    else {
      seen[id] = passMark;
      if (holderCount[id]! > 1) shared++;
      else unique++;
    }
  }
  return { name: vm.name, pages: vm.pages.length, zero, duplicateWithin, shared, unique };
}

/** Figures for a set of VMs as a whole. */
export interface SetSharingStats {
  readonly vms: number;
  readonly pages: number;
  readonly zero: number;
  /** Non-zero pages over all VMs. */
  readonly nonZero: number;
  /** Distinct non-zero digests over all VMs: the pages any dedup must move at least once. */
  readonly distinct: number;
  /** Distinct digests held by two or more VMs. */
  readonly sharedDistinct: number;
  /** Non-zero pages whose content also occurs in another VM. */
  readonly sharedPages: number;
}

export function setSharingStats(index: PageIndex): SetSharingStats {
  let pages = 0;
  let zero = 0;
  for (const s of index.vmStats) {
    pages += s.pages;
    zero += s.zero;
  }
  let distinct = 0;
  let sharedDistinct = 0;
  let sharedPages = 0;
  for (let id = 1; id <= index.digestCount; id++) {
    const holders = index.holderCount[id]!;
    if (holders === 0) continue;
    distinct++;
    if (holders > 1) {
      sharedDistinct++;
      sharedPages += index.occurrences[id]!;
    }
  }
  return {
    vms: index.vmNames.length,
    pages,
    zero,
    nonZero: pages - zero,
    distinct,
    sharedDistinct,
    sharedPages,
  };
}

export interface TemplatePage {
  readonly id: number;
  /** VMs holding the page. */
  readonly vms: number;
  /** Times it occurs over all VMs. */
  readonly occurrences: number;
}

/**
 * Template pages: digests ranked by how many VMs hold them, then by occurrences (page-count-based
 * template selection); ties by id so the ranking is stable. Only digests held by two or more VMs.
 */
export function rankTemplates(index: PageIndex, limit: number): TemplatePage[] {
  const ranked: TemplatePage[] = [];
  for (let id = 1; id <= index.digestCount; id++) {
    const vms = index.holderCount[id]!;
    if (vms > 1) ranked.push({ id, vms, occurrences: index.occurrences[id]! });
  }
  ranked.sort((a, b) => b.vms - a.vms || b.occurrences - a.occurrences || a.id - b.id);
  return ranked.slice(0, limit);
}

/** The VMs holding digest `id` (a view into the index). */
export function holdersOf(index: PageIndex, id: number): Uint32Array {
  return index.holderVms.subarray(index.holderStart[id]!, index.holderStart[id + 1]!);
}
