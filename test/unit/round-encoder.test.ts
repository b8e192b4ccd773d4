import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { decodeBatch } from '../../src/memory/page-batches.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../../src/memory/page.js';
import { RoundEncoder } from '../../src/seed/round-encoder.js';
import type { SourcePages } from '../../src/store/source-pages.js';
import { tempDir } from '../support/fixtures.js';

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
    paths,
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
