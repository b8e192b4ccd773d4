/**
 * Real guest memory images for the benchmarks: boots N QEMU guests (Debian kernel, busybox initramfs,
 * TCG; bench/harness/qemu-guest.ts), saves each one's RAM to DIR/guest-<i>.raw once it is ready, and
 * prints per image its zero and non-zero pages and the boot and save times, then how many of all
 * non-zero pages are distinct across the set (the share a dedup-aware scatter has to send).
 *
 *   node dist/bench/guest-images.js --count 8 --memory 256 --out DIR [--json]
 *       [--workload MiB (default memory/8)] [--parallel 2] [--kernel-cache DIR]
 *
 * Guest i is built with seed i, so the images are the same kind of memory on every run (KASLR and the
 * guest's own randomness still differ). An existing image of the right size is reused, not rebooted:
 * delete DIR to make a fresh set. At most two guests run at once: under TCG each pegs a core.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { isZeroPage, PAGE_SIZE } from '../src/memory/page.js';
import {
  bootGuest,
  buildInitramfs,
  DEFAULT_GUEST_CACHE,
  ensureGuestKernel,
  guestModuleFiles,
  saveGuestMemory,
} from './harness/qemu-guest.js';

const MiB = 2 ** 20;

export interface GuestImageOptions {
  readonly count: number;
  readonly memoryMiB: number;
  readonly outDir: string;
  /** MiB of workload files per guest (default memoryMiB / 8). */
  readonly workloadMiB?: number;
  /** Guests booted at once (default and maximum: 2, or the core count if lower). */
  readonly parallel?: number;
  readonly kernelCache?: string;
}

export interface GuestImage {
  readonly index: number;
  readonly path: string;
  readonly pages: number;
  readonly zeroPages: number;
  readonly nonZeroPages: number;
  /** True when the image was already there; the times are then undefined. */
  readonly cached: boolean;
  readonly bootMs?: number;
  readonly saveMs?: number;
}

export interface GuestImageReport {
  readonly kernel: string;
  readonly memoryMiB: number;
  readonly workloadMiB: number;
  readonly images: readonly GuestImage[];
  readonly nonZeroPages: number;
  /** Distinct non-zero page contents across all images. */
  readonly distinctNonZeroPages: number;
  readonly wallMs: number;
}

function countPages(path: string, digests?: Set<string>): { pages: number; zero: number } {
  const chunk = new Uint8Array(1024 * PAGE_SIZE);
  const fd = openSync(path, 'r');
  let pages = 0;
  let zero = 0;
  try {
    for (let read; (read = readSync(fd, chunk, 0, chunk.length, null)) > 0;) {
      for (let at = 0; at + PAGE_SIZE <= read; at += PAGE_SIZE, pages++) {
        if (isZeroPage(chunk, at)) zero++;
        else
          digests?.add(
            createHash('sha256')
              .update(chunk.subarray(at, at + PAGE_SIZE))
              .digest('base64'),
          );
      }
    }
  } finally {
    closeSync(fd);
  }
  return { pages, zero };
}

/** Makes sure DIR/guest-<i>.raw exist for i < count (booting only the missing ones) and describes them. */
export async function ensureGuestImages(options: GuestImageOptions): Promise<GuestImageReport> {
  const started = Date.now();
  const size = options.memoryMiB * MiB;
  const workloadMiB = options.workloadMiB ?? options.memoryMiB / 8;
  const parallel = Math.max(1, Math.min(options.parallel ?? 2, 2, availableParallelism()));
  const kernel = await ensureGuestKernel(options.kernelCache ?? DEFAULT_GUEST_CACHE);
  const modules = guestModuleFiles(kernel);
  mkdirSync(options.outDir, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'vmscatter-guest-images-'));
  const timings = new Map<number, { bootMs: number; saveMs: number }>();
  try {
    const missing = Array.from({ length: options.count }, (_, i) => i).filter((i) => {
      const path = join(options.outDir, `guest-${i}.raw`);
      return !(existsSync(path) && statSync(path).size === size);
    });
    const makeImage = async (i: number) => {
      const initrd = join(work, `initrd-${i}.gz`);
      buildInitramfs(initrd, { seed: i, workloadMiB, sharedFiles: modules });
      const guest = await bootGuest({
        kernel,
        initrd,
        memoryMiB: options.memoryMiB,
        qmpSocket: join(work, `qmp-${i}.sock`),
        readyTimeoutMs: 120_000,
      });
      try {
        const saveStarted = Date.now();
        await saveGuestMemory(guest, resolve(options.outDir, `guest-${i}.raw`), options.memoryMiB);
        timings.set(i, { bootMs: guest.bootMs, saveMs: Date.now() - saveStarted });
      } finally {
        await guest.stop();
        rmSync(initrd, { force: true });
      }
    };
    const worker = async () => {
      for (let i = missing.shift(); i !== undefined; i = missing.shift()) {
        try {
          await makeImage(i);
        } catch (error) {
          missing.length = 0; // the other worker finishes its guest (stopping it cleanly) and takes no more
          throw error;
        }
      }
    };
    const outcomes = await Promise.allSettled(Array.from({ length: parallel }, worker));
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const digests = new Set<string>();
  const images = Array.from({ length: options.count }, (_, index): GuestImage => {
    const path = join(options.outDir, `guest-${index}.raw`);
    const { pages, zero } = countPages(path, digests);
    const timing = timings.get(index);
    return { index, path, pages, zeroPages: zero, nonZeroPages: pages - zero, cached: !timing, ...timing };
  });
  return {
    kernel,
    memoryMiB: options.memoryMiB,
    workloadMiB,
    images,
    nonZeroPages: images.reduce((sum, image) => sum + image.nonZeroPages, 0),
    distinctNonZeroPages: digests.size,
    wallMs: Date.now() - started,
  };
}

function printReport(report: GuestImageReport): void {
  const seconds = (ms: number | undefined) => (ms === undefined ? 'cached' : `${(ms / 1000).toFixed(1)} s`);
  const rows = [['image', 'pages', 'zero', 'non-zero', 'non-zero %', 'boot', 'save']];
  for (const image of report.images) {
    rows.push([
      `guest-${image.index}.raw`,
      String(image.pages),
      String(image.zeroPages),
      String(image.nonZeroPages),
      `${((100 * image.nonZeroPages) / image.pages).toFixed(1)}%`,
      seconds(image.bootMs),
      seconds(image.saveMs),
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  console.log(`kernel ${report.kernel}`);
  console.log(
    `${report.images.length} guests x ${report.memoryMiB} MiB, workload ${report.workloadMiB} MiB each`,
  );
  for (const row of rows) console.log(row.map((cell, c) => cell.padStart(widths[c]!)).join('  '));
  const share = report.nonZeroPages ? (100 * report.distinctNonZeroPages) / report.nonZeroPages : 0;
  console.log(
    `distinct non-zero pages across the set: ${report.distinctNonZeroPages} of ${report.nonZeroPages} ` +
      `(${share.toFixed(1)}%); wall time ${seconds(report.wallMs)}`,
  );
}

function positive(name: string, text: string | undefined): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) {
    process.stderr.write(`--${name}: expected a positive number, got '${text}'\n`);
    process.exit(2);
  }
  return value;
}

async function main(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      count: { type: 'string', default: '8' },
      memory: { type: 'string', default: '256' },
      out: { type: 'string' },
      workload: { type: 'string' },
      parallel: { type: 'string', default: '2' },
      'kernel-cache': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!values.out) {
    process.stderr.write('--out DIR is required\n');
    process.exit(2);
  }
  const memoryMiB = positive('memory', values.memory);
  if (!Number.isInteger(memoryMiB) || memoryMiB < 64 || memoryMiB > 3072) {
    process.stderr.write(`--memory: expected whole MiB in 64..3072, got '${values.memory}'\n`);
    process.exit(2);
  }
  // Ctrl-C: exit through process.exit so the harness's exit hook kills the guests.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  const report = await ensureGuestImages({
    count: Math.floor(positive('count', values.count)),
    memoryMiB,
    outDir: values.out,
    workloadMiB: values.workload === undefined ? undefined : positive('workload', values.workload),
    parallel: Math.floor(positive('parallel', values.parallel)),
    kernelCache: values['kernel-cache'],
  });
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else printReport(report);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
