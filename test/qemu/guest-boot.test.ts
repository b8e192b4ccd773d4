import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { isZeroPage, PAGE_SIZE } from '../../src/memory/page.js';
import { tempDir } from '../support/fixtures.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  guestModuleFiles,
  saveGuestMemory,
  type Guest,
} from '../../bench/harness/qemu-guest.js';

/**
 * One real guest end to end: kernel from the cache (downloaded on the first run), busybox initramfs,
 * QEMU under TCG, QMP status, a RAM snapshot. No skipping: CI installs qemu-system-x86, busybox-static
 * and has apt, so a missing piece is a failure.
 */
const MEMORY_MIB = 128;

function nonZeroPages(path: string): { pages: number; nonZero: number } {
  const chunk = new Uint8Array(1024 * PAGE_SIZE);
  const fd = openSync(path, 'r');
  let pages = 0;
  let nonZero = 0;
  try {
    for (let read; (read = readSync(fd, chunk, 0, chunk.length, null)) > 0;) {
      for (let at = 0; at + PAGE_SIZE <= read; at += PAGE_SIZE, pages++) {
        if (!isZeroPage(chunk, at)) nonZero++;
      }
    }
  } finally {
    closeSync(fd);
  }
  return { pages, nonZero };
}

test(
  'a 128 MiB guest boots under TCG, answers QMP and its RAM can be saved',
  { timeout: 120_000 },
  async (t) => {
    const kernel = await ensureGuestKernel();
    const { dir, cleanup } = tempDir('vmscatter-guest-');
    const booted: Guest[] = []; // stopped, then the directory removed, pass or fail
    t.after(async () => {
      for (const guest of booted) await guest.stop();
      cleanup();
    });
    const initrd = join(dir, 'initrd.gz');
    buildInitramfs(initrd, { seed: 1, workloadMiB: 8, sharedFiles: guestModuleFiles(kernel) });
    const guest = await bootGuest({
      kernel,
      initrd,
      memoryMiB: MEMORY_MIB,
      qmpSocket: join(dir, 'qmp.sock'),
    });
    booted.push(guest);
    assert.match(guest.serial(), /VMSCATTER-GUEST-READY seed=1/);

    const status = await guest.qmp.execute<{ status: string; running: boolean }>('query-status');
    assert.equal(status.status, 'running');
    assert.equal(status.running, true);

    const image = join(dir, 'guest.raw');
    const stopped = guest.qmp.waitForEvent('STOP', 10_000);
    const resumed = guest.qmp.waitForEvent('RESUME', 10_000);
    await saveGuestMemory(guest, image, MEMORY_MIB);
    await Promise.all([stopped, resumed]); // the guest was paused for the snapshot, and resumed
    assert.equal(statSync(image).size, MEMORY_MIB * 2 ** 20);
    const { pages, nonZero } = nonZeroPages(image);
    assert.equal(pages, (MEMORY_MIB * 2 ** 20) / PAGE_SIZE);
    assert.ok(nonZero / pages > 0.01, `only ${nonZero} of ${pages} pages are non-zero`);
    assert.equal((await guest.qmp.execute<{ status: string }>('query-status')).status, 'running');

    const pid = guest.pid;
    await guest.stop();
    assert.ok(guest.qmp.closed);
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'QEMU is gone');
    assert.deepEqual(readdirSync(dir).sort(), ['guest.raw', 'initrd.gz']);
    cleanup();
    assert.equal(existsSync(dir), false);
  },
);
