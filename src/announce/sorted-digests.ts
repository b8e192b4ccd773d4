import { DIGEST_BYTES } from '../memory/page.js';
import {
  ANNOUNCEMENT_VERSION,
  KIND_SORTED,
  MAX_COUNT,
  MAX_PREFIX_BYTES,
  MIN_PREFIX_BYTES,
  packDigests,
  readU32BE,
  readU32LE,
  writeU32BE,
  writeU32LE,
  type DigestsInput,
  type HeldDigests,
} from './digest-codec.js';

/**
 * The sorted prefix list form of an announcement, the smaller form for most sizes and rates (see
 * chooseAnnouncement in digest-set.ts). The Elias-Fano coding and its bit reader and writer stay here,
 * next to each other: nothing else uses them, and the decoder must accept exactly what the encoder
 * writes (canonical padding, no count the bytes cannot hold), which is easiest to keep true side by side.
 */

const CODING_FIXED = 0;
const CODING_DELTA = 1;
const SORTED_HEADER_BYTES = 8;

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

/** The whole prefix bytes a list of n digests needs for rate p, or undefined beyond 16. */
export function prefixBytesFor(n: number, falsePositiveRate: number): number | undefined {
  const bits = Math.log2(Math.max(1, n) / falsePositiveRate);
  const bytes = Math.max(MIN_PREFIX_BYTES, Math.ceil(bits / 8));
  return bytes <= MAX_PREFIX_BYTES ? bytes : undefined;
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
