import { DIGEST_BYTES, ZERO_PAGE_ID } from './page.js';

/**
 * Interns 16-byte page digests into dense ids 1..size (0 is the zero page), storing each digest once.
 *
 * Memory is what matters here (a 64-target plan holds tens of millions of pages), so there is no object
 * per digest: digests live back to back in one growable byte array, and an open-addressing index of
 * uint32 slots points into it. Digests are keyed hashes, so their first bytes are already uniformly
 * spread and serve as the slot hash directly. Cost: 16 bytes per distinct digest plus 4 bytes per index
 * slot at a load of at most 3/4.
 */
export class DigestTable {
  private digests: Uint8Array;
  private slots: Uint32Array;
  private mask: number;
  private count = 0;

  constructor(expectedDigests = 1024) {
    const capacity = Math.max(16, expectedDigests);
    this.digests = new Uint8Array((capacity + 1) * DIGEST_BYTES);
    this.slots = new Uint32Array(nextPowerOfTwo(Math.ceil((capacity * 4) / 3)));
    this.mask = this.slots.length - 1;
  }

  /** Number of distinct non-zero digests held. */
  get size(): number {
    return this.count;
  }

  /** Bytes of memory this table holds (digest store plus index), for the page-table memory report. */
  get bytesUsed(): number {
    return this.digests.byteLength + this.slots.byteLength;
  }

  /** Returns the id of the digest at `bytes[offset..offset+16)`, adding it when new. */
  intern(bytes: Uint8Array, offset: number): number {
    let slot = readU32(bytes, offset) & this.mask;
    for (;;) {
      const id = this.slots[slot]!;
      if (id === 0) break;
      if (this.equalsAt(id, bytes, offset)) return id;
      slot = (slot + 1) & this.mask;
    }
    const id = ++this.count;
    this.ensureDigestRoom(id);
    this.digests.set(bytes.subarray(offset, offset + DIGEST_BYTES), id * DIGEST_BYTES);
    this.slots[slot] = id;
    if (this.count * 4 > this.slots.length * 3) this.growIndex();
    return id;
  }

  /** Returns the id of a digest already held, or -1. */
  lookup(bytes: Uint8Array, offset = 0): number {
    let slot = readU32(bytes, offset) & this.mask;
    for (;;) {
      const id = this.slots[slot]!;
      if (id === 0) return -1;
      if (this.equalsAt(id, bytes, offset)) return id;
      slot = (slot + 1) & this.mask;
    }
  }

  /** The digest of `id` (a view, valid until the next intern). */
  digestOf(id: number): Uint8Array {
    if (id <= ZERO_PAGE_ID || id > this.count) throw new RangeError(`digest id ${id} out of range`);
    return this.digests.subarray(id * DIGEST_BYTES, (id + 1) * DIGEST_BYTES);
  }

  /** Copies the digest of `id` to out[outOffset..+16) (no view made: for paths run per page). */
  copyDigest(id: number, out: Uint8Array, outOffset = 0): void {
    if (id <= ZERO_PAGE_ID || id > this.count) throw new RangeError(`digest id ${id} out of range`);
    const { digests } = this;
    const from = id * DIGEST_BYTES;
    for (let i = 0; i < DIGEST_BYTES; i++) out[outOffset + i] = digests[from + i]!;
  }

  /** Releases spare capacity once interning is over. */
  trim(): void {
    this.digests = this.digests.slice(0, (this.count + 1) * DIGEST_BYTES);
  }

  private equalsAt(id: number, bytes: Uint8Array, offset: number): boolean {
    const base = id * DIGEST_BYTES;
    for (let i = 0; i < DIGEST_BYTES; i++) if (this.digests[base + i] !== bytes[offset + i]) return false;
    return true;
  }

  private ensureDigestRoom(id: number): void {
    const needed = (id + 1) * DIGEST_BYTES;
    if (needed <= this.digests.length) return;
    const grown = new Uint8Array(Math.max(needed, Math.floor(this.digests.length * 1.5)));
    grown.set(this.digests);
    this.digests = grown;
  }

  private growIndex(): void {
    this.slots = new Uint32Array(this.slots.length * 2);
    this.mask = this.slots.length - 1;
    for (let id = 1; id <= this.count; id++) {
      let slot = readU32(this.digests, id * DIGEST_BYTES) & this.mask;
      while (this.slots[slot] !== 0) slot = (slot + 1) & this.mask;
      this.slots[slot] = id;
    }
  }
}

function readU32(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>>
    0
  );
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}
