import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { imageSha256, imageSha256Beside } from '../../src/memory/image-hash.js';
import { tempDir } from '../support/fixtures.js';

/** The scan hashes whole images on a thread of their own: the same SHA-256s, in the same order. */
test('image hashes on their own thread: each image its own SHA-256, in order; a missing one named', async (t) => {
  const { dir, cleanup } = tempDir('vms-image-hash-');
  t.after(cleanup);
  const contents = [randomBytes(3 * 4096 * 1024 + 4096), randomBytes(4096), Buffer.alloc(0)];
  const paths = contents.map((bytes, i) => {
    const path = join(dir, `image-${i}.raw`);
    writeFileSync(path, bytes);
    return path;
  });
  const hashes = await imageSha256Beside(paths);
  assert.deepEqual(
    hashes,
    contents.map((bytes) => createHash('sha256').update(bytes).digest('hex')),
  );
  assert.deepEqual(hashes, paths.map(imageSha256));
  assert.deepEqual(await imageSha256Beside([]), []);
  await assert.rejects(imageSha256Beside([paths[0]!, join(dir, 'missing.raw')]), /missing\.raw/);
});
