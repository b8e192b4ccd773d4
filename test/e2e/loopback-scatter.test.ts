import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoRoot, roundsScatterArgs, storePagesFile, tempDir } from '../support/fixtures.js';

/**
 * The scatter job as an operator runs it, on loopback (no root): the CLI coordinator, agents as real
 * processes, synthetic images generated on first use, encrypted multicast, and every rebuilt image
 * compared byte for byte with the source's.
 */
const cli = join(repoRoot, 'dist/src/cli/main.js');

/** Three targets of two VMs each, so every agent gets work; ports apart from other tests'. */
function writeTopology(dir: string, basePort: number, vmMiB = 16): string {
  const families = ['debian', 'debian', 'debian', 'alpine', 'alpine', 'debian'];
  const path = join(dir, 'topology.yaml');
  writeFileSync(
    path,
    [
      `multicast: { base: 239.255.${100 + (basePort % 100)}.0, size: 8, port: ${basePort + 10} }`,
      'hosts:',
      `  - { name: src, address: 127.0.0.1, port: ${basePort}, role: source, link: 1Gbit }`,
      ...[1, 2, 3].map(
        (n) =>
          `  - { name: t${n}, address: 127.0.0.1, port: ${basePort + n}, role: target, memory: ${4 * vmMiB}MiB, maxVms: 2, link: 1Gbit }`,
      ),
      'vms:',
      ...families.map(
        (family, i) =>
          `  - { name: vm${i + 1}, memory: ${vmMiB}MiB, source: { synthetic: { seed: ${i + 1}, family: ${family} } } }`,
      ),
    ].join('\n'),
  );
  return path;
}

/** One target's report row. */
function targetOf(report: { targets: { name: string }[] }, name: string) {
  return report.targets.find((x) => x.name === name) as unknown as Record<string, number>;
}

function scatter(workDir: string, topology: string, ...args: string[]) {
  const result = spawnSync(
    process.execPath,
    [cli, 'scatter', '--topology', topology, '--work-dir', workDir, '--json', ...args],
    { encoding: 'utf8', timeout: 180_000 },
  );
  const report = result.stdout.trim().startsWith('{') ? JSON.parse(result.stdout) : undefined;
  return { code: result.status, report, stderr: result.stderr };
}

/** The rebuilt image of each VM equals the source's, byte for byte. */
function assertImagesIdentical(workDir: string, report: { vms: { name: string; target: string }[] }) {
  const sources = readdirSync(join(workDir, 'images'));
  for (const vm of report.vms) {
    const source = sources.find((f) => f.startsWith(`${vm.name}-`) && f.endsWith('.raw'));
    assert.ok(source, `source image of ${vm.name}`);
    const rebuilt = join(workDir, 'agents', vm.target, 'images', `${vm.name}.raw`);
    assert.ok(
      readFileSync(rebuilt).equals(readFileSync(join(workDir, 'images', source))),
      `${vm.name} rebuilt at ${vm.target} byte-identical`,
    );
  }
}

/**
 * Guest memory is its owner's only at both ends: every file under the stores and image directories is
 * mode 0600, and those directories 0700, whatever the umask.
 */
function assertGuestMemoryPrivate(workDir: string) {
  const dirs = [join(workDir, 'images')];
  for (const host of ['t1', 't2', 't3'])
    dirs.push(
      join(workDir, 'agents', host),
      join(workDir, 'agents', host, 'images'),
      join(workDir, 'agents', host, 'store'),
    );
  for (const dir of dirs) {
    assert.equal(statSync(dir).mode & 0o777, 0o700, `${dir} is 0700`);
    for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      const path = join(entry.parentPath, entry.name);
      if (entry.isFile() && /\.(raw|bin)$/.test(entry.name))
        assert.equal(statSync(path).mode & 0o777, 0o600, `${path} is 0600`);
    }
  }
}

const basePort = 30_000 + (process.pid % 2000) * 10;

test('scatter on loopback: 6 VMs to 3 agents byte-identical; a second job sends nothing already held', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const topology = writeTopology(dir, basePort);
  const first = scatter(dir, topology);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.report.ok, true);
  assert.deepEqual(first.report.localAgents, ['t1', 't2', 't3']);
  assert.equal(first.report.vms.length, 6);
  for (const target of ['t1', 't2', 't3'])
    assert.equal(first.report.vms.filter((vm: { target: string }) => vm.target === target).length, 2);
  assertImagesIdentical(dir, first.report);
  assertGuestMemoryPrivate(dir);
  const memory = first.report.pages.total * 4096;
  const onLink = first.report.source.multicastWireBytes + first.report.source.unicastBytes;
  assert.ok(onLink < 0.75 * memory, `source link ${onLink} bytes for ${memory} bytes of memory`);
  assert.ok(first.report.pages.multicast > 0);
  // Every byte on the source's link is charged to some VM.
  const charged = first.report.vms.reduce((n: number, vm: { wireBytes: number }) => n + vm.wireBytes, 0);
  assert.ok(Math.abs(charged - onLink) <= first.report.vms.length, `${charged} charged of ${onLink}`);

  const second = scatter(dir, topology);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(second.report.pages.multicast, 0, 'every page is held from the first job');
  assert.equal(second.report.source.multicastWireBytes, 0);
  // By multicast, or by unicast for rounds too small to pay for a session.
  const delivered = first.report.targets.reduce(
    (n: number, x: { multicastPages: number; unicastPages: number }) => n + x.multicastPages + x.unicastPages,
    0,
  );
  assert.equal(second.report.pages.held, delivered, 'each target holds every page it was sent');
  assertImagesIdentical(dir, second.report);
});

function startAgent(workDir: string, topology: string, host: string): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [
      cli,
      'agent',
      '--topology',
      topology,
      '--host',
      host,
      '--dir',
      join(workDir, 'agents', host),
      '--secret-file',
      join(workDir, 'secret'),
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`agent ${host} exited with ${code}`)));
  });
}

test('an agent killed mid-multicast fails only its VMs (exit 6); --resume re-sends nothing it held', async (t) => {
  const { dir, cleanup } = tempDir();
  const agents = new Map<string, ChildProcess>();
  t.after(() => {
    for (const child of agents.values()) child.kill('SIGKILL');
    cleanup();
  });
  const topology = writeTopology(dir, basePort + 5000, 32);
  // A first job creates the secret; the agents run outside the coordinator so one can be killed.
  writeFileSync(join(dir, 'secret'), 'a deployment secret of the test, 32+ bytes long', { mode: 0o600 });
  for (const host of ['t1', 't2', 't3']) agents.set(host, await startAgent(dir, topology, host));

  const job = spawn(process.execPath, roundsScatterArgs(topology, dir), {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  job.stdout!.on('data', (chunk) => (stdout += chunk));
  // Kill t2's agent once it holds some pages, so it dies in the middle of the multicast phase.
  const store = () => storePagesFile(join(dir, 'agents', 't2', 'store'));
  const deadline = Date.now() + 120_000;
  while (!(existsSync(store()) && statSync(store()).size > 2 * 2 ** 20)) {
    assert.ok(Date.now() < deadline, 't2 receives pages');
    await new Promise((r) => setTimeout(r, 10));
  }
  agents.get('t2')!.kill('SIGKILL');
  const heldAtKill = Math.floor(statSync(store()).size / 4096);
  const code = await new Promise<number | null>((resolve) => job.once('exit', resolve));
  assert.equal(code, 6, 'some VMs not verified');
  const broken = JSON.parse(stdout);
  const lost = broken.vms.filter((vm: { verified: boolean }) => !vm.verified);
  assert.ok(
    lost.length > 0 && lost.every((vm: { target: string }) => vm.target === 't2'),
    'only t2 VMs fail',
  );
  for (const vm of lost) assert.match(vm.error, /t2/);
  assert.equal(broken.vms.filter((vm: { verified: boolean }) => vm.verified).length, 6 - lost.length);

  agents.set('t2', await startAgent(dir, topology, 't2'));
  const resumed = scatter(dir, topology, '--resume');
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal(resumed.report.ok, true);
  assert.equal(
    resumed.report.vms.filter((vm: { alreadyVerified: boolean }) => vm.alreadyVerified).length,
    6 - lost.length,
  );
  assertImagesIdentical(dir, resumed.report);
  // The restarted agent kept what it stored before the kill, and the resumed job sent it only the rest.
  const t2 = resumed.report.targets.find((x: { name: string }) => x.name === 't2');
  // Pages it stored before the kill (some may serve VMs of other targets that shared its group).
  assert.ok(t2.heldPages > 0, `t2 kept ${t2.heldPages} pages (${heldAtKill} stored at the kill)`);
  assert.equal(resumed.report.pages.multicast, t2.multicastPages, 'only pages t2 lacked were multicast');
  // Payload, not wire bytes: repairs of lost datagrams (many more on a loaded machine) are not re-sent
  // pages, and this checks that nothing held was sent again.
  const sent = resumed.report.source.multicastPayloadBytes + resumed.report.source.unicastBytes;
  const lacking = (t2.multicastPages + t2.unicastPages) * 4096;
  assert.ok(sent < 1.2 * lacking + 2 ** 20, `resume sent ${sent} bytes for ${lacking} bytes t2 lacked`);
});

test('site peers: a target fetches from an agent of its site the pages it holds, not from the source', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const port = basePort + 3000;
  const write = (name: string, vms: string[]) => {
    const path = join(dir, name);
    writeFileSync(
      path,
      [
        `multicast: { base: 239.255.${100 + (port % 100)}.0, size: 4, port: ${port + 10} }`,
        'hosts:',
        `  - { name: src, address: 127.0.0.1, port: ${port}, role: source, link: 1Gbit }`,
        `  - { name: t1, address: 127.0.0.1, port: ${port + 1}, role: target, memory: 64MiB, link: 1Gbit, site: rack-a }`,
        `  - { name: t2, address: 127.0.0.1, port: ${port + 2}, role: target, memory: 64MiB, link: 1Gbit, site: rack-a }`,
        'vms:',
        ...vms,
      ].join('\n'),
    );
    return path;
  };
  // Same family: most of vm-b's pages are vm-a's, which t1 holds after the first job.
  const first = scatter(
    dir,
    write('a.yaml', [
      '  - { name: vm-a, memory: 16MiB, source: { synthetic: { seed: 1, family: debian, osShare: 0.6 } }, target: t1 }',
    ]),
  );
  assert.equal(first.code, 0, first.stderr);
  const second = scatter(
    dir,
    write('b.yaml', [
      '  - { name: vm-b, memory: 16MiB, source: { synthetic: { seed: 2, family: debian, osShare: 0.6 } }, target: t2 }',
    ]),
  );
  assert.equal(second.code, 0, second.stderr);
  assertImagesIdentical(dir, second.report);
  const t2 = targetOf(second.report, 't2');
  assert.ok(t2.peerPages! > 1000, `t2 fetched ${t2.peerPages} pages from t1`);
  assert.equal(second.report.pages.peer, t2.peerPages);
  // What came from the peer did not cross the source's link.
  assert.equal(second.report.pages.multicast, t2.multicastPages);
  assert.ok(second.report.pages.multicast < first.report.pages.multicast, 'fewer pages from the source');
});

test('a target without the disk space is named by the pre-flight checks; nothing moves (exit 1)', async (t) => {
  const { dir, cleanup } = tempDir();
  const agents: ChildProcess[] = [];
  const t2Dir = join(dir, 'agents', 't2');
  mkdirSync(t2Dir, { recursive: true });
  // A 2 MiB filesystem of its own for t2 (tests run as root): far less than its two VMs need.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', t2Dir]);
  t.after(() => {
    for (const child of agents) child.kill('SIGKILL');
    execFileSync('umount', ['-l', t2Dir]);
    cleanup();
  });
  const topology = writeTopology(dir, basePort + 7000);
  writeFileSync(join(dir, 'secret'), 'a deployment secret of the test, 32+ bytes long', { mode: 0o600 });
  for (const host of ['t1', 't2', 't3']) agents.push(await startAgent(dir, topology, host));
  const result = scatter(dir, topology);
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, /pre-flight checks failed, nothing moved/);
  assert.match(result.stderr, /t2: needs [\d.]+ MiB for its store and images, has [\d.]+ (MiB|KiB) free/);
  for (const host of ['t1', 't2', 't3'])
    assert.deepEqual(readdirSync(join(dir, 'agents', host, 'images')), [], `nothing at ${host}`);
});

test('a disk that fills up during the job fails the VMs of that target clearly; nothing half-written is left', async (t) => {
  const { dir, cleanup } = tempDir();
  const agents: ChildProcess[] = [];
  const t2Dir = join(dir, 'agents', 't2');
  mkdirSync(t2Dir, { recursive: true });
  // Room enough for the pre-flight checks; once pages arrive, something else takes the rest.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=96m', 'tmpfs', t2Dir]);
  t.after(() => {
    for (const child of agents) child.kill('SIGKILL');
    execFileSync('umount', ['-l', t2Dir]);
    cleanup();
  });
  const topology = writeTopology(dir, basePort + 7500);
  writeFileSync(join(dir, 'secret'), 'a deployment secret of the test, 32+ bytes long', { mode: 0o600 });
  for (const host of ['t1', 't2', 't3']) agents.push(await startAgent(dir, topology, host));
  const job = spawn(process.execPath, roundsScatterArgs(topology, dir), {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  job.stdout!.on('data', (chunk) => (stdout += chunk));
  job.stderr!.on('data', (chunk) => (stderr += chunk));
  const store = () => storePagesFile(join(t2Dir, 'store'));
  const deadline = Date.now() + 120_000;
  while (!(existsSync(store()) && statSync(store()).size > 0)) {
    assert.ok(Date.now() < deadline, 't2 receives pages');
    await new Promise((r) => setTimeout(r, 5));
  }
  // Fill the filesystem (dd stops at ENOSPC and says so; that is the point).
  spawnSync('dd', ['if=/dev/zero', `of=${join(t2Dir, 'filler')}`, 'bs=1M'], { stdio: 'ignore' });
  const code = await new Promise<number | null>((resolve) => job.once('close', resolve));
  assert.equal(code, 6, stderr);
  const report = JSON.parse(stdout);
  const failed = report.vms.filter((vm: { verified: boolean }) => !vm.verified);
  assert.ok(failed.length > 0 && failed.every((vm: { target: string }) => vm.target === 't2'));
  for (const vm of failed) assert.match(vm.error, /no space left on device/);
  assert.equal(report.vms.filter((vm: { verified: boolean }) => vm.verified).length, 6 - failed.length);
  const left = readdirSync(join(t2Dir, 'images'));
  assert.deepEqual(left, [], `nothing half-written at t2: ${left.join(', ')}`);
});

test('forged datagrams sent to the job groups are dropped, counted per target in the report, and every VM verifies', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const port = basePort + 7;
  const topology = writeTopology(dir, port);
  // A forger on the loopback groups for the whole job (bounded: 30 s, 1 datagram a millisecond at most).
  const forger = spawn(process.execPath, [
    '-e',
    `const s = require('node:dgram').createSocket('udp4');
     s.bind(0, '127.0.0.1', () => {
       s.setMulticastInterface('127.0.0.1');
       const junk = Buffer.alloc(120, 0x41); junk.write('VS', 0);
       let n = 0;
       const timer = setInterval(() => {
         for (let g = 0; g < 8; g++) s.send(junk, ${port + 10}, '239.255.${100 + (port % 100)}.' + g);
         if (++n > 30000) { clearInterval(timer); s.close(); }
       }, 1);
     });`,
  ]);
  t.after(() => forger.kill('SIGKILL'));
  const job = scatter(dir, topology);
  forger.kill('SIGKILL');
  assert.equal(job.code, 0, job.stderr);
  assert.equal(job.report.ok, true);
  const dropped = job.report.targets.map((x: { droppedDatagrams: number }) => x.droppedDatagrams);
  assert.ok(
    dropped.reduce((a: number, b: number) => a + b, 0) > 0,
    `forged datagrams counted: ${dropped.join(', ')}`,
  );
  // And named in the agents' logs, by reason.
  const logs = ['t1', 't2', 't3']
    .map((h) => readFileSync(join(dir, 'agents', h, 'agent.log'), 'utf8'))
    .join('\n');
  assert.match(logs, /dropped \d+ datagram\(s\): /);
});
