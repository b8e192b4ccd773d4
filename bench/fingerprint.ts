/**
 * Fingerprinting throughput on one memory image (default 2 GiB), beside the baselines measured in the
 * same run on the same file: a plain sequential read, and a one-thread read-and-hash.
 *
 *   npm run bench:fingerprint [-- --size 2GiB --json]
 *
 * Targets (issue "Foundation"): >= 1.5 GB/s on a 2-core machine; page-table memory <= 24 bytes/page.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fingerprintVms } from '../src/memory/fingerprint.js';
import { DIGEST_BYTES, isZeroPage, PAGE_SIZE } from '../src/memory/page.js';
import { PageDigester, randomDigestKey } from '../src/memory/page-digest.js';
import { readSyntheticPages, syntheticContentIds } from '../src/memory/synthetic.js';
import { parseSize } from '../src/topology/units.js';

const CHUNK_PAGES = 1024;
const GB = 1e9;

const { values } = parseArgs({
  options: { size: { type: 'string', default: '2GiB' }, json: { type: 'boolean' } },
});
const size = parseSize(values.size!);
if (typeof size === 'string' || size % PAGE_SIZE !== 0) {
  process.stderr.write(`--size: expected a whole number of 4 KiB pages such as 2GiB, got '${values.size}'\n`);
  process.exit(2);
}
const pageCount = size / PAGE_SIZE;
const dir = mkdtempSync(join(tmpdir(), 'vmscatter-bench-'));
const path = join(dir, 'guest.raw');
const cleanup = () => rmSync(dir, { recursive: true, force: true });
process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});

try {
  const log = (line: string) => values.json || process.stderr.write(`${line}\n`);
  log(`writing a ${values.size} synthetic guest image ...`);
  writeImage(path, pageCount);
  plainRead(path); // warm the page cache so every measurement below reads from memory alike
  const read = timed(() => plainRead(path));
  const oneThread = timed(() => oneThreadHash(path));
  const key = randomDigestKey();
  let tableBytes = 0;
  let pageTableBytes = 0;
  let distinct = 0;
  const pool = await timedAsync(async () => {
    const result = await fingerprintVms([{ name: 'guest', source: { kind: 'image', path } }], { key });
    result.table.trim();
    tableBytes = result.table.bytesUsed;
    pageTableBytes = result.vms[0]!.pages.byteLength;
    distinct = result.table.size;
  });
  const digestChoice = measureDigestChoice();
  const gbps = (seconds: number) => size / seconds / GB;
  const bytesPerPage = (tableBytes + pageTableBytes) / pageCount;
  const report = {
    imageBytes: size,
    pages: pageCount,
    distinctNonZeroPages: distinct,
    workers: availableParallelism(),
    gbPerSecond: { plainRead: gbps(read), oneThreadHash: gbps(oneThread), fingerprint: gbps(pool) },
    ratios: { fingerprintVsOneThread: oneThread / pool, fingerprintVsPlainRead: read / pool },
    pageTableBytesPerPage: bytesPerPage,
    digestChoiceGbPerSecondOneThread: digestChoice,
    targets: { gbPerSecond: 1.5, bytesPerPage: 24 },
  };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } else {
    const verdict = (ok: boolean) => (ok ? 'PASS' : 'MISS');
    const out = [
      `image ${values.size} (${pageCount} pages, ${distinct} distinct non-zero), ${report.workers} cores`,
      `  plain sequential read      ${gbps(read).toFixed(2)} GB/s   (baseline)`,
      `  one-thread read + digest   ${gbps(oneThread).toFixed(2)} GB/s   (baseline)`,
      `  vmscatter fingerprint      ${gbps(pool).toFixed(2)} GB/s   ` +
        `= ${report.ratios.fingerprintVsOneThread.toFixed(2)}x one-thread, ` +
        `${report.ratios.fingerprintVsPlainRead.toFixed(2)}x plain read   ` +
        `target >= 1.5 GB/s: ${verdict(gbps(pool) >= 1.5)}`,
      `  page-table memory          ${bytesPerPage.toFixed(1)} bytes/page ` +
        `(4 per page + ${DIGEST_BYTES} per distinct digest + index)   target <= 24: ${verdict(bytesPerPage <= 24)}`,
      `digest candidates, one thread, per 4 KiB page (why keyed SHA-256):`,
      ...Object.entries(digestChoice).map(([name, rate]) => `  ${name.padEnd(26)} ${rate.toFixed(2)} GB/s`),
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  }
} finally {
  cleanup();
}

function writeImage(file: string, pages: number): void {
  const vm = {
    name: 'guest',
    pageCount: pages,
    spec: {
      seed: 42,
      family: 'debian',
      zeroShare: 0.3,
      osShare: 0.4,
      commonShare: 0.05,
      duplicateShare: 0.02,
    },
  };
  const ids = syntheticContentIds(vm);
  const buffer = new Uint8Array(CHUNK_PAGES * PAGE_SIZE);
  const fd = openSync(file, 'w');
  try {
    for (let first = 0; first < pages; first += CHUNK_PAGES) {
      const count = Math.min(CHUNK_PAGES, pages - first);
      readSyntheticPages(ids, first, count, buffer);
      writeSync(fd, buffer, 0, count * PAGE_SIZE);
    }
  } finally {
    closeSync(fd);
  }
}

function forEachChunk(file: string, visit: (chunk: Uint8Array, length: number) => void): void {
  const buffer = new Uint8Array(CHUNK_PAGES * PAGE_SIZE);
  const fd = openSync(file, 'r');
  try {
    for (;;) {
      const n = readSync(fd, buffer, 0, buffer.length, null);
      if (n === 0) break;
      visit(buffer, n);
    }
  } finally {
    closeSync(fd);
  }
}

function plainRead(file: string): void {
  let sink = 0;
  forEachChunk(file, (chunk, n) => (sink ^= chunk[n - 1]!));
  if (sink === 256) process.stderr.write(''); // keep the read from being optimised away
}

function oneThreadHash(file: string): void {
  const digester = new PageDigester(randomDigestKey());
  const out = new Uint8Array(DIGEST_BYTES);
  forEachChunk(file, (chunk, n) => {
    for (let offset = 0; offset < n; offset += PAGE_SIZE) {
      if (!isZeroPage(chunk, offset)) digester.digestInto(chunk, offset, out, 0);
    }
  });
}

/** One-thread per-page throughput of the digests considered, on 64 MiB of random pages. */
function measureDigestChoice(): Record<string, number> {
  const pages = 16384;
  const bytes = new Uint8Array(randomBytes(pages * PAGE_SIZE));
  const key = randomDigestKey();
  const keyed = new PageDigester(key);
  const out = new Uint8Array(DIGEST_BYTES);
  const candidates: Record<string, (page: Uint8Array, offset: number) => void> = {
    'keyed sha-256 (chosen)': (page, offset) => keyed.digestInto(page, offset, out, 0),
    'hmac-sha-256': (page, offset) =>
      createHmac('sha256', key)
        .update(page.subarray(offset, offset + PAGE_SIZE))
        .digest(),
    'blake2b-512': (page, offset) =>
      createHash('blake2b512')
        .update(key)
        .update(page.subarray(offset, offset + PAGE_SIZE))
        .digest(),
  };
  const rates: Record<string, number> = {};
  for (const [name, digest] of Object.entries(candidates)) {
    const seconds = timed(() => {
      for (let p = 0; p < pages; p++) digest(bytes, p * PAGE_SIZE);
    });
    rates[name] = bytes.length / seconds / GB;
  }
  return rates;
}

function timed(run: () => void): number {
  const start = performance.now();
  run();
  return (performance.now() - start) / 1000;
}

async function timedAsync(run: () => Promise<void>): Promise<number> {
  const start = performance.now();
  await run();
  return (performance.now() - start) / 1000;
}
