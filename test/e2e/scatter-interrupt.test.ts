import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { roundsScatterArgs, storePagesFile, tempDir } from '../support/fixtures.js';

/**
 * Ctrl-C in `vmscatter scatter` as a terminal delivers it (SIGINT to the whole foreground process
 * group), in the middle of the multicast phase, with the agents the coordinator starts for loopback
 * targets: the job ends within moments with a report, exit 130, no agent left, nothing half-written,
 * and `--resume` finishes it. And a coordinator killed outright leaves no agent behind.
 */

/** Below the ephemeral range and apart from the other end-to-end tests' ports. */
const basePort = 20_000 + (process.pid % 900) * 10;
const VMS = ['vm1', 'vm2', 'vm3', 'vm4'];

/**
 * Two targets, four 48 MiB VMs, links of 100 Mbit/s: the multicast phase lasts several seconds, so
 * an interrupt that is not honoured until it ends shows up as a slow exit (and as VMs verified).
 */
function writeTopology(dir: string, port: number): string {
  const path = join(dir, 'topology.yaml');
  writeFileSync(
    path,
    [
      `multicast: { base: 239.255.${200 + (port % 50)}.0, size: 4, port: ${port + 5} }`,
      'hosts:',
      `  - { name: src, address: 127.0.0.1, port: ${port}, role: source, link: 100Mbit }`,
      ...[1, 2].map(
        (n) =>
          `  - { name: t${n}, address: 127.0.0.1, port: ${port + n}, role: target, memory: 256MiB, maxVms: 2, link: 100Mbit }`,
      ),
      'vms:',
      ...VMS.map(
        (name, i) =>
          `  - { name: ${name}, memory: 48MiB, source: { synthetic: { seed: ${i + 1}, family: ${i < 2 ? 'debian' : 'alpine'} } } }`,
      ),
    ].join('\n'),
  );
  return path;
}

/** Pids of agent processes serving this test's topology (whoever started them). */
function agentPids(topology: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let args: string[];
    try {
      args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // gone meanwhile
    }
    if (args.includes('agent') && args.includes(topology)) pids.push(Number(entry));
  }
  return pids;
}

interface Job {
  readonly child: ChildProcess;
  readonly output: { stdout: string; stderr: string };
  readonly exit: Promise<number | null>;
}

/** The coordinator in a process group of its own, as a shell runs a foreground command. */
function startScatter(t: TestContext, dir: string, topology: string, ...args: string[]): Job {
  const child = spawn(process.execPath, [...roundsScatterArgs(topology, dir), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const output = { stdout: '', stderr: '' };
  child.stdout!.on('data', (chunk: Buffer) => (output.stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output.stderr += chunk.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) kill(-child.pid!);
    for (const pid of agentPids(topology)) kill(pid);
  });
  return { child, output, exit };
}

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Resolves once some agent stored a few rounds: the multicast phase is under way. */
async function seeding(dir: string, job: Job): Promise<void> {
  const stored = () =>
    ['t1', 't2'].some((host) => {
      const pages = storePagesFile(join(dir, 'agents', host, 'store'));
      return existsSync(pages) && statSync(pages).size > 2 ** 20;
    });
  const deadline = Date.now() + 30_000;
  while (!stored()) {
    assert.equal(job.child.exitCode, null, `the job ended before multicasting: ${job.output.stderr}`);
    assert.ok(Date.now() < deadline, 'the agents receive pages within 30 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test('Ctrl-C mid-multicast: report, exit 130 within seconds, no agent or partial image left; --resume finishes', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const topology = writeTopology(dir, basePort);
  const job = startScatter(t, dir, topology);
  await seeding(dir, job);

  const interrupted = performance.now();
  process.kill(-job.child.pid!, 'SIGINT'); // the whole group, as a terminal's Ctrl-C
  const code = await within(job.exit, 20_000, 'the interrupted job exits');
  const seconds = (performance.now() - interrupted) / 1000;
  assert.equal(code, 130, job.output.stderr);
  assert.ok(seconds < 4, `exited ${seconds.toFixed(1)} s after Ctrl-C (the multicast takes longer)`);
  assert.match(
    job.output.stderr.trim().split('\n').at(-1)!,
    /^vmscatter: interrupted \(Ctrl-C\): \d of 4 VMs not moved .*--resume/,
  );

  const report = JSON.parse(job.output.stdout);
  assert.equal(report.ok, false);
  assert.deepEqual(report.localAgents, ['t1', 't2']);
  const notMoved = report.vms.filter((vm: { verified: boolean }) => !vm.verified);
  assert.ok(notMoved.length > 0, 'VMs still being multicast are not verified');
  for (const vm of notMoved) assert.equal(vm.error, 'interrupted (Ctrl-C)', vm.name);
  for (const target of report.targets) assert.equal(target.lost, undefined, `${target.name} not lost`);
  assert.ok(report.source.rounds > 0 && report.pages.multicast < report.pages.total);

  assert.deepEqual(agentPids(topology), [], 'no agent process left');
  for (const host of ['t1', 't2']) {
    const log = readFileSync(join(dir, 'agents', host, 'agent.log'), 'utf8');
    // The agents outlived the terminal's Ctrl-C and heard the job end from the coordinator.
    assert.match(
      log,
      new RegExp(`job ${report.job}: ended by the coordinator`),
      `${host} told the job ended`,
    );
    assert.doesNotMatch(log, /stopping \(SIGINT\)/, `${host} got no Ctrl-C of its own`);
    const images = readdirSync(join(dir, 'agents', host, 'images'));
    assert.deepEqual(
      images.filter((name) => name.endsWith('.partial')),
      [],
      `${host}: nothing half-written`,
    );
    for (const vm of notMoved)
      assert.ok(!images.includes(`${vm.name}.raw`), `${host}: no image of ${vm.name}, which did not move`);
  }

  // The same command with --resume finishes the job, without what the agents stored before Ctrl-C.
  const resumed = spawnSync(process.execPath, [...roundsScatterArgs(topology, dir), '--resume'], {
    encoding: 'utf8',
    timeout: 45_000,
  });
  assert.equal(resumed.status, 0, resumed.stderr);
  const finished = JSON.parse(resumed.stdout);
  assert.equal(finished.ok, true);
  assert.deepEqual(finished.vms.map((vm: { name: string }) => vm.name).sort(), VMS);
  for (const vm of finished.vms) {
    assert.equal(vm.verified, true, vm.name);
    const rebuilt = readFileSync(join(dir, 'agents', vm.target, 'images', `${vm.name}.raw`));
    const source = readdirSync(join(dir, 'images')).find((f) => f.startsWith(`${vm.name}-`));
    assert.ok(rebuilt.equals(readFileSync(join(dir, 'images', source!))), `${vm.name} byte-identical`);
  }
  assert.ok(finished.pages.held > 0, 'pages stored before Ctrl-C are not sent again');
  assert.deepEqual(agentPids(topology), [], 'no agent process left after the resumed job');
});

test('a coordinator killed outright (SIGKILL) leaves no local agent behind', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const topology = writeTopology(dir, basePort + 20);
  const job = startScatter(t, dir, topology);
  await seeding(dir, job);
  const agents = agentPids(topology);
  assert.equal(agents.length, 2, 'the coordinator started an agent per target');

  process.kill(job.child.pid!, 'SIGKILL');
  await within(job.exit, 5_000, 'the killed coordinator exits');
  const deadline = Date.now() + 5_000;
  while (agentPids(topology).length > 0) {
    assert.ok(Date.now() < deadline, `agents ${agentPids(topology).join(', ')} outlived their coordinator`);
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const host of ['t1', 't2']) {
    const log = readFileSync(join(dir, 'agents', host, 'agent.log'), 'utf8');
    assert.match(log, /stopping \(stdin closed/, `${host} saw its coordinator go`);
    const images = readdirSync(join(dir, 'agents', host, 'images'));
    assert.deepEqual(images, [], `${host}: nothing half-written or unverified`);
  }
});
