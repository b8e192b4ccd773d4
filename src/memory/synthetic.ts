import type { SyntheticModelSpec } from '../topology/model.js';
import { DigestTable } from './digest-table.js';
import { DIGEST_BYTES, PAGE_SIZE, ZERO_PAGE_ID, type VmPages } from './page.js';
import { hashString, mix32, Prng } from './prng.js';

/**
 * A seeded model of guest memory, for tests, the demo and benchmarks where no real guests exist.
 *
 * Each page of a VM is, by a draw from the VM's seeded PRNG:
 *  - zero (share zeroShare);
 *  - an OS-image page of the VM's family (osShare): the family image is a sequence of 32-page segments
 *    (files, kernel regions) and each VM holds whole segments, each of the first segments with
 *    probability 0.8, until its OS share is filled. VMs of a family therefore share most, not all, of
 *    their image pages, and in whole runs, as booted guests do;
 *  - a page of a pool common to every family (commonShare), built the same way (shared libraries,
 *    firmware);
 *  - a repeat of an earlier non-zero page of the same VM (duplicateShare);
 *  - otherwise private to the VM (heap, stacks, its own page cache).
 *
 * A page's content is a pure function of its content id (namespace, index): some random bytes then a
 * repeated short pattern, so pages compress by a varying amount, as real memory does. Same seed, same
 * bytes, everywhere.
 */

export const SEGMENT_PAGES = 32;
const SEGMENT_HOLD_PROBABILITY = 0.8;
const COMMON_NAMESPACE = hashString('common-pool');

/** One VM of the synthetic model. */
export interface SyntheticVm {
  readonly name: string;
  readonly pageCount: number;
  readonly spec: SyntheticModelSpec;
}

/**
 * Content ids of a VM's pages: two words per page (namespace, index); namespace 0 is a zero page.
 * Generated as a whole: 8 bytes a page, which is fine for the VMs this model stands in for.
 */
export function syntheticContentIds(vm: SyntheticVm): Uint32Array {
  const { spec, pageCount } = vm;
  const ids = new Uint32Array(pageCount * 2);
  const rng = new Prng(mix32(spec.seed, 0x5eed));
  const familyNamespace = hashString(`family:${spec.family}`) | 1;
  const privateNamespace = mix32(spec.seed, hashString(vm.name)) | 1;
  const os = new SegmentPicker(familyNamespace, mix32(spec.seed, 1));
  const common = new SegmentPicker(COMMON_NAMESPACE | 1, mix32(spec.seed, 2));
  const zeroEnd = spec.zeroShare;
  const osEnd = zeroEnd + spec.osShare;
  const commonEnd = osEnd + spec.commonShare;
  const duplicateEnd = commonEnd + spec.duplicateShare;
  const nonZeroPages: number[] = [];
  for (let page = 0; page < pageCount; page++) {
    const draw = rng.next();
    let namespace = 0;
    let index = 0;
    if (draw < zeroEnd) {
      namespace = 0;
    } else if (draw < osEnd) {
      [namespace, index] = [familyNamespace, os.next()];
    } else if (draw < commonEnd) {
      [namespace, index] = [COMMON_NAMESPACE | 1, common.next()];
    } else if (draw < duplicateEnd && nonZeroPages.length > 0) {
      const earlier = nonZeroPages[rng.below(nonZeroPages.length)]!;
      [namespace, index] = [ids[earlier * 2]!, ids[earlier * 2 + 1]!];
    } else {
      [namespace, index] = [privateNamespace, page];
    }
    ids[page * 2] = namespace;
    ids[page * 2 + 1] = index;
    if (namespace !== 0) nonZeroPages.push(page);
  }
  return ids;
}

/** Walks a pool's segments, holding each with probability 0.8, and yields page indices in the pool. */
class SegmentPicker {
  private segment = -1;
  private offset = SEGMENT_PAGES;
  private readonly rng: Prng;

  constructor(
    private readonly namespace: number,
    seed: number,
  ) {
    this.rng = new Prng(seed);
  }

  next(): number {
    if (this.offset === SEGMENT_PAGES) {
      do this.segment++;
      while (this.rng.next() >= SEGMENT_HOLD_PROBABILITY);
      this.offset = 0;
    }
    return this.segment * SEGMENT_PAGES + this.offset++;
  }
}

/** Writes the PAGE_SIZE bytes of content (namespace, index) at `out[offset..]`. */
export function writeSyntheticPage(namespace: number, index: number, out: Uint8Array, offset: number): void {
  const page = out.subarray(offset, offset + PAGE_SIZE);
  if (namespace === 0) {
    page.fill(0);
    return;
  }
  const seed = mix32(namespace, index);
  const rng = new Prng(seed);
  // Between 1/8 and all of the page is random; the rest repeats an 8-byte pattern (compressible).
  const randomBytes = 512 * (1 + (seed & 7));
  const view = new DataView(page.buffer, page.byteOffset, PAGE_SIZE);
  for (let i = 0; i < randomBytes; i += 4) view.setUint32(i, rng.nextU32(), true);
  const a = rng.nextU32();
  const b = rng.nextU32() | 1; // never all zero, so no non-zero content is mistaken for a zero page
  for (let i = randomBytes; i < PAGE_SIZE; i += 8) {
    view.setUint32(i, a, true);
    view.setUint32(i + 4, b, true);
  }
}

/** Fills `out` with `count` pages of the VM starting at `firstPage`, from its content ids. */
export function readSyntheticPages(
  ids: Uint32Array,
  firstPage: number,
  count: number,
  out: Uint8Array,
): void {
  for (let i = 0; i < count; i++) {
    const page = firstPage + i;
    writeSyntheticPage(ids[page * 2]!, ids[page * 2 + 1]!, out, i * PAGE_SIZE);
  }
}

/**
 * Page table of a synthetic VM without generating or hashing its bytes ("synthetic fingerprints"): each
 * content id is spread into a 16-byte stand-in digest and interned. Identical pages get identical ids
 * exactly as real fingerprints would, at a fraction of the cost, so planner benchmarks can model fleets
 * far larger than this machine could hash. Never used where an adversary supplies the pages.
 */
export function syntheticPageTable(vm: SyntheticVm, table: DigestTable): VmPages {
  const ids = syntheticContentIds(vm);
  const pages = new Uint32Array(vm.pageCount);
  const digest = new Uint8Array(DIGEST_BYTES);
  const words = new Uint32Array(digest.buffer);
  for (let page = 0; page < vm.pageCount; page++) {
    const namespace = ids[page * 2]!;
    if (namespace === 0) {
      pages[page] = ZERO_PAGE_ID;
      continue;
    }
    const index = ids[page * 2 + 1]!;
    words[0] = mix32(namespace, index);
    words[1] = mix32(words[0], namespace);
    words[2] = namespace;
    words[3] = index;
    pages[page] = table.intern(digest, 0);
  }
  return { name: vm.name, pages };
}
