import {
  ANNOUNCEMENT_VERSION,
  KIND_BLOOM,
  MAX_BLOOM_BITS,
  MAX_BLOOM_HASHES,
  MAX_COUNT,
  TWO_32,
  readU32LE,
  writeU32LE,
  type HeldDigests,
} from './digest-codec.js';

/**
 * The Bloom filter form of an announcement. It is the smaller form only when the sorted list's prefix
 * has to round up by most of a byte, or when the wanted rate needs a prefix longer than a digest (see
 * chooseAnnouncement in digest-set.ts); it has its own module because it shares no code with the list
 * beyond digest-codec.ts. Its probes reuse the digest's own bits, so a filter costs no hashing.
 */

const BLOOM_HEADER_BYTES = 16;
const MIN_BLOOM_BITS = 64;

/**
 * A Bloom filter over digests. Probe positions come from the digest's own bits by enhanced double hashing
 * (Dillinger and Manolios): h1 = bytes 0..5 and h2 = bytes 8..13 as 48-bit little-endian integers (exact
 * in a double, so positions up to 2^33 need no 64-bit arithmetic; reducing 48 bits modulo m <= 2^33 is
 * biased by at most 2^-15), then position i is x_i with x_0 = h1 mod m, y_0 = h2 mod m,
 * x_{i+1} = x_i + y_i, y_{i+1} = y_i + i + 1 (mod m). No hashing beyond the digest's.
 *
 * Encoding (16-byte header, then the bits; bit j is bit j % 8 of byte j / 8):
 *   0  u8   kind = 1         1  u8  version = 1
 *   2  u8   k (probes)       3  u8  0
 *   4  u32  digests added (little-endian)
 *   8  u64  bit count m (little-endian), a multiple of 8, 64 <= m <= 2^33
 */
export class BloomFilter implements HeldDigests {
  private added: number;
  private fillEstimate: number | undefined;

  private constructor(
    private readonly bits: Uint8Array,
    readonly bitCount: number,
    readonly hashCount: number,
    added: number,
  ) {
    this.added = added;
  }

  /**
   * A filter for `capacity` digests with a false-positive rate of at most `falsePositiveRate` once they
   * are in: k = round(log2(1/p)) probes and the smallest m for which (1 - e^(-kn/m))^k <= p.
   */
  static forCapacity(capacity: number, falsePositiveRate: number): BloomFilter {
    const { bitCount, hashCount } = bloomShape(capacity, falsePositiveRate);
    return new BloomFilter(new Uint8Array(bitCount / 8), bitCount, hashCount, 0);
  }

  /** Encoded size of `forCapacity(capacity, falsePositiveRate)`, without building it. */
  static encodedBytes(capacity: number, falsePositiveRate: number): number {
    return BLOOM_HEADER_BYTES + bloomShape(capacity, falsePositiveRate).bitCount / 8;
  }

  /** Reads an encoded filter; undefined when the bytes are not exactly one well-formed filter. */
  static decode(bytes: Uint8Array): BloomFilter | undefined {
    if (!(bytes instanceof Uint8Array) || bytes.length < BLOOM_HEADER_BYTES) return undefined;
    if (bytes[0] !== KIND_BLOOM || bytes[1] !== ANNOUNCEMENT_VERSION || bytes[3] !== 0) return undefined;
    const k = bytes[2]!;
    if (k < 1 || k > MAX_BLOOM_HASHES) return undefined;
    const added = readU32LE(bytes, 4);
    const bitCount = readU32LE(bytes, 8) + readU32LE(bytes, 12) * TWO_32;
    if (bitCount < MIN_BLOOM_BITS || bitCount > MAX_BLOOM_BITS || bitCount % 8 !== 0) return undefined;
    if (bytes.length - BLOOM_HEADER_BYTES !== bitCount / 8) return undefined;
    // A copy: the caller's buffer may be a pooled frame buffer that is reused.
    return new BloomFilter(bytes.slice(BLOOM_HEADER_BYTES), bitCount, k, added);
  }

  get count(): number {
    return this.added;
  }

  /** (share of bits set)^k, measured on the filter (so a filter of all ones says 1). */
  get falsePositiveRate(): number {
    if (this.fillEstimate === undefined) {
      let set = 0;
      for (const byte of this.bits) set += POPCOUNT[byte]!;
      this.fillEstimate = set / this.bitCount;
    }
    return this.fillEstimate ** this.hashCount;
  }

  add(digest: Uint8Array, offset = 0): void {
    const m = this.bitCount;
    let x = h48(digest, offset) % m;
    let y = h48(digest, offset + 8) % m;
    for (let i = 0; i < this.hashCount; i++) {
      this.bits[Math.floor(x / 8)]! |= 1 << (x & 7);
      x += y;
      if (x >= m) x -= m;
      y += i + 1;
      if (y >= m) y -= m;
    }
    this.added = Math.min(MAX_COUNT, this.added + 1);
    this.fillEstimate = undefined;
  }

  mayHold(digest: Uint8Array, offset = 0): boolean {
    const m = this.bitCount;
    let x = h48(digest, offset) % m;
    let y = h48(digest, offset + 8) % m;
    for (let i = 0; i < this.hashCount; i++) {
      if ((this.bits[Math.floor(x / 8)]! & (1 << (x & 7))) === 0) return false;
      x += y;
      if (x >= m) x -= m;
      y += i + 1;
      if (y >= m) y -= m;
    }
    return true;
  }

  encode(): Uint8Array {
    const out = new Uint8Array(BLOOM_HEADER_BYTES + this.bits.length);
    out[0] = KIND_BLOOM;
    out[1] = ANNOUNCEMENT_VERSION;
    out[2] = this.hashCount;
    writeU32LE(out, 4, this.added);
    writeU32LE(out, 8, this.bitCount % TWO_32);
    writeU32LE(out, 12, Math.floor(this.bitCount / TWO_32));
    out.set(this.bits, BLOOM_HEADER_BYTES);
    return out;
  }
}

function bloomShape(capacity: number, p: number): { bitCount: number; hashCount: number } {
  if (!Number.isInteger(capacity) || capacity < 0 || capacity > MAX_COUNT) {
    throw new RangeError(`Bloom filter capacity ${capacity}: expected an integer from 0 to 2^32-1`);
  }
  if (!(p > 0 && p < 1)) throw new RangeError(`false-positive rate ${p}: expected 0 < p < 1`);
  const hashCount = Math.min(MAX_BLOOM_HASHES, Math.max(1, Math.round(-Math.log2(p))));
  // (1 - e^(-kn/m))^k = p  <=>  m = -kn / ln(1 - p^(1/k)); log1p keeps precision for tiny p^(1/k).
  const exact = capacity === 0 ? 0 : (-hashCount * capacity) / Math.log1p(-(p ** (1 / hashCount)));
  const bitCount = Math.max(MIN_BLOOM_BITS, Math.ceil(exact / 8) * 8);
  if (bitCount > MAX_BLOOM_BITS) {
    throw new RangeError(`a Bloom filter for ${capacity} digests at rate ${p} needs ${bitCount} bits`);
  }
  return { bitCount, hashCount };
}

/** 48-bit little-endian integer at `offset` (exact in a double). */
function h48(bytes: Uint8Array, offset: number): number {
  return readU32LE(bytes, offset) + (bytes[offset + 4]! | (bytes[offset + 5]! << 8)) * TWO_32;
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let x = b; x > 0; x >>= 1) n += x & 1;
  return n;
});
