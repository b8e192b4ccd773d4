import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  defaultKernel,
  GF_EXP,
  GF_LOG,
  gfAdd,
  gfDiv,
  gfInv,
  gfMul,
  gfPow,
  invertMatrix,
  mulRow,
  scalarKernel,
  simdKernel,
  type RegionKernel,
} from '../../src/fec/gf256.js';
import { MAX_BLOCK_SYMBOLS, parityCoefficient, ReedSolomon } from '../../src/fec/reed-solomon.js';

/** Carry-less multiplication reduced by x^8 + x^4 + x^3 + x^2 + 1, bit by bit: the reference. */
function slowMul(a: number, b: number): number {
  let product = 0;
  for (let bit = 0; bit < 8; bit++) if (b & (1 << bit)) product ^= a << bit;
  for (let bit = 14; bit >= 8; bit--) if (product & (1 << bit)) product ^= 0x11d << (bit - 8);
  return product;
}

/** Deterministic bytes (xorshift32) so failures reproduce. */
function bytes(length: number, seed: number): Uint8Array {
  let x = seed >>> 0 || 1;
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

function block(k: number, size: number, seed: number): Uint8Array[] {
  return Array.from({ length: k }, (_, j) => bytes(size, seed * 1000 + j + 1));
}

function parities(rs: ReedSolomon, sources: readonly Uint8Array[], count = rs.maxParity): Uint8Array[] {
  const size = sources[0]!.length;
  return Array.from({ length: count }, (_, i) => {
    const out = new Uint8Array(size);
    rs.encodeParity(sources, rs.k + i, out);
    return out;
  });
}

function symbolMap(
  sources: readonly Uint8Array[],
  parity: readonly Uint8Array[],
  keep: (index: number) => boolean,
): Map<number, Uint8Array> {
  const all = [...sources, ...parity];
  return new Map(all.flatMap((symbol, index) => (keep(index) ? [[index, symbol] as const] : [])));
}

function decoded(rs: ReedSolomon, symbols: ReadonlyMap<number, Uint8Array>, size: number): Uint8Array[] {
  const out = Array.from({ length: rs.k }, () => new Uint8Array(size));
  rs.decode(symbols, out);
  return out;
}

const kernels: RegionKernel[] = simdKernel === undefined ? [scalarKernel] : [simdKernel, scalarKernel];

test('GF(256): the tables agree with bit-by-bit multiplication, and 2 generates the field', () => {
  const seen = new Set<number>();
  for (let i = 0; i < 255; i++) {
    seen.add(GF_EXP[i]!);
    assert.equal(GF_LOG[GF_EXP[i]!], i);
    assert.equal(GF_EXP[i + 255], GF_EXP[i]);
  }
  assert.equal(seen.size, 255);
  assert.ok(!seen.has(0));
  for (let a = 0; a < 256; a++) {
    const row = mulRow(a);
    for (let b = 0; b < 256; b++) {
      const p = slowMul(a, b);
      if (gfMul(a, b) !== p || row[b] !== p) assert.fail(`${a} * ${b}: expected ${p}, got ${gfMul(a, b)}`);
    }
  }
});

test('GF(256) axioms on all pairs: commutativity, identities, inverses, division', () => {
  for (let a = 0; a < 256; a++) {
    assert.equal(gfMul(a, 1), a);
    assert.equal(gfMul(a, 0), 0);
    assert.equal(gfAdd(a, a), 0);
    assert.equal(gfAdd(a, 0), a);
    if (a !== 0) assert.equal(gfMul(a, gfInv(a)), 1);
    for (let b = 0; b < 256; b++) {
      const ab = gfMul(a, b);
      if (ab !== gfMul(b, a)) assert.fail(`${a} * ${b} is not commutative`);
      if ((ab === 0) !== (a === 0 || b === 0)) assert.fail(`zero divisor: ${a} * ${b} = ${ab}`);
      if (b !== 0 && (gfDiv(ab, b) !== a || gfMul(gfDiv(a, b), b) !== a)) assert.fail(`${a} / ${b}`);
    }
  }
  assert.throws(() => gfInv(0), RangeError);
  assert.throws(() => gfDiv(7, 0), RangeError);
});

test('GF(256): associativity and distributivity on all pairs against sampled third operands', () => {
  for (const c of [0, 1, 2, 3, 0x1d, 0x53, 0x8e, 0xca, 0xff]) {
    for (let a = 0; a < 256; a++) {
      for (let b = 0; b < 256; b++) {
        if (gfMul(a, gfAdd(b, c)) !== gfAdd(gfMul(a, b), gfMul(a, c)))
          assert.fail(`distributivity ${a} ${b} ${c}`);
        if (gfMul(gfMul(a, b), c) !== gfMul(a, gfMul(b, c))) assert.fail(`associativity ${a} ${b} ${c}`);
      }
    }
  }
});

test('GF(256): powers', () => {
  for (let a = 0; a < 256; a++) {
    let p = 1;
    for (let e = 0; e < 300; e += 7) {
      assert.equal(gfPow(a, e), p);
      for (let s = 0; s < 7; s++) p = gfMul(p, a);
    }
    if (a !== 0) assert.equal(gfPow(a, 255), 1);
  }
  assert.equal(gfPow(0, 0), 1);
  assert.throws(() => gfPow(3, -1), RangeError);
});

test('invertMatrix inverts random nonsingular matrices and rejects singular ones', () => {
  for (let n = 1; n <= 12; n++) {
    let tried = 0;
    for (let seed = 1; tried < 5; seed++) {
      const m = bytes(n * n, seed * 31 + n);
      let inverse: Uint8Array;
      try {
        inverse = invertMatrix(m, n);
      } catch (e) {
        assert.ok(e instanceof RangeError);
        continue;
      }
      tried++;
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) {
          let sum = 0;
          for (let x = 0; x < n; x++) sum ^= gfMul(m[i * n + x]!, inverse[x * n + j]!);
          assert.equal(sum, i === j ? 1 : 0);
        }
      }
    }
  }
  assert.throws(() => invertMatrix(Uint8Array.of(1, 2, 1, 2), 2), /singular/);
  assert.throws(() => invertMatrix(Uint8Array.of(1, 2, 3), 2), RangeError);
  assert.deepEqual(invertMatrix(new Uint8Array(0), 0), new Uint8Array(0));
});

test('the SIMD kernel is available and agrees with the scalar one, at any length, offset and coefficient', () => {
  // Every Node the project supports (>= 20) has WebAssembly SIMD; without it FEC runs at a fraction
  // of the rate the transport needs, so its absence is a failure here, not a skip.
  assert.ok(simdKernel, 'WebAssembly SIMD kernel loaded');
  assert.equal(defaultKernel, simdKernel);
  let seed = 1;
  for (const length of [0, 1, 3, 4, 15, 16, 17, 31, 33, 100, 1400, 8900, 16384, 16385, 40000]) {
    for (const offset of [0, 1, 3]) {
      const n = 1 + (seed % 6);
      const rows = 1 + (seed % 3);
      const coefficients = bytes(n * rows, seed++);
      coefficients[0] = 0;
      if (coefficients.length > 1) coefficients[1] = 1;
      const inputs = Array.from({ length: n }, () => bytes(length + offset, seed++).subarray(offset));
      const expected = Array.from({ length: rows }, () => new Uint8Array(length));
      const actual = Array.from({ length: rows }, () => bytes(length + 2, seed++).subarray(2));
      scalarKernel.combine(coefficients, inputs, expected, length);
      simdKernel.combine(coefficients, inputs, actual, length);
      assert.deepEqual(actual, expected, `length ${length}, offset ${offset}, ${n} inputs`);
    }
  }
});

test('kernels: all-zero coefficients give zeros; no inputs give zeros; bad shapes are refused', () => {
  for (const kernel of kernels) {
    const out = bytes(50, 9);
    kernel.combine(new Uint8Array(2), [bytes(50, 1), bytes(50, 2)], [out], 50);
    assert.deepEqual(out, new Uint8Array(50));
    const out2 = bytes(50, 9);
    kernel.combine(new Uint8Array(0), [], [out2], 50);
    assert.deepEqual(out2, new Uint8Array(50));
    assert.throws(() => kernel.combine(new Uint8Array(3), [bytes(5, 1)], [new Uint8Array(5)], 5), RangeError);
    assert.throws(() => kernel.combine(new Uint8Array(1), [bytes(4, 1)], [new Uint8Array(5)], 5), RangeError);
  }
});

test('parity k is the XOR of the sources; coefficients follow (k xor j) / (p xor j)', () => {
  for (const kernel of kernels) {
    const k = 32;
    const rs = new ReedSolomon(k, 8, { kernel });
    const sources = block(k, 1400, 3);
    const xor = new Uint8Array(1400);
    for (const s of sources) for (let i = 0; i < xor.length; i++) xor[i]! ^= s[i]!;
    const [p0] = parities(rs, sources, 1);
    assert.deepEqual(p0, xor);
    assert.deepEqual(rs.parityCoefficients(k), new Uint8Array(k).fill(1));
    for (let p = k; p < k + 8; p++) {
      const row = rs.parityCoefficients(p);
      for (let j = 0; j < k; j++) {
        assert.equal(row[j], gfDiv(k ^ j, p ^ j));
        assert.equal(parityCoefficient(k, p, j), row[j]);
        assert.notEqual(row[j], 0);
      }
    }
  }
});

test('encodeParities matches encodeParity index by index', () => {
  for (const kernel of kernels) {
    const rs = new ReedSolomon(20, 10, { kernel });
    const sources = block(20, 333, 4);
    const one = parities(rs, sources);
    const indices = [29, 20, 25, 21];
    const outs = indices.map(() => new Uint8Array(333));
    rs.encodeParities(sources, indices, outs);
    indices.forEach((index, i) => assert.deepEqual(outs[i], one[index - 20]));
  }
});

test('every choice of k of the k + m symbols rebuilds the block (exhaustive for small codes)', () => {
  for (const kernel of kernels) {
    for (const [k, m] of [
      [1, 1],
      [1, 4],
      [2, 3],
      [4, 4],
      [5, 3],
      [3, 6],
    ] as const) {
      const rs = new ReedSolomon(k, m, { kernel });
      const sources = block(k, 19, k * 10 + m);
      const parity = parities(rs, sources);
      for (let mask = 0; mask < 1 << (k + m); mask++) {
        let bits = 0;
        for (let x = mask; x !== 0; x &= x - 1) bits++;
        if (bits !== k) continue;
        const symbols = symbolMap(sources, parity, (index) => (mask & (1 << index)) !== 0);
        assert.deepEqual(decoded(rs, symbols, 19), sources, `k ${k}, m ${m}, kept ${mask.toString(2)}`);
      }
    }
  }
});

test('edges: k = 255 - m, k = 255 with no parity, k = 1', () => {
  for (const kernel of kernels) {
    const m = 8;
    const k = MAX_BLOCK_SYMBOLS - m;
    const rs = new ReedSolomon(k, m, { kernel });
    const sources = block(k, 64, 5);
    const parity = parities(rs, sources);
    const lost = new Set([0, 17, 100, 246, 248, 250, 253, 254]);
    assert.deepEqual(
      decoded(
        rs,
        symbolMap(sources, parity, (i) => !lost.has(i)),
        64,
      ),
      sources,
    );
    const lostData = new Set([1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(
      decoded(
        rs,
        symbolMap(sources, parity, (i) => !lostData.has(i)),
        64,
      ),
      sources,
    );

    const full = new ReedSolomon(MAX_BLOCK_SYMBOLS, 0, { kernel });
    const all = block(MAX_BLOCK_SYMBOLS, 10, 6);
    assert.deepEqual(
      decoded(
        full,
        symbolMap(all, [], () => true),
        10,
      ),
      all,
    );
    assert.throws(() => full.encodeParity(all, 255, new Uint8Array(10)), /no parity/);
    assert.throws(
      () =>
        decoded(
          full,
          symbolMap(all, [], (i) => i !== 3),
          10,
        ),
      /not enough symbols/,
    );

    const one = new ReedSolomon(1, 5, { kernel });
    const [source] = block(1, 30, 7);
    const oneParity = parities(one, [source!]);
    assert.deepEqual(oneParity[0], source);
    for (let p = 1; p <= 5; p++) {
      assert.deepEqual(decoded(one, new Map([[p, oneParity[p - 1]!]]), 30), [source]);
    }
  }
});

test('one parity symbol repairs a different single loss at every receiver', () => {
  for (const kernel of kernels) {
    const k = 32;
    const sender = new ReedSolomon(k, 4, { kernel });
    const sources = block(k, 1400, 8);
    const repair = new Uint8Array(1400);
    sender.encodeParity(sources, k, repair);
    for (let receiver = 0; receiver < k; receiver++) {
      const rs = new ReedSolomon(k, 4, { kernel });
      const symbols = symbolMap(sources, [repair], (i) => i !== receiver);
      assert.deepEqual(decoded(rs, symbols, 1400), sources, `receiver that lost symbol ${receiver}`);
    }
    // The same with a later parity index (the sender answers a NAK with parity k + 2).
    sender.encodeParity(sources, k + 2, repair);
    for (let receiver = 0; receiver < k; receiver += 5) {
      const symbols = new Map(symbolMap(sources, [], (i) => i !== receiver));
      symbols.set(k + 2, repair);
      assert.deepEqual(decoded(sender, symbols, 1400), sources);
    }
  }
});

test('decode: extra symbols are ignored, outputs may be the received buffers, present data is copied', () => {
  const k = 6;
  const rs = new ReedSolomon(k, 3);
  const sources = block(k, 40, 9);
  const parity = parities(rs, sources);
  const symbols = symbolMap(sources, parity, (i) => i !== 2);
  const out = sources.map((s, j) => (j === 2 ? new Uint8Array(40) : s));
  const copy = sources.map((s) => Uint8Array.from(s));
  rs.decode(symbols, out);
  assert.deepEqual(out, copy);
  assert.equal(out[0], sources[0]);
  // Same region through another view counts as the same buffer.
  const pool = new Uint8Array(40 * k);
  sources.forEach((s, j) => pool.set(s, j * 40));
  const views = sources.map((_, j) => pool.subarray(j * 40, j * 40 + 40));
  const again = views.map((v, j) =>
    j === 4 ? new Uint8Array(40) : new Uint8Array(pool.buffer, v.byteOffset, 40),
  );
  rs.decode(
    symbolMap(views, parity, (i) => i !== 4),
    again,
  );
  assert.deepEqual(again, copy);
});

test('argument validation throws clear RangeErrors', () => {
  assert.throws(() => new ReedSolomon(0, 1), /k \(source symbols per block\) must be an integer in 1\.\.255/);
  assert.throws(() => new ReedSolomon(256, 0), RangeError);
  assert.throws(() => new ReedSolomon(1.5, 0), RangeError);
  assert.throws(() => new ReedSolomon(Number.NaN, 0), RangeError);
  assert.throws(() => new ReedSolomon(250, 6), /maxParity must be an integer in 0\.\.5/);
  assert.throws(() => new ReedSolomon(10, -1), RangeError);
  assert.throws(() => new ReedSolomon(10, 2, { decodeCacheSize: -1 }), RangeError);
  assert.doesNotThrow(() => new ReedSolomon(250, 5));
  assert.throws(() => parityCoefficient(4, 3, 0), RangeError);
  assert.throws(() => parityCoefficient(4, 4, 4), RangeError);

  const rs = new ReedSolomon(4, 2);
  const sources = block(4, 16, 10);
  const out = new Uint8Array(16);
  assert.throws(() => rs.encodeParity(sources, 3, out), /parity index must be an integer in 4\.\.5, got 3/);
  assert.throws(() => rs.encodeParity(sources, 6, out), /parity index must be an integer in 4\.\.5, got 6/);
  assert.throws(() => rs.encodeParity(sources, 4.5, out), RangeError);
  assert.throws(() => rs.encodeParity(sources.slice(1), 4, out), /expected 4 source symbols, got 3/);
  assert.throws(() => rs.encodeParity([...sources.slice(1), new Uint8Array(15)], 4, out), /differ in length/);
  assert.throws(() => rs.encodeParity(sources, 4, new Uint8Array(15)), /has 15 bytes, symbols have 16/);
  assert.throws(() => rs.encodeParity(sources, 4, sources[1]!), /overlaps an input/);
  assert.throws(() => rs.encodeParities(sources, [4, 5], [out]), /2 parity indices but 1 outputs/);
  assert.throws(() => rs.encodeParities(sources, [4, 5], [out, out]), /two output buffers overlap/);

  const parity = parities(rs, sources);
  const fresh = () => Array.from({ length: 4 }, () => new Uint8Array(16));
  const all = symbolMap(sources, parity, () => true);
  assert.throws(
    () =>
      rs.decode(
        symbolMap(sources, parity, (i) => i > 2),
        fresh(),
      ),
    /not enough symbols to decode: 3 distinct, 4 needed/,
  );
  assert.throws(() => rs.decode(new Map(), fresh()), /not enough symbols/);
  assert.throws(() => rs.decode(new Map([...all, [6, new Uint8Array(16)]]), fresh()), /0\.\.5, got 6/);
  assert.throws(() => rs.decode(new Map([...all, [-1, new Uint8Array(16)]]), fresh()), RangeError);
  assert.throws(() => rs.decode(new Map([...all, [5, new Uint8Array(17)]]), fresh()), /differ in length/);
  assert.throws(() => rs.decode(all, fresh().slice(1)), /expected 4 output buffers, got 3/);
  assert.throws(() => rs.decode(all, [...fresh().slice(1), new Uint8Array(3)]), /output 3 has 3 bytes/);
  const lossy = symbolMap(sources, parity, (i) => i !== 1);
  assert.throws(
    () => rs.decode(lossy, [sources[0]!, parity[0]!, sources[2]!, sources[3]!]),
    /overlaps an input/,
  );
  const shared = new Uint8Array(16);
  assert.throws(() => rs.decode(lossy, [shared, shared, sources[2]!, sources[3]!]), /overlap/);
});

test('the decode-matrix cache is a bounded LRU', () => {
  const k = 16;
  const rs = new ReedSolomon(k, 4, { decodeCacheSize: 5 });
  const sources = block(k, 24, 11);
  const parity = parities(rs, sources);
  for (let lost = 0; lost < k; lost++) {
    assert.deepEqual(
      decoded(
        rs,
        symbolMap(sources, parity, (i) => i !== lost),
        24,
      ),
      sources,
    );
    assert.ok(rs.cachedDecodeMatrices <= 5);
  }
  assert.equal(rs.cachedDecodeMatrices, 5);
  const uncached = new ReedSolomon(k, 4, { decodeCacheSize: 0 });
  assert.deepEqual(
    decoded(
      uncached,
      symbolMap(sources, parity, (i) => i !== 3 && i !== 7),
      24,
    ),
    sources,
  );
  assert.equal(uncached.cachedDecodeMatrices, 0);
  // No loss: nothing to invert, nothing cached.
  const clean = new ReedSolomon(k, 4);
  decoded(
    clean,
    symbolMap(sources, parity, () => true),
    24,
  );
  assert.equal(clean.cachedDecodeMatrices, 0);
});

test('symbols of zero bytes are accepted (nothing to do)', () => {
  const rs = new ReedSolomon(3, 2);
  const empty = [new Uint8Array(0), new Uint8Array(0), new Uint8Array(0)];
  const p = new Uint8Array(0);
  rs.encodeParity(empty, 3, p);
  rs.decode(
    new Map([
      [0, empty[0]!],
      [3, p],
      [4, new Uint8Array(0)],
    ]),
    [p, p, p],
  );
});
