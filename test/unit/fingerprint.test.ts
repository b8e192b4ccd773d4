import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { InputError } from '../../src/errors.js';
import { fingerprintVms } from '../../src/memory/fingerprint.js';
import { PAGE_SIZE, ZERO_PAGE_ID } from '../../src/memory/page.js';
import { deriveDigestKey, PageDigester, randomDigestKey } from '../../src/memory/page-digest.js';
import { DigestTable } from '../../src/memory/digest-table.js';
import { syntheticPageTable } from '../../src/memory/synthetic.js';
import { spec, tempDir, writeImage } from '../support/fixtures.js';

test('images: zero pages flagged, equal pages one id across images, different pages different ids', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const a = writeImage(dir, 'a.raw', [0, 1, 2, 1, 0, 3]);
  const b = writeImage(dir, 'b.raw', [2, 0, 4, 4]);
  const result = await fingerprintVms(
    [
      { name: 'a', source: { kind: 'image', path: a } },
      { name: 'b', source: { kind: 'image', path: b } },
    ],
    { key: randomDigestKey(), chunkPages: 2, workers: 2 },
  );
  const [pa, pb] = result.vms.map((v) => Array.from(v.pages));
  assert.equal(result.totalPages, 10);
  assert.equal(result.table.size, 4, 'contents 1, 2, 3, 4');
  assert.equal(pa![0], ZERO_PAGE_ID);
  assert.equal(pa![4], ZERO_PAGE_ID);
  assert.equal(pb![1], ZERO_PAGE_ID);
  assert.equal(pa![1], pa![3], 'content 1 twice in a');
  assert.equal(pa![2], pb![0], 'content 2 in both');
  assert.equal(pb![2], pb![3]);
  assert.equal(new Set([pa![1], pa![2], pa![5], pb![2]]).size, 4);
});

test('the page partition does not depend on chunk size or worker count', async () => {
  const vm = { name: 'v', pageCount: 3000, spec: spec(5, 'debian') };
  const run = async (chunkPages: number, workers: number) => {
    const r = await fingerprintVms([{ name: 'v', source: { kind: 'synthetic', vm } }], {
      key: randomDigestKey(),
      chunkPages,
      workers,
    });
    return canonical(r.vms[0]!.pages);
  };
  const reference = canonical(syntheticPageTable(vm, new DigestTable()).pages);
  assert.deepEqual(await run(1024, 2), reference);
  assert.deepEqual(await run(7, 1), reference);
});

test('a bad image is a clear error naming the file', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const odd = join(dir, 'odd.raw');
  writeFileSync(odd, new Uint8Array(PAGE_SIZE + 100));
  const key = randomDigestKey();
  await assert.rejects(
    fingerprintVms([{ name: 'odd', source: { kind: 'image', path: odd } }], { key }),
    (e) => {
      assert.ok(e instanceof InputError);
      assert.match(e.message, /odd\.raw: memory image is 4196 bytes, not a whole number of 4096-byte pages/);
      return true;
    },
  );
  const missing = join(dir, 'missing.raw');
  await assert.rejects(
    fingerprintVms([{ name: 'm', source: { kind: 'image', path: missing } }], { key }),
    (e) => {
      assert.ok(e instanceof InputError);
      assert.match(e.message, /missing\.raw: cannot read memory image \(ENOENT\)/);
      return true;
    },
  );
});

test('digests are keyed: the same page digests differently under another key, alike under the same', () => {
  const page = new Uint8Array(PAGE_SIZE).fill(7);
  const digest = (key: Uint8Array) => {
    const out = new Uint8Array(16);
    new PageDigester(key).digestInto(page, 0, out, 0);
    return Buffer.from(out).toString('hex');
  };
  assert.equal(digest(deriveDigestKey('secret')), digest(deriveDigestKey('secret')));
  assert.notEqual(digest(deriveDigestKey('secret')), digest(deriveDigestKey('other')));
  assert.throws(() => new PageDigester(new Uint8Array(32)), RangeError);
});

/** Relabels ids by first occurrence, so two tables' page partitions compare equal when they match. */
function canonical(pages: Uint32Array): number[] {
  const relabel = new Map<number, number>([[ZERO_PAGE_ID, ZERO_PAGE_ID]]);
  return Array.from(pages, (id) => {
    if (!relabel.has(id)) relabel.set(id, relabel.size);
    return relabel.get(id)!;
  });
}
