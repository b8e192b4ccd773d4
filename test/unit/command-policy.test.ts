import assert from 'node:assert/strict';
import { existsSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { connectControl } from '../../src/control/control-channel.js';
import { refuseCommand, resolveProgram } from '../../src/qemu/command-policy.js';
import { Agent } from '../../src/scatter/agent.js';
import { PROTOCOL_VERSION } from '../../src/scatter/protocol.js';
import { tempDir } from '../support/fixtures.js';

/**
 * An agent runs only the emulators it allows, with no option that takes QEMU out of its hands: a
 * forged live-incoming asking for a shell is refused and nothing runs.
 */
const sh = realpathSync('/bin/sh');
const own = '/var/lib/vmscatter/run';
const policy = { emulators: [sh], ownDir: own };

test('command policy: only allowed emulators, resolved through links and PATH', () => {
  assert.equal(refuseCommand(['/bin/sh', '-m', '128'], policy), undefined);
  assert.equal(refuseCommand(['sh', '-m', '128'], { ...policy, path: '/usr/bin:/bin' }), undefined);
  assert.match(refuseCommand(['/bin/true'], policy) ?? '', /not an allowed emulator/);
  assert.match(refuseCommand(['/no/such/qemu'], policy) ?? '', /not an executable/);
  assert.match(refuseCommand([], policy) ?? '', /empty/);
  assert.equal(resolveProgram('/no/such/qemu'), undefined);
});

test('command policy: no second -incoming, no daemon, no monitor outside its own directory', () => {
  const cases: [string[], RegExp | undefined][] = [
    [['-incoming', 'tcp:0:4444'], /-incoming is not allowed/],
    [['--daemonize'], /not allowed/],
    [['-runas', 'nobody'], /not allowed/],
    [['-qmp', 'unix:/tmp/elsewhere.sock,server=on'], /outside/],
    [['-qmp', `unix:${own}/g1-extra.qmp,server=on,wait=off`], undefined],
    [['-monitor', 'tcp:127.0.0.1:5555,server'], /on the network/],
    [['-chardev', 'socket,id=m,host=0.0.0.0,port=7'], /on the network/],
    [['-chardev', 'socket,id=m,path=/run/other.sock,server=on'], /outside/],
    [['-chardev', `socket,id=m,path=${own}/../escape.sock`], /outside/],
    [['-monitor', 'none', '-serial', 'file:/tmp/serial.log'], undefined],
  ];
  for (const [args, expected] of cases) {
    const why = refuseCommand(['/bin/sh', ...args], policy);
    if (expected === undefined) assert.equal(why, undefined, args.join(' '));
    else assert.match(why ?? '(allowed)', expected, args.join(' '));
  }
});

test(
  'agent: a forged live-incoming asking for a shell is refused, logged, and nothing runs',
  { timeout: 30_000 },
  async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const secret = new TextEncoder().encode('command policy test secret, 32 bytes');
    const lines: string[] = [];
    const agent = await Agent.start({
      name: 't1',
      listenAddress: '127.0.0.1',
      port: 0,
      multicastInterface: '127.0.0.1',
      dir,
      secret,
      emulators: [],
      log: (line) => lines.push(line),
    });
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
