import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs, { existsSync, mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import { DiskFullError } from '../../src/store/content-store.js';
import { TemplateStore } from '../../src/store/template-store.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../../src/memory/page.js';
import { tempDir } from '../support/fixtures.js';

interface Entry {
  readonly d: Uint8Array;
  readonly p: Uint8Array;
  readonly weight: number;
}

const hex = (d: Uint8Array) => Buffer.from(d).toString('hex');
const entry = (weight: number): Entry => ({
  d: new Uint8Array(randomBytes(DIGEST_BYTES)),
  p: new Uint8Array(randomBytes(PAGE_SIZE)),
  weight,
});

function heldSet(store: TemplateStore): Set<string> {
  return new Set([...store.digests()].map(hex));
}

/** Asserts that the store holds exactly `entries`, with their bytes and weights. */
function assertHolds(store: TemplateStore, entries: readonly Entry[]): void {
  assert.equal(store.size, entries.length);
  assert.deepEqual(heldSet(store), new Set(entries.map((e) => hex(e.d))));
  for (const e of entries) {
    assert.ok(store.holds(e.d));
    assert.deepEqual(store.get(e.d), e.p);
    assert.equal(store.weightOf(e.d), e.weight);
  }
}

/** The `count` entries a compaction must keep: highest weight first, then most recently offered. */
function expectedKept(offered: readonly Entry[], count: number): Entry[] {
  const latest = new Map<string, { e: Entry; at: number }>();
  offered.forEach((e, at) => latest.set(hex(e.d), { e, at }));
  return [...latest.values()]
    .sort((a, b) => b.e.weight - a.e.weight || b.at - a.at)
    .slice(0, count)
    .map((x) => x.e);
}

test('compaction keeps the pages of highest weight, never more than the capacity', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = TemplateStore.open(dir, { capacityPages: 50 });
  t.after(() => store.close());
  const offered = Array.from({ length: 200 }, () => entry(1 + Math.floor(Math.random() * 64)));
  for (const e of offered) assert.equal(store.offer(e.d, e.p, e.weight), true);
  assert.equal(store.offer(offered[3]!.d, offered[3]!.p, offered[3]!.weight), false, 'held already');
  offered.push(offered[3]!); // now the most recent
  assert.equal(store.size, 200);
  assert.equal(store.compact(), 150);
  assertHolds(store, expectedKept(offered, 50));
  assert.equal(store.compact(), 0, 'within capacity: nothing to do');
  assert.deepEqual(readdirSync(dir).sort(), ['CURRENT', 'gen-000002']);

  assert.throws(() => store.offer(entry(1).d, entry(1).p, 0), RangeError);
  assert.throws(() => store.offer(entry(1).d, entry(1).p, 1.5), RangeError);
  assert.throws(() => store.offer(entry(1).d, new Uint8Array(10), 3), RangeError);
  assert.throws(() => TemplateStore.open(dir, { capacityPages: -1 }), RangeError);
});

test('ties go to the most recently offered page; a second offer refreshes a page and replaces its weight', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = TemplateStore.open(dir, { capacityPages: 10 });
  t.after(() => store.close());
  const offered = Array.from({ length: 30 }, () => entry(5));
  for (const e of offered) store.offer(e.d, e.p, e.weight);
  // The oldest page comes back with the same weight: now the most recent. Another comes back rarer.
  store.offer(offered[0]!.d, offered[0]!.p, 5);
  store.offer(offered[29]!.d, offered[29]!.p, 2);
  assert.equal(store.weightOf(offered[29]!.d), 2);
  assert.equal(store.compact(), 20);
  const kept = [offered[0]!, ...offered.slice(20, 29)];
  assertHolds(store, kept);
});

test('the store persists across close and open: a second job builds on the first', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const job1 = Array.from({ length: 40 }, (_, i) => entry(1 + (i % 8)));
  const first = TemplateStore.open(dir, { capacityPages: 30 });
  for (const e of job1) first.offer(e.d, e.p, e.weight);
  first.compact();
  first.close();
  first.close(); // a second close does nothing

  const second = TemplateStore.open(dir, { capacityPages: 30 });
  t.after(() => second.close());
  const afterJob1 = expectedKept(job1, 30);
  assertHolds(second, afterJob1);
  // Job 2: new pages, some popular; one page from job 1 comes back more popular than ever.
  const job2 = Array.from({ length: 20 }, (_, i) => entry(i < 10 ? 20 : 1));
  const back = { ...afterJob1[0]!, weight: 50 };
  for (const e of [...job2, back]) second.offer(e.d, e.p, e.weight);
  assert.equal(second.size, 50);
  second.compact();
  assertHolds(second, expectedKept([...job1, ...job2, back], 30));
  assert.ok(second.holds(back.d) && second.weightOf(back.d) === 50);
  const packed = second.packedDigests();
  assert.equal(packed.length, 30 * DIGEST_BYTES);
  assert.deepEqual(
    Array.from({ length: 30 }, (_, i) => hex(packed.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES))),
    [...second.digests()].map(hex),
  );
});

test('reweighMany: weights and recency as one reweigh each, in order, kept across close and open', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const store = TemplateStore.open(dir, { capacityPages: 1000 });
  const held = Array.from({ length: 600 }, () => entry(1));
  store.offerMany(Buffer.concat(held.map((e) => e.d)), Buffer.concat(held.map((e) => e.p)), 1);
  // A manifest's list: held pages far apart and close together, one not held, one left alone (0).
  const picked = [599, 3, 4, 5, 300, 0];
  const stranger = entry(9);
  const digests = Buffer.concat([...picked.map((i) => held[i]!.d), stranger.d]);
  const weights = [7, 2, 0, 4, 5, 6, 9];
  assert.equal(
    store.reweighMany(digests, (i) => weights[i]!),
    5,
    'five held pages reweighed',
  );
  store.close();
  const reopened = TemplateStore.open(dir, { capacityPages: 3 });
  t.after(() => reopened.close());
  const weightOf = (i: number) => reopened.weightOf(held[i]!.d);
  assert.deepEqual([599, 3, 4, 5, 300, 0].map(weightOf), [7, 2, 1, 4, 5, 6]);
  assert.equal(weightOf(1), 1);
  assert.equal(reopened.holds(stranger.d), false);
  // A capacity of 3 keeps the three heaviest: 599, 0 and 300 (weights 7, 6, 5).
  reopened.compact();
  assert.deepEqual(
    new Set([...reopened.digests()].map(hex)),
    new Set([599, 0, 300].map((i) => hex(held[i]!.d))),
  );
});

test('a half-written new generation and other leftovers are dropped on opening; the old store is intact', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const offered = Array.from({ length: 20 }, (_, i) => entry(i + 1));
  const store = TemplateStore.open(dir, { capacityPages: 100 });
  for (const e of offered) store.offer(e.d, e.p, e.weight);
  store.close();
  // A compaction that died while writing gen-000002.tmp, one that died after renaming it but before
  // the commit, and a CURRENT.tmp naming it that never replaced CURRENT.
  for (const name of ['gen-000002.tmp', 'gen-000002']) {
    mkdirSync(join(dir, name));
    writeFileSync(join(dir, name, 'pages.bin'), new Uint8Array(PAGE_SIZE + 100));
    writeFileSync(join(dir, name, 'digests.bin'), new Uint8Array(DIGEST_BYTES));
  }
  writeFileSync(join(dir, 'CURRENT.tmp'), 'gen-000002\n');
  writeFileSync(join(dir, 'unrelated'), 'not ours');

  const reopened = TemplateStore.open(dir, { capacityPages: 100 });
  t.after(() => reopened.close());
  assertHolds(reopened, offered);
  assert.deepEqual(readdirSync(dir).sort(), ['CURRENT', 'gen-000001', 'unrelated']);
});

test('a crash after the commit leaves the new store; a torn weights file only loses weights', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const offered = Array.from({ length: 20 }, (_, i) => entry(i + 1));
  const store = TemplateStore.open(dir, { capacityPages: 10 });
  for (const e of offered) store.offer(e.d, e.p, e.weight);
  store.compact();
  store.close();
  // The old generation not yet removed when the process died.
  mkdirSync(join(dir, 'gen-000001'));
  writeFileSync(join(dir, 'gen-000001', 'pages.bin'), new Uint8Array(PAGE_SIZE));
  // And a crash that tore the last weight record.
  truncateSync(join(dir, 'gen-000002', 'weights.bin'), 9 * 12 + 5);
  const reopened = TemplateStore.open(dir, { capacityPages: 10 });
  t.after(() => reopened.close());
  const kept = expectedKept(offered, 10);
  const last = [...reopened.digests()].at(-1)!;
  assertHolds(
    reopened,
    kept.map((e) => (hex(e.d) === hex(last) ? { ...e, weight: 0 } : e)),
  );
  assert.equal(existsSync(join(dir, 'gen-000001')), false);
  assert.equal(readFileSync(join(dir, 'CURRENT'), 'utf8'), 'gen-000002\n');
});

test('a crash at any point of a compaction leaves either the old or the new store, whole', (t) => {
  // Every file-system call that changes something is counted; the crash is at call `crashAt`: it and
  // every call after it fail (the process is dead, its clean-up code cannot run either).
  const names = ['writeSync', 'fsyncSync', 'renameSync', 'openSync', 'ftruncateSync', 'mkdirSync', 'rmSync'];
  const mutable = fs as unknown as Record<string, (...args: unknown[]) => unknown>;
  const real = new Map(names.map((name) => [name, mutable[name]!]));
  let calls = 0;
  let crashAt = Infinity;
  const arm = () => {
    for (const name of names) {
      mutable[name] = (...args: unknown[]) => {
        if (++calls >= crashAt) throw new Error(`simulated crash at call ${calls} (${name})`);
        return real.get(name)!(...args);
      };
    }
    syncBuiltinESMExports();
  };
  const disarm = () => {
    for (const name of names) mutable[name] = real.get(name)!;
    syncBuiltinESMExports();
  };
  t.after(disarm);

  const offered = Array.from({ length: 12 }, (_, i) => entry(1 + (i % 5)));
  const newStore = expectedKept(offered, 5);
  const run = (limit: number): 'old' | 'new' | 'done' => {
    const { dir, cleanup } = tempDir();
    try {
      const store = TemplateStore.open(dir, { capacityPages: 5 });
      for (const e of offered) store.offer(e.d, e.p, e.weight);
      store.flush();
      calls = 0;
      crashAt = limit;
      arm();
      let finished = false;
      try {
        store.compact();
        finished = true;
      } catch (error) {
        assert.match(String(error), /simulated crash/);
      } finally {
        disarm();
      }
      // Whatever the dead process held open is closed now (closing changes no file's contents).
      try {
        store.close();
      } catch {
        // its files were closed already when it died
      }
      const reopened = TemplateStore.open(dir, { capacityPages: 5 });
      try {
        const held = heldSet(reopened);
        if (held.size === offered.length) {
          assertHolds(reopened, offered);
          return 'old';
        }
        assertHolds(reopened, newStore);
        return finished ? 'done' : 'new';
      } finally {
        reopened.close();
      }
    } finally {
      cleanup();
    }
  };
  const seen = new Set<string>();
  for (let limit = 1; ; limit++) {
    const outcome = run(limit);
    seen.add(outcome);
    if (outcome === 'done') break;
    assert.ok(limit < 500, 'the compaction ends');
  }
  assert.deepEqual([...seen].sort(), ['done', 'new', 'old'], 'crashes before and after the commit were seen');
});

test('a compaction that fills the disk fails clearly and leaves the store as it was', (t) => {
  const { dir, cleanup } = tempDir();
  // A 256 KiB filesystem of our own (tests run as root): 40 pages fit, a copy of the 25 kept does not.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir]);
  t.after(() => {
    execFileSync('umount', [dir]);
    cleanup();
  });
  const offered = Array.from({ length: 40 }, (_, i) => entry(1 + (i % 3)));
  const store = TemplateStore.open(dir, { capacityPages: 25 });
  for (const e of offered) store.offer(e.d, e.p, e.weight);
  assert.throws(
    () => store.compact(),
    (e) => e instanceof DiskFullError && e.message.startsWith(dir),
  );
  assert.deepEqual(readdirSync(dir).sort(), ['CURRENT', 'gen-000001']);
  assertHolds(store, offered);
  store.close();
  const reopened = TemplateStore.open(dir, { capacityPages: 25 });
  assertHolds(reopened, offered);
  reopened.close();
});
