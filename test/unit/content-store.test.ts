import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DiskFullError, ContentStore } from '../../src/store/content-store.js';
import { VmscatterError } from '../../src/errors.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../../src/memory/page.js';
import { tempDir } from '../support/fixtures.js';

const digest = () => new Uint8Array(randomBytes(DIGEST_BYTES));
const page = () => new Uint8Array(randomBytes(PAGE_SIZE));

test('pages go in and come out by digest; a second put of the same digest stores nothing', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = ContentStore.open(dir);
  t.after(() => store.close());
  const entries = Array.from({ length: 300 }, () => ({ d: digest(), p: page() }));
  for (const e of entries) assert.equal(store.put(e.d, e.p), true);
  assert.equal(store.put(entries[5]!.d, page()), false);
  assert.equal(store.size, 300);
  for (const e of entries) assert.deepEqual(store.get(e.d), e.p);
  assert.equal(store.get(digest()), undefined);
  assert.throws(() => store.put(digest(), new Uint8Array(100)), RangeError);
});

test('the store survives a restart, and a torn tail from a crash is cut off', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const entries = Array.from({ length: 50 }, () => ({ d: digest(), p: page() }));
  const first = ContentStore.open(dir);
  for (const e of entries) first.put(e.d, e.p);
  first.flush();
  first.close();
  // A crash after writing half a page, and another after a page but before its digest.
  appendFileSync(join(dir, 'pages.bin'), new Uint8Array(PAGE_SIZE + 1000));
  const second = ContentStore.open(dir);
  t.after(() => second.close());
  assert.equal(second.size, 50);
  assert.equal(statSync(join(dir, 'pages.bin')).size, 50 * PAGE_SIZE);
  for (const e of entries) assert.deepEqual(second.get(e.d), e.p);
  assert.deepEqual(
    [...second.digests()].map((d) => Buffer.from(d).toString('hex')),
    entries.map((e) => Buffer.from(e.d).toString('hex')),
  );
});

test('a directory that cannot be used is a clear error', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const file = join(dir, 'not-a-dir');
  writeFileSync(file, 'x');
  assert.throws(
    () => ContentStore.open(join(file, 'store')),
    (e) => e instanceof VmscatterError && /not-a-dir\/store: cannot open the content store/.test(e.message),
  );
});

test('a full disk is a clear error and leaves the store consistent', (t) => {
  const { dir, cleanup } = tempDir();
  // A 64 KiB filesystem of our own (tests run as root): the disk fills after a dozen pages.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]);
  t.after(() => {
    execFileSync('umount', [dir]);
    cleanup();
  });
  const store = ContentStore.open(dir);
  const held: { d: Uint8Array; p: Uint8Array }[] = [];
  assert.throws(() => {
    for (let i = 0; i < 100; i++) {
      const e = { d: digest(), p: page() };
      store.put(e.d, e.p);
      held.push(e);
    }
  }, DiskFullError);
  assert.ok(held.length > 0 && held.length < 16, `${held.length} pages fit`);
  store.close();
  const reopened = ContentStore.open(dir);
  assert.equal(reopened.size, held.length, 'nothing half-written counts as held');
  for (const e of held) assert.deepEqual(reopened.get(e.d), e.p);
  reopened.close();
});

test('putMany stores a batch in one write: held pages and repeats within the batch are skipped', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = ContentStore.open(dir);
  t.after(() => store.close());
  const held = { d: digest(), p: page() };
  store.put(held.d, held.p);
  const entries = Array.from({ length: 50 }, () => ({ d: digest(), p: page() }));
  const batch = [...entries, held, entries[3]!];
  const digests = new Uint8Array(batch.length * DIGEST_BYTES);
  const pages = new Uint8Array(batch.length * PAGE_SIZE);
  batch.forEach((e, i) => {
    digests.set(e.d, i * DIGEST_BYTES);
    pages.set(e.p, i * PAGE_SIZE);
  });
  const fresh = store.putMany(digests, pages);
  assert.equal(fresh.length, 50 * DIGEST_BYTES, 'only the 50 new pages');
  assert.equal(store.size, 51);
  for (const e of [...entries, held]) assert.deepEqual(store.get(e.d), e.p);
  assert.equal(store.putMany(digests, pages).length, 0, 'a second time stores nothing');
  assert.throws(() => store.putMany(digests, new Uint8Array(10)), RangeError);
  // Another batch with a held page gathers its new pages where the first did; an all-new batch is
  // written as given. What each stored reads back whole.
  const more = Array.from({ length: 20 }, () => ({ d: digest(), p: page() }));
  for (const part of [[held, ...more.slice(0, 10)], more.slice(10)]) {
    const d = new Uint8Array(part.length * DIGEST_BYTES);
    const p = new Uint8Array(part.length * PAGE_SIZE);
    part.forEach((e, i) => (d.set(e.d, i * DIGEST_BYTES), p.set(e.p, i * PAGE_SIZE)));
    assert.equal(store.putMany(d, p).length, 10 * DIGEST_BYTES);
  }
  assert.equal(store.size, 71);
  for (const e of [...entries, held, ...more]) assert.deepEqual(store.get(e.d), e.p);
});

test('readMany reads held pages into their slots, marks the rest, across runs and gaps', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = ContentStore.open(dir);
  t.after(() => store.close());
  const entries = Array.from({ length: 600 }, () => ({ d: digest(), p: page() }));
  for (const e of entries) store.put(e.d, e.p);
  const strangers = [digest(), digest()];
  // Neighbours in the file (a run longer than one read), a step back, a gap, repeats, unknowns.
  const order = [...Array.from({ length: 300 }, (_, i) => i + 10), 5, 4, 599, -1, 320, 320, -2, 0];
  const digests = Buffer.concat(order.map((i) => (i >= 0 ? entries[i]!.d : strangers[-i - 1]!)));
  const into = new Uint8Array(order.length * PAGE_SIZE).fill(0xee);
  const found = new Uint8Array(order.length).fill(7);
  store.readMany(digests, order.length, into, found);
  order.forEach((i, k) => {
    const slot = into.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE);
    if (i < 0) {
      assert.equal(found[k], 0, `slot ${k}: not held`);
      assert.ok(
        slot.every((b) => b === 0xee),
        `slot ${k} left as it was`,
      );
    } else {
      assert.equal(found[k], 1, `slot ${k}: held`);
      assert.ok(Buffer.from(slot).equals(Buffer.from(entries[i]!.p)), `slot ${k}: page ${i}`);
    }
  });
});

test('putMany on a full disk stores none of the batch and says so', (t) => {
  const { dir, cleanup } = tempDir();
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]);
  t.after(() => {
    execFileSync('umount', [dir]);
    cleanup();
  });
  const store = ContentStore.open(dir);
  const n = 32;
  const digests = new Uint8Array(randomBytes(n * DIGEST_BYTES));
  assert.throws(() => store.putMany(digests, new Uint8Array(randomBytes(n * PAGE_SIZE))), DiskFullError);
  assert.equal(store.size, 0);
  store.close();
  const reopened = ContentStore.open(dir);
  assert.equal(reopened.size, 0, 'nothing of the batch counts as held');
  reopened.close();
});

test('a page file cut short under a running store is a store error (exit 5), not a generic one', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = ContentStore.open(dir);
  t.after(() => store.close());
  const held = { d: digest(), p: page() };
  store.put(held.d, held.p);
  truncateSync(store.pagesPath, 0);
  assert.throws(
    () => store.get(held.d),
    (e) => e instanceof VmscatterError && e.code === 'VMS_STORE' && e.exitCode === 5,
  );
});
