/**
 * The WebAssembly SIMD region kernel of ./gf256.ts: a tiny module assembled here from its opcodes (no
 * build step, no binary blob). It splits every byte in two nibbles and looks each up in a 16-entry
 * product table with i8x16.swizzle, 16 bytes per instruction. The loader checks the module against the
 * scalar kernel on a small example and gives up (returns undefined) where it cannot run or disagrees.
 *
 * The arithmetic and the scalar kernel are passed in by gf256.ts (which re-exports `simdKernel`), and
 * the kernel's type is region-kernel.ts's: this module imports nothing of gf256.ts.
 */
import type { RegionKernel } from './region-kernel.js';

/** What the SIMD kernel borrows from ./gf256.ts. */
export interface SimdKernelDeps {
  /** Multiplication in GF(2^8), to fill the nibble product tables. */
  readonly gfMul: (a: number, b: number) => number;
  /** Throws a RangeError when the arguments of `combine` are inconsistent. */
  readonly checkCombine: RegionKernel['combine'];
  /** The reference kernel: the fallback for very wide inputs, and the check the module must pass. */
  readonly scalarKernel: RegionKernel;
}

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

/** The WebAssembly SIMD kernel, or undefined where the runtime cannot run it. */
export function createSimdKernel({
  gfMul,
  checkCombine,
  scalarKernel,
}: SimdKernelDeps): RegionKernel | undefined {
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
