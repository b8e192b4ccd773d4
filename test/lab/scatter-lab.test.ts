import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoRoot, storePagesFile, tempDir } from '../support/fixtures.js';
import {
  createLab,
  labAvailable,
  watchProcess,
  type Lab,
  type ProcessWatch,
} from '../../bench/harness/lab.js';

/**
 * The scatter job across hosts: coordinator and agents in their own network namespaces joined by a
 * switch, the source's link shaped to 1 Gbit/s, 1% loss on one target's link, and one agent killed
 * mid-multicast and restarted; `--resume` finishes its VMs. Every image is compared byte for byte.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');
const targets = ['t1', 't2', 't3', 't4'];

function writeTopology(dir: string, lab: Lab): string {
  const families = ['debian', 'debian', 'alpine', 'alpine', 'debian', 'alpine', 'debian', 'alpine'];
  const path = join(dir, 'topology.yaml');
  writeFileSync(
    path,
    [
      'multicast: { base: 239.255.91.0, size: 8, port: 7490 }',
      'hosts:',
      `  - { name: src, address: ${lab.host('src').address}, port: 7480, role: source, link: 1Gbit }`,
      ...targets.map(
        (name) =>
          `  - { name: ${name}, address: ${lab.host(name).address}, port: 7481, role: target, memory: 128MiB, maxVms: 2, link: 1Gbit }`,
      ),
      'vms:',
      ...families.map(
        (family, i) =>
          `  - { name: vm${i + 1}, memory: 32MiB, source: { synthetic: { seed: ${i + 11}, family: ${family} } } }`,
      ),
    ].join('\n'),
  );
  return path;
}

async function startAgent(lab: Lab, dir: string, topology: string, host: string): Promise<ProcessWatch> {
  const args = [cli, 'agent', '--topology', topology, '--host', host, '--dir', join(dir, 'agents', host)];
  const agent = watchProcess(
    lab.spawn(host, process.execPath, [...args, '--secret-file', join(dir, 'secret')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  await agent.waitFor(/listening/, 15_000);
  return agent;
}

function assertImagesIdentical(dir: string, report: { vms: { name: string; target: string }[] }) {
  const sources = readdirSync(join(dir, 'images'));
  for (const vm of report.vms) {
    const source = sources.find((f) => f.startsWith(`${vm.name}-`) && f.endsWith('.raw'))!;
    const rebuilt = join(dir, 'agents', vm.target, 'images', `${vm.name}.raw`);
    assert.ok(
      readFileSync(rebuilt).equals(readFileSync(join(dir, 'images', source))),
      `${vm.name} at ${vm.target}`,
    );
  }
}

/**
 * A lab of the source and the four targets, set up by `prepare` (shaping, loss, filters), with the
 * topology and the deployment secret written; all of it removed after the test.
 */
async function labJob(
  t: { after: (fn: () => Promise<void>) => void },
  prepare: (lab: Lab) => Promise<void>,
): Promise<{ dir: string; lab: Lab; topology: string }> {
  const available = labAvailable();
  assert.ok(available.ok, available.ok ? '' : `the network lab is needed: ${available.why}`);
  const { dir, cleanup } = tempDir();
  const lab = await createLab({ hosts: ['src', ...targets] });
  t.after(async () => {
    await lab.destroy();
    cleanup();
  });
  await prepare(lab);
  const topology = writeTopology(dir, lab);
  writeFileSync(join(dir, 'secret'), 'the lab deployment secret, 32 bytes+', { mode: 0o600 });
  return { dir, lab, topology };
}

test('lab scatter: 8 VMs -> 4 targets, 1% loss, an agent killed mid-run and resumed: byte-identical', async (t) => {
  const { dir, lab, topology } = await labJob(t, async (lab) => {
    await lab.shape('src', { rate: '1gbit' });
    await lab.dropShare('t3', 1, 'in');
  });
  const agents = new Map<string, ProcessWatch>();
  for (const host of targets) agents.set(host, await startAgent(lab, dir, topology, host));

  const scatterArgs = [cli, 'scatter', '--topology', topology, '--work-dir', dir, '--json'];
  const secretArgs = [
    '--secret-file',
    join(dir, 'secret'),
    '--round-pages',
    '1024',
    '--unicast-below-ms',
    '0',
  ];
  const first = watchProcess(
    lab.spawn('src', process.execPath, [...scatterArgs, ...secretArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const store = () => storePagesFile(join(dir, 'agents', 't2', 'store'));
  const deadline = Date.now() + 120_000;
  while (!(existsSync(store()) && statSync(store()).size > 4 * 2 ** 20)) {
    assert.ok(Date.now() < deadline, 't2 receives pages');
    await new Promise((r) => setTimeout(r, 10));
  }
  agents.get('t2')!.child.kill('SIGKILL');
  const heldAtKill = Math.floor(statSync(store()).size / 4096);
  const broken = await first.exit(180_000);
  assert.equal(broken.code, 6, `exit 6 when VMs are not verified: ${broken.stderr}`);
  const report = JSON.parse(broken.stdout);
  const failed = report.vms.filter((vm: { verified: boolean }) => !vm.verified);
  assert.ok(failed.length > 0 && failed.every((vm: { target: string }) => vm.target === 't2'));
  const t3 = report.targets.find((x: { name: string }) => x.name === 't3');
  assert.ok(t3.multicastPages > 0, 't3 received through its lossy link');

  const before = await lab.txBytes('src');
  agents.set('t2', await startAgent(lab, dir, topology, 't2'));
  const second = watchProcess(
    lab.spawn('src', process.execPath, [...scatterArgs, ...secretArgs, '--resume'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const resumed = await second.exit(180_000);
  assert.equal(resumed.code, 0, resumed.stderr);
  const final = JSON.parse(resumed.stdout);
  assert.equal(final.ok, true);
  assertImagesIdentical(dir, final);
  const t2 = final.targets.find((x: { name: string }) => x.name === 't2');
  // Pages it stored before the kill (some may serve VMs of other targets that shared its group).
  assert.ok(
    t2.heldPages > 0,
    `the restarted agent kept ${t2.heldPages} pages (${heldAtKill} stored at the kill)`,
  );
  assert.equal(final.pages.multicast, t2.multicastPages, 'the resume sent only what t2 lacked');
  const resumeWire = (await lab.txBytes('src')) - before;
  // What went over the wire is what t2 lacked plus headers, parity and control: nothing it held.
  assert.ok(resumeWire < 1.25 * t2.multicastPages * 4096 + 2 * 2 ** 20, `resume sent ${resumeWire} bytes`);
  for (const agent of agents.values()) agent.child.kill('SIGTERM');
});

test('lab scatter: multicast filtered on the way to one target: every VM verified, the report names it', async (t) => {
  const { dir, lab, topology } = await labJob(t, (lab) => lab.denyMulticast('t2', true));
  const agents = await Promise.all(targets.map((host) => startAgent(lab, dir, topology, host)));
  const job = watchProcess(
    lab.spawn(
      'src',
      process.execPath,
      [
        cli,
        'scatter',
        '--topology',
        topology,
        '--work-dir',
        dir,
        '--json',
        '--secret-file',
        join(dir, 'secret'),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ),
  );
  const done = await job.exit(180_000);
  assert.equal(done.code, 0, done.stderr);
  const report = JSON.parse(done.stdout);
  assert.equal(report.ok, true);
  assertImagesIdentical(dir, report);
  const t2 = report.targets.find((x: { name: string }) => x.name === 't2');
  assert.ok(t2.vms.length > 0, 't2 has VMs');
  assert.match(t2.multicastUnreached ?? '', /did not reach it/);
  assert.equal(t2.multicastPages, 0);
  assert.ok(t2.unicastPages > 0, 't2 received its pages over the control channel');
  for (const other of report.targets.filter((x: { name: string }) => x.name !== 't2'))
    assert.equal(other.multicastUnreached, undefined, `${other.name} hears its groups`);
  for (const agent of agents) agent.child.kill('SIGTERM');
});
