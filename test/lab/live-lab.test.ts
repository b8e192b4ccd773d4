import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoRoot, tempDir } from '../support/fixtures.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  GUEST_SUM_MARKER,
  GUEST_TICK_MARKER,
  quitQemuAt,
  type Guest,
} from '../support/qemu-guest.js';
import { createLab, labAvailable, watchProcess, type ProcessWatch } from './lab.js';

/**
 * Live scatter across hosts: four running guests (one writing memory steadily) move from the source to
 * two target hosts in network namespaces. Every guest goes on at its target (its counter passes the
 * value it had), the checksum it computes over the data it wrote at boot is unchanged, and no QEMU is
 * left at the source.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');
const TARGETS = ['t1', 't2'];

const lastOf = (serial: string, marker: string) =>
  [...serial.matchAll(new RegExp(`${marker} (\\w+)`, 'g'))].at(-1)?.[1];

test(
  'lab live scatter: 4 running guests -> 2 targets, each goes on at its target unchanged',
  { timeout: 480_000 },
  async (t) => {
    const available = labAvailable();
    assert.ok(available.ok, available.ok ? '' : `the network lab is needed: ${available.why}`);
    const { dir, cleanup } = tempDir('vms-livelab-');
    const lab = await createLab({ hosts: ['src', ...TARGETS] });
    const guests: Guest[] = [];
    const agents: ProcessWatch[] = [];
    t.after(async () => {
      for (const guest of guests) await guest.stop().catch(() => undefined);
      for (const vm of ['g1', 'g2', 'g3', 'g4'])
        for (const target of TARGETS) await quitQemuAt(join(dir, 'agents', target, 'run', `${vm}.qmp`));
      await lab.destroy();
      cleanup();
    });
    await lab.shape('src', { rate: '1gbit' });
    const kernel = await ensureGuestKernel();
    const vms = [1, 2, 3, 4].map((n) => {
      const initrd = join(dir, `g${n}.initrd.gz`);
      // g4 writes memory steadily (1 MB/s); the others touch a little.
      buildInitramfs(initrd, { seed: n, workloadMiB: 8, dirtyKiBPerSecond: n === 4 ? 1024 : 256 });
      return {
        name: `g${n}`,
        initrd,
        vmsQmp: join(dir, `g${n}-vms.qmp`),
        serial: join(dir, `g${n}.target.serial`),
      };
    });
    for (const vm of vms) {
      guests.push(
        await bootGuest({
          kernel,
          initrd: vm.initrd,
          memoryMiB: 128,
          qmpSocket: join(dir, `${vm.name}.qmp`),
          extraArgs: ['-qmp', `unix:${vm.vmsQmp},server=on,wait=off`],
          readyTimeoutMs: 120_000,
        }),
      );
    }
    // Wait for every guest's first checksum line.
    const deadline = Date.now() + 60_000;
    while (!guests.every((g) => lastOf(g.serial(), GUEST_SUM_MARKER))) {
      assert.ok(Date.now() < deadline, 'every guest prints its checksum');
      await new Promise((r) => setTimeout(r, 200));
    }
    const topology = join(dir, 'topology.yaml');
    writeFileSync(
      topology,
      [
        'multicast: { base: 239.255.94.0, size: 4, port: 7690 }',
        'hosts:',
        `  - { name: src, address: ${lab.host('src').address}, port: 7680, role: source, link: 1Gbit }`,
        ...TARGETS.map(
          (name) =>
            `  - { name: ${name}, address: ${lab.host(name).address}, port: 7681, role: target, memory: 512MiB, maxVms: 2, link: 1Gbit }`,
        ),
        'vms:',
        ...vms.flatMap((vm) => {
          const command = [
            'qemu-system-x86_64',
            ...['-accel', 'tcg', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot'],
            ...['-serial', `file:${vm.serial}`, '-kernel', kernel, '-initrd', vm.initrd],
            ...['-append', 'console=ttyS0 panic=-1 quiet'],
          ];
          return [
            `  - name: ${vm.name}`,
            '    memory: 128MiB',
            `    source: { qemu: { qmp: ${vm.vmsQmp}, command: ${JSON.stringify(command)} } }`,
          ];
        }),
      ].join('\n'),
    );
    writeFileSync(join(dir, 'secret'), 'the live lab deployment secret, 32+', { mode: 0o600 });
    for (const target of TARGETS) {
      const agent = watchProcess(
        lab.spawn(target, process.execPath, [
          ...[cli, 'agent', '--topology', topology, '--host', target],
          ...['--dir', join(dir, 'agents', target), '--secret-file', join(dir, 'secret')],
        ]),
      );
      await agent.waitFor(/listening/, 20_000);
      agents.push(agent);
    }
    const before = guests.map((g) => ({
      tick: Number(lastOf(g.serial(), GUEST_TICK_MARKER)),
      sum: lastOf(g.serial(), GUEST_SUM_MARKER),
    }));
    const job = watchProcess(
      lab.spawn('src', process.execPath, [
        ...[cli, 'scatter', '--topology', topology, '--work-dir', dir, '--json'],
        ...['--secret-file', join(dir, 'secret')],
      ]),
    );
    const result = await job.exit(300_000);
    assert.equal(result.code, 0, `scatter failed: ${result.stderr}\n${result.stdout.slice(-3000)}`);
    const report = JSON.parse(result.stdout);
    t.diagnostic(
      `source link: multicast ${report.source.multicastWireBytes} B; seconds ${JSON.stringify(report.seconds)}`,
    );
    for (const vm of report.vms) {
      assert.equal(vm.verified, true, `${vm.name}: ${vm.error}`);
      assert.ok(vm.live.referencedPages > 0, `${vm.name} sent pages by reference`);
    }
    assert.deepEqual(
      TARGETS.map((target) => report.vms.filter((vm: { target: string }) => vm.target === target).length),
      [2, 2],
    );
    // No QEMU left at the source; every guest goes on at its target with its data unchanged.
    await Promise.all(guests.map((g) => g.exited));
    for (const [i, vm] of vms.entries()) {
      const until = Date.now() + 60_000;
      let serial = '';
      for (;;) {
        serial = existsSync(vm.serial) ? readFileSync(vm.serial, 'latin1') : '';
        const tick = Number(lastOf(serial, GUEST_TICK_MARKER) ?? 0);
        if (tick > before[i]!.tick + 1 && lastOf(serial, GUEST_SUM_MARKER)) break;
        assert.ok(Date.now() < until, `${vm.name} goes on at its target (it was at ${before[i]!.tick})`);
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.equal(lastOf(serial, GUEST_SUM_MARKER), before[i]!.sum, `${vm.name}'s data unchanged`);
    }
    for (const agent of agents) agent.child.kill('SIGTERM');
  },
);
