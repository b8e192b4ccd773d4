import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { repoRoot, tempDir } from '../support/fixtures.js';
import { createLab, watchProcess, type Lab, type ProcessWatch } from '../../bench/harness/lab.js';
import {
  createLibvirtLab,
  libvirtLabAvailable,
  movedGuestProblem,
  type LibvirtLab,
} from '../../bench/harness/libvirt-lab.js';
import {
  buildInitramfs,
  ensureGuestKernel,
  GUEST_KERNEL_FAULT,
  GUEST_SUM_MARKER,
  lastMarked,
  lastTick,
} from '../../bench/harness/qemu-guest.js';

/**
 * The libvirt lab (bench/harness/libvirt-lab.ts): two libvirt hosts, h1 and h2, each a libvirtd in a
 * network namespace of the lab and a mount namespace of its own. A guest of qemu-guest.ts (2 vCPUs,
 * writing 256 KiB/s) runs at h1 and is moved with `virsh migrate --live --p2p --persistent
 * --undefinesource` over a unix socket: libvirt points h1's QEMU at /run/libvirt/<sock> in h1's view and
 * has h2's QEMU listen at the same path in h2's, and a proxy in this process joins the two real files
 * behind those paths. So the test sees the whole migration stream, as vmscatter will when it sits in the
 * data path. Needs root, the lab's tools, libvirt and QEMU: without them it fails, it does not skip.
 */
const MiB = 2 ** 20;
const GUEST = 'g1';
const MEMORY_MIB = 192;
/** The guest holds this twice over at least: in its initramfs and copied into tmpfs. */
const WORKLOAD_MIB = 16;
/** Where the second test's proxy stops passing the stream on: well short of the guest's memory. */
const CUT_AFTER_BYTES = 8 * MiB;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `check()` returns a value; fails the test with `what` after `timeoutMs`. */
async function until<T>(what: string, timeoutMs: number, check: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    assert.ok(Date.now() < deadline, `${what} (within ${timeoutMs} ms)`);
    await sleep(250);
  }
}

/**
 * A lab of `hosts` with a daemon each and the `guests` running at h1, their consoles ticking (the first
 * guest is GUEST). Everything is removed in t.after, whatever the test does: first what the test
 * handed to `defer` (last first), then the daemons and their guests, then the lab.
 */
async function labWithGuest(
  t: TestContext,
  hosts: readonly string[] = ['h1', 'h2'],
  guests: readonly { readonly name: string; readonly host: string }[] = [{ name: GUEST, host: 'h1' }],
): Promise<{ libvirt: LibvirtLab; dir: string; defer: (cleanup: () => Promise<void>) => void }> {
  const available = libvirtLabAvailable();
  assert.ok(available.ok, available.ok ? '' : `the libvirt lab is needed: ${available.why}`);
  const { dir, cleanup } = tempDir('vms-libvirt-lab-');
  // Filled in as they are made, so that t.after removes whatever exists when a step fails.
  const made: { lab?: Lab; libvirt?: LibvirtLab } = {};
  const deferred: (() => Promise<void>)[] = [];
  t.after(async () => {
    try {
      for (const cleanup of deferred.reverse()) await cleanup().catch(() => undefined);
      await made.libvirt?.destroy();
    } finally {
      try {
        await made.lab?.destroy();
      } finally {
        cleanup();
      }
    }
  });
  const started = Date.now();
  const seconds = (since: number) => `${((Date.now() - since) / 1000).toFixed(1)} s`;
  const kernel = await ensureGuestKernel();
  const initrd = join(dir, 'initrd.gz');
  buildInitramfs(initrd, { seed: 17, workloadMiB: WORKLOAD_MIB });
  made.lab = await createLab({ hosts });
  const libvirt = (made.libvirt = await createLibvirtLab(made.lab));
  t.diagnostic(`daemons answering after ${seconds(started)}`);
  const booting = Date.now();
  for (const { name, host } of guests) {
    await libvirt.defineGuest(host, { name, memoryMiB: MEMORY_MIB, vcpus: 2, kernel, initrd });
    await libvirt.virsh(host, ['start', name]);
  }
  for (const { name, host } of guests)
    await until(`${name} ticks at ${host} and prints its checksum`, 120_000, () => {
      const serial = libvirt.serial(host, name);
      return lastTick(serial) >= 2 && lastMarked(serial, GUEST_SUM_MARKER) !== undefined ? true : undefined;
    });
  t.diagnostic(`${guests.length} guest(s) ticking ${seconds(booting)} after define`);
  return { libvirt, dir, defer: (cleanup) => deferred.push(cleanup) };
}

interface Proxy {
  /** Bytes from the source's QEMU towards the destination's, and back. */
  readonly forward: number;
  readonly backward: number;
  readonly connections: number;
  /** Whether it cut the stream. */
  readonly cut: boolean;
  readonly errors: readonly string[];
  close(): Promise<void>;
}

/**
 * Listens at `listenPath` and joins each connection to a new one to `targetPath`, both ways, counting
 * bytes; with `cutAfter`, destroys both ends once that many bytes have gone forward.
 */
async function startProxy(listenPath: string, targetPath: string, cutAfter?: number): Promise<Proxy> {
  const sockets = new Set<Socket>();
  const state = { forward: 0, backward: 0, connections: 0, cut: false, errors: [] as string[] };
  const track = (socket: Socket, side: string) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', (error) => state.errors.push(`${side}: ${error.message}`));
  };
  const server = createServer((source) => {
    state.connections++;
    const target = createConnection(targetPath);
    track(source, 'source');
    track(target, 'target');
    source.on('data', (chunk: Buffer) => {
      state.forward += chunk.length;
      if (cutAfter !== undefined && state.forward >= cutAfter && !state.cut) {
        state.cut = true;
        source.destroy();
        target.destroy();
      }
    });
    target.on('data', (chunk: Buffer) => (state.backward += chunk.length));
    source.pipe(target);
    target.pipe(source);
  });
  rmSync(listenPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPath, () => resolve());
  });
  return {
    get forward() {
      return state.forward;
    },
    get backward() {
      return state.backward;
    },
    get connections() {
      return state.connections;
    },
    get cut() {
      return state.cut;
    },
    errors: state.errors,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** `virsh migrate` of the guest from h1 to h2 through a proxy the caller starts at the returned path. */
function migrateArgs(libvirt: LibvirtLab, socket: string): string[] {
  return [
    ...['migrate', '--live', '--p2p', '--persistent', '--undefinesource', GUEST],
    ...[libvirt.host('h2').uri, '--migrateuri', `unix://${socket}`],
  ];
}

/** Names of the guests defined at a host, running or not. */
async function defined(libvirt: LibvirtLab, host: string): Promise<string[]> {
  const listed = await libvirt.virsh(host, ['list', '--all', '--name']);
  return listed
    .split('\n')
    .map((name) => name.trim())
    .filter((name) => name !== '');
}

/** The completed incoming migration's count of non-zero pages, in bytes, as the destination saw it. */
async function normalBytes(libvirt: LibvirtLab, host: string): Promise<number> {
  const info = await libvirt.virsh(host, ['domjobinfo', GUEST, '--completed']);
  const pages = /^Normal pages:\s+(\d+)/m.exec(info)?.[1];
  const pageSize = /^Page size:\s+(\d+)/m.exec(info)?.[1];
  assert.ok(pages !== undefined && pageSize !== undefined, `domjobinfo --completed at ${host}: ${info}`);
  return Number(pages) * Number(pageSize);
}

test(
  'libvirt lab: virsh migrate --live --p2p h1 -> h2 through a unix-socket proxy; the guest goes on at h2',
  { timeout: 300_000 },
  async (t) => {
    const { libvirt, defer } = await labWithGuest(t);
    const socket = `/run/libvirt/vms-${GUEST}-${process.pid}.sock`;
    const proxy = await startProxy(libvirt.hostPath('h1', socket), libvirt.hostPath('h2', socket));
    defer(() => proxy.close());
    const migrating = Date.now();
    const migrated = await libvirt.virshResult('h1', migrateArgs(libvirt, socket), { timeoutMs: 180_000 });
    t.diagnostic(`virsh migrate took ${((Date.now() - migrating) / 1000).toFixed(1)} s`);
    assert.equal(migrated.code, 0, `virsh migrate: ${migrated.stderr}\n${libvirt.daemonLog('h1')}`);
    t.diagnostic(
      `proxy: ${proxy.connections} connection(s), ${proxy.forward} B forward, ${proxy.backward} B back`,
    );

    // Defined and running at h2 only; its console at h2 starts after the move: ticks past the last
    // one h1 showed, the same checksum.
    assert.equal(await movedGuestProblem(libvirt, GUEST, 'h1', 'h2', libvirt.serial('h1', GUEST)), undefined);

    // Every non-zero page went through the proxy, some more than once (dirtied while it moved); a zero
    // page goes as a flag, without its bytes.
    const normal = await normalBytes(libvirt, 'h2');
    t.diagnostic(`non-zero memory migrated: ${(normal / MiB).toFixed(1)} MiB`);
    assert.ok(
      normal >= 2 * WORKLOAD_MIB * MiB,
      `the guest's non-zero memory (${normal} B) holds its workload`,
    );
    assert.ok(proxy.forward >= normal, `the proxy carried ${proxy.forward} B, the guest has ${normal} B`);
  },
);

test(
  'libvirt lab: a proxy that cuts the stream fails the migration; the guest runs on, defined, at h1 only',
  { timeout: 300_000 },
  async (t) => {
    const { libvirt, defer } = await labWithGuest(t);
    const socket = `/run/libvirt/vms-${GUEST}-${process.pid}-cut.sock`;
    const proxy = await startProxy(
      libvirt.hostPath('h1', socket),
      libvirt.hostPath('h2', socket),
      CUT_AFTER_BYTES,
    );
    defer(() => proxy.close());
    const migrated = await libvirt.virshResult('h1', migrateArgs(libvirt, socket), { timeoutMs: 180_000 });
    t.diagnostic(`virsh migrate (exit ${migrated.code}): ${migrated.stderr.trim()}`);
    assert.ok(proxy.cut, `the proxy cut the stream (it carried ${proxy.forward} B)`);
    assert.notEqual(migrated.code, 0, 'the migration failed');

    await assertRunsOnAtSource(libvirt);
  },
);

const cli = join(repoRoot, 'dist/src/cli/main.js');

/**
 * The topology of lab hosts, each with its libvirt (`roles`: host -> "role: ...", memory included), and
 * `vms` lines if any; with the deployment secret beside it. Default: h1 the source, h2 the target, the
 * guest listed as a libvirt domain of h1.
 */
function writeLibvirtTopology(
  dir: string,
  libvirt: LibvirtLab,
  roles: Readonly<Record<string, string>> = { h1: 'role: source', h2: 'role: target, memory: 1GiB' },
  vms: readonly string[] = [
    `  - { name: ${GUEST}, memory: ${MEMORY_MIB}MiB, source: { libvirt: { domain: ${GUEST} } } }`,
  ],
): string {
  const path = join(dir, 'topology.yaml');
  const host = (name: string, role: string) =>
    `  - { name: ${name}, address: ${libvirt.host(name).labHost.address}, port: 7581, ${role}, link: 1Gbit, libvirt: "${libvirt.host(name).uri}" }`;
  writeFileSync(
    path,
    [
      'multicast: { base: 239.255.95.0, size: 4, port: 7590 }',
      'hosts:',
      ...Object.entries(roles).map(([name, role]) => host(name, role)),
      ...(vms.length > 0 ? ['vms:', ...vms] : []),
    ].join('\n'),
  );
  writeFileSync(join(dir, 'secret'), 'the libvirt lab deployment secret, 32+ bytes', { mode: 0o600 });
  return path;
}

/** vmscatter's agents at `hosts`, stopped when the test ends. */
async function startLibvirtAgents(
  libvirt: LibvirtLab,
  dir: string,
  topology: string,
  hosts: readonly string[],
  defer: (cleanup: () => Promise<void>) => void,
): Promise<ProcessWatch[]> {
  const agents: ProcessWatch[] = [];
  defer(async () => {
    for (const agent of agents) agent.child.kill('SIGTERM');
    for (const agent of agents) await agent.exit(10_000).catch(() => undefined);
  });
  for (const host of hosts) agents.push(await startLibvirtAgent(libvirt, dir, topology, host));
  return agents;
}

/**
 * vmscatter's agent at `host` (h2 unless told), in the host's mount namespace (it connects where the
 * host's libvirt has QEMU listen).
 */
async function startLibvirtAgent(
  libvirt: LibvirtLab,
  dir: string,
  topology: string,
  host = 'h2',
): Promise<ProcessWatch> {
  const args = ['agent', '--topology', topology, '--host', host, '--dir', join(dir, `agent-${host}`)];
  const agent = watchProcess(
    libvirt.spawn(host, process.execPath, [cli, ...args, '--secret-file', join(dir, 'secret')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  await agent.waitFor(/listening/, 15_000);
  return agent;
}

/** The guest runs on at h1, defined there, its console ticking on, and nothing of it is at h2. */
async function assertRunsOnAtSource(libvirt: LibvirtLab): Promise<void> {
  assert.equal((await libvirt.virsh('h1', ['domstate', GUEST])).trim(), 'running');
  assert.match(await libvirt.virsh('h1', ['dominfo', GUEST]), /^Persistent:\s+yes$/m);
  assert.ok(!(await defined(libvirt, 'h2')).includes(GUEST), 'nothing of the guest is left at h2');
  const tickBefore = lastTick(libvirt.serial('h1', GUEST));
  await until(`the guest ticks on at h1 past ${tickBefore}`, 60_000, () =>
    lastTick(libvirt.serial('h1', GUEST)) > tickBefore ? true : undefined,
  );
  assert.doesNotMatch(libvirt.serial('h1', GUEST), GUEST_KERNEL_FAULT);
}

/** The README's drain script for a libvirt host: the shell block of its "libvirt hosts" section. */
function readmeDrainScript(): string {
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### libvirt hosts'));
  const script = /```sh\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(script?.includes('vmscatter evacuate'), "the README's libvirt section has its drain script");
  return script!;
}

/** Whether an agent's log shows a job started while another was under way (started, not yet done). */
function overlappingJobs(log: string): boolean {
  const open = new Set<string>();
  for (const line of log.split('\n')) {
    const started = /job (\S+): started/.exec(line)?.[1];
    if (started !== undefined) {
      if (open.size > 0) return true;
      open.add(started);
    }
    const ended = /job (\S+): (done|ended)/.exec(line)?.[1];
    if (ended !== undefined) open.delete(ended);
  }
  return false;
}

/** `vmscatter evacuate --host HOST --yes --json` started in HOST's namespaces, with `extra` arguments. */
function startEvacuation(
  libvirt: LibvirtLab,
  dir: string,
  topology: string,
  host: string,
  extra: readonly string[] = [],
): ProcessWatch {
  const args = ['evacuate', '--host', host, '--topology', topology, '--work-dir', join(dir, `work-${host}`)];
  return watchProcess(
    libvirt.spawn(
      host,
      process.execPath,
      [cli, ...args, '--secret-file', join(dir, 'secret'), '--yes', '--json', ...extra],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ),
  );
}

test(
  "libvirt lab: vmscatter scatter moves a running libvirt domain h1 -> h2 by libvirt's migration, verified; it runs on at h2, defined there only",
  { timeout: 300_000 },
  async (t) => {
    const { libvirt, dir, defer } = await labWithGuest(t);
    const topology = writeLibvirtTopology(dir, libvirt);
    const agent = (await startLibvirtAgents(libvirt, dir, topology, ['h2'], defer))[0]!;
    const before = libvirt.serial('h1', GUEST);
    const scatter = watchProcess(
      libvirt.spawn(
        'h1',
        process.execPath,
        [
          cli,
          'scatter',
          '--topology',
          topology,
          '--work-dir',
          join(dir, 'work'),
          '--secret-file',
          join(dir, 'secret'),
          '--json',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    const done = await scatter.exit(240_000);
    assert.equal(done.code, 0, `scatter: ${done.stderr}\nagent: ${agent.stderr()}`);
    const report = JSON.parse(done.stdout) as {
      vms: { name: string; target: string; verified: boolean; live?: { memoryCheck?: { method: string } } }[];
    };
    const [vm] = report.vms;
    assert.equal(vm?.target, 'h2');
    assert.equal(vm?.verified, true);
    assert.equal(
      vm?.live?.memoryCheck?.method,
      'process-memory',
      'both ends read the memory the check compares',
    );
    t.diagnostic(`report: ${JSON.stringify(vm?.live)}`);

    assert.equal(await movedGuestProblem(libvirt, GUEST, 'h1', 'h2', before), undefined);
  },
);

test(
  'libvirt lab: a failed memory check cuts the stream; libvirt keeps the domain running and defined at h1, nothing at h2',
  { timeout: 300_000 },
  async (t) => {
    const { libvirt, dir, defer } = await labWithGuest(t);
    const topology = writeLibvirtTopology(dir, libvirt);
    const agent = (await startLibvirtAgents(libvirt, dir, topology, ['h2'], defer))[0]!;
    const move = watchProcess(
      libvirt.spawn(
        'h1',
        process.execPath,
        [
          join(repoRoot, 'dist/test/lab/libvirt-tampered-move.js'),
          topology,
          join(dir, 'secret'),
          join(dir, 'run'),
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    const done = await move.exit(240_000);
    assert.equal(done.code, 0, `the move's helper: ${done.stderr}\nagent: ${agent.stderr()}`);
    const result = JSON.parse(done.stdout) as { ok: boolean; memoryMismatch?: boolean; error?: string };
    t.diagnostic(`result: ${result.error}`);
    assert.equal(result.ok, false, 'a target whose memory differs never runs the domain');
    assert.equal(result.memoryMismatch, true, result.error);
    assert.match(result.error ?? '', /guest memory differs from the source's in 1 MiB chunk/);

    await assertRunsOnAtSource(libvirt);
  },
);

test(
  "libvirt lab: the README's drain script empties h1 (evacuate, no VM list): its three domains run at h2 or h3, verified",
  { timeout: 420_000 },
  async (t) => {
    const guests = ['g1', 'g2', 'g3'];
    const { libvirt, dir, defer } = await labWithGuest(
      t,
      ['h1', 'h2', 'h3'],
      guests.map((name) => ({ name, host: 'h1' })),
    );
    // No vms: the evacuated host's libvirt says what runs there.
    const roles = {
      h1: 'role: source',
      h2: 'role: target, memory: 512MiB',
      h3: 'role: target, memory: 512MiB',
    };
    const topology = writeLibvirtTopology(dir, libvirt, roles, []);
    const agents = await startLibvirtAgents(libvirt, dir, topology, ['h2', 'h3'], defer);
    const before = new Map(guests.map((g) => [g, libvirt.serial('h1', g)]));
    // The README's drain script, as it stands there, with `vmscatter` on the PATH.
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'vmscatter'), `#!/bin/sh\nexec ${process.execPath} ${cli} "$@"\n`, {
      mode: 0o755,
    });
    writeFileSync(join(dir, 'drain.sh'), readmeDrainScript(), { mode: 0o755 });
    const drain = watchProcess(
      // In `dir` (entering the host's mount namespace leaves the working directory at its root).
      libvirt.spawn('h1', '/bin/sh', ['-c', 'cd "$0" && exec sh drain.sh h1 "$1"', dir, topology], {
        env: {
          ...process.env,
          PATH: `${bin}:${process.env.PATH ?? ''}`,
          VMSCATTER_SECRET_FILE: join(dir, 'secret'),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    const done = await drain.exit(300_000);
    assert.equal(
      done.code,
      0,
      `the drain script: ${done.stdout}\n${done.stderr}\n${agents.map((a) => a.stderr()).join('\n')}`,
    );
    t.diagnostic(`the drain script said: ${done.stdout.trim().replace(/\n/g, ' | ')}`);
    const report = JSON.parse(readFileSync(join(dir, 'result.json'), 'utf8')) as {
      moved: { name: string; target: string }[];
      stayed: unknown[];
    };
    t.diagnostic(`moved: ${JSON.stringify(report.moved)}`);
    assert.deepEqual(report.moved.map((m) => m.name).sort(), guests);
    assert.deepEqual(report.stayed, []);
    assert.deepEqual(await defined(libvirt, 'h1'), [], 'nothing is left at h1');
    for (const { name, target } of report.moved) {
      assert.ok(['h2', 'h3'].includes(target), `${name} went to ${target}`);
      assert.equal(await movedGuestProblem(libvirt, name, 'h1', target, before.get(name)!), undefined);
    }
  },
);

test(
  'libvirt lab: two evacuations at once (h1 and h2) onto shared targets: the agents serve both, each placement leaves what the other reserved',
  { timeout: 420_000 },
  async (t) => {
    const { libvirt, dir, defer } = await labWithGuest(
      t,
      ['h1', 'h2', 'h3', 'h4'],
      [
        { name: 'g1', host: 'h1' },
        { name: 'g2', host: 'h2' },
      ],
    );
    // h3 and h4 take one guest each (256 MiB for 192 MiB guests): placed without the other's
    // reservation, both guests would fit either, and the two drains would pick the same.
    const target = 'role: target, memory: 256MiB';
    const topology = writeLibvirtTopology(
      dir,
      libvirt,
      { h1: 'role: source', h2: target, h3: target, h4: target },
      [],
    );
    const agents = await startLibvirtAgents(libvirt, dir, topology, ['h3', 'h4'], defer);
    const from: Record<string, string> = { g1: 'h1', g2: 'h2' };
    const before: Record<string, string> = { g1: libvirt.serial('h1', 'g1'), g2: libvirt.serial('h2', 'g2') };
    const first = startEvacuation(libvirt, dir, topology, 'h1', ['--exclude-host', 'h2']);
    const second = startEvacuation(libvirt, dir, topology, 'h2', ['--exclude-host', 'h1']);
    const [one, two] = await Promise.all([first.exit(300_000), second.exit(300_000)]);
    const logs = agents.map((a) => a.stderr()).join('\n');
    assert.equal(one.code, 0, `evacuate h1: ${one.stderr}\n${logs}`);
    assert.equal(two.code, 0, `evacuate h2: ${two.stderr}\n${logs}`);
    const moved = [one, two].flatMap(
      (r) => (JSON.parse(r.stdout) as { moved: { name: string; target: string }[] }).moved,
    );
    t.diagnostic(`moved: ${JSON.stringify(moved)}`);
    assert.deepEqual(moved.map((m) => m.name).sort(), ['g1', 'g2']);
    assert.notEqual(moved[0]!.target, moved[1]!.target, 'one guest per 256 MiB target');
    assert.ok(
      agents.some((agent) => overlappingJobs(agent.stderr())),
      `an agent served the two jobs at once:\n${logs}`,
    );
    for (const { name, target } of moved)
      assert.equal(await movedGuestProblem(libvirt, name, from[name]!, target, before[name]!), undefined);
  },
);
