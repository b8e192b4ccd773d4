import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { connectQmp } from '../../src/qemu/qmp.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  GUEST_TICK_MARKER,
  type Guest,
} from '../support/qemu-guest.js';
import { repoRoot, tempDir } from '../support/fixtures.js';

/**
 * A running QEMU guest moves, live, to a target agent on loopback: scanned through its own migration
 * stream (then cancelled), its pages seeded by multicast, then migrated with every seeded page sent as a
 * reference; the stream digests agree before the destination resumes; the guest's counter goes on at
 * the target, and the source QEMU is gone.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');
const basePort = 36_000 + (process.pid % 1000) * 4;

function lastTick(serial: string): number {
  const ticks = [...serial.matchAll(new RegExp(`${GUEST_TICK_MARKER} (\\d+)`, 'g'))];
  return ticks.length === 0 ? 0 : Number(ticks.at(-1)![1]);
}

function runScatter(
  dir: string,
  topology: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [
      cli,
      'scatter',
      '--topology',
      topology,
      '--work-dir',
      dir,
      '--json',
    ]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test(
  'live scatter: a running guest moves to its target, verified, and keeps running there',
  { timeout: 300_000 },
  async (t) => {
    const { dir, cleanup } = tempDir('vms-live-');
    let guest: Guest | undefined;
    const targetQmp = join(dir, 'agents', 't1', 'run', 'g1.qmp');
    t.after(async () => {
      await guest?.stop().catch(() => undefined);
      if (existsSync(targetQmp)) {
        const qmp = await connectQmp(targetQmp, { connectTimeoutMs: 2000 }).catch(() => undefined);
        await qmp?.execute('quit').catch(() => undefined);
      }
      cleanup();
    });
    const kernel = await ensureGuestKernel();
    const initrd = join(dir, 'initrd.gz');
    buildInitramfs(initrd, { seed: 7, workloadMiB: 8 });
    const vmsQmp = join(dir, 'src-vms.qmp');
    guest = await bootGuest({
      kernel,
      initrd,
      memoryMiB: 128,
      qmpSocket: join(dir, 'src.qmp'),
      extraArgs: ['-qmp', `unix:${vmsQmp},server=on,wait=off`],
    });
    // Let the guest tick a few times at the source.
    while (lastTick(guest.serial()) < 2) await new Promise((r) => setTimeout(r, 200));
    const targetSerial = join(dir, 't1.serial');
    const command = [
      'qemu-system-x86_64',
      ...['-accel', 'tcg', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot'],
      ...['-serial', `file:${targetSerial}`, '-kernel', kernel, '-initrd', initrd],
      ...['-append', 'console=ttyS0 panic=-1 quiet'],
    ];
    const topology = join(dir, 'topology.yaml');
    writeFileSync(
      topology,
      [
        `multicast: { base: 239.255.${150 + (basePort % 50)}.0, size: 4, port: ${basePort + 3} }`,
        'hosts:',
        `  - { name: src, address: 127.0.0.1, port: ${basePort}, role: source, link: 1Gbit }`,
        `  - { name: t1, address: 127.0.0.1, port: ${basePort + 1}, role: target, memory: 512MiB, link: 1Gbit }`,
        'vms:',
        '  - name: g1',
        '    memory: 128MiB',
        `    source: { qemu: { qmp: ${vmsQmp}, command: ${JSON.stringify(command)} } }`,
      ].join('\n'),
    );
    const ticksBefore = lastTick(guest.serial());
    const result = await runScatter(dir, topology);
    assert.equal(result.code, 0, `scatter failed: ${result.stderr}\n${result.stdout}`);
    const report = JSON.parse(result.stdout);
    const vm = report.vms[0];
    assert.equal(vm.verified, true, vm.error);
    assert.equal(vm.target, 't1');
    assert.ok(vm.live.referencedPages > 1000, `pages sent by reference: ${vm.live.referencedPages}`);
    assert.ok(
      vm.live.sentBytes < 0.5 * vm.live.streamBytes,
      `${vm.live.sentBytes} of ${vm.live.streamBytes} stream bytes sent`,
    );
    // The source QEMU quit; the guest's counter goes on at the target.
    await Promise.race([
      guest.exited,
      new Promise((_, reject) => setTimeout(() => reject(new Error('source QEMU still running')), 10_000)),
    ]);
    const deadline = Date.now() + 30_000;
    while (
      lastTick(existsSync(targetSerial) ? readFileSync(targetSerial, 'latin1') : '') <=
      ticksBefore + 1
    ) {
      assert.ok(Date.now() < deadline, `the guest ticks on at the target (source stopped at ${ticksBefore})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  },
);
