/**
 * Systematic Reed-Solomon erasure code over GF(2^8), for packet FEC (see messages.ts for the vocabulary).
 *
 * A block has k source symbols s_0 .. s_{k-1} of equal length, sent as they are (indices 0..k-1), and
 * up to 255 - k parity symbols with indices p = k, k+1, ...; parity symbol p is, byte by byte,
 *
 *   P_p = sum over j < k of c(p, j) * s_j,      c(p, j) = (k xor j) / (p xor j)      (in GF(2^8))
 *
 * That is the Cauchy matrix 1 / (x_p + y_j), x_p = p, y_j = j, with each column scaled so that the first
 * parity row is all ones: parity k is the plain XOR of the sources. Every square submatrix of a Cauchy
 * matrix is invertible, and column scaling keeps it so; hence the k x k submatrix of [identity; parity
 * rows] picked by ANY k distinct symbol indices is invertible, and any k distinct symbols rebuild the
 * block. The coefficients of parity p depend only on k and p, so parity can be made one index at a time,
 * on demand, and one parity symbol repairs a different single loss at every receiver.
 *
 * These coefficients are part of the wire format: sender and receivers must agree on them.
 */
import { defaultKernel, GF_MUL_TABLE, gfDiv, invertMatrix, type RegionKernel } from './gf256.js';

/** Largest number of symbols (source plus parity) in one block. */
export const MAX_BLOCK_SYMBOLS = 255;

/** Coefficient of source symbol j in parity symbol `index` of a block of k source symbols. */
export function parityCoefficient(k: number, index: number, j: number): number {
  checkK(k);
  if (!Number.isInteger(index) || index < k || index >= MAX_BLOCK_SYMBOLS) {
    throw new RangeError(`parity index must be an integer in ${k}..${MAX_BLOCK_SYMBOLS - 1}, got ${index}`);
  }
  if (!Number.isInteger(j) || j < 0 || j >= k) {
    throw new RangeError(`source index must be an integer in 0..${k - 1}, got ${j}`);
  }
  return gfDiv(k ^ j, index ^ j);
}

export interface ReedSolomonOptions {
  /** How many inverted decode matrices to keep, one per erasure pattern, least recently used out. Default 64. */
  readonly decodeCacheSize?: number;
  /** The region kernel to compute with (default: the fastest available; see gf256.ts). */
  readonly kernel?: RegionKernel;
}

const DEFAULT_DECODE_CACHE = 64;

export class ReedSolomon {
  /** Source symbols per block. */
  readonly k: number;
  /** Parity symbols this instance can make or use: indices k .. k + maxParity - 1. */
  readonly maxParity: number;
  readonly kernel: RegionKernel;
  /** parityRows[p - k][j] = parityCoefficient(k, p, j). */
  private readonly parityRows: readonly Uint8Array[];
  private readonly cacheLimit: number;
  /** Decode matrices by erasure pattern; Map order is recency order (oldest first). */
  private readonly cache = new Map<string, Uint8Array>();

  constructor(k: number, maxParity: number, options: ReedSolomonOptions = {}) {
    checkK(k);
    if (!Number.isInteger(maxParity) || maxParity < 0 || k + maxParity > MAX_BLOCK_SYMBOLS) {
      throw new RangeError(
        `maxParity must be an integer in 0..${MAX_BLOCK_SYMBOLS - k} (k + parity <= ${MAX_BLOCK_SYMBOLS}), ` +
          `got ${maxParity}`,
      );
    }
    const cacheLimit = options.decodeCacheSize ?? DEFAULT_DECODE_CACHE;
    if (!Number.isInteger(cacheLimit) || cacheLimit < 0) {
      throw new RangeError(`decodeCacheSize must be an integer >= 0, got ${cacheLimit}`);
    }
    this.k = k;
    this.maxParity = maxParity;
    this.kernel = options.kernel ?? defaultKernel;
    this.cacheLimit = cacheLimit;
    const rows: Uint8Array[] = [];
    for (let p = k; p < k + maxParity; p++) {
      const row = new Uint8Array(k);
      for (let j = 0; j < k; j++) row[j] = gfDiv(k ^ j, p ^ j);
      rows.push(row);
    }
    this.parityRows = rows;
  }

  /** Number of erasure patterns whose decode matrix is cached (at most decodeCacheSize). */
  get cachedDecodeMatrices(): number {
    return this.cache.size;
  }

  /** The k coefficients of parity symbol `index` (a copy). */
  parityCoefficients(index: number): Uint8Array {
    return Uint8Array.from(this.parityRow(index));
  }

  /**
   * Writes parity symbol `index` (k .. k + maxParity - 1) of the block `sources` (k symbols of equal
   * length) into `out` (same length, not overlapping any source).
   */
  encodeParity(sources: readonly Uint8Array[], index: number, out: Uint8Array): void {
    const size = this.checkSources(sources);
    const row = this.parityRow(index);
    checkOutput(out, size, `parity ${index} output`);
    checkDisjoint([out], sources);
    this.kernel.combine(row, sources, [out], size);
  }

  /** encodeParity for several indices at once (reads the sources once): outs[i] gets parity indices[i]. */
  encodeParities(
    sources: readonly Uint8Array[],
    indices: readonly number[],
    outs: readonly Uint8Array[],
  ): void {
    const size = this.checkSources(sources);
    if (indices.length !== outs.length) {
      throw new RangeError(`${indices.length} parity indices but ${outs.length} outputs`);
    }
    const k = this.k;
    const coefficients = new Uint8Array(indices.length * k);
    for (let i = 0; i < indices.length; i++) {
      coefficients.set(this.parityRow(indices[i]!), i * k);
      checkOutput(outs[i]!, size, `parity ${indices[i]} output`);
    }
    checkDisjoint(outs, sources);
    this.kernel.combine(coefficients, sources, outs, size);
  }

  /**
   * Rebuilds the k source symbols of a block into `out` (k buffers of the symbol length) from any k
   * distinct symbols of it, data and parity mixed; `symbols` maps symbol index to payload and may hold
   * more than k (extra ones are ignored). out[j] may be the very buffer received as symbol j (then it is
   * left as is); otherwise outputs must not overlap the symbols or each other.
   */
  decode(symbols: ReadonlyMap<number, Uint8Array>, out: readonly Uint8Array[]): void {
    const k = this.k;
    const total = k + this.maxParity;
    let size = -1;
    for (const [index, symbol] of symbols) {
      if (!Number.isInteger(index) || index < 0 || index >= total) {
        throw new RangeError(`symbol index must be an integer in 0..${total - 1}, got ${index}`);
      }
      if (!(symbol instanceof Uint8Array)) throw new TypeError(`symbol ${index} is not a Uint8Array`);
      if (size < 0) size = symbol.length;
      else if (symbol.length !== size) {
        throw new RangeError(
          `symbols differ in length: symbol ${index} has ${symbol.length} bytes, not ${size}`,
        );
      }
    }
    if (symbols.size < k) {
      throw new RangeError(`not enough symbols to decode: ${symbols.size} distinct, ${k} needed`);
    }
    if (out.length !== k) throw new RangeError(`expected ${k} output buffers, got ${out.length}`);
    for (let j = 0; j < k; j++) checkOutput(out[j]!, size, `output ${j}`);

    const missing: number[] = [];
    const inputs: Uint8Array[] = [];
    const written: Uint8Array[] = [];
    const copies: number[] = [];
    for (let j = 0; j < k; j++) {
      const symbol = symbols.get(j);
      if (symbol === undefined) {
        missing.push(j);
        written.push(out[j]!);
      } else {
        inputs.push(symbol);
        if (!sameRegion(symbol, out[j]!)) {
          copies.push(j);
          written.push(out[j]!);
        }
      }
    }
    const parity: number[] = [];
    for (let p = k; p < total && parity.length < missing.length; p++) {
      const symbol = symbols.get(p);
      if (symbol !== undefined) {
        parity.push(p);
        inputs.push(symbol);
      }
    }
    checkDisjoint(written, inputs);

    if (missing.length > 0) {
      const matrix = this.decodeMatrix(missing, parity);
      this.kernel.combine(
        matrix,
        inputs,
        missing.map((j) => out[j]!),
        size,
      );
    }
    for (const j of copies) out[j]!.set(symbols.get(j)!);
  }

  private parityRow(index: number): Uint8Array {
    const row = Number.isInteger(index) ? this.parityRows[index - this.k] : undefined;
    if (row === undefined) {
      throw new RangeError(
        this.maxParity === 0
          ? `this code has no parity symbols (maxParity 0), asked for index ${index}`
          : `parity index must be an integer in ${this.k}..${this.k + this.maxParity - 1}, got ${index}`,
      );
    }
    return row;
  }

  private checkSources(sources: readonly Uint8Array[]): number {
    if (sources.length !== this.k)
      throw new RangeError(`expected ${this.k} source symbols, got ${sources.length}`);
    let size = -1;
    for (let j = 0; j < sources.length; j++) {
      const source = sources[j];
      if (!(source instanceof Uint8Array)) throw new TypeError(`source ${j} is not a Uint8Array`);
      if (j === 0) size = source.length;
      if (source.length !== size) {
        throw new RangeError(
          `source symbols differ in length: source ${j} has ${source.length} bytes, not ${size}`,
        );
      }
    }
    return size;
  }

  /**
   * The e x k matrix turning the k chosen symbols (present data symbols in index order, then the parity
   * symbols `parity`) into the e missing data symbols `missing`.
   *
   * With E = missing, P = parity and C the parity rows: P_p = sum_{j in E} C[p][j] s_j + sum_{j not in
   * E} C[p][j] s_j, so with M = C[P][E] (e x e, invertible), s_E = M^-1 (P_P + C[P][not E] s_{not E}).
   */
  private decodeMatrix(missing: readonly number[], parity: readonly number[]): Uint8Array {
    const key = `${missing.join(',')}/${parity.join(',')}`;
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      this.cache.delete(key);
      this.cache.set(key, cached);
      return cached;
    }
    const k = this.k;
    const e = missing.length;
    const rows = parity.map((p) => this.parityRows[p - k]!);
    const m = new Uint8Array(e * e);
    for (let b = 0; b < e; b++) {
      for (let a = 0; a < e; a++) m[b * e + a] = rows[b]![missing[a]!]!;
    }
    const inverse = invertMatrix(m, e);
    const matrix = new Uint8Array(e * k);
    const isMissing = new Uint8Array(k);
    for (const j of missing) isMissing[j] = 1;
    let column = 0;
    for (let j = 0; j < k; j++) {
      if (isMissing[j] === 1) continue;
      for (let a = 0; a < e; a++) {
        let sum = 0;
        for (let b = 0; b < e; b++) sum ^= GF_MUL_TABLE[(inverse[a * e + b]! << 8) | rows[b]![j]!]!;
        matrix[a * k + column] = sum;
      }
      column++;
    }
    for (let a = 0; a < e; a++) {
      for (let b = 0; b < e; b++) matrix[a * k + column + b] = inverse[a * e + b]!;
    }
    if (this.cacheLimit > 0) {
      if (this.cache.size >= this.cacheLimit) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(key, matrix);
    }
    return matrix;
  }
}

function checkK(k: number): void {
  if (!Number.isInteger(k) || k < 1 || k > MAX_BLOCK_SYMBOLS) {
    throw new RangeError(
      `k (source symbols per block) must be an integer in 1..${MAX_BLOCK_SYMBOLS}, got ${k}`,
    );
  }
}

function checkOutput(out: Uint8Array, size: number, what: string): void {
  if (!(out instanceof Uint8Array)) throw new TypeError(`${what} is not a Uint8Array`);
  if (out.length !== size) throw new RangeError(`${what} has ${out.length} bytes, symbols have ${size}`);
}

function sameRegion(a: Uint8Array, b: Uint8Array): boolean {
  return a === b || (a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.length === b.length);
}

function overlap(a: Uint8Array, b: Uint8Array): boolean {
  return (
    a.length > 0 &&
    b.length > 0 &&
    a.buffer === b.buffer &&
    a.byteOffset < b.byteOffset + b.length &&
    b.byteOffset < a.byteOffset + a.length
  );
}

/** Throws unless every written region is disjoint from every read region and from the other written ones. */
function checkDisjoint(written: readonly Uint8Array[], read: readonly Uint8Array[]): void {
  const readBuffers = read.map((r) => r.buffer);
  const writtenBuffers = written.map((w) => w.buffer);
  for (let w = 0; w < written.length; w++) {
    const buffer = writtenBuffers[w];
    for (let r = 0; r < read.length; r++) {
      if (readBuffers[r] === buffer && overlap(written[w]!, read[r]!)) {
        throw new RangeError('an output buffer overlaps an input symbol');
      }
    }
    for (let v = w + 1; v < written.length; v++) {
      if (writtenBuffers[v] === buffer && overlap(written[w]!, written[v]!)) {
        throw new RangeError('two output buffers overlap');
      }
    }
  }
}
