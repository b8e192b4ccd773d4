import { DIGEST_BYTES } from '../memory/page.js';

/**
 * What the two announcement codecs (bloom-filter.ts, sorted-digests.ts) and the choice between them
 * (digest-set.ts) have in common: the interface a decoded announcement offers, the wire constants and
 * the byte helpers. It is a module of its own because digest-set.ts imports both codecs, so the codecs
 * cannot import it back without a cycle. Callers import from digest-set.ts, which re-exports the public
 * part; the kind bytes, MAX_COUNT and the byte helpers are for the three announcement modules only.
 */

/** A decoded announcement: `mayHold` is true for every digest announced and, rarely, for another. */
export interface HeldDigests {
  /** True when the digest at `digest[offset..offset+16)` was announced (or is a false positive). */
  mayHold(digest: Uint8Array, offset?: number): boolean;
  /** Digests announced (as counted by the announcer for a Bloom filter; distinct prefixes for a list). */
  readonly count: number;
  /** Estimated chance that a digest not announced is reported held, from the decoded contents. */
  readonly falsePositiveRate: number;
}

/** Digests to encode: one Uint8Array of n * 16 bytes (packed), or any iterable of 16-byte digests. */
export type DigestsInput = Uint8Array | Iterable<Uint8Array>;

export const ANNOUNCEMENT_VERSION = 1;
/** Largest Bloom filter accepted, in bits (1 GiB); a decoded one must also match the bytes present. */
export const MAX_BLOOM_BITS = 2 ** 33;
/** Largest number of probes per digest (a rate of 2^-64 needs 64). */
export const MAX_BLOOM_HASHES = 64;
/** Shortest and longest digest prefix of a sorted list (below 4 bytes the rate is useless). */
export const MIN_PREFIX_BYTES = 4;
export const MAX_PREFIX_BYTES = DIGEST_BYTES;

/** The first byte of an encoded announcement: which codec reads it. */
export const KIND_BLOOM = 1;
export const KIND_SORTED = 2;
export const TWO_32 = 2 ** 32;
/** Digest counts travel as u32: a count beyond this cannot be announced. */
export const MAX_COUNT = 2 ** 32 - 1;

/** The digests as one packed array of n * 16 bytes (the input itself when it is one). */
export function packDigests(digests: DigestsInput): Uint8Array {
  if (digests instanceof Uint8Array) {
    if (digests.length % DIGEST_BYTES !== 0) {
      throw new RangeError(`packed digests: ${digests.length} bytes is not a multiple of ${DIGEST_BYTES}`);
    }
    return digests;
  }
  let packed = new Uint8Array(1024 * DIGEST_BYTES);
  let n = 0;
  for (const digest of digests) {
    if (digest.length !== DIGEST_BYTES) throw new RangeError(`a digest is ${DIGEST_BYTES} bytes`);
    if ((n + 1) * DIGEST_BYTES > packed.length) {
      const grown = new Uint8Array(packed.length * 2);
      grown.set(packed);
      packed = grown;
    }
    packed.set(digest, n * DIGEST_BYTES);
    n++;
  }
  return packed.subarray(0, n * DIGEST_BYTES);
}

export function readU32LE(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>>
    0
  );
}

export function readU32BE(bytes: Uint8Array, offset: number): number {
  return (
    ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>>
    0
  );
}

export function writeU32LE(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

export function writeU32BE(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 24) & 0xff;
  bytes[offset + 1] = (value >>> 16) & 0xff;
  bytes[offset + 2] = (value >>> 8) & 0xff;
  bytes[offset + 3] = value & 0xff;
}
