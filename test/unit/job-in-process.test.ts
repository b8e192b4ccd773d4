import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Agent } from '../../src/agent/agent.js';
import { runScatter, type ScatterOptions } from '../../src/coordinator/coordinator.js';
import type { ScatterReport } from '../../src/coordinator/job-report.js';
import { materialiseSyntheticImages } from '../../src/local/workspace.js';
import { defaultPlanOptions } from '../../src/plan/scatter-plan.js';
import { imageSha256 } from '../../src/memory/image-hash.js';
import { loadTopology } from '../../src/topology/load.js';
import { realScheduler } from '../../src/transport/datagram.js';
import { MemoryNetwork } from '../../src/transport/memory-network.js';
import { tempDir } from '../support/fixtures.js';

/**
 * A whole image job in one process: the coordinator and three agents, multicast on the in-memory
 * network (with loss, so rounds repair), control channels on loopback. One agent is stopped in the
 * middle of seeding: only its VMs fail, and `--resume` with it back finishes the job sending nothing
 * it kept. What spawning the CLI tests (signals, exit codes, the terminal) stays in test/e2e.
 */
const secret = new TextEncoder().encode('in-process job test secret, 32 bytes+');
const TARGETS = ['t1', 't2', 't3'] as const;

interface Targets {
  readonly agents: Map<string, Agent>;
  start(name: string): Promise<Agent>;
  close(): Promise<void>;
}

function targets(dir: string, network: MemoryNetwork): Targets {
  const agents = new Map<string, Agent>();
  return {
    agents,
    async start(name) {
      const agent = await Agent.start({
        name,
        listenAddress: '127.0.0.1',
        port: agents.get(name)?.port ?? 0,
        multicastInterface: '127.0.0.1',
        dir: join(dir, 'agents', name),
        secret,
        log: () => undefined,
        openSocket: network.opener(name),
      });
      agents.set(name, agent);
      return agent;
    },
    async close() {
      for (const agent of agents.values()) await agent.close().catch(() => undefined);
    },
  };
}

function writeTopology(dir: string, ports: ReadonlyMap<string, number>, sourceLink = '1Gbit'): string {
  const families = ['debian', 'debian', 'debian', 'alpine', 'alpine', 'debian'];
  const path = join(dir, 'topology.yaml');
  writeFileSync(
    path,
    [
      'multicast: { base: 239.255.77.0, size: 8, port: 7777 }',
      'hosts:',
      `  - { name: src, address: 127.0.0.1, port: 1, role: source, link: ${sourceLink} }`,
      ...TARGETS.map(
        (t) =>
          `  - { name: ${t}, address: 127.0.0.1, port: ${ports.get(t)}, role: target, memory: 64MiB, maxVms: 2, link: 1Gbit }`,
      ),
      'vms:',
      ...families.map(
        (family, i) =>
          `  - { name: vm${i + 1}, memory: 8MiB, source: { synthetic: { seed: ${i + 1}, family: ${family} } } }`,
      ),
    ].join('\n'),
  );
  return path;
}

function scatter(
  topology: ScatterOptions['topology'],
  dir: string,
  network: MemoryNetwork,
  extra: Pick<ScatterOptions, 'onProgress' | 'unicastBelowMs'> & { readonly resume?: boolean } = {},
): Promise<ScatterReport> {
  return runScatter({
    ...defaultPlanOptions,
    topology,
    secret,
    mtu: 9000,
    workDir: join(dir, 'work'),
    resume: false,
    insecurePlaintext: false,
    roundPages: 256,
    // These jobs are about multicast rounds: every round gets a session, however small.
    unicastBelowMs: 0,
    openSocket: network.opener('src'),
    ...extra,
  });
}

/** A temporary directory, the three agents started on `network`, and the job's topology with images. */
async function jobWithAgents(
  t: { after: (fn: () => Promise<void>) => void },
  network: MemoryNetwork,
  sourceLink?: string,
): Promise<{ dir: string; hosts: Targets; topology: ScatterOptions['topology'] }> {
  const { dir, cleanup } = tempDir('vms-job-');
  const hosts = targets(dir, network);
  t.after(async () => {
    await hosts.close();
    cleanup();
  });
  for (const name of TARGETS) await hosts.start(name);
  const path = writeTopology(dir, new Map(TARGETS.map((n) => [n, hosts.agents.get(n)!.port])), sourceLink);
  return { dir, hosts, topology: materialiseSyntheticImages(loadTopology(path), dir) };
}

/** Every image at its target is the source's, byte for byte, and marked verified. */
function assertImagesAtTargets(
  topology: ScatterOptions['topology'],
  dir: string,
  report: ScatterReport,
): void {
  for (const vm of report.vms) {
    const source = topology.vms.find((v) => v.name === vm.name)!.source;
    assert.equal(source.kind, 'image');
    const image = join(dir, 'agents', vm.target, 'images', `${vm.name}.raw`);
    assert.equal(imageSha256(image), imageSha256(source.kind === 'image' ? source.path : ''), vm.name);
    assert.ok(readFileSync(`${image}.sha256`, 'utf8').length > 0);
  }
}

test('in-process job: three agents on the in-memory network, one lost mid-seeding, --resume finishes', async (t) => {
  // 2% loss on every datagram: rounds need their repairs.
  const network = new MemoryNetwork(realScheduler, Math.random, { loss: 0.02 });
  const { dir, hosts, topology } = await jobWithAgents(t, network);

  // t2 stops once the first round is out: the middle of seeding.
  let stopped: Promise<void> | undefined;
  const first = await scatter(topology, dir, network, {
    onProgress: (event) => {
      if (event.phase === 'seed' && event.done > 0) stopped ??= hosts.agents.get('t2')!.close();
    },
  });
  await stopped;
  assert.ok(stopped, 'seeding reported progress');
  t.diagnostic(`first job: ${JSON.stringify(first.seconds)}`);
  const failed = first.vms.filter((vm) => !vm.verified);
  assert.ok(failed.length > 0, 'the stopped agent had VMs');
  for (const vm of failed) {
    assert.equal(vm.target, 't2', `${vm.name} failed at ${vm.target}: ${vm.error}`);
    assert.match(vm.error ?? '', /t2/);
  }
  assert.equal(first.vms.length - failed.length, first.vms.filter((vm) => vm.target !== 't2').length);

  await hosts.start('t2');
  const resumed = await scatter(topology, dir, network, { resume: true });
  t.diagnostic(`resumed job: ${JSON.stringify(resumed.seconds)}`);
  assert.equal(resumed.ok, true, JSON.stringify(resumed.vms.filter((vm) => !vm.verified)));
  assert.equal(resumed.vms.filter((vm) => vm.alreadyVerified).length, first.vms.length - failed.length);
  assertImagesAtTargets(topology, dir, resumed);
  // t2 kept what it stored before it stopped, and only what it lacked was sent again.
  const t2 = resumed.targets.find((x) => x.name === 't2')!;
  const sent = resumed.source.multicastPayloadBytes + resumed.source.unicastBytes;
  const lacking = (t2.multicastPages + t2.unicastPages) * 4096;
  assert.ok(sent < 1.2 * lacking + 2 ** 20, `resume sent ${sent} bytes for ${lacking} bytes t2 lacked`);
});

test('in-process job: a target multicast does not reach gets its pages by unicast, and the report says why', async (t) => {
  const network = new MemoryNetwork(realScheduler, Math.random, {});
  network.denyMulticast('t3');
  const { dir, topology } = await jobWithAgents(t, network);
  const report = await scatter(topology, dir, network);
  t.diagnostic(`job: ${JSON.stringify(report.seconds)}`);
  assert.equal(report.ok, true, JSON.stringify(report.vms.filter((vm) => !vm.verified)));
  const t3 = report.targets.find((x) => x.name === 't3')!;
  assert.ok(t3.vms.length > 0, 't3 has VMs');
  assert.match(t3.multicastUnreached ?? '', /did not reach it/);
  assert.equal(t3.multicastPages, 0);
  assert.ok(t3.unicastPages > 0, 'its pages came over the control channel');
  for (const other of report.targets.filter((x) => x.name !== 't3')) {
    assert.equal(other.multicastUnreached, undefined, other.name);
    assert.ok(other.multicastPages > 0, `${other.name} still received by multicast`);
  }
  assertImagesAtTargets(topology, dir, report);
});

test('in-process job: rounds too small to pay for a session go by unicast, and every VM still verifies', async (t) => {
  const network = new MemoryNetwork(realScheduler, Math.random, {});
  const { dir, topology } = await jobWithAgents(t, network);
  // Every round of this small job is under a minute of unicast at 1 Gbit/s: none gets a session.
  const report = await scatter(topology, dir, network, { unicastBelowMs: 60_000 });
  t.diagnostic(`job: ${JSON.stringify(report.seconds)}`);
  assert.equal(report.ok, true, JSON.stringify(report.vms.filter((vm) => !vm.verified)));
  assert.ok(report.source.rounds > 0);
  assert.equal(report.source.unicastRounds, report.source.rounds);
  assert.equal(report.source.multicastPayloadBytes, 0);
  for (const target of report.targets.filter((x) => x.vms.length > 0)) {
    assert.equal(target.multicastPages, 0, target.name);
    assert.ok(target.unicastPages > 0, `${target.name} got its pages over the control channel`);
  }
  assertImagesAtTargets(topology, dir, report);
});

test('in-process job: a target whose rounds are all stored starts rebuilding while rounds for others go on', async (t) => {
  const network = new MemoryNetwork(realScheduler, Math.random, {});
  // A source link slow enough that the rounds for others are still on the wire when the first
  // target has what it needs (at 1 Gbit/s, the whole seeding ends within a rebuild's time here).
  const { dir, topology } = await jobWithAgents(t, network, '200Mbit');
  const phases: string[] = [];
  const report = await scatter(topology, dir, network, {
    onProgress: (event) => phases.push(event.phase),
  });
  assert.equal(report.ok, true, JSON.stringify(report.vms.filter((vm) => !vm.verified)));
  assertImagesAtTargets(topology, dir, report);
  const firstVerdict = phases.indexOf('rebuild');
  const lastSeed = phases.lastIndexOf('seed');
  assert.ok(firstVerdict >= 0 && lastSeed >= 0);
  assert.ok(
    firstVerdict < lastSeed,
    `a rebuild's verdict (event ${firstVerdict}) before seeding's last progress (${lastSeed})`,
  );
});
