import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  lastTick,
  quitQemuAt,
  type Guest,
} from '../../bench/harness/qemu-guest.js';
import { repoRoot, tempDir } from '../support/fixtures.js';

/**
 * Running QEMU guests move, live, to a target agent on loopback: scanned from their memory as they run
 * (QEMU's process memory, or their shared memory file), their pages seeded by multicast, then migrated
 * with every seeded page sent as a reference; the stream digests and the guest memory at both ends
 * agree before the destination resumes. And when the target's agent
 * dies mid-migration, the guest runs on at its source.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');
const basePort = 36_000 + (process.pid % 1000) * 4;

function runScatter(dir: string, topology: string) {
  return runCli([cli, 'scatter', '--topology', topology, '--work-dir', dir, '--json']);
}

function runCli(args: readonly string[]) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, args);
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

interface Source {
  readonly guest: Guest;
  readonly topology: string;
}

/** QEMU arguments keeping the guest's RAM in a shared file (which vmscatter then scans directly). */
const memoryFileArgs = (path: string) => [
  ...['-object', `memory-backend-file,id=ram0,size=128M,mem-path=${path},share=on`],
  ...['-machine', 'memory-backend=ram0'],
];

/**
 * Boots the source guest and writes a topology moving it to t1 (ports from `port`); with `memoryFile`
 * its RAM (and its destination's) lives in a shared file.
 */
async function bootSource(dir: string, port: number, memoryFile = false): Promise<Source> {
  const kernel = await ensureGuestKernel();
  const initrd = join(dir, 'initrd.gz');
  buildInitramfs(initrd, { seed: 7, workloadMiB: 8 });
  // A second QMP socket for vmscatter: QEMU serves one client per socket, and the harness holds one.
  const vmsQmp = join(dir, 'src-vms.qmp');
  const guest = await bootGuest({
    kernel,
    initrd,
    memoryMiB: 128,
    qmpSocket: join(dir, 'src.qmp'),
    extraArgs: [
      ...['-qmp', `unix:${vmsQmp},server=on,wait=off`],
      ...(memoryFile ? memoryFileArgs(join(dir, 'src.mem')) : []),
    ],
  });
  while (lastTick(guest.serial()) < 2) await new Promise((r) => setTimeout(r, 200));
  const command = [
    'qemu-system-x86_64',
    ...['-accel', 'tcg', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot'],
    ...['-serial', `file:${join(dir, 't1.serial')}`, '-kernel', kernel, '-initrd', initrd],
    ...['-append', 'console=ttyS0 panic=-1 quiet'],
    ...(memoryFile ? memoryFileArgs(join(dir, 't1.mem')) : []),
  ];
  const topology = join(dir, 'topology.yaml');
  writeFileSync(
    topology,
    [
      `multicast: { base: 239.255.${150 + (port % 50)}.0, size: 4, port: ${port + 3} }`,
      'hosts:',
      `  - { name: src, address: 127.0.0.1, port: ${port}, role: source, link: 1Gbit }`,
      `  - { name: t1, address: 127.0.0.1, port: ${port + 1}, role: target, memory: 512MiB, link: 1Gbit }`,
      'vms:',
      '  - name: g1',
      '    memory: 128MiB',
      `    source: { qemu: { qmp: ${vmsQmp}, command: ${JSON.stringify(command)} } }`,
    ].join('\n'),
  );
  return { guest, topology };
}

/**
 * Boots a source guest (RAM in a shared file with `scan` 'memory-file'), shows its plan, moves it with
 * `vmscatter scatter`, and checks what every move must give: verified, read the expected way, pages
 * sent by reference, the source QEMU gone and the guest ticking on at its target. Returns the VM's
 * report for what a test checks besides.
 */
async function moveOneGuest(
  t: TestContext,
  port: number,
  scan: 'process-memory' | 'memory-file',
): Promise<{ vm: { target: string; live: Record<string, number | string> }; dir: string; topology: string }> {
  const { dir, cleanup } = tempDir('vms-live-');
  const started: { source?: Source } = {};
  t.after(async () => {
    await started.source?.guest.stop().catch(() => undefined);
    await quitQemuAt(join(dir, 'agents', 't1', 'run', 'g1.qmp'));
    cleanup();
  });
  const source = (started.source = await bootSource(dir, port, scan === 'memory-file'));
  await planShowsCopyStrategy(source, scan);
  const ticksBefore = lastTick(source.guest.serial());
  const result = await runScatter(dir, source.topology);
  assert.equal(result.code, 0, `scatter failed: ${result.stderr}\n${result.stdout}`);
  const report = JSON.parse(result.stdout);
  const vm = report.vms[0];
  t.diagnostic(`scan ${report.seconds.scan.toFixed(2)} s; live ${JSON.stringify(vm.live)}`);
  assert.equal(vm.verified, true, vm.error);
  assert.equal(vm.live.scan, scan);
  assert.equal(vm.live.memoryCheck.method, scan);
  // QEMU's own dirty tracking may lose pages under load: the memory check then repairs them or rolls
  // back and retries. Any rollback must be that, never another failure retried.
  for (const why of vm.live.rollbacks) assert.match(why, /guest memory differs from the source's/);
  // What was seeded (read from the stream or the file) is referred to in the live stream.
  assert.ok(vm.live.referencedPages > 1000, `pages sent by reference: ${vm.live.referencedPages}`);
  // The source QEMU quit; the guest's counter goes on at the target.
  await Promise.race([
    source.guest.exited,
    new Promise((_, reject) => setTimeout(() => reject(new Error('source QEMU still running')), 10_000)),
  ]);
  const serial = join(dir, 't1.serial');
  const deadline = Date.now() + 30_000;
  while (lastTick(existsSync(serial) ? readFileSync(serial, 'latin1') : '') <= ticksBefore + 1) {
    assert.ok(Date.now() < deadline, `the guest ticks on at the target (it was at ${ticksBefore})`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { vm, dir, topology: source.topology };
}

test(
  'live scatter: a running guest moves to its target, verified, and keeps running there',
  { timeout: 300_000 },
  async (t) => {
    const { vm, dir, topology } = await moveOneGuest(t, basePort, 'process-memory');
    assert.equal(vm.target, 't1');
    // Run again with --resume: the VM runs at t1 (its source is gone), so it stays there, untouched.
    const again = await runCli([
      cli,
      'scatter',
      '--topology',
      topology,
      '--work-dir',
      dir,
      '--json',
      '--resume',
    ]);
    assert.equal(again.code, 0, `--resume after the move: ${again.stderr}`);
    const repeat = JSON.parse(again.stdout).vms[0];
    assert.equal(repeat.alreadyVerified, true);
    assert.equal(repeat.target, 't1');
    assert.ok(
      Number(vm.live.sentBytes) < 0.5 * Number(vm.live.streamBytes),
      `${vm.live.sentBytes} of ${vm.live.streamBytes} stream bytes sent`,
    );
    // What the target lacked went compressed where LZ4 shrinks it (the guest's own data does).
    assert.ok(Number(vm.live.compressedPages) > 0, `pages sent compressed: ${vm.live.compressedPages}`);
  },
);

/**
 * `vmscatter plan` reads a running guest as a job would (`scan`), measures its dirty rate and shows
 * the copy strategy a job would choose; the guest is left running, not paused and not migrated.
 */
async function planShowsCopyStrategy(source: Source, scan: 'process-memory' | 'memory-file') {
  const result = await runCli([cli, 'plan', '--topology', source.topology, '--json']);
  assert.equal(result.code, 0, `plan failed: ${result.stderr}`);
  const plan = JSON.parse(result.stdout);
  assert.equal(plan.live.length, 1);
  const [live] = plan.live;
  assert.equal(live.vm, 'g1');
  assert.equal(live.scan, scan);
  assert.ok(['precopy', 'precopy-auto-converge', 'stop-and-copy'].includes(live.strategy));
  assert.ok(live.strategyReason.length > 0);
  assert.ok(live.dirtyBytesPerSecond >= 0 && live.bandwidthBytesPerSecond === 125_000_000);
  assert.deepEqual(plan.placement, { g1: 't1' });
  const text = await runCli([cli, 'plan', '--topology', source.topology]);
  assert.match(text.stdout, new RegExp(`g1 +${scan === 'memory-file' ? 'memory file' : 'process memory'} `));
  const status = (await source.guest.qmp.execute('query-status')) as { status: string };
  assert.equal(status.status, 'running', 'plan leaves the guest running');
  const migration = (await source.guest.qmp.execute('query-migrate')) as { status?: string };
  assert.notEqual(migration.status, 'active', 'no migration left behind');
}

test(
  'live scatter from a shared memory file: scanned from the file, moved, running at its target',
  { timeout: 300_000 },
  async (t) => {
    await moveOneGuest(t, basePort + 4, 'memory-file');
  },
);

test(
  'live scatter rollback: the target agent dies mid-migration, the guest runs on at its source',
  { timeout: 300_000 },
  async (t) => {
    const { dir, cleanup } = tempDir('vms-live-');
    const started: { source?: Source; agent?: ChildProcess } = {};
    const runDir = join(dir, 'agents', 't1', 'run');
    t.after(async () => {
      started.agent?.kill('SIGKILL');
      await started.source?.guest.stop().catch(() => undefined);
      await quitQemuAt(join(runDir, 'g1.qmp'));
      cleanup();
    });
    const source = (started.source = await bootSource(dir, basePort + 2));
    writeFileSync(join(dir, 'secret'), 'live rollback test secret, 32 bytes+', { mode: 0o600 });
    const agent = (started.agent = spawn(process.execPath, [
      ...[cli, 'agent', '--topology', source.topology, '--host', 't1'],
      ...['--dir', join(dir, 'agents', 't1'), '--secret-file', join(dir, 'secret')],
    ]));
    await new Promise((resolve) => agent.stdout.once('data', resolve));
    const running = runScatter(dir, source.topology);
    // The destination waits for the stream once its socket exists: the agent dies then.
    const deadline = Date.now() + 120_000;
    while (!existsSync(join(runDir, 'g1.in'))) {
      assert.ok(Date.now() < deadline, 'the migration starts');
      await new Promise((r) => setTimeout(r, 5));
    }
    agent.kill('SIGKILL');
    const result = await running;
    assert.equal(result.code, 6, `exit 6 when a VM did not move: ${result.stderr}`);
    const vm = JSON.parse(result.stdout).vms[0];
    assert.equal(vm.verified, false);
    assert.match(vm.error, /t1/);
    const status = (await source.guest.qmp.execute('query-status')) as { status: string };
    assert.equal(status.status, 'running', 'the guest runs at its source');
    const before = lastTick(source.guest.serial());
    while (lastTick(source.guest.serial()) <= before) await new Promise((r) => setTimeout(r, 200));
  },
);

test(
  'live scatter: a source left stopped by an interrupted switch-over is resumed where it is, then moved',
  { timeout: 300_000 },
  async (t) => {
    const { dir, cleanup } = tempDir('vms-live-');
    const started: { source?: Source } = {};
    t.after(async () => {
      await started.source?.guest.stop().catch(() => undefined);
      await quitQemuAt(join(dir, 'agents', 't1', 'run', 'g1.qmp'));
      cleanup();
    });
    const source = (started.source = await bootSource(dir, basePort + 6));
    // What a coordinator that died past the source's completion leaves: the source in 'postmigrate'
    // and no target running the VM (its agent quit the paused destination).
    await source.guest.qmp.execute('migrate', { uri: 'exec:cat > /dev/null' });
    while (((await source.guest.qmp.execute('query-status')) as { status: string }).status !== 'postmigrate')
      await new Promise((r) => setTimeout(r, 100));
    const result = await runScatter(dir, source.topology);
    assert.equal(result.code, 0, `scatter failed: ${result.stderr}`);
    assert.match(
      result.stderr,
      /g1: its source was stopped after an interrupted switch-over .*resumed at its source/,
    );
    const vm = JSON.parse(result.stdout).vms[0];
    assert.equal(vm.verified, true, vm.error);
  },
);
