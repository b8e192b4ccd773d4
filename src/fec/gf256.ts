/**
 * Arithmetic in GF(2^8) built on the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d), with generator 2:
 * log/exp tables, a 64 KiB multiplication table whose 256-byte rows are the "multiply by c" maps,
 * Gauss-Jordan inversion of small matrices, and the region kernel the Reed-Solomon code runs on:
 *
 *   outputs[r] = sum over j of coefficients[r][j] * inputs[j]      (byte-wise, over GF(2^8))
 *
 * Two kernels compute it. The SIMD one, in ./gf256-simd.ts, is a tiny WebAssembly module assembled from
 * its opcodes (no build step, no binary blob): it splits every byte in two nibbles and looks each up in
 * a 16-entry product table with i8x16.swizzle, 16 bytes per instruction. The scalar one (used where
 * WebAssembly SIMD is unavailable) is the plain table loop `out[i] ^= row[src[i]]`, four bytes per step
 * when the buffers are 4-byte aligned. Both give identical results.
 */
import { native } from '../native/native.js';
import { createSimdKernel } from './gf256-simd.js';
import type { RegionKernel } from './region-kernel.js';

export type { RegionKernel } from './region-kernel.js';

/** The reduction polynomial, x^8 + x^4 + x^3 + x^2 + 1. */
export const GF_POLYNOMIAL = 0x11d;

/** GF_EXP[i] = 2^i, for i in 0..509 (doubled so that GF_EXP[log a + log b] needs no reduction). */
export const GF_EXP: Uint8Array = new Uint8Array(510);
/** GF_LOG[a] = log2(a) for a in 1..255; GF_LOG[0] is 0 and meaningless. */
export const GF_LOG: Uint8Array = new Uint8Array(256);
/** GF_MUL_TABLE[(a << 8) | b] = a * b. Row a (256 bytes) is the map "multiply by a". */
export const GF_MUL_TABLE: Uint8Array = new Uint8Array(65536);

{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    GF_EXP[i] = x;
    GF_LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= GF_POLYNOMIAL;
  }
  for (let i = 255; i < 510; i++) GF_EXP[i] = GF_EXP[i - 255]!;
  for (let a = 1; a < 256; a++) {
    const la = GF_LOG[a]!;
    for (let b = 1; b < 256; b++) GF_MUL_TABLE[(a << 8) | b] = GF_EXP[la + GF_LOG[b]!]!;
  }
}

/** Addition (and subtraction): exclusive or. */
export function gfAdd(a: number, b: number): number {
  return (a ^ b) & 0xff;
}

export function gfMul(a: number, b: number): number {
  return GF_MUL_TABLE[((a & 0xff) << 8) | (b & 0xff)]!;
}

export function gfInv(a: number): number {
  if ((a & 0xff) === 0) throw new RangeError('GF(256): 0 has no inverse');
  return GF_EXP[255 - GF_LOG[a & 0xff]!]!;
}

export function gfDiv(a: number, b: number): number {
  if ((b & 0xff) === 0) throw new RangeError('GF(256): division by 0');
  if ((a & 0xff) === 0) return 0;
  return GF_EXP[GF_LOG[a & 0xff]! + 255 - GF_LOG[b & 0xff]!]!;
}

/** a^e for an integer e >= 0 (0^0 = 1). */
export function gfPow(a: number, e: number): number {
  if (!Number.isInteger(e) || e < 0)
    throw new RangeError(`GF(256): exponent must be an integer >= 0, got ${e}`);
  if (e === 0) return 1;
  if ((a & 0xff) === 0) return 0;
  return GF_EXP[(GF_LOG[a & 0xff]! * e) % 255]!;
}

/** The 256-byte table of x -> c * x (a view into GF_MUL_TABLE; do not write to it). */
export function mulRow(c: number): Uint8Array {
  const base = (c & 0xff) << 8;
  return GF_MUL_TABLE.subarray(base, base + 256);
}

/**
 * Inverse of the n x n matrix `m` (row-major), by Gauss-Jordan elimination. Throws a RangeError if the
 * matrix is singular. `m` is not modified.
 */
export function invertMatrix(m: Uint8Array, n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || m.length !== n * n) {
    throw new RangeError(`invertMatrix: expected ${n} x ${n} = ${n * n} entries, got ${m.length}`);
  }
  const a = Uint8Array.from(m);
  const inv = new Uint8Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let col = 0; col < n; col++) {
    let pivot = col;
    while (pivot < n && a[pivot * n + col] === 0) pivot++;
    if (pivot === n) throw new RangeError('invertMatrix: the matrix is singular');
    if (pivot !== col) {
      swapRows(a, n, pivot, col);
      swapRows(inv, n, pivot, col);
    }
    const scale = gfInv(a[col * n + col]!) << 8;
    for (let j = 0; j < n; j++) {
      a[col * n + j] = GF_MUL_TABLE[scale | a[col * n + j]!]!;
      inv[col * n + j] = GF_MUL_TABLE[scale | inv[col * n + j]!]!;
    }
    for (let r = 0; r < n; r++) {
      const f = a[r * n + col]! << 8;
      if (r === col || f === 0) continue;
      for (let j = 0; j < n; j++) {
        a[r * n + j]! ^= GF_MUL_TABLE[f | a[col * n + j]!]!;
        inv[r * n + j]! ^= GF_MUL_TABLE[f | inv[col * n + j]!]!;
      }
    }
  }
  return inv;
}

function swapRows(m: Uint8Array, n: number, r1: number, r2: number): void {
  for (let j = 0; j < n; j++) {
    const t = m[r1 * n + j]!;
    m[r1 * n + j] = m[r2 * n + j]!;
    m[r2 * n + j] = t;
  }
}

function checkCombine(
  coefficients: Uint8Array,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  length: number,
): void {
  if (!Number.isInteger(length) || length < 0) throw new RangeError(`combine: bad length ${length}`);
  if (coefficients.length !== inputs.length * outputs.length) {
    throw new RangeError(
      `combine: ${outputs.length} x ${inputs.length} coefficients expected, got ${coefficients.length}`,
    );
  }
  for (const region of inputs) {
    if (region.length < length) throw new RangeError(`combine: input of ${region.length} < ${length} bytes`);
  }
  for (const region of outputs) {
    if (region.length < length) throw new RangeError(`combine: output of ${region.length} < ${length} bytes`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Scalar kernel

/** dst[0..length) = c * src[0..length), for c >= 2. */
function mulRegion(dst: Uint8Array, src: Uint8Array, c: number, length: number): void {
  const row = mulRow(c);
  let i = 0;
  if (((dst.byteOffset | src.byteOffset) & 3) === 0 && length >= 4) {
    const words = length >>> 2;
    const d32 = new Uint32Array(dst.buffer, dst.byteOffset, words);
    const s32 = new Uint32Array(src.buffer, src.byteOffset, words);
    for (let w = 0; w < words; w++) {
      const v = s32[w]!;
      d32[w] =
        row[v & 0xff]! |
        (row[(v >>> 8) & 0xff]! << 8) |
        (row[(v >>> 16) & 0xff]! << 16) |
        (row[v >>> 24]! << 24);
    }
    i = words << 2;
  }
  for (; i < length; i++) dst[i] = row[src[i]!]!;
}

/** dst[0..length) ^= c * src[0..length), for c >= 2. */
function mulAddRegion(dst: Uint8Array, src: Uint8Array, c: number, length: number): void {
  const row = mulRow(c);
  let i = 0;
  if (((dst.byteOffset | src.byteOffset) & 3) === 0 && length >= 4) {
    const words = length >>> 2;
    const d32 = new Uint32Array(dst.buffer, dst.byteOffset, words);
    const s32 = new Uint32Array(src.buffer, src.byteOffset, words);
    for (let w = 0; w < words; w++) {
      const v = s32[w]!;
      d32[w]! ^=
        row[v & 0xff]! |
        (row[(v >>> 8) & 0xff]! << 8) |
        (row[(v >>> 16) & 0xff]! << 16) |
        (row[v >>> 24]! << 24);
    }
    i = words << 2;
  }
  for (; i < length; i++) dst[i]! ^= row[src[i]!]!;
}

/** dst[0..length) ^= src[0..length). */
function xorRegion(dst: Uint8Array, src: Uint8Array, length: number): void {
  let i = 0;
  if (((dst.byteOffset | src.byteOffset) & 3) === 0 && length >= 4) {
    const words = length >>> 2;
    const d32 = new Uint32Array(dst.buffer, dst.byteOffset, words);
    const s32 = new Uint32Array(src.buffer, src.byteOffset, words);
    for (let w = 0; w < words; w++) d32[w]! ^= s32[w]!;
    i = words << 2;
  }
  for (; i < length; i++) dst[i]! ^= src[i]!;
}

/** The pure-JavaScript kernel: row-table lookups, a 32-bit word at a time when aligned. */
export const scalarKernel: RegionKernel = {
  name: 'scalar',
  combine(coefficients, inputs, outputs, length) {
    checkCombine(coefficients, inputs, outputs, length);
    const n = inputs.length;
    for (let r = 0; r < outputs.length; r++) {
      const out = outputs[r]!;
      let written = false;
      for (let j = 0; j < n; j++) {
        const c = coefficients[r * n + j]!;
        if (c === 0) continue;
        const src = inputs[j]!;
        if (!written) {
          if (c === 1) out.set(src.subarray(0, length));
          else mulRegion(out, src, c, length);
          written = true;
        } else if (c === 1) {
          xorRegion(out, src, length);
        } else {
          mulAddRegion(out, src, c, length);
        }
      }
      if (!written) out.fill(0, 0, length);
    }
  },
};

/** The WebAssembly SIMD kernel, or undefined where the runtime cannot run it. */
export const simdKernel: RegionKernel | undefined = createSimdKernel({ gfMul, checkCombine, scalarKernel });

/** The fastest kernel available here without the addon. */
export const defaultKernel: RegionKernel = simdKernel ?? scalarKernel;

/**
 * The addon's kernel (native/transport.c: the same nibble tables, 32 bytes per AVX2 shuffle, on the
 * inputs where they are, where the WebAssembly one copies each into its memory first); undefined where
 * the addon is not built, or disagrees with the scalar kernel on a small example.
 */
export const nativeKernel: RegionKernel | undefined = (() => {
  const addon = native;
  if (addon === undefined || typeof addon.gfCombine !== 'function') return undefined;
  const kernel: RegionKernel = {
    name: 'native',
    combine(coefficients, inputs, outputs, length) {
      checkCombine(coefficients, inputs, outputs, length);
      if (length === 0 || outputs.length === 0) return;
      addon.gfCombine(coefficients, inputs, outputs, length);
    },
  };
  const a = Uint8Array.from({ length: 77 }, (_, x) => (x * 97 + 13) & 0xff);
  const b = Uint8Array.from({ length: 77 }, (_, x) => (x * 31 + 200) & 0xff);
  const coefficients = Uint8Array.of(0, 1, 2, 0x8e, 0xff, 0x53);
  const expected = [new Uint8Array(77), new Uint8Array(77), new Uint8Array(77)];
  const actual = [new Uint8Array(77), new Uint8Array(77), new Uint8Array(77)];
  scalarKernel.combine(coefficients, [a, b], expected, 77);
  try {
    kernel.combine(coefficients, [a, b], actual, 77);
  } catch {
    return undefined;
  }
  for (let r = 0; r < 3; r++)
    for (let x = 0; x < 77; x++) if (actual[r]![x] !== expected[r]![x]) return undefined;
  return kernel;
})();

/** The fastest kernel of all: the addon's where it is built. */
export const fastestKernel: RegionKernel = nativeKernel ?? defaultKernel;
