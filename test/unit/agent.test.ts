import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { connectControl, type ControlChannel } from '../../src/control/control-channel.js';
import { encodeFrame } from '../../src/control/frame-decoder.js';
import { Agent, MAX_JOBS, type AgentOptions } from '../../src/agent/agent.js';
import { PROTOCOL_VERSION } from '../../src/wire/protocol.js';
import { tempDir } from '../support/fixtures.js';

const secret = new TextEncoder().encode('agent unit test secret, long enough');

async function startAgent(dir: string, lines: string[], extra: Partial<AgentOptions> = {}) {
  return Agent.start({
    ...extra,
    name: 't1',
    listenAddress: '127.0.0.1',
    port: 0,
    multicastInterface: '127.0.0.1',
    dir,
    secret,
    log: (line) => lines.push(line),
  });
}

function nextMessage(channel: ControlChannel): Promise<Record<string, unknown>> {
  return new Promise((resolve) => channel.onMessage((m) => resolve(m as Record<string, unknown>)));
}

test(
  'agent: malformed messages are dropped and counted; a job then starts normally',
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const lines: string[] = [];
    const agent = await startAgent(dir, lines);
    t.after(() => agent.close());
    const channel = await connectControl('127.0.0.1', agent.port, { secret });
    t.after(() => channel.close());
    for (const junk of [null, 7, 'x', { t: 'job' }, { t: 'seed', session: 'one' }, { t: 'vm', vm: '../etc' }])
      channel.send(junk);
    const reply = nextMessage(channel);
    channel.send({ t: 'job', version: PROTOCOL_VERSION, job: 'j1', host: 't1' });
    const ready = await reply;
    assert.equal(ready.t, 'ready');
    assert.equal(ready.heldCount, 0);
    assert.deepEqual(ready.verified, []);
    assert.equal(agent.malformed, 6);
  },
);

test(
  'agent: a VM name that could escape its directory is refused with an error reply',
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const agent = await startAgent(dir, []);
    t.after(() => agent.close());
    const channel = await connectControl('127.0.0.1', agent.port, { secret });
    t.after(() => channel.close());
    const messages: Record<string, unknown>[] = [];
    channel.onMessage((m) => messages.push(m as Record<string, unknown>));
    channel.send({ t: 'job', version: PROTOCOL_VERSION, job: 'j2', host: 't1' });
    // As a coordinator does: the job's first message after 'ready'.
    while (messages.length < 1) await new Promise((r) => setTimeout(r, 10));
    channel.send({
      t: 'vm',
      vm: '../../etc/passwd',
      pages: 1,
      sha256: 'x',
      digests: new Uint8Array(0),
      weights: new Uint8Array(0),
      manifest: new Uint8Array(0),
    });
    while (messages.length < 2) await new Promise((r) => setTimeout(r, 10));
    assert.equal(messages[1]!.t, 'error');
    assert.match(String(messages[1]!.message), /bad VM name/);
  },
);

test(
  "agent: several jobs at once, each reservation beside the others'; past MAX_JOBS busy; a coordinator that goes away frees its job and its reservation",
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const lines: string[] = [];
    const agent = await startAgent(dir, lines);
    t.after(() => agent.close());
    const MiB = 2 ** 20;
    const jobs: { channel: ControlChannel; ready: Record<string, unknown> }[] = [];
    for (let k = 0; k < MAX_JOBS; k++) {
      const channel = await connectControl('127.0.0.1', agent.port, { secret });
      t.after(() => channel.close());
      const ready = nextMessage(channel);
      channel.send({ t: 'job', version: PROTOCOL_VERSION, job: `j${k}`, host: 't1' });
      jobs.push({ channel, ready: await ready });
    }
    assert.deepEqual(
      jobs.map((j) => j.ready.t),
      Array.from({ length: MAX_JOBS }, () => 'ready'),
    );
    const reserve = async (channel: ControlChannel, bytes: number) => {
      const reply = nextMessage(channel);
      channel.send({ t: 'reserve', bytes, capacity: 512 * MiB });
      return reply;
    };
    // 300 MiB of a 512 MiB target for the first job; the second's 300 MiB no longer fit, its 200 do.
    assert.deepEqual(await reserve(jobs[0]!.channel, 300 * MiB), { t: 'reserved', ok: true, reserved: 0 });
    assert.deepEqual(await reserve(jobs[1]!.channel, 300 * MiB), {
      t: 'reserved',
      ok: false,
      reserved: 300 * MiB,
    });
    assert.deepEqual(await reserve(jobs[1]!.channel, 200 * MiB), {
      t: 'reserved',
      ok: true,
      reserved: 300 * MiB,
    });
    const fifth = await connectControl('127.0.0.1', agent.port, { secret });
    t.after(() => fifth.close());
    const refused = nextMessage(fifth);
    fifth.send({ t: 'job', version: PROTOCOL_VERSION, job: 'j-extra', host: 't1' });
    const busy = await refused;
    assert.equal(busy.t, 'error');
    assert.match(String(busy.message), new RegExp(`busy with ${MAX_JOBS} jobs \\(j0, j1`));
    // The first coordinator dies: its connection drops without an 'end'; its 300 MiB are free again.
    (jobs[0]!.channel as unknown as { socket: { destroy(): void } }).socket.destroy();
    while (!lines.some((l) => /coordinator gone/.test(l))) await new Promise((r) => setTimeout(r, 10));
    const again = await connectControl('127.0.0.1', agent.port, { secret });
    t.after(() => again.close());
    const ready = nextMessage(again);
    again.send({ t: 'job', version: PROTOCOL_VERSION, job: 'j-next', host: 't1' });
    assert.deepEqual({ ...(await ready) }.reserved, 200 * MiB, "only the second job's reservation is left");
  },
);

test(
  'agent: an unencrypted round is refused unless the agent itself opted in, and the refusal is logged',
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const lines: string[] = [];
    const agent = await startAgent(dir, lines);
    t.after(() => agent.close());
    const channel = await connectControl('127.0.0.1', agent.port, { secret });
    t.after(() => channel.close());
    const messages: Record<string, unknown>[] = [];
    const refused = new Promise<Record<string, unknown>>((resolve) =>
      channel.onMessage((m) => {
        messages.push(m as Record<string, unknown>);
        if ((m as { t: string }).t === 'error') resolve(m as Record<string, unknown>);
      }),
    );
    channel.send({ t: 'job', version: PROTOCOL_VERSION, job: 'j1', host: 't1' });
    channel.send({
      t: 'seed',
      session: 1,
      key: new Uint8Array(0),
      group: '239.255.77.1:47000',
      sender: '127.0.0.1:47001',
      receiver: 0,
      maxObjectBytes: 1 << 20,
    });
    const reply = await refused;
    assert.match(String(reply.message), /refuses unencrypted multicast/);
    assert.ok(
      lines.some((line) => /refused an unencrypted multicast round/.test(line)),
      lines.join('\n'),
    );
  },
);

test(
  'agent: a forged live-incoming asking for a shell is refused, logged, and nothing runs',
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const lines: string[] = [];
    const agent = await startAgent(dir, lines, { emulators: [] });
    t.after(() => agent.close());
    const channel = await connectControl('127.0.0.1', agent.port, { secret });
    t.after(() => channel.close());
    const replies: Record<string, unknown>[] = [];
    const refused = new Promise<Record<string, unknown>>((resolve) =>
      channel.onMessage((m) => {
        const message = m as Record<string, unknown>;
        replies.push(message);
        if (message.t === 'live-refused' || message.t === 'live-ready') resolve(message);
      }),
    );
    const witness = join(dir, 'pwned');
    channel.send({ t: 'job', version: PROTOCOL_VERSION, job: 'j1', host: 't1' });
    channel.send({ t: 'live-incoming', vm: 'g1', command: ['/bin/sh', '-c', `touch ${witness}`] });
    const reply = await refused;
    assert.equal(reply.t, 'live-refused');
    assert.match(String(reply.error), /not an allowed emulator/);
    assert.ok(
      lines.some((line) => /g1: refused to start its destination/.test(line)),
      lines.join('\n'),
    );
    await new Promise((r) => setTimeout(r, 200)); // a shell, had one run, would have touched it by now
    assert.ok(!existsSync(witness), 'nothing ran');
  },
);

test(
  'agent: a connection that fails the control handshake is logged with the peer address and why',
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const lines: string[] = [];
    const agent = await startAgent(dir, lines);
    t.after(() => agent.close());
    const logged = async (pattern: RegExp) => {
      while (!lines.some((line) => pattern.test(line))) await new Promise((r) => setTimeout(r, 10));
    };
    // A port check (the coordinator's own, for local agents): connects, says nothing, goes.
    const check = net.connect(agent.port, '127.0.0.1');
    await once(check, 'connect');
    const checkPort = check.localPort;
    check.end();
    await once(check, 'close');
    // Something that is no coordinator: a frame that is no hello.
    const junk = net.connect(agent.port, '127.0.0.1');
    t.after(() => junk.destroy());
    await once(junk, 'connect');
    junk.write(encodeFrame(new Uint8Array(40).fill(7)));
    await logged(
      new RegExp(`refused a control connection from 127\\.0\\.0\\.1:${junk.localPort}: bad client hello`),
    );
    // A coordinator with another deployment's secret.
    await assert.rejects(connectControl('127.0.0.1', agent.port, { secret: 'some other deployment secret' }));
    await logged(/refused a control connection from 127\.0\.0\.1:\d+: .*wrong secret/);
    assert.ok(!lines.some((line) => line.includes(`127.0.0.1:${checkPort}:`)), 'a port check is not logged');
  },
);
