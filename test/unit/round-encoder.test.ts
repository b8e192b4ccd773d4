import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { decodeBatch } from '../../src/memory/page-batches.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../../src/memory/page.js';
import { PAGE_CHECK_BYTES, PageDigester, randomDigestKey } from '../../src/memory/page-digest.js';
import { RoundEncoder } from '../../src/seed/round-encoder.js';
import type { SourcePages } from '../../src/store/source-pages.js';
import { tempDir } from '../support/fixtures.js';

/** The digest the scan gives `page`. */
function digestOf(digester: PageDigester, page: Uint8Array): Uint8Array {
  const digest = new Uint8Array(DIGEST_BYTES);
  digester.digestInto(page, 0, digest, 0);
  return digest;
}

/** The id (1-based index into `scanned`) of the page a record carries. */
function idOf(scanned: readonly Uint8Array[], digest: Uint8Array): number {
  return scanned.findIndex((d) => Buffer.from(d).equals(Buffer.from(digest))) + 1;
}

/**
 * The round encoder's worker reads each page from where the source says it is; pages lying next to
 * each other in one file are read in one call. Whatever the runs, every record holds its own page.
 */
test('round encoder: every page read from its file and place, runs and scattered pages alike', async (t) => {
  const { dir, cleanup } = tempDir('vms-encoder-');
  t.after(cleanup);
  // Two files of 64 pages, each page filled with bytes that name its file and number.
  const paths = [0, 1].map((f) => {
    const bytes = new Uint8Array(64 * PAGE_SIZE);
    for (let p = 0; p < 64; p++)
      for (let i = 0; i < PAGE_SIZE; i++) bytes[p * PAGE_SIZE + i] = (f * 64 + p + i * 7) & 0xff;
    const path = join(dir, `image-${f}.raw`);
    writeFileSync(path, bytes);
    return path;
  });
  // Digest id -> (file, page): runs (3..9 of file 0), a jump, a run crossing into the other file at
  // the same numbers, single pages, and a run going backwards (not adjacent in the reading sense).
  const where: [number, number][] = [
    [0, 3],
    [0, 4],
    [0, 5],
    [0, 6],
    [0, 7],
    [0, 8],
    [0, 9],
    [0, 20],
    [1, 21],
    [1, 22],
    [1, 23],
    [0, 24],
    [1, 63],
    [0, 0],
    [1, 0],
    [0, 50],
    [0, 49],
    [0, 48],
  ];
  const ids = Uint32Array.from(where, (_, i) => i + 1);
  const pages = {
    files: paths.map((path) => ({ path, base: 0, changing: false })),
    digestKey: randomDigestKey(),
    locationOf: (id: number) => ({ vm: where[id - 1]![0], page: where[id - 1]![1] }),
    digestOf: (id: number) => new Uint8Array(DIGEST_BYTES).fill(id),
  } as unknown as SourcePages;
  const encoder = new RoundEncoder(pages, 5); // batches of 5 pages: runs cut at batch ends too
  try {
    for (const compress of [false, true]) {
      const { batches } = await encoder.encode(ids, compress);
      const records = batches.flatMap((batch) => [...decodeBatch(batch)]);
      assert.equal(records.length, where.length);
      records.forEach((record, i) => {
        const [f, p] = where[i]!;
        assert.equal(record.digest[0], i + 1, `record ${i} in order`);
        const expected = Uint8Array.from({ length: PAGE_SIZE }, (_, j) => (f * 64 + p + j * 7) & 0xff);
        assert.deepEqual(Buffer.from(record.page!), Buffer.from(expected), `file ${f} page ${p}`);
      });
    }
  } finally {
    await encoder.close();
  }
});

/**
 * A running guest's memory is read again at seeding: a page it rewrote since the scan no longer has
 * the scanned digest and is left out of the round (named in `changed`), the others are sent as read.
 * Pages from an image are not digested again. Fails if the worker sends the rewritten page under its
 * old digest (a target would then hold a page that is not what the digest says).
 */
test('round encoder: pages a running guest changed since the scan are left out, and named', async (t) => {
  const { dir, cleanup } = tempDir('vms-encoder-');
  t.after(cleanup);
  const key = randomDigestKey();
  const digester = new PageDigester(key);
  const fill = (page: number) => Uint8Array.from({ length: PAGE_SIZE }, (_, j) => (page * 31 + j * 3) & 0xff);
  // The "guest memory" file: 3 pages of something else, then the guest's 8 pages (base 3 pages in).
  const base = 3 * PAGE_SIZE;
  const memory = new Uint8Array(base + 8 * PAGE_SIZE);
  for (let p = 0; p < 8; p++) memory.set(fill(p), base + p * PAGE_SIZE);
  const image = new Uint8Array(2 * PAGE_SIZE);
  image.set(fill(100), 0);
  image.set(fill(101), PAGE_SIZE);
  // Digests as the scan saw them.
  const scanned = [...Array.from({ length: 8 }, (_, p) => fill(p)), fill(100), fill(101)].map((page) =>
    digestOf(digester, page),
  );
  // The guest rewrites pages 2 and 5 before seeding reads them; the image's second page is "changed"
  // too, which must not matter: an image is not read as changing.
  memory.fill(0xee, base + 2 * PAGE_SIZE, base + 3 * PAGE_SIZE);
  memory[base + 5 * PAGE_SIZE + 17] = memory[base + 5 * PAGE_SIZE + 17]! ^ 1;
  image.fill(0x55, PAGE_SIZE);
  const memoryPath = join(dir, 'guest.mem');
  const imagePath = join(dir, 'image.raw');
  writeFileSync(memoryPath, memory);
  writeFileSync(imagePath, image);
  // ids 1..8: guest pages 0..7; ids 9, 10: image pages 0, 1.
  const where = (id: number) => (id <= 8 ? { vm: 0, page: id - 1 } : { vm: 1, page: id - 9 });
  const pages = {
    files: [
      { path: memoryPath, base, changing: true },
      { path: imagePath, base: 0, changing: false },
    ],
    digestKey: key,
    locationOf: where,
    digestOf: (id: number) => scanned[id - 1]!,
  } as unknown as SourcePages;
  const encoder = new RoundEncoder(pages, 4); // a batch of guest pages with a change, one without
  try {
    const ids = Uint32Array.from({ length: 10 }, (_, i) => i + 1);
    const { batches, changed } = await encoder.encode(ids, true);
    assert.deepEqual([...changed], [3, 6]);
    const records = batches.flatMap((batch) => [...decodeBatch(batch)]);
    assert.deepEqual(
      records.map((r) => idOf(scanned, r.digest)),
      [1, 2, 4, 5, 7, 8, 9, 10],
    );
    for (const record of records) {
      const id = idOf(scanned, record.digest);
      const expected = id <= 8 ? fill(id - 1) : id === 9 ? fill(100) : image.subarray(PAGE_SIZE);
      assert.deepEqual(Buffer.from(record.page!), Buffer.from(expected), `page of id ${id}`);
    }
  } finally {
    await encoder.close();
  }
});

/**
 * With the scan's page checks, a running guest's page whose check still holds is taken as unchanged
 * without being hashed again, and one whose check fails is hashed and compared as before. Shown by a
 * scanned digest that is wrong on purpose: trusted where the check holds (the encoder did not hash
 * that page), caught where the page changed.
 */
test('round encoder: a guest page whose scanned check holds is not hashed again', async (t) => {
  const key = randomDigestKey();
  const digester = new PageDigester(key);
  if (!digester.isNative) return t.skip('page checks come from the native addon');
  const { dir, cleanup } = tempDir('vms-encoder-');
  t.after(cleanup);
  const memory = Uint8Array.from({ length: 4 * PAGE_SIZE }, (_, j) => (j * 7 + (j >> 12)) & 0xff);
  const digests = new Uint8Array(4 * DIGEST_BYTES);
  const checks = new Uint8Array(4 * PAGE_CHECK_BYTES);
  await digester.scanPages(undefined, memory, 4, digests, new Uint8Array(4), checks);
  // The scanned digest of page 0 is made wrong: only a hash of the page could tell.
  digests.fill(0xab, 0, DIGEST_BYTES);
  memory[2 * PAGE_SIZE + 5] = memory[2 * PAGE_SIZE + 5]! ^ 1; // page 2 changes after the scan
  const memoryPath = join(dir, 'guest.mem');
  writeFileSync(memoryPath, memory);
  const pages = {
    files: [{ path: memoryPath, base: 0, changing: true, checks }],
    digestKey: key,
    locationOf: (id: number) => ({ vm: 0, page: id - 1 }),
    digestOf: (id: number) => digests.slice((id - 1) * DIGEST_BYTES, id * DIGEST_BYTES),
  } as unknown as SourcePages;
  const encoder = new RoundEncoder(pages, 4);
  try {
    const { batches, changed } = await encoder.encode(Uint32Array.from([1, 2, 3, 4]), false);
    assert.deepEqual([...changed], [3], 'the changed page is caught by its check, then its hash');
    const records = batches.flatMap((batch) => [...decodeBatch(batch)]);
    assert.equal(records.length, 3);
    assert.deepEqual(
      Buffer.from(records[0]!.digest),
      Buffer.alloc(DIGEST_BYTES, 0xab),
      'page 0: check trusted',
    );
  } finally {
    await encoder.close();
  }
});

/**
 * A round is cut into one-batch parts dealt to two workers: batches come out in the round's order
 * whichever worker finishes first, a part whose pages all changed gives no batch, and the changed ids
 * come in the round's order too.
 */
test('round encoder: parts on two workers come out in order, an all-changed part gives no batch', async (t) => {
  const { dir, cleanup } = tempDir('vms-encoder-');
  t.after(cleanup);
  const key = randomDigestKey();
  const digester = new PageDigester(key);
  const pagesCount = 40;
  const fill = (page: number) => Uint8Array.from({ length: PAGE_SIZE }, (_, j) => (page * 13 + j * 5) & 0xff);
  const memory = new Uint8Array(pagesCount * PAGE_SIZE);
  for (let p = 0; p < pagesCount; p++) memory.set(fill(p), p * PAGE_SIZE);
  const scanned = Array.from({ length: pagesCount }, (_, p) => digestOf(digester, fill(p)));
  // Pages 4..7 (the second part, whole) and 21 change after the scan.
  for (const p of [4, 5, 6, 7, 21]) memory[p * PAGE_SIZE + 1] = memory[p * PAGE_SIZE + 1]! ^ 0xff;
  const path = join(dir, 'guest.mem');
  writeFileSync(path, memory);
  const pages = {
    files: [{ path, base: 0, changing: true }],
    digestKey: key,
    locationOf: (id: number) => ({ vm: 0, page: id - 1 }),
    digestOf: (id: number) => scanned[id - 1]!,
  } as unknown as SourcePages;
  const encoder = new RoundEncoder(pages, 4, 2);
  try {
    const handed: Uint8Array[] = [];
    const ids = Uint32Array.from({ length: pagesCount }, (_, i) => i + 1);
    const { changed, batches } = await encoder.encode(ids, true, (bytes) => handed.push(bytes));
    assert.equal(batches.length, 0, 'batches went to onBatch');
    assert.deepEqual([...changed], [5, 6, 7, 8, 22]);
    assert.equal(handed.length, 9, 'ten parts, one with no page left');
    const order = handed.flatMap((batch) => [...decodeBatch(batch)]).map((r) => idOf(scanned, r.digest));
    assert.deepEqual(
      order,
      [...ids].filter((id) => ![5, 6, 7, 8, 22].includes(id)),
    );
  } finally {
    await encoder.close();
  }
});
