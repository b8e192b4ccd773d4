import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { connectQmp } from '../../src/qemu/qmp.js';
import { repoRoot, tempDir } from '../support/fixtures.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  quitQemuAt,
  type Guest,
} from '../../bench/harness/qemu-guest.js';
import {
  createLab,
  labAvailable,
  watchProcess,
  type Lab,
  type ProcessWatch,
} from '../../bench/harness/lab.js';

/**
 * `vmscatter evacuate` as an evacuation script drives it, with running guests in the namespace lab:
 * a dry run that changes nothing; one interrupted by Ctrl-C mid-migration (rolled back); an evacuation that loses a target's agent mid-way (exit 2, the JSON
 * says which VMs moved and which stayed, and those still run at the source); a re-run that moves only
 * the rest (exit 0); and a third run that finds nothing left.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');
const TARGETS = ['t1', 't2', 't3'];
/** g3 and g4 go to t1, which takes two; t2 and t3 one each: unequal capacity, placement by pins. */
const PINS: Record<string, string> = { g1: 't2', g2: 't3', g3: 't1', g4: 't1' };

async function startAgent(lab: Lab, dir: string, topology: string, host: string): Promise<ProcessWatch> {
  const agent = watchProcess(
    lab.spawn(host, process.execPath, [
      ...[cli, 'agent', '--topology', topology, '--host', host],
      ...['--dir', join(dir, 'agents', host), '--secret-file', join(dir, 'secret')],
    ]),
  );
  await agent.waitFor(/listening/, 20_000);
  return agent;
}

async function status(path: string): Promise<string | undefined> {
  if (!existsSync(path)) return undefined;
  const qmp = await connectQmp(path, { connectTimeoutMs: 1500 }).catch(() => undefined);
  const reply = (await qmp?.execute('query-status').catch(() => undefined)) as
    { status?: string } | undefined;
  await qmp?.close().catch(() => undefined);
  return reply?.status;
}

test(
  'lab evacuate: dry run, Ctrl-C, partial failure (exit 2, JSON), re-run moves the rest',
  { timeout: 600_000 },
  async (t) => {
    const available = labAvailable();
    assert.ok(available.ok, available.ok ? '' : `the network lab is needed: ${available.why}`);
    const { dir, cleanup } = tempDir('vms-evac-');
    const lab = await createLab({ hosts: ['src', ...TARGETS] });
    const guests: Guest[] = [];
    const agents = new Map<string, ProcessWatch>();
    t.after(async () => {
      for (const agent of agents.values()) agent.child.kill('SIGKILL');
      for (const guest of guests) await guest.stop().catch(() => undefined);
      for (const vm of Object.keys(PINS))
        for (const target of TARGETS) await quitQemuAt(join(dir, 'agents', target, 'run', `${vm}.qmp`));
      await lab.destroy();
      cleanup();
    });
    const kernel = await ensureGuestKernel();
    const vms = Object.keys(PINS).map((name, i) => {
      const initrd = join(dir, `${name}.initrd.gz`);
      buildInitramfs(initrd, { seed: i + 1, workloadMiB: 8 });
      return { name, initrd, qmp: join(dir, `${name}-vms.qmp`) };
    });
    for (const vm of vms)
      guests.push(
        await bootGuest({
          kernel,
          initrd: vm.initrd,
          memoryMiB: 128,
          qmpSocket: join(dir, `${vm.name}.qmp`),
          extraArgs: ['-qmp', `unix:${vm.qmp},server=on,wait=off`],
          readyTimeoutMs: 120_000,
        }),
      );
    const topology = join(dir, 'topology.yaml');
    writeFileSync(
      topology,
      [
        'multicast: { base: 239.255.95.0, size: 4, port: 7790 }',
        'hosts:',
        `  - { name: src, address: ${lab.host('src').address}, port: 7780, role: source, link: 1Gbit }`,
        `  - { name: t1, address: ${lab.host('t1').address}, port: 7781, role: target, memory: 256MiB, maxVms: 2, link: 1Gbit }`,
        `  - { name: t2, address: ${lab.host('t2').address}, port: 7781, role: target, memory: 128MiB, maxVms: 1, link: 1Gbit }`,
        `  - { name: t3, address: ${lab.host('t3').address}, port: 7781, role: target, memory: 192MiB, maxVms: 1, link: 1Gbit }`,
        'vms:',
        ...vms.flatMap((vm) => {
          const command = [
            'qemu-system-x86_64',
            ...['-accel', 'tcg', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot'],
            ...['-serial', 'null', '-kernel', kernel, '-initrd', vm.initrd],
            ...['-append', 'console=ttyS0 panic=-1 quiet'],
          ];
          return [
            `  - name: ${vm.name}`,
            '    memory: 128MiB',
            `    target: ${PINS[vm.name]}`,
            `    source: { qemu: { qmp: ${vm.qmp}, command: ${JSON.stringify(command)} } }`,
          ];
        }),
      ].join('\n'),
    );
    writeFileSync(join(dir, 'secret'), 'the evacuation lab deployment secret', { mode: 0o600 });
    for (const host of TARGETS) agents.set(host, await startAgent(lab, dir, topology, host));
    const evacuate = (...extra: string[]) =>
      watchProcess(
        lab.spawn('src', process.execPath, [
          ...[cli, 'evacuate', '--host', 'src', '--topology', topology, '--work-dir', dir],
          ...['--secret-file', join(dir, 'secret'), '--json', '--yes', ...extra],
        ]),
      );

    // A dry run plans and checks, and moves nothing.
    const dry = await evacuate('--dry-run').exit(180_000);
    assert.equal(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout);
    assert.equal(plan.dryRun, true);
    assert.deepEqual(
      Object.fromEntries(plan.plan.map((p: { name: string; target: string }) => [p.name, p.target])),
      PINS,
    );
    assert.deepEqual(plan.moved, []);
    for (const vm of vms) assert.equal(await status(vm.qmp), 'running', `${vm.name} still at the source`);

    // Ctrl-C as g1's destination waits for its stream: g1 rolls back, nothing moved, every guest runs on.
    const interrupted = evacuate();
    const g1In = join(dir, 'agents', 't2', 'run', 'g1.in');
    const until = Date.now() + 240_000;
    while (!existsSync(g1In)) {
      assert.ok(Date.now() < until, "g1's migration to t2 starts");
      await new Promise((r) => setTimeout(r, 5));
    }
    interrupted.child.kill('SIGINT');
    const stopped = await interrupted.exit(120_000);
    assert.equal(stopped.code, 1, `nothing moved: exit 1: ${stopped.stderr}`);
    assert.deepEqual(JSON.parse(stopped.stdout).moved, []);
    for (const vm of vms) assert.equal(await status(vm.qmp), 'running', `${vm.name} runs on at the source`);

    // t1's agent dies as g3's destination waits for its stream: g1 and g2 move, g3 and g4 stay.
    const partial = evacuate();
    const inSocket = join(dir, 'agents', 't1', 'run', 'g3.in');
    const deadline = Date.now() + 240_000;
    while (!existsSync(inSocket)) {
      assert.ok(Date.now() < deadline, "g3's migration to t1 starts");
      await new Promise((r) => setTimeout(r, 5));
    }
    agents.get('t1')!.child.kill('SIGKILL');
    const first = await partial.exit(240_000);
    assert.equal(first.code, 2, `partial evacuation exits 2: ${first.stderr}`);
    const outcome = JSON.parse(first.stdout);
    assert.deepEqual(outcome.moved.map((m: { name: string }) => m.name).sort(), ['g1', 'g2']);
    assert.deepEqual(outcome.stayed.map((s: { name: string }) => s.name).sort(), ['g3', 'g4']);
    for (const stayed of outcome.stayed) assert.match(stayed.reason, /t1/);
    assert.equal(await status(vms[2]!.qmp), 'running', 'g3 runs on at the source');
    assert.equal(await status(vms[3]!.qmp), 'running', 'g4 runs on at the source');

    // The agent is back: a re-run moves only what is left.
    agents.set('t1', await startAgent(lab, dir, topology, 't1'));
    const second = await evacuate().exit(240_000);
    assert.equal(second.code, 0, second.stderr);
    const rest = JSON.parse(second.stdout);
    assert.deepEqual(rest.moved.map((m: { name: string }) => m.name).sort(), ['g3', 'g4']);
    assert.deepEqual(rest.absent.map((a: { name: string }) => a.name).sort(), ['g1', 'g2']);
    for (const vm of vms) {
      const at = join(dir, 'agents', PINS[vm.name]!, 'run', `${vm.name}.qmp`);
      assert.equal(await status(at), 'running', `${vm.name} runs at ${PINS[vm.name]}`);
    }
    await Promise.all(guests.map((g) => g.exited));

    // Nothing left: exit 0, everything reported absent.
    const third = await evacuate().exit(120_000);
    assert.equal(third.code, 0, third.stderr);
    assert.equal(JSON.parse(third.stdout).absent.length, 4);
  },
);
