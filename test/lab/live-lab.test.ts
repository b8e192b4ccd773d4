import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadTopology } from '../../src/topology/load.js';
import { repoRoot, tempDir } from '../support/fixtures.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  GUEST_SUM_MARKER,
  GUEST_TICK_MARKER,
  lastMarked,
  quitQemuAt,
  type Guest,
} from '../../bench/harness/qemu-guest.js';
import {
  createLab,
  findTool,
  labAvailable,
  watchProcess,
  type ProcessWatch,
} from '../../bench/harness/lab.js';

/**
 * The issue's "done when", literally: `vmscatter scatter --topology topologies/lab-4.yaml` moves the
 * four running guests that file describes from the source to the three targets of the network lab.
 * The lab is created with the file's addresses, the guests' kernel and initramfs files go where the
 * file's commands look for them (its directory, /run/vmscatter-lab-4), and the source guests are booted
 * in src's namespace with the file's QMP sockets. Every guest goes on at its target (its counter passes
 * the value it had), the checksum it computes over the data it wrote at boot is unchanged, and no QEMU
 * is left at the source.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');
/** As the commands below are given it, relative to the repository (the agents' and the job's cwd). */
const TOPOLOGY = 'topologies/lab-4.yaml';
/** The directory lab-4.yaml's QMP sockets and command lines name. */
const LAB_DIR = '/run/vmscatter-lab-4';
const HOSTS = ['src', 't1', 't2', 't3'];
const TARGETS = HOSTS.slice(1);
const MiB = 1024 * 1024;

/** The argument after `flag` in a command line. */
function argAfter(command: readonly string[], flag: string): string {
  const at = command.indexOf(flag);
  assert.ok(at >= 0 && at + 1 < command.length, `the command has ${flag}: ${command.join(' ')}`);
  return command[at + 1]!;
}

test(
  'lab live scatter: topologies/lab-4.yaml, 4 running guests -> 3 targets, each goes on at its target unchanged',
  { timeout: 480_000 },
  async (t) => {
    const started = Date.now();
    const available = labAvailable();
    assert.ok(available.ok, available.ok ? '' : `the network lab is needed: ${available.why}`);

    // What the file asks for: its hosts, and per guest the paths its command line names.
    const topology = loadTopology(join(repoRoot, TOPOLOGY));
    assert.deepEqual(
      topology.hosts.map((h) => h.name),
      HOSTS,
    );
    const vms = topology.vms.map((vm) => {
      assert.equal(vm.source.kind, 'qemu', `${vm.name} is a running guest`);
      const { qmp, command } = vm.source as { qmp: string; command: readonly string[] };
      const serial = argAfter(command, '-serial').replace(/^file:/, '');
      const kernel = argAfter(command, '-kernel');
      const initrd = argAfter(command, '-initrd');
      for (const path of [qmp, serial, kernel, initrd]) assert.ok(path.startsWith(`${LAB_DIR}/`), path);
      const memoryMiB = vm.memoryBytes / MiB;
      // The destination's devices must be the source's: bootGuest's arguments, with the serial to a file.
      assert.deepEqual(command, [
        'qemu-system-x86_64',
        ...['-accel', 'tcg', '-m', String(memoryMiB), '-smp', '1'],
        ...['-nodefaults', '-display', 'none', '-no-reboot', '-serial', `file:${serial}`],
        ...['-kernel', kernel, '-initrd', initrd],
        ...['-append', 'console=ttyS0 panic=-1 quiet'],
      ]);
      return { name: vm.name, memoryMiB, qmp, serial, kernel, initrd };
    });
    assert.equal(vms.length, 4);
    assert.equal(new Set(vms.map((vm) => vm.kernel)).size, 1, 'one guest kernel');

    const { dir, cleanup } = tempDir('vms-livelab-');
    const lab = await createLab({ hosts: HOSTS, subnet: '10.77.0.0/24' });
    const guests: Guest[] = [];
    const agents: ProcessWatch[] = [];
    t.after(async () => {
      for (const guest of guests) await guest.stop().catch(() => undefined);
      for (const vm of vms)
        for (const target of TARGETS) await quitQemuAt(join(dir, 'agents', target, 'run', `${vm.name}.qmp`));
      await lab.destroy();
      cleanup();
      rmSync(LAB_DIR, { recursive: true, force: true });
    });
    for (const host of topology.hosts) assert.equal(lab.host(host.name).address, host.address, host.name);
    await lab.shape('src', { rate: '1gbit' });

    // The file's directory, afresh (createLab has swept the namespaces, and QEMUs, of dead runs).
    for (const vm of vms) await quitQemuAt(vm.qmp);
    rmSync(LAB_DIR, { recursive: true, force: true });
    mkdirSync(LAB_DIR, { recursive: true });
    copyFileSync(await ensureGuestKernel(), vms[0]!.kernel);
    for (const [i, vm] of vms.entries()) {
      // g4 writes memory steadily (1 MB/s); the others touch a little.
      buildInitramfs(vm.initrd, { seed: i + 1, workloadMiB: 8, dirtyKiBPerSecond: i === 3 ? 1024 : 256 });
    }
    // The source guests run in src's namespace. The harness keeps a QMP socket of its own; vmscatter
    // uses the file's.
    const ip = findTool('ip');
    assert.ok(ip, "'ip' (iproute2) is needed");
    for (const vm of vms) {
      guests.push(
        await bootGuest({
          kernel: vm.kernel,
          initrd: vm.initrd,
          memoryMiB: vm.memoryMiB,
          qmpSocket: join(dir, `${vm.name}-harness.qmp`),
          extraArgs: ['-qmp', `unix:${vm.qmp},server=on,wait=off`],
          wrap: [ip, 'netns', 'exec', lab.host('src').namespace],
          readyTimeoutMs: 120_000,
        }),
      );
    }
    // Wait for every guest's first checksum line.
    const deadline = Date.now() + 60_000;
    while (!guests.every((g) => lastMarked(g.serial(), GUEST_SUM_MARKER))) {
      assert.ok(Date.now() < deadline, 'every guest prints its checksum');
      await new Promise((r) => setTimeout(r, 200));
    }
    const booted = Date.now();

    const secret = join(dir, 'secret');
    writeFileSync(secret, 'the live lab deployment secret, 32+', { mode: 0o600 });
    for (const target of TARGETS) {
      const agent = watchProcess(
        lab.spawn(
          target,
          process.execPath,
          [
            ...[cli, 'agent', '--topology', TOPOLOGY, '--host', target],
            ...['--dir', join(dir, 'agents', target), '--secret-file', secret],
          ],
          { cwd: repoRoot },
        ),
      );
      await agent.waitFor(/listening/, 20_000);
      agents.push(agent);
    }
    const before = guests.map((g) => ({
      tick: Number(lastMarked(g.serial(), GUEST_TICK_MARKER)),
      sum: lastMarked(g.serial(), GUEST_SUM_MARKER),
    }));
    const job = watchProcess(
      lab.spawn(
        'src',
        process.execPath,
        [
          ...[cli, 'scatter', '--topology', TOPOLOGY, '--work-dir', dir, '--json'],
          ...['--secret-file', secret],
        ],
        { cwd: repoRoot },
      ),
    );
    const result = await job.exit(300_000);
    const scattered = Date.now();
    assert.equal(result.code, 0, `scatter failed: ${result.stderr}\n${result.stdout.slice(-3000)}`);
    const report = JSON.parse(result.stdout);
    t.diagnostic(
      `source link: multicast ${report.source.multicastWireBytes} B; seconds ${JSON.stringify(report.seconds)}`,
    );
    for (const vm of report.vms) {
      t.diagnostic(
        `${vm.name} -> ${vm.target}: downtime ${vm.live?.downtimeMs} ms, ${vm.live?.referencedPages} pages ` +
          `by reference, ${vm.live?.sentPages} sent, stream ${vm.live?.streamBytes} B, ${vm.live?.seconds} s`,
      );
      assert.equal(vm.verified, true, `${vm.name}: ${vm.error}`);
      assert.ok(vm.live.referencedPages > 0, `${vm.name} sent pages by reference`);
    }
    // Every VM went to a target, within what the file lets each target take.
    assert.deepEqual(
      report.vms.map((vm: { name: string }) => vm.name).sort(),
      vms.map((vm) => vm.name).sort(),
    );
    for (const vm of report.vms) assert.ok(TARGETS.includes(vm.target), `${vm.name} went to ${vm.target}`);
    // The file lets a target take two of the four: the guests go to several hosts.
    assert.ok(
      new Set(report.vms.map((vm: { target: string }) => vm.target)).size >= 2,
      'spread over targets',
    );
    for (const host of topology.hosts.filter((h) => h.role === 'target')) {
      const placed = report.vms.filter((vm: { target: string }) => vm.target === host.name);
      const bytes = placed.reduce(
        (sum: number, vm: { name: string }) =>
          sum + topology.vms.find((v) => v.name === vm.name)!.memoryBytes,
        0,
      );
      assert.ok(
        bytes <= host.memoryBytes,
        `${host.name} holds ${bytes} B of guests, at most ${host.memoryBytes}`,
      );
      assert.ok(
        placed.length <= host.maxVms,
        `${host.name} holds ${placed.length} VMs, at most ${host.maxVms}`,
      );
    }

    // No QEMU left at the source; every guest goes on at its target with its data unchanged.
    await Promise.all(guests.map((g) => g.exited));
    const left = execFileSync(ip, ['netns', 'pids', lab.host('src').namespace], { encoding: 'utf8' })
      .split('\n')
      .filter((pid) => pid !== '')
      .map((pid) => {
        try {
          return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
        } catch {
          return ''; // gone since the listing
        }
      })
      .filter((name) => name.startsWith('qemu'));
    assert.deepEqual(left, [], 'no QEMU in the source namespace');
    for (const [i, vm] of vms.entries()) {
      const until = Date.now() + 60_000;
      let serial = '';
      for (;;) {
        serial = existsSync(vm.serial) ? readFileSync(vm.serial, 'latin1') : '';
        const tick = Number(lastMarked(serial, GUEST_TICK_MARKER) ?? 0);
        if (tick > before[i]!.tick + 1 && lastMarked(serial, GUEST_SUM_MARKER)) break;
        assert.ok(Date.now() < until, `${vm.name} goes on at its target (it was at ${before[i]!.tick})`);
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.equal(lastMarked(serial, GUEST_SUM_MARKER), before[i]!.sum, `${vm.name}'s data unchanged`);
    }
    for (const agent of agents) agent.child.kill('SIGTERM');
    t.diagnostic(
      `boot ${((booted - started) / 1000).toFixed(1)} s, scatter ${((scattered - booted) / 1000).toFixed(1)} s, ` +
        `total ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  },
);
