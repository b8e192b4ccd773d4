import assert from 'node:assert/strict';
import { realpathSync } from 'node:fs';
import { test } from 'node:test';
import { refuseCommand, resolveProgram } from '../../src/qemu/command-policy.js';

/**
 * An agent runs only the emulators it allows, with no option that takes QEMU out of its hands (an agent
 * refusing a forged live-incoming: agent.test.ts).
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
