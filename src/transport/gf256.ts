/**
 * Arithmetic in GF(2^8) built on the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d), with generator 2:
 * log/exp tables, a 64 KiB multiplication table whose 256-byte rows are the "multiply by c" maps,
 * Gauss-Jordan inversion of small matrices, and the region kernel the Reed-Solomon code runs on:
 *
 *   outputs[r] = sum over j of coefficients[r][j] * inputs[j]      (byte-wise, over GF(2^8))
 *
 * Two kernels compute it. The SIMD one is a tiny WebAssembly module assembled below from its opcodes
 * (no build step, no binary blob): it splits every byte in two nibbles and looks each up in a 16-entry
 * product table with i8x16.swizzle, 16 bytes per instruction. The scalar one (used where WebAssembly
 * SIMD is unavailable) is the plain table loop `out[i] ^= row[src[i]]`, four bytes per step when the
 * buffers are 4-byte aligned. Both give identical results.
 */

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

/** Computes linear combinations of equal-length byte regions over GF(2^8). */
export interface RegionKernel {
  readonly name: 'simd' | 'scalar';
  /**
   * outputs[r][0..length) = sum over j of coefficients[r * inputs.length + j] * inputs[j][0..length).
   * Every region must hold at least `length` bytes; outputs must not overlap inputs or each other.
   */
  combine(
    coefficients: Uint8Array,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): void;
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

// ---------------------------------------------------------------------------------------------------
// SIMD kernel: a WebAssembly module assembled from its opcodes.

/** The bits of the WebAssembly JavaScript API used here (the project's lib settings do not declare it). */
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { readonly exports: Record<string, unknown> };
}
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
type DotFunction = (
  dst: number,
  src: number,
  stride: number,
  count: number,
  coefs: number,
  n: number,
) => void;

const WASM_PAGE = 65536;
/** Linear memory: 32-byte nibble product tables for c = 0..255, then coefficients, then symbol slots. */
const TABLES_AT = 0;
const COEFFICIENTS_AT = 8192;
const SLOTS_AT = COEFFICIENTS_AT + 65536;
/** Columns are processed in stripes of at most this many bytes, which bounds the module's memory. */
const STRIPE = 16384;
/** Bytes per step of the SIMD loop (four 16-byte vectors); symbol slots are padded to a multiple. */
const VECTOR_BYTES = 64;

const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
};
const sleb = (n: number): number[] => {
  const out: number[] = [];
  while (true) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
};
const vec = (items: readonly (readonly number[])[]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: readonly number[]): number[] => [id, ...uleb(body.length), ...body];
const name = (s: string): number[] => [...uleb(s.length), ...Array.from(s, (ch) => ch.charCodeAt(0))];

function assembleDotModule(): Uint8Array {
  const i32 = 0x7f;
  const v128 = 0x7b;
  const localGet = (i: number) => [0x20, ...uleb(i)];
  const localSet = (i: number) => [0x21, ...uleb(i)];
  const localTee = (i: number) => [0x22, ...uleb(i)];
  const i32Const = (n: number) => [0x41, ...sleb(n)];
  const i32Add = [0x6a];
  const i32Shl = [0x74];
  const i32GeU = [0x4f];
  const i32Load8U = [0x2d, 0, 0];
  const block = [0x02, 0x40];
  const loop = [0x03, 0x40];
  const end = [0x0b];
  const br = (depth: number) => [0x0c, depth];
  const brIf = (depth: number) => [0x0d, depth];
  const simd = (op: number) => [0xfd, ...uleb(op)];
  const v128Load = (offset: number) => [...simd(0x00), 4, ...uleb(offset)];
  const v128Store = (offset: number) => [...simd(0x0b), 4, ...uleb(offset)];
  const v128Const = (lane: number) => [...simd(0x0c), ...new Array<number>(16).fill(lane)];
  const swizzle = simd(0x0e);
  const v128And = simd(0x4e);
  const v128Xor = simd(0x51);
  const i8x16ShrU = simd(0x6d);

  // (func $dot (param $dst $src $stride $count $coefs $n i32)
  //   (local $i $j $p $t i32) (local $lo $hi $v $acc0 $acc1 $acc2 $acc3 v128)
  //   for (i = 0; i < n; i += 64) {                      ;; n is a multiple of 64
  //     acc0..3 = 0; p = src + i
  //     for (j = 0; j < count; j++, p += stride) {
  //       t = coefs[j] << 5; lo = load(t); hi = load(t + 16)   ;; nibble tables of coefficient coefs[j]
  //       for u in 0..3: v = load(p + 16u); acc_u ^= swizzle(lo, v & 0x0f) ^ swizzle(hi, v >>> 4)
  //     }
  //     for u in 0..3: store(dst + i + 16u, acc_u)
  //   })
  const [dst, src, stride, count, coefs, n] = [0, 1, 2, 3, 4, 5];
  const [i, j, p, t, lo, hi, v] = [6, 7, 8, 9, 10, 11, 12];
  const acc = (u: number) => 13 + u;
  const lanes = [0, 1, 2, 3];
  const body = [
    ...vec([
      [4, i32],
      [3 + lanes.length, v128],
    ]),
    ...i32Const(0),
    ...localSet(i),
    ...block,
    ...loop,
    ...[...localGet(i), ...localGet(n), ...i32GeU, ...brIf(1)],
    ...lanes.flatMap((u) => [...v128Const(0), ...localSet(acc(u))]),
    ...[...i32Const(0), ...localSet(j)],
    ...[...localGet(src), ...localGet(i), ...i32Add, ...localSet(p)],
    ...block,
    ...loop,
    ...[...localGet(j), ...localGet(count), ...i32GeU, ...brIf(1)],
    ...[
      ...localGet(coefs),
      ...localGet(j),
      ...i32Add,
      ...i32Load8U,
      ...i32Const(5),
      ...i32Shl,
      ...localTee(t),
    ],
    ...[
      ...v128Load(TABLES_AT),
      ...localSet(lo),
      ...localGet(t),
      ...v128Load(TABLES_AT + 16),
      ...localSet(hi),
    ],
    ...lanes.flatMap((u) => [
      ...[
        ...localGet(lo),
        ...localGet(p),
        ...v128Load(16 * u),
        ...localTee(v),
        ...v128Const(0x0f),
        ...v128And,
        ...swizzle,
      ],
      ...[...localGet(hi), ...localGet(v), ...i32Const(4), ...i8x16ShrU, ...swizzle],
      ...[...v128Xor, ...localGet(acc(u)), ...v128Xor, ...localSet(acc(u))],
    ]),
    ...[...localGet(p), ...localGet(stride), ...i32Add, ...localSet(p)],
    ...[...localGet(j), ...i32Const(1), ...i32Add, ...localSet(j)],
    ...br(0),
    ...end,
    ...end,
    ...lanes.flatMap((u) => [
      ...localGet(dst),
      ...localGet(i),
      ...i32Add,
      ...localGet(acc(u)),
      ...v128Store(16 * u),
    ]),
    ...[...localGet(i), ...i32Const(16 * lanes.length), ...i32Add, ...localSet(i)],
    ...br(0),
    ...end,
    ...end,
    ...end,
  ];
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // magic, version 1
    // Types: 0 = (func (param i32 x 6)). Functions: 0 has type 0. Memory: 0, growable, no maximum.
    ...section(1, vec([[0x60, ...vec([[i32], [i32], [i32], [i32], [i32], [i32]]), 0x00]])),
    ...section(3, vec([[0]])),
    ...section(5, vec([[0x00, ...uleb(Math.ceil(SLOTS_AT / WASM_PAGE) + 1)]])),
    // Exports: "memory" (memory 0) and "dot" (function 0). Code: the body above.
    ...section(
      7,
      vec([
        [...name('memory'), 0x02, 0],
        [...name('dot'), 0x00, 0],
      ]),
    ),
    ...section(10, vec([[...uleb(body.length), ...body]])),
  ]);
}

function createSimdKernel(): RegionKernel | undefined {
  const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (wasm === undefined) return undefined;
  let memory: WasmMemory;
  let dot: DotFunction;
  try {
    const bytes = assembleDotModule();
    if (!wasm.validate(bytes)) return undefined;
    const { exports } = new wasm.Instance(new wasm.Module(bytes), {});
    memory = exports['memory'] as WasmMemory;
    dot = exports['dot'] as DotFunction;
  } catch {
    return undefined;
  }
  let heap = new Uint8Array(memory.buffer);
  for (let c = 0; c < 256; c++) {
    for (let x = 0; x < 16; x++) {
      heap[TABLES_AT + c * 32 + x] = gfMul(c, x);
      heap[TABLES_AT + c * 32 + 16 + x] = gfMul(c, x << 4);
    }
  }
  const reserve = (bytes: number): void => {
    if (bytes <= heap.length) return;
    memory.grow(Math.ceil((bytes - heap.length) / WASM_PAGE));
    heap = new Uint8Array(memory.buffer);
  };

  const kernel: RegionKernel = {
    name: 'simd',
    combine(coefficients, inputs, outputs, length) {
      checkCombine(coefficients, inputs, outputs, length);
      const n = inputs.length;
      if (length === 0 || outputs.length === 0) return;
      if (n > SLOTS_AT - COEFFICIENTS_AT) return scalarKernel.combine(coefficients, inputs, outputs, length);
      if (n === 0) {
        for (const out of outputs) out.fill(0, 0, length);
        return;
      }
      const stripe = Math.min(length, STRIPE);
      const stride = (stripe + VECTOR_BYTES - 1) & -VECTOR_BYTES;
      const out = SLOTS_AT + n * stride;
      reserve(out + stride);
      // Rows of coefficients that fit the coefficient area (all of them for up to 255 x 255).
      const rowsPerPass = Math.max(1, Math.floor((SLOTS_AT - COEFFICIENTS_AT) / n));
      for (let first = 0; first < outputs.length; first += rowsPerPass) {
        const last = Math.min(outputs.length, first + rowsPerPass);
        heap.set(coefficients.subarray(first * n, last * n), COEFFICIENTS_AT);
        for (let from = 0; from < length; from += stripe) {
          const to = Math.min(length, from + stripe);
          for (let j = 0; j < n; j++) {
            const input = inputs[j]!;
            heap.set(input.length === to - from ? input : input.subarray(from, to), SLOTS_AT + j * stride);
          }
          const result = heap.subarray(out, out + (to - from));
          for (let r = first; r < last; r++) {
            dot(out, SLOTS_AT, stride, n, COEFFICIENTS_AT + (r - first) * n, stride);
            outputs[r]!.set(result, from);
          }
        }
      }
    },
  };

  // Refuse the module if it disagrees with the scalar kernel on a small example.
  const a = Uint8Array.from({ length: 37 }, (_, x) => (x * 97 + 13) & 0xff);
  const b = Uint8Array.from({ length: 37 }, (_, x) => (x * 31 + 200) & 0xff);
  const coefficients = Uint8Array.of(0, 1, 2, 0x8e, 0xff, 0x53);
  const expected = [new Uint8Array(37), new Uint8Array(37), new Uint8Array(37)];
  const actual = [new Uint8Array(37), new Uint8Array(37), new Uint8Array(37)];
  scalarKernel.combine(coefficients, [a, b], expected, 37);
  try {
    kernel.combine(coefficients, [a, b], actual, 37);
  } catch {
    return undefined;
  }
  for (let r = 0; r < 3; r++) {
    for (let x = 0; x < 37; x++) if (actual[r]![x] !== expected[r]![x]) return undefined;
  }
  return kernel;
}

/** The WebAssembly SIMD kernel, or undefined where the runtime cannot run it. */
export const simdKernel: RegionKernel | undefined = createSimdKernel();

/** The fastest kernel available here. */
export const defaultKernel: RegionKernel = simdKernel ?? scalarKernel;
