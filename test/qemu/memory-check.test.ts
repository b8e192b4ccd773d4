import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { connectControl } from '../../src/control/control-channel.js';
import { isZeroPage } from '../../src/memory/page.js';
import { deriveDigestKey, PageDigester } from '../../src/memory/page-digest.js';
import { openGuestRam, type GuestRamMethod } from '../../src/qemu/guest-ram.js';
import { StreamParser, StreamWriter } from '../../src/qemu/migration-stream.js';
import { connectQmp, type QmpClient } from '../../src/qemu/qmp.js';
import { Agent } from '../../src/agent/agent.js';
import { AgentLink } from '../../src/wire/agent-link.js';
import { digestGuestRam, newMemorySeed } from '../../src/live/memory-check.js';
import { migrateLiveVm } from '../../src/live/migrate.js';
import { qemuMigrationSource } from '../../src/live/source-qemu.js';
import { PROTOCOL_VERSION } from '../../src/wire/protocol.js';
import { tempDir } from '../support/fixtures.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  lastTick,
  quitQemuAt,
} from '../../bench/harness/qemu-guest.js';

/**
 * The memory check before resume, against real QEMU: every way of reading a guest's RAM gives the
 * same digests, and a page that reaches the target different from the source's memory (changed
 * behind the stream, as pages QEMU's dirty tracking misses are) is caught: the migration is rolled
 * back, the target's QEMU killed, and the guest runs on at its source.
 */
const secret = new TextEncoder().encode('memory check test secret, 32 bytes+');

async function bootSource(t: TestContext, dir: string) {
  const kernel = await ensureGuestKernel();
  const initrd = join(dir, 'initrd.gz');
  buildInitramfs(initrd, { seed: 11, workloadMiB: 8 });
  const vmsQmp = join(dir, 'src-vms.qmp');
  const guest = await bootGuest({
    kernel,
    initrd,
    memoryMiB: 128,
    qmpSocket: join(dir, 'src.qmp'),
    extraArgs: ['-qmp', `unix:${vmsQmp},server=on,wait=off`],
  });
  t.after(() => guest.stop());
  while (lastTick(guest.serial()) < 2) await new Promise((r) => setTimeout(r, 200));
  const command = [
    'qemu-system-x86_64',
    ...['-accel', 'tcg', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot'],
    ...['-serial', 'null', '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet'],
  ];
  return { guest, vmsQmp, command };
}

test('guest RAM: process memory and pmemsave read the same bytes', { timeout: 120_000 }, async (t) => {
  const { dir, cleanup } = tempDir('vms-ram-');
  t.after(cleanup);
  const { guest } = await bootSource(t, dir);
  await guest.qmp.execute('stop');
  const seed = newMemorySeed();
  const read = async (only: GuestRamMethod) => {
    const ram = await openGuestRam(guest.qmp, {
      qmpSocket: join(dir, 'src.qmp'),
      scratchDir: join(dir, 'ram'),
      name: 'g1',
      running: false,
      only,
    });
    try {
      assert.equal(ram.method, only);
      return await digestGuestRam(ram, seed);
    } finally {
      ram.close();
      ram.close(); // a second close (a destination aborted twice) is a no-op, not EBADF
    }
  };
  const viaProcess = await read('process-memory');
  const viaPmemsave = await read('pmemsave');
  await guest.qmp.execute('cont');
  assert.equal(viaProcess.block, 'pc.ram');
  assert.ok(viaProcess.digests.length >= 127 * 32);
  assert.deepEqual(viaProcess, viaPmemsave);
});

/**
 * A QMP client whose `migrate` goes through a proxy that changes one byte of one non-zero page of the
 * stream before the coordinator reads it: both ends' stream digests then agree, and only the memory
 * check can see that the target holds a page the source's memory never had.
 */
let proxies = 0;

function tamperingSource(
  qmp: QmpClient,
  dir: string,
  chunks = 1,
): { client: QmpClient; tampered: () => number } {
  // MiB chunks of pc.ram in which one page was changed.
  const changed = new Set<number>();
  const changedPages = new Set<number>();
  const client = Object.create(qmp) as QmpClient;
  client.execute = async (command: string, args?: Record<string, unknown>) => {
    if (command !== 'migrate') return qmp.execute(command, args);
    const real = String(args!.uri).replace(/^unix:/, '');
    const proxyPath = join(dir, `tamper-${++proxies}.sock`);
    const server = net.createServer((fromQemu) => {
      server.close();
      const toCoordinator = net.connect({ path: real });
      const parser = new StreamParser();
      const writer = new StreamWriter((bytes) => toCoordinator.write(Buffer.from(bytes)));
      let pages = 0;
      fromQemu.on('data', (chunk: Buffer) => {
        for (const record of parser.push(chunk)) {
          const chunkIndex = record.kind === 'page' ? Math.floor(record.offset / 2 ** 20) : -1;
          const pick =
            record.kind === 'page' &&
            record.block === 'pc.ram' &&
            !isZeroPage(record.data, 0) &&
            ++pages >= 2000 &&
            changed.size < chunks &&
            !changed.has(chunkIndex);
          // A page changed once stays changed when QEMU sends it again.
          if (
            record.kind === 'page' &&
            (pick || (record.block === 'pc.ram' && changedPages.has(record.offset)))
          ) {
            const data = new Uint8Array(record.data);
            data[100] = data[100]! ^ 0x5a;
            writer.write({ ...record, data });
            changed.add(chunkIndex);
            changedPages.add(record.offset);
          } else writer.write(record);
        }
      });
      // The coordinator's answer on the return path goes back to QEMU as it is.
      toCoordinator.on('data', (chunk: Buffer) => fromQemu.write(chunk));
      fromQemu.once('end', () => toCoordinator.end());
      toCoordinator.once('close', () => fromQemu.destroy());
    });
    await new Promise<void>((resolve) => server.listen(proxyPath, resolve));
    return qmp.execute('migrate', { uri: `unix:${proxyPath}` });
  };
  return { client, tampered: () => changed.size };
}

async function withAgent(t: TestContext, dir: string) {
  let onLog = (_line: string) => undefined as void;
  const logged = (pattern: RegExp) =>
    new Promise<void>((resolve) => (onLog = (line) => (pattern.test(line) ? resolve() : undefined)));
  const agent = await Agent.start({
    name: 't1',
    listenAddress: '127.0.0.1',
    port: 0,
    multicastInterface: '127.0.0.1',
    dir: join(dir, 'agent'),
    secret,
    log: (line) => onLog(line),
  });
  t.after(() => agent.close());
  const channel = await connectControl('127.0.0.1', agent.port, { secret });
  t.after(() => channel.close());
  const host = {
    name: 't1',
    address: '127.0.0.1',
    port: agent.port,
    role: 'target' as const,
    memoryBytes: 1 << 30,
    maxVms: Infinity,
    linkBitsPerSecond: 1e9,
    site: '',
  };
  const link = new AgentLink(0, host, channel);
  link.send({ t: 'job', version: PROTOCOL_VERSION, job: 'memory-check', host: 't1' });
  await link.next('ready', () => true, 30_000);
  return { link, logged };
}

async function migrate(
  source: QmpClient,
  vmsQmp: string,
  command: string[],
  link: AgentLink,
  dir: string,
  extra: { maxRepairBytes?: number } = {},
) {
  return migrateLiveVm({
    ...extra,
    vm: 'g1',
    source: qemuMigrationSource({
      vm: 'g1',
      command,
      monitor: source,
      qmpSocket: vmsQmp,
      runDir: join(dir, 'run'),
      strategy: 'precopy',
      downtimeLimitMs: 300,
      stepTimeoutMs: 120_000,
    }),
    link,
    runDir: join(dir, 'run'),
    digester: new PageDigester(deriveDigestKey(secret)),
    holds: () => false,
    codec: 'zstd',
    strategy: 'precopy',
  });
}

test(
  'memory check: a page changed behind the stream is caught: rolled back (the guest runs on at its source) or repaired',
  { timeout: 180_000 },
  async (t) => {
    const { dir, cleanup } = tempDir('vms-memcheck-');
    // One hook, in this order: the destination that runs at the end outlives its agent by design.
    t.after(async () => {
      await quitQemuAt(join(dir, 'agent', 'run', 'g1.qmp'));
      cleanup();
    });
    const { guest, vmsQmp, command } = await bootSource(t, dir);
    const { link, logged } = await withAgent(t, dir);
    const rolledBack = logged(/g1: rolled back/);
    const qmp = await connectQmp(vmsQmp, { connectTimeoutMs: 5000 });
    t.after(() => qmp.close());

    // Repairs off: the difference rolls the migration back.
    const first = tamperingSource(qmp, dir);
    const result = await migrate(first.client, vmsQmp, command, link, dir, { maxRepairBytes: 0 });
    assert.equal(first.tampered(), 1, 'the proxy changed a page');
    assert.equal(result.ok, false, 'a target whose memory differs never runs');
    assert.equal(result.memoryMismatch, true, result.error);
    assert.match(result.error ?? '', /guest memory differs from the source's in 1 MiB chunk/);
    assert.equal(result.memoryCheck?.method, 'process-memory');
    // Rolled back: the destination is gone, the guest runs and ticks on at its source.
    const status = (await guest.qmp.execute('query-status')) as { status: string };
    assert.equal(status.status, 'running');
    await rolledBack;
    assert.ok(!existsSync(join(dir, 'agent', 'run', 'g1.qmp')), 'the destination QEMU was removed');
    const before = lastTick(guest.serial());
    while (lastTick(guest.serial()) <= before + 1) await new Promise((r) => setTimeout(r, 200));

    // Repairs on (the default): the differing MiB chunks, 20 of them (more than one control-channel
    // frame holds), are copied from the stopped source into the paused destination and checked again
    // there, and the guest runs at its target.
    const second = tamperingSource(qmp, dir, 20);
    const again = await migrate(second.client, vmsQmp, command, link, dir);
    assert.equal(second.tampered(), 20, 'the proxy changed a page in each of 20 MiB chunks');
    assert.equal(again.ok, true, again.error);
    assert.equal(again.memoryCheck?.method, 'process-memory');
    // (A changed page QEMU later sent as a zero record is the source's again.)
    assert.ok((again.memoryCheck?.repairedMiB ?? 0) > 16, `repaired ${again.memoryCheck?.repairedMiB} MiB`);
    t.diagnostic(
      `memory check of 128 MiB with a ${again.memoryCheck?.repairedMiB} MiB repair: ${again.memoryCheck?.ms} ms; downtime ${again.downtimeMs} ms`,
    );
    await guest.exited;
    // The rolled-back destination's cleanup left the new one's QMP socket alone (the next move needs it).
    const destination = await connectQmp(join(dir, 'agent', 'run', 'g1.qmp'), { connectTimeoutMs: 5000 });
    t.after(() => destination.close());
    const running = (await destination.execute('query-status')) as { status: string };
    assert.equal(running.status, 'running');
    // QEMU serves one QMP client at a time: this one quits it (the cleanup hook could not connect).
    await destination.execute('quit').catch(() => undefined);
  },
);
