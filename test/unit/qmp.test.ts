import assert from 'node:assert/strict';
import net from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { connectQmp, QmpConnectionError, QmpError, type QmpEvent } from '../../src/qemu/qmp.js';
import { tempDir } from '../support/fixtures.js';

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 } }, capabilities: ['oob'] } };

interface Command {
  readonly execute: string;
  readonly arguments?: Record<string, unknown>;
  readonly id: unknown;
}

/**
 * A fake QEMU: sends the greeting, answers qmp_capabilities, and hands every other command to `onCommand`
 * with the raw socket, so a test decides what goes back and how it is cut into chunks.
 */
async function fakeQmp(
  t: TestContext,
  onCommand: (command: Command, socket: net.Socket) => void,
): Promise<{ path: string; commands: Command[] }> {
  const { dir, cleanup } = tempDir('vmscatter-qmp-');
  const path = join(dir, 'qmp.sock');
  const commands: Command[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.write(`${JSON.stringify(GREETING)}\r\n`);
    let buffer = '';
    socket.on('data', (chunk) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const command = JSON.parse(buffer.slice(0, newline)) as Command;
        buffer = buffer.slice(newline + 1);
        commands.push(command);
        if (command.execute === 'qmp_capabilities') reply(socket, { return: {}, id: command.id });
        else onCommand(command, socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    cleanup();
  });
  return { path, commands };
}

function reply(socket: net.Socket, message: unknown): void {
  socket.write(`${JSON.stringify(message)}\r\n`);
}

function event(name: string, data: Record<string, unknown> = {}): Record<string, unknown> {
  return { event: name, data, timestamp: { seconds: 1700000000, microseconds: 1 } };
}

test('greeting and capabilities are negotiated before the client is handed out', async (t) => {
  const server = await fakeQmp(t, () => assert.fail('no other command expected'));
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  assert.deepEqual(qmp.greeting, GREETING.QMP);
  assert.equal(server.commands.length, 1);
  assert.equal(server.commands[0]?.execute, 'qmp_capabilities');
  assert.notEqual(server.commands[0]?.id, undefined);
});

test('execute resolves with the return value of the reply that carries its id', async (t) => {
  const server = await fakeQmp(t, (command, socket) => {
    if (command.execute === 'query-status') {
      reply(socket, { return: { status: 'running', running: true }, id: command.id });
    } else if (command.execute === 'echo') {
      reply(socket, { return: command.arguments, id: command.id });
    }
  });
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  const [status, echoed] = await Promise.all([
    qmp.execute('query-status'),
    qmp.execute('echo', { val: 0, size: 4096, filename: 'x' }),
  ]);
  assert.deepEqual(status, { status: 'running', running: true });
  assert.deepEqual(echoed, { val: 0, size: 4096, filename: 'x' });
  assert.deepEqual(server.commands.at(-1)?.arguments, { val: 0, size: 4096, filename: 'x' });
});

test('replies out of order still reach their own commands', async (t) => {
  const held: Command[] = [];
  const server = await fakeQmp(t, (command, socket) => {
    held.push(command);
    if (held.length === 2) {
      for (const c of [...held].reverse()) reply(socket, { return: c.execute, id: c.id });
    }
  });
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  assert.deepEqual(await Promise.all([qmp.execute('first'), qmp.execute('second')]), ['first', 'second']);
  assert.equal(server.commands.length, 3);
});

test('a QMP error rejects with QmpError carrying its class and description', async (t) => {
  const server = await fakeQmp(t, (command, socket) =>
    reply(socket, { error: { class: 'GenericError', desc: 'Invalid parameter' }, id: command.id }),
  );
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  const error = await qmp.execute('pmemsave', { val: 0 }).catch((e: unknown) => e);
  assert.ok(error instanceof QmpError);
  assert.equal(error.errorClass, 'GenericError');
  assert.equal(error.desc, 'Invalid parameter');
  assert.equal(error.command, 'pmemsave');
  assert.match(error.message, /pmemsave: GenericError: Invalid parameter/);
  // The connection is still usable after an error.
  await assert.rejects(qmp.execute('again'), QmpError);
});

test('events interleaved before a reply and split across chunks reach listeners; replies still match', async (t) => {
  const server = await fakeQmp(t, (command, socket) => {
    const wire = [event('STOP'), { return: {}, id: command.id }, event('RESUME', { n: 2 })]
      .map((m) => `${JSON.stringify(m)}\r\n`)
      .join('');
    // One byte, then cuts inside the event, inside the reply and between messages.
    const cuts = [1, 17, wire.indexOf('"return"') + 3, wire.indexOf('RESUME'), wire.length];
    let last = 0;
    const send = (i: number) => {
      const at = cuts[i];
      if (at === undefined) return;
      socket.write(wire.slice(last, at));
      last = at;
      setTimeout(() => send(i + 1), 5);
    };
    send(0);
  });
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  const seen: QmpEvent[] = [];
  qmp.on('event', (e: QmpEvent) => seen.push(e));
  const stops: QmpEvent[] = [];
  const unsubscribe = qmp.onEvent('STOP', (e) => stops.push(e));
  const resumed = qmp.waitForEvent('RESUME', 2000);
  const result = await qmp.execute('stop');
  assert.deepEqual(result, {});
  assert.equal(stops.length, 1, 'the event before the reply arrived first');
  const resume = await resumed;
  assert.deepEqual(resume.data, { n: 2 });
  assert.equal(resume.timestamp.seconds, 1700000000);
  assert.deepEqual(
    seen.map((e) => e.event),
    ['STOP', 'RESUME'],
  );
  unsubscribe();
});

test('several messages in one chunk are all handled', async (t) => {
  const server = await fakeQmp(t, (command, socket) => {
    if (command.execute !== 'burst') return;
    const messages = [event('A'), event('B'), { return: 42, id: command.id }, event('C')];
    socket.write(messages.map((m) => JSON.stringify(m)).join('\r\n') + '\r\n');
  });
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  const names: string[] = [];
  qmp.on('event', (e: QmpEvent) => names.push(e.event));
  const c = qmp.waitForEvent('C', 2000);
  assert.equal(await qmp.execute('burst'), 42);
  await c;
  assert.deepEqual(names, ['A', 'B', 'C']);
});

test('waitForEvent times out with a clear error, and accept() filters events', async (t) => {
  const server = await fakeQmp(t, (command, socket) => {
    reply(socket, event('MIGRATION', { status: 'active' }));
    reply(socket, { return: {}, id: command.id });
    reply(socket, event('MIGRATION', { status: 'completed' }));
  });
  const qmp = await connectQmp(server.path);
  t.after(() => qmp.close());
  await assert.rejects(qmp.waitForEvent('SHUTDOWN', 50), /no SHUTDOWN event within 50 ms/);
  const done = qmp.waitForEvent('MIGRATION', 2000, (e) => e.data.status === 'completed');
  await qmp.execute('migrate', { uri: 'unix:x' });
  assert.equal((await done).data.status, 'completed');
});

test('the socket closing mid-command rejects pending commands and event waits; later commands fail fast', async (t) => {
  const server = await fakeQmp(t, (command, socket) => {
    if (command.execute === 'quit') setTimeout(() => socket.destroy(), 20);
  });
  const qmp = await connectQmp(server.path);
  const closed = new Promise((resolve) => qmp.once('close', resolve));
  const waiting = assert.rejects(
    qmp.waitForEvent('SHUTDOWN', 5000),
    /waiting for SHUTDOWN: .*closed the QMP socket/,
  );
  await Promise.all(
    [qmp.execute('quit'), qmp.execute('query-status')].map((pending) =>
      assert.rejects(pending, (error: unknown) => {
        assert.ok(error instanceof QmpConnectionError);
        assert.match(error.message, /closed the QMP socket before replying/);
        return true;
      }),
    ),
  );
  await waiting;
  assert.ok((await closed) instanceof QmpConnectionError);
  assert.ok(qmp.closed);
  await assert.rejects(qmp.execute('cont'), QmpConnectionError);
  await qmp.close(); // closing again is harmless
});

test('close() rejects pending commands and resolves once the socket is closed', async (t) => {
  const server = await fakeQmp(t, () => undefined); // never answers
  const qmp = await connectQmp(server.path);
  const rejected = assert.rejects(qmp.execute('query-status'), /query-status: .*closed before replying/);
  await qmp.close();
  await rejected;
  assert.ok(qmp.closed);
});

test('a command without a reply is rejected after commandTimeoutMs', async (t) => {
  const server = await fakeQmp(t, () => undefined);
  const qmp = await connectQmp(server.path, { commandTimeoutMs: 50 });
  t.after(() => qmp.close());
  await assert.rejects(qmp.execute('query-status'), /query-status: no reply in 50 ms/);
});

test('connecting: a missing socket is retried until the timeout; garbage is refused', async (t) => {
  const { dir, cleanup } = tempDir('vmscatter-qmp-');
  t.after(cleanup);
  const started = Date.now();
  await assert.rejects(
    connectQmp(join(dir, 'absent.sock'), { connectTimeoutMs: 200 }),
    /no QMP greeting within 200 ms/,
  );
  assert.ok(Date.now() - started >= 150);

  const abandoned = new AbortController();
  setTimeout(() => abandoned.abort(), 100);
  await assert.rejects(
    connectQmp(join(dir, 'absent.sock'), { connectTimeoutMs: 5000, signal: abandoned.signal }),
    /absent.sock: connecting abandoned/,
  );

  const path = join(dir, 'garbage.sock');
  const server = net.createServer((socket) => socket.end('this is not QMP\n'));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  await assert.rejects(connectQmp(path, { connectTimeoutMs: 2000 }), /not JSON: this is not QMP/);

  const late = join(dir, 'late.sock');
  const lateServer = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.write(`${JSON.stringify(GREETING)}\n`);
    socket.on('data', (chunk) => {
      const command = JSON.parse(chunk.toString()) as Command;
      reply(socket, { return: {}, id: command.id });
    });
  });
  setTimeout(() => lateServer.listen(late), 150);
  t.after(() => new Promise((resolve) => lateServer.close(resolve)));
  const qmp = await connectQmp(late, { connectTimeoutMs: 3000 });
  await qmp.close();
});
