import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { DiskFullError } from '../../src/store/content-store.js';
import { RebuildError, rebuildImage } from '../../src/agent/image-rebuild.js';
import { imageSha256 } from '../../src/memory/image-hash.js';
import { ZERO_ENTRY } from '../../src/wire/manifest.js';
import { tempDir } from '../support/fixtures.js';

/** A source image of `pages` pages (most zero, some repeated) and its manifest over unique pages. */
function sourceImage(dir: string, pages: number) {
  const unique = Array.from({ length: 8 }, () => new Uint8Array(randomBytes(PAGE_SIZE)));
  const entries = Int32Array.from({ length: pages }, (_, i) =>
    i % 5 === 0 ? i % unique.length : ZERO_ENTRY,
  );
  const image = new Uint8Array(pages * PAGE_SIZE);
  entries.forEach((e, i) => e !== ZERO_ENTRY && image.set(unique[e]!, i * PAGE_SIZE));
  const path = join(dir, 'source.raw');
  writeFileSync(path, image);
  return { path, unique, entries, sha256: imageSha256(path) };
}

for (const batched of [false, true])
  test(`an image rebuilt from its manifest is byte-identical, verified, and sparse (pages read ${batched ? 'ahead in batches' : 'one by one'})`, async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const source = sourceImage(dir, 2048 + 300);
    const out = join(dir, 'rebuilt.raw');
    const result = await rebuildImage({
      path: out,
      entries: source.entries,
      pageFor: (i) => (batched ? assert.fail('read one by one') : source.unique[i]),
      ...(batched
        ? {
            readMany: (indices: Int32Array, count: number, into: Uint8Array, found: Uint8Array) => {
              for (let k = 0; k < count; k++) {
                const page = source.unique[indices[k]!];
                found[k] = page ? 1 : 0;
                if (page) into.set(page, k * PAGE_SIZE);
              }
            },
          }
        : {}),
      expectedSha256: source.sha256,
    });
    assert.equal(result.sha256, source.sha256);
    assert.equal(result.writtenPages + result.zeroPages, 2048 + 300);
    assert.ok(readFileSync(out).equals(readFileSync(source.path)));
    const stat = statSync(out);
    assert.ok(
      stat.blocks * 512 < stat.size / 2,
      `sparse: ${stat.blocks * 512} bytes allocated of ${stat.size}`,
    );
    assert.equal(existsSync(`${out}.partial`), false);
  });

test('a digest mismatch or a page not held leaves no image behind', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const source = sourceImage(dir, 64);
  const out = join(dir, 'rebuilt.raw');
  const wrong = source.unique.map((p, i) => (i === 3 ? new Uint8Array(PAGE_SIZE).fill(1) : p));
  await assert.rejects(
    () =>
      rebuildImage({
        path: out,
        entries: source.entries,
        pageFor: (i) => wrong[i],
        expectedSha256: source.sha256,
      }),
    (e) => e instanceof RebuildError && /differs from the source/.test(e.message),
  );
  await assert.rejects(
    () =>
      rebuildImage({
        path: out,
        entries: source.entries,
        pageFor: (i) => (i === 5 ? undefined : source.unique[i]),
        expectedSha256: source.sha256,
      }),
    (e) => e instanceof RebuildError && /not held/.test(e.message),
  );
  assert.equal(existsSync(out), false);
  assert.equal(existsSync(`${out}.partial`), false);
});

test('a full disk is a clear error and leaves no partial image', async (t) => {
  const { dir, cleanup } = tempDir();
  const small = join(dir, 'small');
  execFileSync('mkdir', [small]);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', small]);
  t.after(() => {
    execFileSync('umount', [small]);
    cleanup();
  });
  const entries = Int32Array.from({ length: 64 }, (_, i) => i);
  const pages = Array.from({ length: 64 }, () => new Uint8Array(randomBytes(PAGE_SIZE)));
  const out = join(small, 'vm.raw');
  await assert.rejects(
    () => rebuildImage({ path: out, entries, pageFor: (i) => pages[i], expectedSha256: 'x' }),
    DiskFullError,
  );
  assert.equal(existsSync(out), false);
  assert.equal(existsSync(`${out}.partial`), false);
});

test('a disk that fills while an image is written is named as such: the image, not the page store', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const { unique, entries, sha256 } = sourceImage(dir, 64);
  const out = join(dir, 'vm-a.raw');
  const full = () => {
    throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  };
  await assert.rejects(
    () =>
      rebuildImage({ path: out, entries, pageFor: (i) => unique[i], expectedSha256: sha256, write: full }),
    (error: unknown) =>
      error instanceof DiskFullError &&
      error.code === 'VMS_DISK_FULL' &&
      error.message === `${out}: no space left on device while writing the VM image`,
  );
  assert.equal(existsSync(out), false);
  assert.equal(existsSync(`${out}.partial`), false);
});

test('a rebuild lets the event loop run between runs of pages: an agent stays heard while it rebuilds', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const source = sourceImage(dir, 4096);
  // Callbacks queued behind the rebuild (a control channel's heartbeat is one) that ran before it ended.
  let ranDuring = 0;
  let rebuilding = true;
  const other = () => {
    if (!rebuilding) return;
    ranDuring++;
    setImmediate(other);
  };
  setImmediate(other);
  await rebuildImage({
    path: join(dir, 'rebuilt.raw'),
    entries: source.entries,
    pageFor: (i) => source.unique[i],
    expectedSha256: source.sha256,
  });
  rebuilding = false;
  // 4096 pages: the loop ran at least once per 1024, not only after the whole image.
  assert.ok(ranDuring >= 3, `the event loop ran ${ranDuring} times during the rebuild`);
});

test("a job's end stops a rebuild under way and leaves no image, partial or whole", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const source = sourceImage(dir, 8 * 1024);
  const out = join(dir, 'rebuilt.raw');
  const ended = new AbortController();
  let served = 0;
  await assert.rejects(
    () =>
      rebuildImage({
        path: out,
        entries: source.entries,
        // The job ends while the rebuild is a quarter through (rebuilds overlap seeding).
        pageFor: (i) => {
          if (++served === 400) ended.abort();
          return source.unique[i];
        },
        expectedSha256: source.sha256,
        signal: ended.signal,
      }),
    (e) => e instanceof RebuildError && /the job ended/.test(e.message),
  );
  assert.equal(existsSync(out), false);
  assert.equal(existsSync(`${out}.partial`), false);
});
