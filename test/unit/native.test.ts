import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { PageDigester } from '../../src/memory/page-digest.js';
import { native } from '../../src/native/native.js';

/**
 * The native addon is built by `npm ci` (node-gyp, the installed Node's headers): an install that did
 * not build it fails here rather than running the slow path unnoticed. Its digests are exactly the
 * first 16 bytes of SHA-256(key || page).
 */
test('native: the addon is built and loaded, and page digests use it', () => {
  assert.ok(native, 'build/Release/vmscatter_native.node was not built (npm ci runs node-gyp)');
  assert.equal(new PageDigester(new Uint8Array(64)).isNative, true);
});

test('native: keyed page digests equal SHA-256(key || page), one page or many', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 64, maxLength: 64 }),
      fc.integer({ min: 1, max: 5 }),
      fc.integer({ min: 0, max: 2 ** 31 }),
      (key, count, seed) => {
        const pages = new Uint8Array(count * 4096 + 8);
        for (let i = 0; i < pages.length; i++) pages[i] = (seed + i * 2654435761) >>> 24;
        const digester = new PageDigester(key);
        const many = new Uint8Array(count * 16 + 3);
        digester.digestMany(pages, 8, count, many, 3);
        for (let p = 0; p < count; p++) {
          const page = pages.subarray(8 + p * 4096, 8 + (p + 1) * 4096);
          const expected = createHash('sha256').update(key).update(page).digest().subarray(0, 16);
          assert.deepEqual(many.subarray(3 + p * 16, 3 + (p + 1) * 16), new Uint8Array(expected));
          const one = new Uint8Array(16);
          digester.digestInto(pages, 8 + p * 4096, one, 0);
          assert.deepEqual(one, new Uint8Array(expected));
        }
      },
    ),
    { numRuns: 50 },
  );
});

test('native: ranges outside their arrays are refused, not read', () => {
  const state = native!.keyedState(new Uint8Array(64));
  const pages = new Uint8Array(4096);
  assert.throws(() => native!.digestPages(state, pages, 1, 1, new Uint8Array(16), 0), TypeError);
  assert.throws(() => native!.digestPages(state, pages, 0, 1, new Uint8Array(15), 0), TypeError);
  assert.throws(() => native!.keyedState(new Uint8Array(63)), TypeError);
});
