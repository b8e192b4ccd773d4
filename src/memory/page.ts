/** Guest page size that every part of vmscatter works in (x86 base pages, QEMU's target page). */
export const PAGE_SIZE = 4096;

/** Width of a page digest in bytes (see docs/ARCHITECTURE.md, "Page digests", for why 128 bits, keyed). */
export const DIGEST_BYTES = 16;

/** Digest id that stands for an all-zero page in every page table: zero pages are flagged, never hashed. */
export const ZERO_PAGE_ID = 0;

/** The digest-interned pages of one VM: entry i is the digest id of guest page i (ZERO_PAGE_ID for zero). */
export interface VmPages {
  readonly name: string;
  readonly pages: Uint32Array;
}

const zeroPage = Buffer.alloc(PAGE_SIZE);

/**
 * True when the PAGE_SIZE bytes at `offset` are all zero: a memcmp against a zero page (~16 GB/s
 * here), with offsets rather than a subarray, so the hot loop allocates nothing.
 */
export function isZeroPage(bytes: Uint8Array, offset: number): boolean {
  return zeroPage.compare(bytes, offset, offset + PAGE_SIZE) === 0;
}
