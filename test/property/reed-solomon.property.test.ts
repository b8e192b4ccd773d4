import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { scalarKernel, simdKernel, type RegionKernel } from '../../src/fec/gf256.js';
import { ReedSolomon } from '../../src/fec/reed-solomon.js';

/** Deterministic bytes (xorshift32) from a seed: cheaper to generate and shrink than raw byte arrays. */
function bytes(length: number, seed: number): Uint8Array {
  let x = seed >>> 0 || 0x9e3779b9;
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const kernels: RegionKernel[] = simdKernel === undefined ? [scalarKernel] : [simdKernel, scalarKernel];

/** A code, a block of random data, and which of the k + m symbols got lost. */
const scenario = (lostRange: (k: number, m: number) => { minLength: number; maxLength: number }) =>
  fc
    .record({
      k: fc.integer({ min: 1, max: 64 }),
      m: fc.integer({ min: 1, max: 16 }),
      size: fc.integer({ min: 1, max: 300 }),
      seed: fc.integer(),
      kernel: fc.constantFrom(...kernels),
    })
    .chain((s) =>
      fc.record({
        s: fc.constant(s),
        lost: fc.shuffledSubarray(
          Array.from({ length: s.k + s.m }, (_, i) => i),
          lostRange(s.k, s.m),
        ),
      }),
    );

function encode(
  rs: ReedSolomon,
  size: number,
  seed: number,
): { sources: Uint8Array[]; parity: Uint8Array[] } {
  const sources = Array.from({ length: rs.k }, (_, j) => bytes(size, seed + j * 7919));
  const parity = Array.from({ length: rs.maxParity }, () => new Uint8Array(size));
  // Some one at a time (as repairs are made on demand), the rest in one call.
  const half = rs.maxParity >>> 1;
  for (let i = 0; i < half; i++) rs.encodeParity(sources, rs.k + i, parity[i]!);
  rs.encodeParities(
    sources,
    Array.from({ length: rs.maxParity - half }, (_, i) => rs.k + half + i),
    parity.slice(half),
  );
  return { sources, parity };
}

test('property: any erasure of up to m symbols, data and parity mixed, decodes to the exact source', () => {
  fc.assert(
    fc.property(
      scenario((_k, m) => ({ minLength: 0, maxLength: m })),
      ({ s, lost }) => {
        const rs = new ReedSolomon(s.k, s.m, { kernel: s.kernel });
        const { sources, parity } = encode(rs, s.size, s.seed);
        const gone = new Set(lost);
        const symbols = new Map<number, Uint8Array>();
        [...sources, ...parity].forEach((symbol, index) => {
          if (!gone.has(index)) symbols.set(index, symbol);
        });
        const out = Array.from({ length: s.k }, () => new Uint8Array(s.size));
        rs.decode(symbols, out);
        assert.deepEqual(out, sources);
      },
    ),
    { numRuns: 300 },
  );
});

test('property: fewer than k symbols is a RangeError, never a wrong answer', () => {
  fc.assert(
    fc.property(
      scenario((k, m) => ({ minLength: m + 1, maxLength: k + m })),
      ({ s, lost }) => {
        const rs = new ReedSolomon(s.k, s.m, { kernel: s.kernel });
        const { sources, parity } = encode(rs, s.size, s.seed);
        const gone = new Set(lost);
        const symbols = new Map<number, Uint8Array>();
        [...sources, ...parity].forEach((symbol, index) => {
          if (!gone.has(index)) symbols.set(index, symbol);
        });
        const out = Array.from({ length: s.k }, () => new Uint8Array(s.size));
        assert.throws(() => rs.decode(symbols, out), /not enough symbols to decode/);
      },
    ),
    { numRuns: 100 },
  );
});

test('property: one parity symbol repairs different single losses at different receivers', () => {
  fc.assert(
    fc.property(
      fc
        .record({
          k: fc.integer({ min: 1, max: 64 }),
          m: fc.integer({ min: 1, max: 16 }),
          size: fc.integer({ min: 1, max: 300 }),
          seed: fc.integer(),
          kernel: fc.constantFrom(...kernels),
        })
        .chain((s) =>
          fc.record({
            s: fc.constant(s),
            parityIndex: fc.integer({ min: s.k, max: s.k + s.m - 1 }),
            receivers: fc.array(fc.integer({ min: 0, max: s.k - 1 }), { minLength: 1, maxLength: 8 }),
          }),
        ),
      ({ s, parityIndex, receivers }) => {
        const sender = new ReedSolomon(s.k, s.m, { kernel: s.kernel });
        const sources = Array.from({ length: s.k }, (_, j) => bytes(s.size, s.seed + j * 7919));
        const repair = new Uint8Array(s.size);
        sender.encodeParity(sources, parityIndex, repair);
        for (const lostSymbol of receivers) {
          const receiver = new ReedSolomon(s.k, s.m, { kernel: s.kernel });
          const symbols = new Map<number, Uint8Array>();
          sources.forEach((symbol, j) => {
            if (j !== lostSymbol) symbols.set(j, symbol);
          });
          symbols.set(parityIndex, repair);
          const out = Array.from({ length: s.k }, () => new Uint8Array(s.size));
          receiver.decode(symbols, out);
          assert.deepEqual(out, sources, `receiver that lost ${lostSymbol}`);
        }
      },
    ),
    { numRuns: 100 },
  );
});

test('property: the SIMD and scalar kernels compute the same combinations', () => {
  const simd = simdKernel;
  assert.ok(simd, 'WebAssembly SIMD kernel loaded (every supported Node has it)');
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 12 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 0, max: 2000 }),
      fc.integer({ min: 0, max: 7 }),
      fc.integer(),
      (n, rows, length, offset, seed) => {
        const coefficients = bytes(n * rows, seed);
        const inputs = Array.from({ length: n }, (_, j) =>
          bytes(length + offset, seed + j + 1).subarray(offset),
        );
        const expected = Array.from({ length: rows }, () => new Uint8Array(length));
        const actual = Array.from({ length: rows }, () => new Uint8Array(length + offset).subarray(offset));
        scalarKernel.combine(coefficients, inputs, expected, length);
        simd.combine(coefficients, inputs, actual, length);
        assert.deepEqual(actual, expected);
      },
    ),
    { numRuns: 200 },
  );
});
