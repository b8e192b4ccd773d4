import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { laneDigest } from '../../src/live/memory-check.js';
import { PageDigester } from '../../src/memory/page-digest.js';
import { native } from '../../src/native/native.js';
import { tempDir } from '../support/fixtures.js';

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

test("native: a scan's page checks say whether a page is unchanged; a changed page is digested and its check cleared", async () => {
  const key = new Uint8Array(64).fill(9);
  const digester = new PageDigester(key);
  const pages = new Uint8Array(3 * 4096);
  pages.fill(5, 0, 4096); // page 0: fives; page 1: zero; page 2: one byte set
  pages[2 * 4096 + 100] = 1;
  const checks = new Uint8Array(3 * 8).fill(0xee);
  await digester.scanPages(undefined, pages, 3, new Uint8Array(3 * 16), new Uint8Array(3), checks);
  assert.deepEqual([...checks.subarray(8, 16)], [0, 0, 0, 0, 0, 0, 0, 0], 'a zero page has no check');
  assert.notDeepEqual([...checks.subarray(0, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
  const out = new Uint8Array(16).fill(0xaa);
  assert.equal(digester.digestChecked(pages, 0, checks, 0, out), true);
  assert.deepEqual(out, new Uint8Array(16).fill(0xaa), 'an unchanged page is not digested');
  // One bit anywhere in the page changes its check (checked at its first and last word, and between).
  for (const at of [2 * 4096, 2 * 4096 + 100, 3 * 4096 - 1]) {
    const before = checks.slice(16, 24);
    pages[at]! ^= 0x80;
    assert.equal(digester.digestChecked(pages, 2 * 4096, checks, 2, out), false);
    const expected = new Uint8Array(16);
    digester.digestInto(pages, 2 * 4096, expected, 0);
    assert.deepEqual(out, expected);
    assert.deepEqual([...checks.subarray(16, 24)], [0, 0, 0, 0, 0, 0, 0, 0], 'its check no longer holds');
    pages[at]! ^= 0x80;
    checks.set(before, 16);
  }
  // Checks are seeded by the key: another key's check of the same page differs.
  const other = new Uint8Array(8);
  await new PageDigester(new Uint8Array(64).fill(8)).scanPages(
    undefined,
    pages,
    1,
    new Uint8Array(16),
    new Uint8Array(1),
    other,
  );
  assert.notDeepEqual(other, checks.subarray(0, 8));
  assert.throws(
    () => native!.digestPageChecked(native!.keyedState(key), pages, 0, checks, 3, out),
    TypeError,
  );
});

test("native: a process's memory read with process_vm_readv gives what its /proc/PID/mem gives", async () => {
  // This process's own executable, mapped from its start: stable bytes at a known address.
  const maps = readFileSync('/proc/self/maps', 'utf8').split('\n');
  const exe = readlinkSync('/proc/self/exe');
  const line = maps.find((l) => l.endsWith(exe) && l.split(/\s+/)[2] === '00000000');
  assert.ok(line, 'the executable is mapped');
  const address = parseInt(line.split('-')[0]!, 16);
  const fd = openSync('/proc/self/mem', 'r');
  try {
    const digester = new PageDigester(new Uint8Array(64).fill(4));
    const read = async (pid?: number) => {
      const pages = new Uint8Array(4 * 4096);
      const digests = new Uint8Array(4 * 16);
      await digester.scanPages(
        { fd, position: address, ...(pid ? { pid } : {}) },
        pages,
        4,
        digests,
        new Uint8Array(4),
      );
      const chunks = await native!.digestFileChunks(
        fd,
        Float64Array.of(address, 8192),
        new Uint8Array(32),
        pid,
      );
      return { pages, digests, chunks };
    };
    const viaFile = await read();
    assert.deepEqual(viaFile.pages.subarray(0, 4), Uint8Array.of(0x7f, 0x45, 0x4c, 0x46)); // ELF
    assert.deepEqual(await read(process.pid), viaFile);
    // An address nothing is mapped at fails the read, named, either way.
    await assert.rejects(
      native!.digestFileChunks(fd, Float64Array.of(4096, 4096), new Uint8Array(32), process.pid),
      /read at position 4096/,
    );
  } finally {
    closeSync(fd);
  }
});

test('native: ranges outside their arrays are refused, not read', () => {
  const state = native!.keyedState(new Uint8Array(64));
  const pages = new Uint8Array(4096);
  assert.throws(() => native!.digestPages(state, pages, 1, 1, new Uint8Array(16), 0), TypeError);
  assert.throws(() => native!.digestPages(state, pages, 0, 1, new Uint8Array(15), 0), TypeError);
  assert.throws(() => native!.keyedState(new Uint8Array(63)), TypeError);
});

test('native: memory-check chunk digests equal the TypeScript lane digest, tails included', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 0, maxLength: 300 }),
      (seed, bytes) => {
        const viaAddon = new Uint8Array(32);
        native!.chunkDigest(bytes, seed, viaAddon);
        const viaScript = new Uint8Array(32);
        laneDigest(bytes, seed, viaScript);
        assert.deepEqual(viaAddon, viaScript);
      },
    ),
    { numRuns: 300 },
  );
});

test('native: file chunks read in the thread pool digest as the same bytes in memory do', async () => {
  const { dir, cleanup } = tempDir('vms-native-');
  try {
    const bytes = new Uint8Array(3 * 4096 + 100);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 27;
    const path = join(dir, 'ram');
    writeFileSync(path, bytes);
    const fd = openSync(path, 'r');
    try {
      const seed = new Uint8Array(32).fill(9);
      const chunks = [
        [0, 4096],
        [4096, 2 * 4096 + 100],
        [7, 33],
      ] as const;
      const digests = await native!.digestFileChunks(fd, new Float64Array(chunks.flat()), seed);
      assert.equal(digests.length, chunks.length * 32);
      chunks.forEach(([position, length], k) => {
        const expected = new Uint8Array(32);
        laneDigest(bytes.subarray(position, position + length), seed, expected);
        assert.deepEqual(new Uint8Array(digests.subarray(k * 32, (k + 1) * 32)), expected);
      });
      // A chunk past the file's end is an error naming where, not a digest of a short read.
      await assert.rejects(
        native!.digestFileChunks(fd, new Float64Array([bytes.length - 10, 4096]), seed),
        /end of file at position/,
      );
      assert.throws(() => native!.digestFileChunks(fd, new Float64Array([0, 2 << 20]), seed), TypeError);
      assert.throws(() => native!.digestFileChunks(fd, new Float64Array([0]), seed), TypeError);
    } finally {
      closeSync(fd);
    }
  } finally {
    cleanup();
  }
});

test('native: a scan step marks zero pages and digests the rest, from memory or read from a file', async () => {
  const key = new Uint8Array(64).fill(5);
  const digester = new PageDigester(key);
  const pages = new Uint8Array(4 * 4096);
  pages.fill(7, 4096, 2 * 4096); // page 1: sevens
  pages[3 * 4096 + 4095] = 1; // page 3: one byte at its very end
  const expect = (digests: Uint8Array, zeros: Uint8Array) => {
    assert.deepEqual([...zeros], [1, 0, 1, 0]);
    for (const p of [1, 3]) {
      const one = new Uint8Array(16);
      digester.digestInto(pages, p * 4096, one, 0);
      assert.deepEqual(digests.subarray(p * 16, (p + 1) * 16), one);
    }
  };
  const digests = new Uint8Array(4 * 16);
  const zeros = new Uint8Array(4).fill(9);
  await digester.scanPages(undefined, pages, 4, digests, zeros);
  expect(digests, zeros);
  const { dir, cleanup } = tempDir('vms-native-');
  try {
    const path = join(dir, 'ram');
    writeFileSync(path, Buffer.concat([Buffer.alloc(4096, 3), pages]));
    const fd = openSync(path, 'r');
    try {
      const into = new Uint8Array(4 * 4096);
      const fromFile = new Uint8Array(4 * 16);
      const zerosFromFile = new Uint8Array(4);
      await digester.scanPages({ fd, position: 4096 }, into, 4, fromFile, zerosFromFile);
      assert.deepEqual(into, pages);
      expect(fromFile, zerosFromFile);
      await assert.rejects(
        digester.scanPages({ fd, position: 4096 * 3 }, into, 4, fromFile, zerosFromFile),
        /end of file at position/,
      );
    } finally {
      closeSync(fd);
    }
  } finally {
    cleanup();
  }
});
