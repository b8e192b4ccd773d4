import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import { openGuestRam, type GuestRam } from '../qemu/guest-ram.js';
import { LivePageCollector, type LiveScanOptions, type ScannedLiveVm } from './source.js';

/**
 * Phase 3 for a running VM: its RAM read as it runs, without a migration (qemu/guest-ram.ts says how:
 * its shared memory file, QEMU's process memory, or pmemsave in 4 MiB steps). A scan migration is never
 * used: one that completes before it is cancelled leaves QEMU's dirty tracking in a state that the
 * real migration after it has been seen to lose pages from.
 *
 * A page may change while it is read; what was read is what is fingerprinted (and, read by pmemsave,
 * stored), so digest and bytes always agree, and a later change is sent by the live migration as any
 * dirtied page is. Memory this process can read as a file is not copied: seeding reads a page there
 * again and sends it only if it still has the scanned digest (round-encoder-worker.ts). Pages of
 * the RAM block the guest does not see (under the legacy ROM window) count as zero pages here.
 */
export async function scanRunningVm(options: LiveScanOptions): Promise<ScannedLiveVm> {
  const ram = await openGuestRam(options.qmp, {
    ...(options.qmpSocket ? { qmpSocket: options.qmpSocket } : {}),
    ...(options.pid !== undefined ? { pid: options.pid } : {}),
    scratchDir: `${options.runDir}/ram`,
    name: options.vm,
    running: true,
  });
  try {
    return await scanGuestRam(ram, options);
  } finally {
    ram.close();
  }
}

const CHUNK_BYTES = 4 << 20;

/**
 * Two buffers in turn: while the event loop files one chunk's pages (digest table, store), the thread
 * pool reads and digests the next (PageDigester.scanPages; where the addon is missing, both here).
 */
async function scanGuestRam(ram: GuestRam, options: LiveScanOptions): Promise<ScannedLiveVm> {
  const { digester } = options;
  // Memory this process can read again needs no copy: seeding reads it there (and checks it).
  const memory = ram.file && { path: ram.file.path, base: ram.file.position };
  const collector = new LivePageCollector(options.table, digester, memory ? undefined : options.store);
  collector.reset(Math.ceil(ram.map.bytes / PAGE_SIZE));
  // Whole pages: the ranges the guest sees are page-aligned.
  const chunks = ram.map.ranges.flatMap((range) =>
    Array.from({ length: Math.ceil(range.length / CHUNK_BYTES) }, (_, k) => {
      const at = k * CHUNK_BYTES;
      return {
        offset: range.offset + at,
        pages: Math.floor(Math.min(CHUNK_BYTES, range.length - at) / PAGE_SIZE),
      };
    }),
  );
  const buffers = [0, 1].map(() => ({
    pages: new Uint8Array(CHUNK_BYTES),
    digests: new Uint8Array((CHUNK_BYTES / PAGE_SIZE) * DIGEST_BYTES),
    zeros: new Uint8Array(CHUNK_BYTES / PAGE_SIZE),
  }));
  const file = digester.isNative ? ram.file : undefined;
  const prepare = async (k: number) => {
    const { offset, pages } = chunks[k]!;
    const buffer = buffers[k % 2]!;
    if (!file) await ram.read(buffer.pages, offset, pages * PAGE_SIZE);
    const at = file && { fd: file.fd, position: file.position + offset, pid: file.pid };
    // The checks go straight into the collector's table: each chunk writes its own pages' part.
    const checks = collector.checksFrom(offset / PAGE_SIZE);
    await digester.scanPages(at, buffer.pages, pages, buffer.digests, buffer.zeros, checks);
  };
  let next = chunks.length > 0 ? prepare(0) : undefined;
  for (let k = 0; k < chunks.length; k++) {
    options.signal?.throwIfAborted();
    await next;
    next = k + 1 < chunks.length ? prepare(k + 1) : undefined;
    next?.catch(() => undefined); // awaited on the next turn
    const { offset, pages } = chunks[k]!;
    const { pages: bytes, digests, zeros } = buffers[k % 2]!;
    const first = offset / PAGE_SIZE;
    for (let i = 0; i < pages; i++)
      if (zeros[i] === 0)
        collector.digested(
          first + i,
          digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES),
          bytes,
          i * PAGE_SIZE,
        );
  }
  await next;
  collector.flush();
  return {
    pages: collector.pages(options.vm),
    method: ram.method,
    ...(memory ? { memory } : {}),
    ...(digester.isNative ? { checks: collector.checks(ram.map.block) } : {}),
  };
}
