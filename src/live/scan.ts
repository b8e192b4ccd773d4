import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { PAGE_SIZE } from '../memory/page.js';
import { openGuestRam, type GuestRam } from '../qemu/guest-ram.js';
import { LivePageCollector, type LiveScanOptions, type ScannedLiveVm } from './source.js';

/**
 * Phase 3 for a running VM: its RAM read as it runs, without a migration (qemu/guest-ram.ts says how:
 * its shared memory file, QEMU's process memory, or pmemsave in 4 MiB steps). A scan migration is never
 * used: one that completes before it is cancelled leaves QEMU's dirty tracking in a state that the
 * real migration after it has been seen to lose pages from.
 *
 * A page may change while it is read; what was read is what is fingerprinted and stored, so digest and
 * bytes always agree, and a later change is sent by the live migration as any dirtied page is. Pages of
 * the RAM block the guest does not see (under the legacy ROM window) count as zero pages here.
 */
export async function scanRunningVm(options: LiveScanOptions): Promise<ScannedLiveVm> {
  const ram = await openGuestRam(options.qmp, {
    ...(options.qmpSocket ? { qmpSocket: options.qmpSocket } : {}),
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

async function scanGuestRam(ram: GuestRam, options: LiveScanOptions): Promise<ScannedLiveVm> {
  const collector = new LivePageCollector(options.table, options.digester, options.store);
  const pageCount = Math.ceil(ram.map.bytes / PAGE_SIZE);
  collector.reset(pageCount);
  const chunk = new Uint8Array(CHUNK_BYTES);
  for (const range of ram.map.ranges) {
    for (let at = 0; at < range.length; at += CHUNK_BYTES) {
      options.signal?.throwIfAborted();
      const length = Math.min(CHUNK_BYTES, range.length - at);
      await ram.read(chunk, range.offset + at, length);
      const first = (range.offset + at) / PAGE_SIZE;
      for (let i = 0; i * PAGE_SIZE < length; i++) collector.page(first + i, chunk, i * PAGE_SIZE);
      await yieldToEventLoop();
    }
  }
  collector.flush();
  return { pages: collector.pages(options.vm), method: ram.method };
}
