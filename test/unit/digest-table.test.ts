import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { DigestTable } from '../../src/memory/digest-table.js';
import { DIGEST_BYTES } from '../../src/memory/page.js';

test('interning gives dense ids, the same id for the same digest, and keeps the bytes', () => {
  const table = new DigestTable(4);
  const digests = Array.from({ length: 5000 }, () => new Uint8Array(randomBytes(DIGEST_BYTES)));
  const ids = digests.map((d) => table.intern(d, 0));
  assert.deepEqual(
    ids,
    Array.from({ length: 5000 }, (_, i) => i + 1),
  );
  assert.equal(table.size, 5000);
  digests.forEach((d, i) => {
    assert.equal(table.intern(d, 0), i + 1);
    assert.equal(table.lookup(d), i + 1);
    assert.deepEqual(table.digestOf(i + 1), d);
  });
  assert.equal(table.lookup(new Uint8Array(randomBytes(DIGEST_BYTES))), -1);
});

test('digests that agree in their first bytes still get distinct ids', () => {
  const table = new DigestTable();
  const a = new Uint8Array(DIGEST_BYTES);
  const b = new Uint8Array(DIGEST_BYTES);
  b[15] = 1;
  assert.notEqual(table.intern(a, 0), table.intern(b, 0));
  assert.throws(() => table.digestOf(0), RangeError);
  assert.throws(() => table.digestOf(3), RangeError);
});

test('property: agrees with a Map over hex strings, at any offset', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: DIGEST_BYTES, maxLength: DIGEST_BYTES }), { maxLength: 300 }),
      fc.nat(7),
      (digests, pad) => {
        const table = new DigestTable(1);
        const reference = new Map<string, number>();
        for (const digest of digests) {
          const padded = new Uint8Array(pad + DIGEST_BYTES);
          padded.set(digest, pad);
          const id = table.intern(padded, pad);
          const key = Buffer.from(digest).toString('hex');
          if (!reference.has(key)) reference.set(key, reference.size + 1);
          assert.equal(id, reference.get(key));
        }
        assert.equal(table.size, reference.size);
      },
    ),
  );
});
