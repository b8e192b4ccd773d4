import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { decodeManifest, encodeManifest, ManifestError, ZERO_ENTRY } from '../../src/wire/manifest.js';

/** Page entries with the structure real VMs have: zero runs, sequential runs, scattered references. */
const entries = fc
  .array(
    fc.oneof(
      fc.record({ kind: fc.constant('zero' as const), n: fc.integer({ min: 1, max: 50 }) }),
      fc.record({
        kind: fc.constant('seq' as const),
        n: fc.integer({ min: 1, max: 50 }),
        start: fc.nat(5000),
      }),
      fc.record({
        kind: fc.constant('any' as const),
        values: fc.array(fc.nat(5999), { minLength: 1, maxLength: 20 }),
      }),
    ),
    { maxLength: 30 },
  )
  .map((runs) => {
    const out: number[] = [];
    for (const run of runs) {
      if (run.kind === 'zero') for (let i = 0; i < run.n; i++) out.push(ZERO_ENTRY);
      else if (run.kind === 'seq') for (let i = 0; i < run.n; i++) out.push(run.start + i);
      else out.push(...run.values);
    }
    return Int32Array.from(out);
  });

test('property: manifests round-trip', () => {
  fc.assert(
    fc.property(entries, (e) => {
      assert.deepEqual(decodeManifest(encodeManifest(e), e.length, 6000), e);
    }),
  );
});

test('a VM-like manifest is small: a few bytes per run, not per page', () => {
  const e = new Int32Array(65536).fill(ZERO_ENTRY);
  for (let i = 0; i < 40000; i++) e[10000 + i] = 500 + i;
  assert.ok(encodeManifest(e).length < 32, `${encodeManifest(e).length} bytes`);
});

test('property: arbitrary bytes decode or fail with ManifestError, never anything else', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.nat(100), (bytes, pages) => {
      try {
        const decoded = decodeManifest(bytes, pages, 1000);
        assert.equal(decoded.length, pages);
        for (const index of decoded) assert.ok(index === ZERO_ENTRY || (index >= 0 && index < 1000));
      } catch (error) {
        assert.ok(error instanceof ManifestError, String(error));
      }
    }),
  );
});

test('counts and indices are checked against what the receiver was told', () => {
  const e = Int32Array.of(1, 2, 3, ZERO_ENTRY, 7);
  const bytes = encodeManifest(e);
  assert.throws(() => decodeManifest(bytes, 4, 10), ManifestError);
  assert.throws(() => decodeManifest(bytes, 6, 10), ManifestError);
  assert.throws(() => decodeManifest(bytes, 5, 7), ManifestError);
  assert.deepEqual(decodeManifest(bytes, 5, 8), e);
});
