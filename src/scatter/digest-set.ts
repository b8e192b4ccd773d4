import { DIGEST_BYTES } from '../memory/page.js';

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

/** An announcement ready to send: its encoding, bytes and the number of digests it stands for. */
export interface Announcement {
  readonly kind: 'bloom' | 'sorted';
  readonly bytes: Uint8Array;
  readonly count: number;
}

export const ANNOUNCEMENT_VERSION = 1;
/** Largest Bloom filter accepted, in bits (1 GiB); a decoded one must also match the bytes present. */
export const MAX_BLOOM_BITS = 2 ** 33;
/** Largest number of probes per digest (a rate of 2^-64 needs 64). */
export const MAX_BLOOM_HASHES = 64;
/** Shortest and longest digest prefix of a sorted list (below 4 bytes the rate is useless). */
export const MIN_PREFIX_BYTES = 4;
export const MAX_PREFIX_BYTES = DIGEST_BYTES;

const KIND_BLOOM = 1;
const KIND_SORTED = 2;
const CODING_FIXED = 0;
const CODING_DELTA = 1;
const BLOOM_HEADER_BYTES = 16;
const SORTED_HEADER_BYTES = 8;
const MIN_BLOOM_BITS = 64;
const TWO_32 = 2 ** 32;
const MAX_COUNT = 2 ** 32 - 1;

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

/**
 * A sorted, de-duplicated list of digest prefixes, as decoded (or built locally with `from`). Held as
 * the prefixes' first 4 bytes as big-endian uint32 (so numeric order is byte order) and the remaining
 * prefixBytes - 4 bytes of each, plus a directory over the top bits (digests are uniform, so each
 * directory bucket holds a few entries): a lookup is a binary search within one bucket. Memory is
 * prefixBytes + about 2 bytes per digest.
 *
 * Encoding (8-byte header, then the payload):
 *   0  u8   kind = 2          1  u8  version = 1
 *   2  u8   prefixBytes w (4..16)
 *   3  u8   coding: 0 fixed (count * w bytes, the prefixes in ascending order)
 *                   1 delta (Elias-Fano, below)
 *   4  u32  count (little-endian)
 * Delta coding, with P = 8w bits per prefix, t = floor(log2 count) high bits (0 for count < 2) and
 * L = P - t low bits: for each prefix in ascending order, (high - previous high) zero bits, a one bit,
 * then its L low bits, most significant bit first; the stream is zero-padded to a whole byte. About
 * L + 2 bits per prefix, against P for fixed width: for a million 8-byte prefixes, 46 bits instead of 64.
 * Prefixes must be strictly ascending (so the form is canonical and the binary search correct).
 */
export class SortedDigests implements HeldDigests {
  private readonly directory: Uint32Array;
  private readonly directoryShift: number;

  private constructor(
    readonly prefixBytes: number,
    private readonly heads: Uint32Array,
    private readonly tails: Uint8Array,
  ) {
    const n = heads.length;
    const bits = n < 8 ? 0 : Math.min(24, Math.floor(Math.log2(n)) - 1);
    this.directoryShift = 32 - bits;
    this.directory = new Uint32Array(2 ** bits + 1);
    if (bits === 0) {
      this.directory[1] = n;
      return;
    }
    for (let i = 0; i < n; i++) this.directory[(heads[i]! >>> this.directoryShift) + 1]!++;
    for (let b = 1; b < this.directory.length; b++) this.directory[b]! += this.directory[b - 1]!;
  }

  /** The sorted list of `digests` cut to `prefixBytes`, for local use (as `decode(encode(...))`). */
  static from(digests: DigestsInput, prefixBytes: number): SortedDigests {
    checkPrefixBytes(prefixBytes);
    const { heads, tails } = sortPrefixes(packDigests(digests), prefixBytes);
    return new SortedDigests(prefixBytes, heads, tails);
  }

  /** Reads an encoded list; undefined when the bytes are not exactly one well-formed list. */
  static decode(bytes: Uint8Array): SortedDigests | undefined {
    if (!(bytes instanceof Uint8Array) || bytes.length < SORTED_HEADER_BYTES) return undefined;
    if (bytes[0] !== KIND_SORTED || bytes[1] !== ANNOUNCEMENT_VERSION) return undefined;
    const w = bytes[2]!;
    const coding = bytes[3]!;
    const count = readU32LE(bytes, 4);
    if (w < MIN_PREFIX_BYTES || w > MAX_PREFIX_BYTES) return undefined;
    const payload = bytes.subarray(SORTED_HEADER_BYTES);
    let decoded: { heads: Uint32Array; tails: Uint8Array } | undefined;
    if (coding === CODING_FIXED) decoded = decodeFixed(payload, w, count);
    else if (coding === CODING_DELTA) decoded = decodeDelta(payload, w, count);
    if (decoded === undefined || !strictlyAscending(decoded.heads, decoded.tails, w - 4)) return undefined;
    return new SortedDigests(w, decoded.heads, decoded.tails);
  }

  get count(): number {
    return this.heads.length;
  }

  /** count / 2^(8 * prefixBytes): the chance that one of the prefixes matches a digest not announced. */
  get falsePositiveRate(): number {
    return Math.min(1, this.heads.length / 2 ** (8 * this.prefixBytes));
  }

  /** Bytes of memory held (prefixes and directory). */
  get bytesUsed(): number {
    return this.heads.byteLength + this.tails.byteLength + this.directory.byteLength;
  }

  mayHold(digest: Uint8Array, offset = 0): boolean {
    const head = readU32BE(digest, offset);
    const tailBytes = this.prefixBytes - 4;
    const heads = this.heads;
    const bucket = this.directoryShift === 32 ? 0 : head >>> this.directoryShift;
    let lo = this.directory[bucket]!;
    let hi = this.directory[bucket + 1]!;
    // Lower bound of (head, tail) in [lo, hi).
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const h = heads[mid]!;
      if (h < head || (h === head && this.compareTail(mid, digest, offset + 4, tailBytes) < 0)) lo = mid + 1;
      else hi = mid;
    }
    return (
      lo < heads.length && heads[lo] === head && this.compareTail(lo, digest, offset + 4, tailBytes) === 0
    );
  }

  /** Encodes the list (delta coding is smaller for more than a few digests; fixed is faster to decode). */
  encode(coding: SortedCoding = 'delta'): Uint8Array {
    const w = this.prefixBytes;
    const n = this.heads.length;
    if (coding === 'fixed') {
      const out = new Uint8Array(SORTED_HEADER_BYTES + n * w);
      writeSortedHeader(out, w, CODING_FIXED, n);
      for (let i = 0; i < n; i++) {
        const at = SORTED_HEADER_BYTES + i * w;
        writeU32BE(out, at, this.heads[i]!);
        for (let j = 0; j < w - 4; j++) out[at + 4 + j] = this.tails[i * (w - 4) + j]!;
      }
      return out;
    }
    const t = highBits(n);
    const lowHeadBits = 32 - t;
    const tailBytes = w - 4;
    const lastHigh = n === 0 ? 0 : highOf(this.heads[n - 1]!, t);
    const payloadBits = n * (8 * w - t + 1) + lastHigh;
    const out = new BitWriter(SORTED_HEADER_BYTES + Math.ceil(payloadBits / 8), SORTED_HEADER_BYTES);
    writeSortedHeader(out.bytes, w, CODING_DELTA, n);
    let previousHigh = 0;
    for (let i = 0; i < n; i++) {
      const head = this.heads[i]!;
      const high = highOf(head, t);
      out.zeros(high - previousHigh);
      out.bits(1, 1);
      previousHigh = high;
      if (lowHeadBits > 16) out.bits((head >>> 16) & ((1 << (lowHeadBits - 16)) - 1), lowHeadBits - 16);
      if (lowHeadBits > 0) out.bits(head & ((1 << Math.min(16, lowHeadBits)) - 1), Math.min(16, lowHeadBits));
      for (let j = 0; j < tailBytes; j++) out.bits(this.tails[i * tailBytes + j]!, 8);
    }
    out.finish();
    return out.bytes;
  }

  /** Compares the stored tail of entry i with the query's bytes at `at`; negative when stored < query. */
  private compareTail(i: number, query: Uint8Array, at: number, tailBytes: number): number {
    const base = i * tailBytes;
    for (let j = 0; j < tailBytes; j++) {
      const diff = this.tails[base + j]! - query[at + j]!;
      if (diff !== 0) return diff;
    }
    return 0;
  }
}

export type SortedCoding = 'fixed' | 'delta';

/** Sorts the digests, keeps the first `prefixBytes` bytes of each (de-duplicated) and encodes them. */
export function encodeSortedDigests(
  digests: DigestsInput,
  prefixBytes: number,
  coding: SortedCoding = 'delta',
): Uint8Array {
  return SortedDigests.from(digests, prefixBytes).encode(coding);
}

/** Reads `encodeSortedDigests` output; undefined when malformed. */
export function decodeSortedDigests(bytes: Uint8Array): SortedDigests | undefined {
  return SortedDigests.decode(bytes);
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

/** The whole prefix bytes a list of n digests needs for rate p, or undefined beyond 16. */
export function prefixBytesFor(n: number, falsePositiveRate: number): number | undefined {
  const bits = Math.log2(Math.max(1, n) / falsePositiveRate);
  const bytes = Math.max(MIN_PREFIX_BYTES, Math.ceil(bits / 8));
  return bytes <= MAX_PREFIX_BYTES ? bytes : undefined;
}

/** Reads an announcement of either kind; undefined (never an exception) when malformed. */
export function decodeAnnouncement(bytes: Uint8Array): HeldDigests | undefined {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) return undefined;
  if (bytes[0] === KIND_BLOOM) return BloomFilter.decode(bytes);
  if (bytes[0] === KIND_SORTED) return SortedDigests.decode(bytes);
  return undefined;
}

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

function checkPrefixBytes(prefixBytes: number): void {
  if (!Number.isInteger(prefixBytes) || prefixBytes < MIN_PREFIX_BYTES || prefixBytes > MAX_PREFIX_BYTES) {
    throw new RangeError(
      `prefix of ${prefixBytes} bytes: expected ${MIN_PREFIX_BYTES} to ${MAX_PREFIX_BYTES}`,
    );
  }
}

/**
 * Sorted, de-duplicated prefixes of packed digests: a counting sort on the top bits (about one bucket
 * per digest, as digests are uniform), then each bucket sorted on its own (insertion sort when small).
 */
function sortPrefixes(packed: Uint8Array, w: number): { heads: Uint32Array; tails: Uint8Array } {
  const n = packed.length / DIGEST_BYTES;
  if (n > MAX_COUNT) throw new RangeError(`${n} digests: at most 2^32-1 in one announcement`);
  const tailBytes = w - 4;
  const bucketBits = n < 2 ? 0 : Math.min(22, Math.ceil(Math.log2(n)));
  // A shift by 32 is a shift by 0 in JavaScript: with no bucket bits, shift the top half twice.
  const shift = 32 - bucketBits;
  const half = shift >>> 1;
  const starts = new Uint32Array(2 ** bucketBits + 1);
  for (let i = 0; i < n; i++)
    starts[((readU32BE(packed, i * DIGEST_BYTES) >>> half) >>> (shift - half)) + 1]!++;
  for (let b = 1; b < starts.length; b++) starts[b]! += starts[b - 1]!;
  const next = starts.slice(0, starts.length - 1);
  const heads = new Uint32Array(n);
  const tails = new Uint8Array(n * tailBytes);
  for (let i = 0; i < n; i++) {
    const head = readU32BE(packed, i * DIGEST_BYTES);
    const at = next[(head >>> half) >>> (shift - half)]!++;
    heads[at] = head;
    for (let j = 0; j < tailBytes; j++) tails[at * tailBytes + j] = packed[i * DIGEST_BYTES + 4 + j]!;
  }
  for (let b = 0; b + 1 < starts.length; b++) {
    const lo = starts[b]!;
    const hi = starts[b + 1]!;
    if (hi - lo < 2) continue;
    if (hi - lo <= 32) {
      for (let i = lo + 1; i < hi; i++) {
        for (let j = i; j > lo && compareEntries(heads, tails, tailBytes, j - 1, j) > 0; j--) {
          swap(heads, tails, j - 1, j, tailBytes);
        }
      }
    } else {
      // Not uniform (tests, or many equal digests): sort this bucket through an index.
      const order = Array.from({ length: hi - lo }, (_, k) => lo + k).sort((a, b) =>
        compareEntries(heads, tails, tailBytes, a, b),
      );
      const h = order.map((i) => heads[i]!);
      const t = new Uint8Array((hi - lo) * tailBytes);
      order.forEach((i, k) => t.set(tails.subarray(i * tailBytes, (i + 1) * tailBytes), k * tailBytes));
      heads.set(h, lo);
      tails.set(t, lo * tailBytes);
    }
  }
  // De-duplicate in place.
  let kept = 0;
  for (let i = 0; i < n; i++) {
    if (kept > 0 && compareEntries(heads, tails, tailBytes, kept - 1, i) === 0) continue;
    if (kept !== i) {
      heads[kept] = heads[i]!;
      for (let j = 0; j < tailBytes; j++) tails[kept * tailBytes + j] = tails[i * tailBytes + j]!;
    }
    kept++;
  }
  if (kept === n) return { heads, tails };
  return { heads: heads.slice(0, kept), tails: tails.slice(0, kept * tailBytes) };
}

function compareEntries(
  heads: Uint32Array,
  tails: Uint8Array,
  tailBytes: number,
  a: number,
  b: number,
): number {
  const ha = heads[a]!;
  const hb = heads[b]!;
  if (ha !== hb) return ha < hb ? -1 : 1;
  for (let j = 0; j < tailBytes; j++) {
    const diff = tails[a * tailBytes + j]! - tails[b * tailBytes + j]!;
    if (diff !== 0) return diff;
  }
  return 0;
}

function swap(heads: Uint32Array, tails: Uint8Array, a: number, b: number, w: number): void {
  const h = heads[a]!;
  heads[a] = heads[b]!;
  heads[b] = h;
  for (let j = 0; j < w; j++) {
    const x = tails[a * w + j]!;
    tails[a * w + j] = tails[b * w + j]!;
    tails[b * w + j] = x;
  }
}

function strictlyAscending(heads: Uint32Array, tails: Uint8Array, tailBytes: number): boolean {
  for (let i = 1; i < heads.length; i++) {
    if (heads[i - 1]! < heads[i]!) continue;
    if (heads[i - 1]! > heads[i]!) return false;
    let diff = 0;
    for (let j = 0; j < tailBytes && diff === 0; j++)
      diff = tails[i * tailBytes + j]! - tails[(i - 1) * tailBytes + j]!;
    if (diff <= 0) return false;
  }
  return true;
}

function decodeFixed(payload: Uint8Array, w: number, count: number) {
  if (payload.length !== count * w) return undefined;
  const heads = new Uint32Array(count);
  const tails = new Uint8Array(count * (w - 4));
  for (let i = 0; i < count; i++) {
    heads[i] = readU32BE(payload, i * w);
    for (let j = 0; j < w - 4; j++) tails[i * (w - 4) + j] = payload[i * w + 4 + j]!;
  }
  return { heads, tails };
}

function decodeDelta(payload: Uint8Array, w: number, count: number) {
  const t = highBits(count);
  const lowBits = 8 * w - t;
  // Every entry takes at least its one bit and its low bits: refuse a count the bytes cannot hold
  // before allocating for it (memory stays within a few times the bytes received).
  if (count * (lowBits + 1) > payload.length * 8) return undefined;
  const heads = new Uint32Array(count);
  const tailBytes = w - 4;
  const tails = new Uint8Array(count * tailBytes);
  const lowHeadBits = 32 - t;
  // The head's low bits are read in at most two parts of at most 16 bits (the reader takes up to 24).
  const upperBits = Math.max(0, lowHeadBits - 16);
  const lowerBits = Math.min(16, lowHeadBits);
  const highScale = 2 ** lowHeadBits;
  const highLimit = 2 ** t;
  const source = new BitReader(payload);
  let high = 0;
  for (let i = 0; i < count; i++) {
    for (;;) {
      const bit = source.bits(1);
      if (bit < 0) return undefined;
      if (bit === 1) break;
      if (++high >= highLimit) return undefined;
    }
    const upper = upperBits > 0 ? source.bits(upperBits) : 0;
    const lower = lowerBits > 0 ? source.bits(lowerBits) : 0;
    if (upper < 0 || lower < 0) return undefined;
    heads[i] = high * highScale + upper * 65536 + lower;
    for (let j = 0; j < tailBytes; j++) {
      const byte = source.bits(8);
      if (byte < 0) return undefined;
      tails[i * tailBytes + j] = byte;
    }
  }
  return source.atCanonicalEnd() ? { heads, tails } : undefined;
}

/** High bits of an Elias-Fano list of n values: floor(log2 n), 0 below 2, at most 32. */
function highBits(n: number): number {
  return n < 2 ? 0 : Math.min(32, Math.floor(Math.log2(n)));
}

function highOf(head: number, t: number): number {
  return t === 0 ? 0 : head >>> (32 - t);
}

function writeSortedHeader(out: Uint8Array, w: number, coding: number, count: number): void {
  out[0] = KIND_SORTED;
  out[1] = ANNOUNCEMENT_VERSION;
  out[2] = w;
  out[3] = coding;
  writeU32LE(out, 4, count);
}

/** Writes bits most significant first into a zeroed buffer, from byte `start`; `finish` writes the last byte. */
class BitWriter {
  readonly bytes: Uint8Array;
  private at: number;
  private window = 0; // pending bits, right-aligned
  private pending = 0; // fewer than 8 between calls

  constructor(length: number, start: number) {
    this.bytes = new Uint8Array(length);
    this.at = start;
  }

  zeros(n: number): void {
    const total = this.pending + n;
    if (total < 8) {
      this.window <<= n;
      this.pending = total;
      return;
    }
    this.bytes[this.at++] = (this.window << (8 - this.pending)) & 0xff;
    this.at += Math.floor((total - 8) / 8); // whole zero bytes: the buffer is zeroed already
    this.pending = (total - 8) % 8;
    this.window = 0;
  }

  /** `value`, which has at most `n` (<= 24) bits. */
  bits(value: number, n: number): void {
    this.window = (this.window << n) | value;
    this.pending += n;
    while (this.pending >= 8) {
      this.pending -= 8;
      this.bytes[this.at++] = (this.window >>> this.pending) & 0xff;
    }
    this.window &= (1 << this.pending) - 1;
  }

  finish(): void {
    if (this.pending > 0) this.bytes[this.at++] = (this.window << (8 - this.pending)) & 0xff;
    this.pending = 0;
    this.window = 0;
  }
}

/** Reads bits most significant first, through a window of at most 31 bits. */
class BitReader {
  private at = 0;
  private window = 0; // unread bits, right-aligned
  private available = 0;

  constructor(private readonly bytes: Uint8Array) {}

  /** The next `n` (<= 24) bits as an unsigned number; -1 past the end. */
  bits(n: number): number {
    while (this.available < n) {
      if (this.at >= this.bytes.length) return -1;
      this.window = (this.window << 8) | this.bytes[this.at++]!;
      this.available += 8;
    }
    this.available -= n;
    const value = (this.window >>> this.available) & ((1 << n) - 1);
    this.window &= (1 << this.available) - 1;
    return value;
  }

  /** True when every byte is read and the bits left (fewer than 8) are zero padding. */
  atCanonicalEnd(): boolean {
    return this.at === this.bytes.length && this.window === 0;
  }
}

/** 48-bit little-endian integer at `offset` (exact in a double). */
function h48(bytes: Uint8Array, offset: number): number {
  return readU32LE(bytes, offset) + (bytes[offset + 4]! | (bytes[offset + 5]! << 8)) * TWO_32;
}

function readU32LE(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>>
    0
  );
}

function readU32BE(bytes: Uint8Array, offset: number): number {
  return (
    ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>>
    0
  );
}

function writeU32LE(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

function writeU32BE(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 24) & 0xff;
  bytes[offset + 1] = (value >>> 16) & 0xff;
  bytes[offset + 2] = (value >>> 8) & 0xff;
  bytes[offset + 3] = value & 0xff;
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let x = b; x > 0; x >>= 1) n += x & 1;
  return n;
});
