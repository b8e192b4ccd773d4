import { compressSync, uncompressSync } from 'lz4-napi';
import { native } from '../native/native.js';
import { DIGEST_BYTES, isZeroPage, PAGE_SIZE } from './page.js';

/**
 * Adaptive, zero-aware page compression (the MECOM idea): classify each page, give each class the
 * cheapest encoding that shrinks it, and switch the codec off when the link is faster than the codec
 * on this CPU, which is decided from rates measured on the job's own pages, never from a constant.
 *
 * Codec: LZ4 block format through lz4-napi (lz4_flex in Rust, napi-rs prebuilt binaries), chosen over
 * Snappy (@napi-rs/snappy) by measurement per 4 KiB page on text, code, random and struct-like pages on
 * this 2-core VM: the same ratio within 0.03, compression about as fast (both 70-320 MB/s sustained,
 * noisy), decompression 3-4x faster (400-1200 vs 90-250 MB/s), and decompression runs on every target
 * for every page. zlib level 1 shrinks more (0.47 vs 0.57 on mixed pages) but compresses at 40-90 MB/s,
 * below a 1 Gbit/s link on one core. `npm run bench:compression` prints the figures beside memcpy and
 * zlib. The codec allocates its output on every call, and the kernel time that follows (faulting in
 * fresh memory) is a large, variable part of its cost on a VM: one more reason to measure, not assume.
 * That is why, where the addon is built, pages are compressed and decoded through it
 * (native/page-records.c: its own LZ4 block compressor, bounds-checked decoding): a multicast round's
 * batches in one call each, and a live stream's pages one at a time, straight into the message it
 * builds (on bench:qemu's job, lz4-napi per page took 1.8 s of the coordinator's event loop); and
 * measureCodec then times that. lz4-napi remains the codec where the addon is not built.
 */

/** What a page is, for choosing its encoding. */
export type PageClass = 'zero' | 'uniform' | 'compressible' | 'incompressible';

/** How one page travels: a kind byte on the wire, then the payload. */
export enum PageEncoding {
  /** The PAGE_SIZE bytes as they are. */
  Raw = 0,
  /** One 8-byte word that fills the page (page poisoning patterns, memset regions, 0xff fill). */
  Uniform = 1,
  /** An LZ4 block with its 4-byte little-endian decoded size (always PAGE_SIZE) in front. */
  Lz4 = 2,
}

/** Width of the repeated word of a uniform page: the machine word, so memset() patterns are found. */
export const UNIFORM_WORD_BYTES = 8;

/**
 * Largest LZ4 payload still worth sending instead of the raw page: it must save at least 1/8 of the
 * page. Below that saving the receiver pays a decompression (and the sender its CPU) for a few hundred
 * bytes, and a raw page travels without any copy or codec call at either end.
 */
export const MAX_COMPRESSED_BYTES = PAGE_SIZE - PAGE_SIZE / 8;

/** Bytes of the size prefix lz4_flex puts before an LZ4 block (little-endian decoded length). */
const LZ4_SIZE_PREFIX = 4;

/**
 * Compression must beat raw sending by this factor before adaptive mode turns it on: the measured rates
 * come from a short sample on a machine that also encrypts, hashes and computes FEC, so a predicted gain
 * of a few percent is within the noise and not worth the CPU.
 */
export const ADAPTIVE_MARGIN = 1.1;

function assertPage(page: Uint8Array): void {
  if (page.length !== PAGE_SIZE) throw new RangeError(`a page is ${PAGE_SIZE} bytes, got ${page.length}`);
}

/** A Buffer over the same memory (no copy): node's compare() and lz4-napi want Buffers. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

/** The LZ4 payload of the page when it saves at least 1/8, else undefined. */
function compressIfWorthIt(page: Buffer): Uint8Array | undefined {
  if (native) {
    const out = new Uint8Array(MAX_COMPRESSED_BYTES);
    const length = native.compressPage(page, 0, out, 0);
    return length > 0 ? out.subarray(0, length) : undefined;
  }
  const compressed = compressSync(page);
  return compressed.length <= MAX_COMPRESSED_BYTES ? compressed : undefined;
}

/**
 * Writes the LZ4 payload of pages[offset..offset+PAGE_SIZE) at out[at..] when it saves at least 1/8:
 * its length, else 0 (out[at..] is then undefined). `out` needs MAX_COMPRESSED_BYTES of room at `at`.
 * Through the addon, nothing is allocated: a live stream writes its pages into the message it builds.
 */
export function compressPageInto(pages: Uint8Array, offset: number, out: Uint8Array, at: number): number {
  if (native) return native.compressPage(pages, offset, out, at);
  const compressed = compressIfWorthIt(asBuffer(pages.subarray(offset, offset + PAGE_SIZE)));
  if (compressed === undefined) return 0;
  out.set(compressed, at);
  return compressed.length;
}

const compareBytes = Buffer.prototype.compare;

/**
 * Whether the page at pages[offset..] is one 8-byte word repeated (sent as that word): the page
 * equals itself shifted by 8 bytes, one memcmp of overlapping ranges in place (no view made: a live
 * stream asks per page) rather than a JavaScript loop over 512 words.
 */
export function isUniformPage(pages: Uint8Array, offset: number): boolean {
  return (
    compareBytes.call(
      pages,
      pages,
      offset + UNIFORM_WORD_BYTES,
      offset + PAGE_SIZE,
      offset,
      offset + PAGE_SIZE - UNIFORM_WORD_BYTES,
    ) === 0
  );
}

/**
 * The class of a page. 'compressible' and 'incompressible' are decided by running the codec (a
 * guess from byte statistics would misjudge code and structs, whose repeats LZ4 finds but a byte
 * histogram does not see); zero and uniform pages are found by memcmp first and never reach it.
 */
export function classifyPage(page: Uint8Array): PageClass {
  assertPage(page);
  const bytes = asBuffer(page);
  if (isZeroPage(bytes, 0)) return 'zero';
  if (isUniformPage(bytes, 0)) return 'uniform';
  return compressIfWorthIt(bytes) !== undefined ? 'compressible' : 'incompressible';
}

/**
 * The wire form of a page. Uniform pages (zero included, should one be sent) become their word
 * whatever `compress` says: finding them is a memcmp, cheaper than sending 4 KiB. With `compress`,
 * pages that LZ4 shrinks by at least 1/8 travel compressed; every other page travels raw, and its
 * payload is the page itself (no copy), so the caller must not change the page before sending it.
 */
export function encodePage(
  page: Uint8Array,
  compress: boolean,
): { encoding: PageEncoding; payload: Uint8Array } {
  assertPage(page);
  const bytes = asBuffer(page);
  if (isUniformPage(bytes, 0)) {
    return { encoding: PageEncoding.Uniform, payload: page.slice(0, UNIFORM_WORD_BYTES) };
  }
  if (compress) {
    const compressed = compressIfWorthIt(bytes);
    if (compressed !== undefined) return { encoding: PageEncoding.Lz4, payload: compressed };
  }
  return { encoding: PageEncoding.Raw, payload: page };
}

/**
 * The page a payload stands for: exactly PAGE_SIZE bytes, or undefined when the input is malformed
 * (unknown encoding, wrong length, a corrupt LZ4 block, a block that does not decode to exactly one
 * page). Payloads come from the network, so nothing here throws on their content. A raw payload is
 * returned as it is (no copy); any other page is decoded into `into` where given (4 KiB the caller
 * reuses; the LZ4 fallback without the addon returns an array of its own).
 *
 * Decompression bombs: the LZ4 block's size prefix must say PAGE_SIZE before the codec is called, and
 * lz4_flex sizes its output from that prefix and fails rather than write past it, so a forged block can
 * never make the decoder allocate or produce more than one page. The payload itself is bounded by
 * PAGE_SIZE: the encoder never sends a compressed page larger than the raw one.
 */
export function decodePage(encoding: number, payload: Uint8Array, into?: Uint8Array): Uint8Array | undefined {
  switch (encoding) {
    case PageEncoding.Raw:
      return payload.length === PAGE_SIZE ? payload : undefined;
    case PageEncoding.Uniform: {
      if (payload.length !== UNIFORM_WORD_BYTES) return undefined;
      const page = into ?? new Uint8Array(PAGE_SIZE);
      page.set(payload);
      // Doubling copies: 9 memmoves instead of 512 word writes.
      for (let filled = UNIFORM_WORD_BYTES; filled < PAGE_SIZE; filled *= 2)
        page.copyWithin(filled, 0, filled);
      return page;
    }
    case PageEncoding.Lz4: {
      if (payload.length <= LZ4_SIZE_PREFIX || payload.length > PAGE_SIZE) return undefined;
      const declared = new DataView(payload.buffer, payload.byteOffset, LZ4_SIZE_PREFIX).getUint32(0, true);
      if (declared !== PAGE_SIZE) return undefined;
      if (native) {
        const page = into ?? new Uint8Array(PAGE_SIZE);
        return native.decompressPage(payload, page, 0) ? page : undefined;
      }
      let page: Uint8Array;
      try {
        page = uncompressSync(payload);
      } catch {
        return undefined;
      }
      return page.length === PAGE_SIZE ? page : undefined;
    }
    default:
      return undefined;
  }
}

/**
 * The codec's rates on this CPU, in bytes of raw page per second, over the pages that would go through
 * it (neither zero nor uniform: those are encoded the same way whether compression is on or off). The
 * compress rate includes the pages that turn out incompressible (the sender pays for trying); the
 * decompress rate counts every such page's raw bytes against the time the receiver spends decoding,
 * raw pages included, so both are rates at which a side can consume the page stream.
 */
export interface CodecRates {
  readonly compressBytesPerSecond: number;
  readonly decompressBytesPerSecond: number;
  /** Payload bytes with compression on over payload bytes with it off (1 = nothing gained). */
  readonly ratio: number;
}

/** Measured rates for a sample with no page the codec would see: nothing to gain, so never worth it. */
const NOTHING_TO_COMPRESS: CodecRates = { compressBytesPerSecond: 0, decompressBytesPerSecond: 0, ratio: 1 };

function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

/**
 * Runs `step(i)` over items 0..count-1, again and again, for about `seconds` (at least one item), and
 * returns items per second over the whole time: the sustained rate, not the best pass. The native codec
 * allocates its output on every call, and on a virtual machine the kernel's cost of handing that memory
 * back (page faults, page zeroing) swings between runs by several times: it is part of what a job pays,
 * so a best-of figure would promise more than the job gets.
 */
function sustainedRate(count: number, seconds: number, step: (i: number) => void): number {
  const start = now();
  const deadline = start + seconds;
  let done = 0;
  let end = start;
  do {
    step(done++ % count);
    end = now();
  } while (end < deadline);
  return done / (end - start);
}

/**
 * Times the codec on a sample of the job's real pages (a few hundred spread over the images is plenty:
 * the rates depend on the content, which is why a constant cannot stand in for them), within about
 * `budgetMs`, half compressing and half decompressing. Zero and uniform pages in the sample are
 * skipped; a sample with nothing else gives ratio 1 and rates 0, which adaptive mode reads as "off".
 */
export function measureCodec(samplePages: readonly Uint8Array[], budgetMs = 200): CodecRates {
  const pages: Buffer[] = [];
  for (const page of samplePages) {
    assertPage(page);
    const bytes = asBuffer(page);
    if (!isZeroPage(bytes, 0) && !isUniformPage(bytes, 0)) pages.push(bytes);
  }
  if (pages.length === 0) return NOTHING_TO_COMPRESS;
  // This first pass is also the warm-up (code loaded, caches filled) for the timed ones.
  const payloads = pages.map((page) => encodePage(page, true));
  const ratio = payloads.reduce((sum, p) => sum + p.payload.length, 0) / (pages.length * PAGE_SIZE);
  const seconds = budgetMs / 1000 / 2;
  // What rounds use, where the addon is built: its batch encoder and decoder (page-batches.ts).
  const batch = batchRates(pages, seconds);
  const compressPages =
    batch?.compress ?? sustainedRate(pages.length, seconds, (i) => encodePage(pages[i]!, true));
  const decompressPages =
    batch?.decompress ??
    sustainedRate(payloads.length, seconds, (i) => {
      const { encoding, payload } = payloads[i]!;
      if (decodePage(encoding, payload) === undefined)
        throw new Error('page codec: a page did not round-trip');
    });
  return {
    compressBytesPerSecond: compressPages * PAGE_SIZE,
    decompressBytesPerSecond: decompressPages * PAGE_SIZE,
    ratio,
  };
}

/**
 * Pages per second through the addon's batch encoder and decoder (native/page-records.c), as rounds
 * encode and agents store them; undefined where the addon is not built.
 */
function batchRates(
  pages: readonly Buffer[],
  seconds: number,
): { compress: number; decompress: number } | undefined {
  const addon = native;
  if (typeof addon?.encodePageRecords !== 'function' || typeof addon.decodePageRecords !== 'function')
    return undefined;
  const n = pages.length;
  const input = Buffer.concat(pages);
  const digests = new Uint8Array(n * DIGEST_BYTES);
  // A record: digest, encoding byte, u16 length, payload (page-batches.ts).
  const out = new Uint8Array(n * (DIGEST_BYTES + 3 + PAGE_SIZE));
  const tally = new Int32Array(3);
  let length = 0;
  const compress =
    n * fastestPass(seconds, () => (length = addon.encodePageRecords(digests, input, true, out, tally)));
  const records = out.subarray(0, length);
  const decoded = new Uint8Array(n * PAGE_SIZE);
  const counts = new Int32Array(2);
  const decompress =
    n * fastestPass(seconds, () => addon.decodePageRecords(records, digests, decoded, counts));
  return { compress, decompress };
}

/** Passes fastestPass times however long they take (each is under a millisecond undisturbed). */
const MIN_PASSES = 16;

/**
 * Passes per second of `pass` at its fastest within `seconds`, and over at least MIN_PASSES passes: a
 * pass over the whole sample is well under a millisecond, so the fastest of several is what this CPU
 * does, where an average over a few milliseconds measured the scheduler on a busy host (106 against
 * 728 MB/s seen on the same pages). A single pass is not enough either: one run on the busy lab had
 * its only pass descheduled for the whole window (51 MB/s) and sent its rounds uncompressed.
 */
function fastestPass(seconds: number, pass: () => void): number {
  const deadline = now() + seconds;
  let best = Infinity;
  let passes = 0;
  do {
    const start = now();
    pass();
    best = Math.min(best, now() - start);
    passes++;
  } while (now() < deadline || passes < MIN_PASSES);
  return 1 / Math.max(best, 1e-9);
}

/** Whether pages are compressed: always, never, or when the measured rates say it pays. */
export type CompressionMode = 'on' | 'off' | 'adaptive';

/**
 * Raw page bytes per second that a link carries with compression on: the sender compresses, the link
 * carries `ratio` of the bytes, the targets decompress, all at once in a pipeline (the codec on cores
 * of its own, overlapped with sending), so the slowest stage sets the rate.
 */
export function compressedThroughput(linkBitsPerSecond: number, rates: CodecRates): number {
  const linkBytes = linkBitsPerSecond / 8;
  return Math.min(rates.compressBytesPerSecond, rates.decompressBytesPerSecond, linkBytes / rates.ratio);
}

/**
 * Whether to compress. 'on' and 'off' are forced. 'adaptive' compresses when the pipelined throughput
 * with compression, min(compress rate, decompress rate, link / ratio), beats the raw link rate by
 * ADAPTIVE_MARGIN. On a slow link the link term wins and compression multiplies the rate by 1/ratio;
 * on a link faster than the codec the codec becomes the bottleneck and raw sending is faster; with a
 * ratio near 1 there is nothing to gain at any speed. Anything not measurable (no rates, a link rate
 * that is not a positive finite number) means raw: raw is always correct.
 */
export function shouldCompress(mode: CompressionMode, linkBitsPerSecond: number, rates: CodecRates): boolean {
  if (mode === 'on') return true;
  if (mode === 'off') return false;
  if (!(linkBitsPerSecond > 0) || !Number.isFinite(linkBitsPerSecond)) return false;
  if (!(rates.ratio > 0) || !(rates.compressBytesPerSecond > 0) || !(rates.decompressBytesPerSecond > 0)) {
    return false;
  }
  return compressedThroughput(linkBitsPerSecond, rates) > (linkBitsPerSecond / 8) * ADAPTIVE_MARGIN;
}
