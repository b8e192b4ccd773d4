import assert from 'node:assert/strict';
import { spawn as spawnProcess, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  createLab,
  findTool,
  labAvailable,
  sweepStaleLabs,
  watchProcess,
  type Lab,
} from '../../bench/harness/lab.js';

// Not a skip: a machine that cannot run the lab fails here with the reason.
function requireLab(): void {
  const availability = labAvailable();
  if (!availability.ok) assert.fail(`network lab unavailable: ${availability.why}`);
}

async function newLab(t: TestContext, options: Parameters<typeof createLab>[0]): Promise<Lab> {
  requireLab();
  const lab = await createLab(options);
  t.after(() => lab.destroy());
  return lab;
}

function namespaces(): string[] {
  const result = spawnSync(findTool('ip') ?? 'ip', ['netns', 'list'], { encoding: 'utf8' });
  return result.stdout.split('\n').map((line) => line.split(' ')[0] ?? '');
}

function links(): string {
  return spawnSync(findTool('ip') ?? 'ip', ['link'], { encoding: 'utf8' }).stdout;
}

function labNamespaces(lab: Pick<Lab, 'hosts' | 'switchNamespace'>): string[] {
  return [...lab.hosts.map((h) => h.namespace), lab.switchNamespace];
}

function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** Node one-liners run inside the hosts (CommonJS; process.argv[1] is the first argument). */
const scripts = {
  multicastReceive: `
    const [group, port, address] = process.argv.slice(1);
    const s = require('node:dgram').createSocket({ type: 'udp4', reuseAddr: true });
    s.on('message', (m, r) => { console.log(JSON.stringify({ text: m.toString(), from: r.address })); s.close(); });
    s.bind(Number(port), () => { s.addMembership(group, address); console.log('ready'); });`,
  multicastSend: `
    const [group, port, address, text] = process.argv.slice(1);
    const s = require('node:dgram').createSocket('udp4');
    s.bind(0, address, () => {
      s.setMulticastInterface(address);
      s.setMulticastTTL(1);
      s.send(text, Number(port), group, (error) => { if (error) throw error; s.close(); });
    });`,
  echoServer: `
    const s = require('node:dgram').createSocket('udp4');
    s.on('message', (m, r) => s.send(m, r.port, r.address, () => s.close()));
    s.bind(Number(process.argv[1]), () => console.log('ready'));`,
  echoClient: `
    const [address, port, size] = process.argv.slice(1);
    const s = require('node:dgram').createSocket('udp4');
    const start = process.hrtime.bigint();
    s.on('message', (m) => {
      console.log(JSON.stringify({ bytes: m.length, ms: Number(process.hrtime.bigint() - start) / 1e6 }));
      s.close();
    });
    s.send(Buffer.alloc(Number(size), 7), Number(port), address);`,
  // Counts bytes on one TCP connection; the rate excludes the first chunk (it arrived at time zero).
  tcpSink: `
    const server = require('node:net').createServer((socket) => {
      let bytes = 0, first = 0n, firstBytes = 0, last = 0n;
      socket.on('data', (chunk) => {
        last = process.hrtime.bigint();
        if (bytes === 0) { first = last; firstBytes = chunk.length; }
        bytes += chunk.length;
      });
      socket.on('end', () => {
        const seconds = Number(last - first) / 1e9;
        console.log(JSON.stringify({ bytes, seconds, bitsPerSecond: ((bytes - firstBytes) * 8) / seconds }));
        server.close();
      });
    });
    server.listen(Number(process.argv[1]), () => console.log('ready'));`,
  tcpBlast: `
    const [address, port, size] = process.argv.slice(1);
    const socket = require('node:net').connect(Number(port), address, () => socket.end(Buffer.alloc(Number(size), 1)));`,
  // Counts 32-byte datagrams until the first 1-byte end marker (the path keeps their order, so every
  // datagram sent before it has arrived or been dropped by then).
  udpCount: `
    const s = require('node:dgram').createSocket('udp4');
    let count = 0;
    s.on('message', (m) => {
      if (m.length > 1) return void count++;
      console.log(JSON.stringify({ count }));
      s.close();
    });
    s.bind(Number(process.argv[1]), () => console.log('ready'));`,
  // Sends small datagrams in paced batches (so no socket buffer overflows), then end markers (many:
  // loss rules drop them too; all 40 lost at 50% loss is a chance of 1 in 10^12); reports send errors.
  udpBurst: `
    const [address, port, count] = process.argv.slice(1);
    const s = require('node:dgram').createSocket('udp4');
    let sent = 0, done = 0, errors = 0;
    const total = Number(count) + 40;
    const batch = () => {
      for (let i = 0; i < 50 && sent < total; i++, sent++) {
        s.send(Buffer.alloc(sent < Number(count) ? 32 : 1, 3), Number(port), address, (error) => {
          if (error) errors++;
          if (++done === total) { console.log(JSON.stringify({ errors })); s.close(); }
        });
      }
      if (sent < total) setTimeout(batch, 2);
    };
    s.bind(0, batch);`,
};

function node(lab: Lab, host: number, script: string, args: (string | number)[]) {
  const child = lab.spawn(host, process.execPath, ['-e', script, ...args.map(String)]);
  return watchProcess(child, `${lab.host(host).name}: node ${script.trim().slice(0, 40)}…`);
}

/** Udp RcvbufErrors from the host's own /proc/net/snmp (per network namespace). */
async function udpReceiveBufferErrors(lab: Lab, host: number): Promise<number> {
  const { stdout } = await lab.exec(host, 'cat', ['/proc/net/snmp']);
  const [names, values] = stdout
    .split('\n')
    .filter((line) => line.startsWith('Udp:'))
    .map((line) => line.trim().split(/\s+/));
  const value = values?.[names?.indexOf('RcvbufErrors') ?? -1];
  assert.ok(value !== undefined, `no Udp RcvbufErrors in /proc/net/snmp:\n${stdout}`);
  return Number(value);
}

function json<T>(stdout: string): T {
  const line = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as T;
}

test('the lab is available on this machine (root, ip, tc, nft)', () => {
  requireLab();
});

test('three hosts: multicast from host 0 reaches hosts 1 and 2; unicast echo works', async (t) => {
  const lab = await newLab(t, { hosts: ['src', 't1', 't2'] });
  assert.equal(lab.hosts.length, 3);
  assert.equal(new Set(lab.hosts.map((h) => h.address)).size, 3);
  assert.match(lab.subnet, /^10\.77\.\d+\.0\/24$/);

  const group = '239.255.42.7';
  const receivers = [1, 2].map((i) =>
    node(lab, i, scripts.multicastReceive, [group, 7420, lab.hosts[i]?.address ?? '']),
  );
  await Promise.all(receivers.map((r) => r.waitFor(/ready/)));
  const sender = await lab.exec(0, process.execPath, [
    '-e',
    scripts.multicastSend,
    group,
    '7420',
    lab.host('src').address,
    'hello group',
  ]);
  assert.equal(sender.code, 0, sender.stderr);
  for (const receiver of receivers) {
    const { code, stdout, stderr } = await receiver.exit(5_000);
    assert.equal(code, 0, stderr);
    assert.deepEqual(json(stdout), { text: 'hello group', from: lab.host('src').address });
  }

  // `ping` is not installed everywhere: a UDP echo round trip is the unicast ping.
  const server = node(lab, 2, scripts.echoServer, [7]);
  await server.waitFor(/ready/);
  const ping = await lab.exec(
    0,
    process.execPath,
    ['-e', scripts.echoClient, lab.host(2).address, '7', '56'],
    {
      timeoutMs: 5_000,
    },
  );
  assert.equal(ping.code, 0, ping.stderr);
  const reply = json<{ bytes: number; ms: number }>(ping.stdout);
  assert.equal(reply.bytes, 56);
  t.diagnostic(`unicast echo round trip ${reply.ms.toFixed(2)} ms`);
  await server.exit(5_000);
});

test('shaping: a tbf-limited host moves data near the configured rate; counters grow', async (t) => {
  const lab = await newLab(t, { hosts: 3 });
  const size = 4 * 1024 * 1024;
  const rate = 100e6;

  const transfer = async (from: number, to: number, port: number) => {
    const sink = node(lab, to, scripts.tcpSink, [port]);
    await sink.waitFor(/ready/);
    const blast = await lab.exec(
      from,
      process.execPath,
      ['-e', scripts.tcpBlast, lab.host(to).address, port, size].map(String),
      {
        timeoutMs: 15_000,
      },
    );
    assert.equal(blast.code, 0, blast.stderr);
    const result = await sink.exit(15_000);
    assert.equal(result.code, 0, result.stderr);
    const measured = json<{ bytes: number; seconds: number; bitsPerSecond: number }>(result.stdout);
    assert.equal(measured.bytes, size);
    return measured.bitsPerSecond;
  };

  const unshaped = await transfer(0, 1, 5001);

  await lab.shape(0, { rate: '100mbit' });
  const tx0 = await lab.txBytes(0);
  const rx1 = await lab.rxBytes(1);
  const egress = await transfer(0, 1, 5002);
  const txGrowth = (await lab.txBytes(0)) - tx0;
  const rxGrowth = (await lab.rxBytes(1)) - rx1;
  await lab.unshape(0);

  await lab.shape(1, { rate: '50mbit', direction: 'in' });
  const ingress = await transfer(2, 1, 5003);

  t.diagnostic(`unshaped ${(unshaped / 1e6).toFixed(0)} Mbit/s`);
  t.diagnostic(
    `egress shaped to 100 Mbit/s: ${(egress / 1e6).toFixed(1)} Mbit/s (ratio ${(egress / rate).toFixed(3)})`,
  );
  t.diagnostic(
    `ingress shaped to 50 Mbit/s: ${(ingress / 1e6).toFixed(1)} Mbit/s (ratio ${(ingress / 50e6).toFixed(3)})`,
  );
  t.diagnostic(`during the 4 MiB egress transfer: host 0 tx +${txGrowth} B, host 1 rx +${rxGrowth} B`);

  assert.ok(egress / rate >= 0.5 && egress / rate <= 1.2, `egress ratio ${egress / rate}`);
  assert.ok(ingress / 50e6 >= 0.5 && ingress / 50e6 <= 1.2, `ingress ratio ${ingress / 50e6}`);
  assert.ok(unshaped > 2 * rate, `unshaped ${unshaped} bit/s should be well above the 100 Mbit/s limit`);
  assert.ok(txGrowth >= size, `host 0 sent ${txGrowth} B, at least the ${size} B payload`);
  assert.ok(rxGrowth >= size, `host 1 received ${rxGrowth} B, at least the ${size} B payload`);
});

test('loss: dropShare 50% in or out lets roughly half of 2000 datagrams through, silently', async (t) => {
  const lab = await newLab(t, { hosts: 2 });
  const count = 2000;

  // Datagrams that reached host 1's stack: those the receiver read plus those its socket buffer had
  // no room for (a receiver starved of CPU on a loaded machine drops some; that is not network loss).
  let bufferDrops = 0;
  const share = async (port: number) => {
    const sink = node(lab, 1, scripts.udpCount, [port]);
    await sink.waitFor(/ready/);
    const dropsBefore = await udpReceiveBufferErrors(lab, 1);
    const sender = await lab.exec(
      0,
      process.execPath,
      ['-e', scripts.udpBurst, lab.host(1).address, String(port), String(count)],
      { timeoutMs: 10_000 },
    );
    assert.equal(sender.code, 0, sender.stderr);
    assert.deepEqual(json(sender.stdout), { errors: 0 }, 'loss is silent to the sender');
    const result = await sink.exit(15_000);
    assert.equal(result.code, 0, result.stderr);
    const drops = (await udpReceiveBufferErrors(lab, 1)) - dropsBefore;
    bufferDrops += drops;
    return (json<{ count: number }>(result.stdout).count + drops) / count;
  };

  await lab.dropShare(1, 50, 'in');
  const inbound = await share(6001);
  await lab.clearLoss(1);

  await lab.dropShare(0, 50, 'out');
  const tx0 = await lab.txBytes(0);
  const outbound = await share(6002);
  const txGrowth = (await lab.txBytes(0)) - tx0;
  await lab.clearLoss(0);

  const clean = await share(6003);
  t.diagnostic(
    `arrived: in-loss 50% -> ${(inbound * 100).toFixed(1)}%, out-loss 50% -> ${(outbound * 100).toFixed(1)}%, none -> ${(clean * 100).toFixed(1)}% (socket buffer drops counted as arrived: ${bufferDrops})`,
  );

  assert.ok(inbound >= 0.3 && inbound <= 0.7, `in: ${inbound}`);
  assert.ok(outbound >= 0.3 && outbound <= 0.7, `out: ${outbound}`);
  assert.ok(clean >= 0.99, `without loss: ${clean}`);
  // Dropped after leaving the host: the sender's counter still holds every datagram (32 B + 42 B headers).
  assert.ok(txGrowth >= count * 74, `host 0 tx grew ${txGrowth} B`);
});

test('cleanup: destroy removes namespaces, links and processes, also when the test body throws', async () => {
  requireLab();
  let lab: Lab | undefined;
  let pid: number | undefined;
  await assert.rejects(async () => {
    lab = await createLab({ hosts: 2, mtu: 9000 });
    try {
      const mtus = await Promise.all([
        lab.exec(0, 'ip', ['-j', 'link', 'show', 'e0']),
        lab.exec(1, 'ip', ['-j', 'link', 'show', 'e0']),
      ]);
      for (const { stdout } of mtus) assert.equal(json<{ mtu: number }[]>(stdout)[0]?.mtu, 9000);
      const bridge = spawnSync(findTool('ip') ?? 'ip', ['-j', '-n', lab.switchNamespace, 'link', 'show'], {
        encoding: 'utf8',
      });
      for (const link of json<{ ifname: string; mtu: number }[]>(bridge.stdout)) {
        if (link.ifname !== 'lo') assert.equal(link.mtu, 9000, `${link.ifname} in the switch namespace`);
      }
      // A jumbo datagram crosses unfragmented.
      const server = node(lab, 1, scripts.echoServer, [7]);
      await server.waitFor(/ready/);
      const before = await lab.counters(0);
      const echo = await lab.exec(0, process.execPath, [
        '-e',
        scripts.echoClient,
        lab.host(1).address,
        '7',
        '8900',
      ]);
      assert.equal(json<{ bytes: number }>(echo.stdout).bytes, 8900, echo.stderr);
      assert.ok(
        (await lab.counters(0)).txPackets - before.txPackets <= 3,
        'one frame (plus ARP), not fragments',
      );

      const sleeper = node(lab, 1, 'setInterval(() => {}, 1000); console.log("up")', []);
      await sleeper.waitFor(/up/);
      pid = sleeper.child.pid;
      throw new Error('the test body fails');
    } finally {
      await lab.destroy();
    }
  }, /the test body fails/);
  assert.ok(lab !== undefined && pid !== undefined);
  assert.equal(lab.destroyed, true);
  await lab.destroy(); // idempotent
  const present = new Set(namespaces());
  for (const ns of labNamespaces(lab)) assert.ok(!present.has(ns), `${ns} still listed`);
  assert.doesNotMatch(links(), /vmslab/);
  assert.ok(processGone(pid), `process ${pid} in the lab survived`);
  assert.throws(() => lab?.spawn(0, 'true'), /destroyed/);
});

const labModule = new URL('../../bench/harness/lab.js', import.meta.url).href;
const childScript = `
  import { createLab, watchProcess } from ${JSON.stringify(labModule)};
  const lab = await createLab({ hosts: 2 });
  const sleeper = lab.spawn(1, process.execPath, ['-e', 'setInterval(() => {}, 1000); console.log("up")']);
  await watchProcess(sleeper).waitFor(/up/);
  console.log(JSON.stringify({ namespaces: [...lab.hosts.map((h) => h.namespace), lab.switchNamespace], pid: sleeper.pid }));
  setInterval(() => {}, 1000);`;

async function labInChild(): Promise<{
  child: ReturnType<typeof watchProcess>;
  namespaces: string[];
  pid: number;
}> {
  const child = watchProcess(
    spawnProcess(process.execPath, ['--input-type=module', '-e', childScript]),
    'lab child',
  );
  const match = await child.waitFor(/^\{.*\}$/m, 10_000);
  const info = JSON.parse(match[0]) as { namespaces: string[]; pid: number };
  const present = new Set(namespaces());
  for (const ns of info.namespaces) assert.ok(present.has(ns), `${ns} exists while the child runs`);
  return { child, ...info };
}

test('cleanup: SIGINT destroys a live lab; a SIGKILLed owner leaves a stale lab that sweepStaleLabs removes', async () => {
  requireLab();
  const interrupted = await labInChild();
  interrupted.child.child.kill('SIGINT');
  const exit = await interrupted.child.exit(10_000);
  assert.equal(exit.signal, 'SIGINT', `the child dies of SIGINT after cleaning up: ${exit.stderr}`);
  let present = new Set(namespaces());
  for (const ns of interrupted.namespaces) assert.ok(!present.has(ns), `${ns} survived SIGINT`);
  assert.ok(processGone(interrupted.pid), 'the process in the lab survived SIGINT');

  const killed = await labInChild();
  killed.child.child.kill('SIGKILL');
  await killed.child.exit(10_000);
  present = new Set(namespaces());
  for (const ns of killed.namespaces) assert.ok(present.has(ns), `${ns} is left behind by SIGKILL`);
  const swept = sweepStaleLabs();
  assert.deepEqual(
    swept.filter((ns) => killed.namespaces.includes(ns)).sort(),
    [...killed.namespaces].sort(),
  );
  present = new Set(namespaces());
  for (const ns of killed.namespaces) assert.ok(!present.has(ns), `${ns} survived the sweep`);
  const deadline = Date.now() + 2_000;
  while (!processGone(killed.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(processGone(killed.pid), 'the sweep killed the orphan in the stale lab');
});

test('udpcast: udp-sender in host 0 moves a 2 MB file byte-exact to udp-receiver in hosts 1 and 2', async (t) => {
  for (const name of ['udp-sender', 'udp-receiver']) {
    assert.ok(findTool(name) !== undefined, `${name} not found (Debian: apt-get install -y udpcast)`);
  }
  const lab = await newLab(t, { hosts: 3 });
  const dir = mkdtempSync(join(tmpdir(), 'vmslab-udpcast-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const payload = randomBytes(2 * 1024 * 1024);
  const source = join(dir, 'source.bin');
  writeFileSync(source, payload);

  const receivers = [1, 2].map((i) =>
    watchProcess(
      lab.spawn(i, 'udp-receiver', [
        '--interface',
        'e0',
        '--nokbd',
        '--file',
        join(dir, `received-${i}.bin`),
        '--start-timeout',
        '15',
        '--receive-timeout',
        '10',
      ]),
      `udp-receiver in host ${i}`,
    ),
  );
  const sender = await lab.exec(
    0,
    'udp-sender',
    ['--interface', 'e0', '--nokbd', '--min-receivers', '2', '--max-wait', '15', '--file', source],
    { timeoutMs: 30_000 },
  );
  assert.equal(sender.code, 0, sender.stderr);
  for (const [n, receiver] of receivers.entries()) {
    const result = await receiver.exit(15_000);
    assert.equal(result.code, 0, result.stderr);
    const received = readFileSync(join(dir, `received-${n + 1}.bin`));
    assert.equal(received.length, payload.length);
    assert.ok(received.equals(payload), `host ${n + 1} received the file byte-exact`);
  }
  const retransmits = /re-xmits=\s*(\d+)/.exec(sender.stderr + sender.stdout)?.[1];
  t.diagnostic(`udp-sender re-xmits: ${retransmits ?? 'n/a'}`);
});
