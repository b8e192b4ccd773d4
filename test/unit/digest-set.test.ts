import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  BloomFilter,
  SortedDigests,
  chooseAnnouncement,
  decodeAnnouncement,
  decodeSortedDigests,
  encodeSortedDigests,
  prefixBytesFor,
} from '../../src/announce/digest-set.js';
import { DIGEST_BYTES } from '../../src/memory/page.js';

/** n random digests packed into one array, as a keyed hash would give them. */
const packed = (n: number) => new Uint8Array(randomBytes(n * DIGEST_BYTES));
const at = (digests: Uint8Array, i: number) => digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);

/** Share of `queries` random digests (not among those held) that `mayHold` accepts. */
function measuredRate(mayHold: (d: Uint8Array, offset: number) => boolean, queries: number): number {
  const probes = packed(queries);
  let hits = 0;
  for (let i = 0; i < queries; i++) if (mayHold(probes, i * DIGEST_BYTES)) hits++;
  return hits / queries;
}

test('Bloom filter: no false negatives, and the measured false-positive rate is near the target', () => {
  const n = 100_000;
  const digests = packed(n);
  for (const target of [1e-2, 1e-3]) {
    const filter = BloomFilter.forCapacity(n, target);
    for (let i = 0; i < n; i++) filter.add(digests, i * DIGEST_BYTES);
    for (let i = 0; i < n; i++) assert.ok(filter.mayHold(digests, i * DIGEST_BYTES), `digest ${i} lost`);
    assert.ok(filter.mayHold(at(digests, 7)));
    // 1M queries: about 1000 false positives at 1e-3 (standard deviation about 32).
    const rate = measuredRate((d, o) => filter.mayHold(d, o), 1_000_000);
    assert.ok(rate > 0.7 * target && rate < 1.2 * target, `rate ${rate} for target ${target}`);
    assert.ok(
      Math.abs(filter.falsePositiveRate - target) < 0.2 * target,
      `estimate ${filter.falsePositiveRate}`,
    );
    // About 1.44 * log2(1/p) bits per digest.
    const bitsPerDigest = filter.bitCount / n;
    assert.ok(bitsPerDigest < 1.5 * Math.log2(1 / target), `${bitsPerDigest} bits per digest`);

    const decoded = BloomFilter.decode(filter.encode());
    assert.ok(decoded !== undefined);
    assert.equal(decoded.count, n);
    assert.equal(decoded.bitCount, filter.bitCount);
    assert.equal(decoded.hashCount, filter.hashCount);
    for (let i = 0; i < n; i += 97) assert.ok(decoded.mayHold(digests, i * DIGEST_BYTES));
    const probes = packed(10_000);
    for (let i = 0; i < 10_000; i++) {
      assert.equal(decoded.mayHold(probes, i * DIGEST_BYTES), filter.mayHold(probes, i * DIGEST_BYTES));
    }
  }
  assert.throws(() => BloomFilter.forCapacity(10, 0), RangeError);
  assert.throws(() => BloomFilter.forCapacity(-1, 0.01), RangeError);
  assert.throws(() => BloomFilter.forCapacity(2 ** 31, 1e-12), RangeError, 'over 2^33 bits');
  const empty = BloomFilter.forCapacity(0, 1e-6);
  assert.equal(empty.mayHold(at(digests, 0)), false);
});

test('sorted 8-byte prefixes: every held digest found, no false positive in a million, both codings', () => {
  const n = 100_000;
  const digests = packed(n);
  const fixed = encodeSortedDigests(digests, 8, 'fixed');
  const delta = encodeSortedDigests(digests, 8, 'delta');
  assert.equal(fixed.length, 8 + n * 8);
  // Elias-Fano: 64 - floor(log2 n) + about 2 bits per digest, 50 against 64 here.
  assert.ok(delta.length < 8 + (n * 51) / 8, `${delta.length} bytes`);
  const fromFixed = decodeSortedDigests(fixed);
  const fromDelta = decodeSortedDigests(delta);
  assert.ok(fromFixed !== undefined && fromDelta !== undefined);
  assert.equal(fromFixed.count, n);
  assert.equal(fromDelta.count, n);
  assert.deepEqual(fromDelta.encode('fixed'), fixed, 'the two codings hold the same list');
  assert.deepEqual(fromFixed.encode('delta'), delta);
  for (const list of [fromFixed, fromDelta]) {
    for (let i = 0; i < n; i++) assert.ok(list.mayHold(digests, i * DIGEST_BYTES), `digest ${i} lost`);
    assert.equal(
      measuredRate((d, o) => list.mayHold(d, o), 1_000_000),
      0,
    );
    assert.ok(list.falsePositiveRate < 1e-14);
  }
  // Exactly the first 8 bytes count: a change after them is a (documented) false positive, one within
  // them is not held.
  const sameprefix = at(digests, 42).slice();
  sameprefix[15]! ^= 1;
  assert.equal(fromDelta.mayHold(sameprefix), true);
  const other = at(digests, 42).slice();
  other[7]! ^= 1;
  assert.equal(fromDelta.mayHold(other), false);
  // Full 16-byte prefixes are exact.
  const full = decodeSortedDigests(encodeSortedDigests(digests, 16));
  assert.ok(full !== undefined);
  assert.equal(full.mayHold(sameprefix), false);
  assert.equal(full.mayHold(at(digests, 42)), true);
});

test('sorted prefixes: duplicates, shared leading bytes, any size, iterable input', () => {
  // Digests that are not uniform: equal first bytes, duplicates; the list must still be exact.
  const digests: Uint8Array[] = [];
  for (let i = 0; i < 300; i++) {
    const d = new Uint8Array(DIGEST_BYTES);
    d[5] = i % 7;
    d[9] = i % 50;
    digests.push(d);
  }
  const distinct = new Set(digests.map((d) => Buffer.from(d.subarray(0, 12)).toString('hex')));
  for (const coding of ['fixed', 'delta'] as const) {
    const list = decodeSortedDigests(encodeSortedDigests(digests, 12, coding));
    assert.ok(list !== undefined);
    assert.equal(list.count, distinct.size);
    for (const d of digests) assert.ok(list.mayHold(d));
    const absent = new Uint8Array(DIGEST_BYTES);
    absent[5] = 7;
    assert.equal(list.mayHold(absent), false);
  }
  for (const n of [0, 1, 2, 3, 7, 8, 9, 1000]) {
    const some = packed(n);
    for (const w of [4, 5, 8, 16]) {
      const list = decodeSortedDigests(encodeSortedDigests(some, w));
      assert.ok(list !== undefined, `n ${n}, w ${w}`);
      assert.equal(list.count, n);
      for (let i = 0; i < n; i++) assert.ok(list.mayHold(some, i * DIGEST_BYTES));
    }
  }
  assert.equal(SortedDigests.from([], 8).count, 0);
  assert.throws(() => encodeSortedDigests(packed(2), 3), RangeError);
  assert.throws(() => encodeSortedDigests([new Uint8Array(15)], 8), RangeError);
  assert.throws(() => encodeSortedDigests(new Uint8Array(17), 8), RangeError);
});

test('chooseAnnouncement takes the smaller encoding and meets the rate', () => {
  for (const [n, rate] of [
    [0, 1e-6],
    [10_000, 1e-4],
    [100_000, 1e-6],
    [200_000, 1e-3],
  ] as const) {
    const digests = packed(n);
    const announcement = chooseAnnouncement(digests, rate);
    const bloomBytes = BloomFilter.encodedBytes(n, rate);
    const listBytes = encodeSortedDigests(digests, prefixBytesFor(n, rate)!).length;
    assert.equal(announcement.bytes.length, Math.min(bloomBytes, listBytes), `n ${n}`);
    assert.equal(announcement.kind, listBytes <= bloomBytes ? 'sorted' : 'bloom');
    const held = decodeAnnouncement(announcement.bytes);
    assert.ok(held !== undefined);
    assert.equal(held.count, n);
    for (let i = 0; i < n; i++) assert.ok(held.mayHold(digests, i * DIGEST_BYTES));
    assert.ok(held.falsePositiveRate <= rate * 1.2, `${held.falsePositiveRate} for ${rate}`);
    if (rate >= 1e-4) assert.ok(measuredRate((d, o) => held.mayHold(d, o), 200_000) < rate * 2);
  }
  // An iterable of digests (as ContentStore.digests() gives) works as well as a packed array.
  const some = packed(500);
  const list = Array.from({ length: 500 }, (_, i) => at(some, i));
  assert.deepEqual(chooseAnnouncement(list, 1e-6).bytes, chooseAnnouncement(some, 1e-6).bytes);
  assert.throws(() => chooseAnnouncement(some, 0), RangeError);
});

test('decoding truncated, garbage and forged bytes gives undefined and never throws', () => {
  const digests = packed(300);
  const valid = [
    BloomFilter.forCapacity(300, 1e-3).encode(),
    encodeSortedDigests(digests, 8, 'fixed'),
    encodeSortedDigests(digests, 8, 'delta'),
    encodeSortedDigests(digests, 5, 'delta'),
  ];
  for (const bytes of valid) {
    assert.ok(decodeAnnouncement(bytes) !== undefined);
    for (let length = 0; length < bytes.length; length++) {
      assert.equal(decodeAnnouncement(bytes.subarray(0, length)), undefined, `truncated to ${length}`);
    }
    const longer = new Uint8Array(bytes.length + 1);
    longer.set(bytes);
    assert.equal(decodeAnnouncement(longer), undefined, 'a trailing byte');
  }

  const le32 = (bytes: Uint8Array, offset: number, value: number) =>
    new DataView(bytes.buffer, bytes.byteOffset).setUint32(offset, value, true);
  const bloom = valid[0]!;
  const forge = (edit: (b: Uint8Array) => void) => {
    const b = bloom.slice();
    edit(b);
    return decodeAnnouncement(b);
  };
  assert.equal(
    forge((b) => le32(b, 12, 0xffffffff)),
    undefined,
    'bit count 2^64',
  );
  assert.equal(
    forge((b) => {
      le32(b, 8, 0);
      le32(b, 12, 2);
    }),
    undefined,
    'bit count 2^33, bytes absent',
  );
  assert.equal(
    forge((b) => le32(b, 8, 0)),
    undefined,
    'bit count 0',
  );
  assert.equal(
    forge((b) => (b[2] = 0)),
    undefined,
    'no probes',
  );
  assert.equal(
    forge((b) => (b[2] = 200)),
    undefined,
    '200 probes',
  );
  assert.equal(
    forge((b) => (b[1] = 2)),
    undefined,
    'unknown version',
  );
  assert.equal(
    forge((b) => (b[0] = 9)),
    undefined,
    'unknown kind',
  );

  for (const list of [valid[1]!, valid[2]!]) {
    const forged = (edit: (b: Uint8Array) => void) => {
      const b = list.slice();
      edit(b);
      return decodeAnnouncement(b);
    };
    const started = process.hrtime.bigint();
    assert.equal(
      forged((b) => le32(b, 4, 0xffffffff)),
      undefined,
      'count 2^32-1',
    );
    assert.equal(
      forged((b) => le32(b, 4, 301)),
      undefined,
      'count one more',
    );
    assert.equal(
      forged((b) => le32(b, 4, 299)),
      undefined,
      'count one less',
    );
    assert.ok(Number(process.hrtime.bigint() - started) < 1e9, 'refused before any large allocation');
    assert.equal(
      forged((b) => (b[2] = 3)),
      undefined,
      'prefix of 3 bytes',
    );
    assert.equal(
      forged((b) => (b[2] = 17)),
      undefined,
      'prefix of 17 bytes',
    );
    assert.equal(
      forged((b) => (b[3] = 2)),
      undefined,
      'unknown coding',
    );
  }
  // Fixed width, out of order: refused (the binary search needs ascending order).
  const unsorted = valid[1]!.slice();
  unsorted.copyWithin(8, 16, 24);
  assert.equal(decodeAnnouncement(unsorted), undefined, 'a duplicate prefix');

  for (const input of [undefined, null, 'text', 42, {}, [1, 2, 3], new Uint8Array(0)]) {
    assert.equal(decodeAnnouncement(input as unknown as Uint8Array), undefined);
  }

  // Any bytes at all, and any single-byte change to a valid encoding: never an exception; whatever
  // decodes answers lookups without throwing.
  const probe = packed(1);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom(0, 1, 2), (bytes, kind) => {
      if (kind > 0 && bytes.length > 0) bytes[0] = kind;
      const held = decodeAnnouncement(bytes);
      if (held !== undefined) held.mayHold(probe);
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(
      fc.constantFrom(...valid),
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      (bytes, index, flip) => {
        const changed = bytes.slice();
        changed[index % changed.length]! ^= flip;
        const held = decodeAnnouncement(changed);
        if (held !== undefined) {
          held.mayHold(probe);
          assert.ok(held.count >= 0);
        }
      },
    ),
    { numRuns: 2000 },
  );
});
