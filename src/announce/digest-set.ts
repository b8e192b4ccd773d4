import { DIGEST_BYTES } from '../memory/page.js';
import { BloomFilter } from './bloom-filter.js';
import {
  KIND_BLOOM,
  KIND_SORTED,
  packDigests,
  readU32LE,
  type DigestsInput,
  type HeldDigests,
} from './digest-codec.js';
import { SortedDigests, prefixBytesFor } from './sorted-digests.js';

/**
 * What an agent announces before a job: the set of page digests it holds already (its template store
 * and content store), so the source sends none of those pages to it. The set can hold millions of
 * digests, so it travels in one of two compact encodings, each a Uint8Array inside a msgpack control
 * message (frames are at most 16 MiB):
 *
 * - a Bloom filter: about 1.44 * log2(1/p) bits per digest for a false-positive rate p;
 * - a sorted list of digest prefixes (the first `prefixBytes` bytes of each digest), either fixed width
 *   or delta coded (Elias-Fano: the gaps between the high bits in unary, the low bits verbatim), about
 *   8 * prefixBytes - log2(n) + 2 bits per digest, with a false-positive rate of about n / 2^(8 * prefixBytes).
 *
 * `chooseAnnouncement` builds whichever is smaller for a target rate; `decodeAnnouncement` reads either.
 *
 * False positives are by design, never false negatives: an answer "held" for a page the agent lacks
 * makes the source skip a page the agent needs, and the agent fetches it afterwards by unicast (slow, one
 * round trip per batch of missing pages, but correct). So the rate must be small (1e-6 of a million
 * pages is one unicast fetch per job) but need not be zero: a zero rate costs the full 16 bytes per digest.
 * Digests are keyed hashes (see docs/ARCHITECTURE.md, "Page digests"), uniform and unpredictable to
 * guests, so no guest can choose pages that hit false positives, and their bits serve as hashes directly.
 *
 * Decoding takes bytes from the network: it returns undefined for anything malformed, truncated or
 * forged, never throws, and allocates at most a small multiple of the bytes received (a header cannot
 * claim more than the bytes present). A well-formed announcement may still lie (a Bloom filter of all
 * ones claims every page): `falsePositiveRate` estimates the rate from the decoded contents, so a
 * coordinator can refuse an announcement whose rate is above what it accepts.
 *
 * Callers import everything from this module, which re-exports the two codecs (bloom-filter.ts,
 * sorted-digests.ts) and what they share (digest-codec.ts): which encoding an announcement uses is this
 * module's decision, so the rest of the code never names a codec.
 */

export {
  ANNOUNCEMENT_VERSION,
  MAX_BLOOM_BITS,
  MAX_BLOOM_HASHES,
  MAX_PREFIX_BYTES,
  MIN_PREFIX_BYTES,
  packDigests,
  type DigestsInput,
  type HeldDigests,
} from './digest-codec.js';
export { BloomFilter } from './bloom-filter.js';
export {
  SortedDigests,
  decodeSortedDigests,
  encodeSortedDigests,
  prefixBytesFor,
  type SortedCoding,
} from './sorted-digests.js';

/** An announcement ready to send: its encoding, bytes and the number of digests it stands for. */
export interface Announcement {
  readonly kind: 'bloom' | 'sorted';
  readonly bytes: Uint8Array;
  readonly count: number;
}

/**
 * The smaller of a Bloom filter and a delta-coded sorted prefix list for these digests with a
 * false-positive rate of at most `falsePositiveRate` (the list's prefix is the fewest whole bytes with
 * n / 2^(8 * prefixBytes) <= rate, at least 4). The list needs about 8 * prefixBytes - log2(n) + 2 bits
 * per digest, the filter 1.44 * log2(1/p): with an exact prefix length the list would always win, but
 * whole bytes round it up by 0 to 7 bits, so which one is smaller depends on n and p.
 */
export function chooseAnnouncement(digests: DigestsInput, falsePositiveRate: number): Announcement {
  if (!(falsePositiveRate > 0 && falsePositiveRate < 1)) {
    throw new RangeError(`false-positive rate ${falsePositiveRate}: expected 0 < p < 1`);
  }
  const packed = packDigests(digests);
  const n = packed.length / DIGEST_BYTES;
  const prefixBytes = prefixBytesFor(n, falsePositiveRate);
  const list =
    prefixBytes === undefined ? undefined : SortedDigests.from(packed, prefixBytes).encode('delta');
  let bloomBytes = Infinity;
  try {
    bloomBytes = BloomFilter.encodedBytes(n, falsePositiveRate);
  } catch (error) {
    if (list === undefined) throw error;
  }
  if (list !== undefined && list.length <= bloomBytes) {
    return { kind: 'sorted', bytes: list, count: readU32LE(list, 4) };
  }
  const filter = BloomFilter.forCapacity(n, falsePositiveRate);
  for (let i = 0; i < n; i++) filter.add(packed, i * DIGEST_BYTES);
  return { kind: 'bloom', bytes: filter.encode(), count: n };
}

/** Reads an announcement of either kind; undefined (never an exception) when malformed. */
export function decodeAnnouncement(bytes: Uint8Array): HeldDigests | undefined {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) return undefined;
  if (bytes[0] === KIND_BLOOM) return BloomFilter.decode(bytes);
  if (bytes[0] === KIND_SORTED) return SortedDigests.decode(bytes);
  return undefined;
}
