import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { test } from 'node:test';
import fc from 'fast-check';
import { connectControl, listenControl, type ControlChannel } from '../../src/control/control-channel.js';
import { encodeFrame, FrameDecoder, FrameTooLargeError } from '../../src/control/frame-decoder.js';
import { FrameCipher } from '../../src/control/secure-channel.js';

const secret = 'test deployment secret';

function nextMessage(channel: ControlChannel): Promise<unknown> {
  return new Promise((resolve) => channel.onMessage(resolve));
}

function closed(channel: ControlChannel): Promise<Error | undefined> {
  return new Promise((resolve) => channel.onClose(resolve));
}

test('property: frames split at any points decode to the same frames', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 10 }),
      fc.array(fc.nat(), { maxLength: 20 }),
      (payloads, cuts) => {
        const stream = Buffer.concat(payloads.map(encodeFrame));
        const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
        const decoder = new FrameDecoder(1000);
        const frames: Uint8Array[] = [];
        // nextReusing's frames are valid until its next call: each is copied before that.
        const reusing = new FrameDecoder(1000);
        const copied: Uint8Array[] = [];
        let last = 0;
        for (const p of [...points, stream.length]) {
          frames.push(...decoder.push(stream.subarray(last, p)));
          reusing.append(stream.subarray(last, p));
          for (let f = reusing.nextReusing(); f; f = reusing.nextReusing()) copied.push(Uint8Array.from(f));
          last = p;
        }
        const expected = payloads.map((p) => Buffer.from(p));
        assert.deepEqual(
          frames.map((f) => Buffer.from(f)),
          expected,
        );
        assert.deepEqual(
          copied.map((f) => Buffer.from(f)),
          expected,
        );
        assert.equal(decoder.pendingBytes, 0);
        assert.equal(reusing.pendingBytes, 0);
      },
    ),
  );
});

test('property: a frame sealed in parts opens to the parts joined; altered anywhere, it does not', () => {
  const key = new Uint8Array(32).fill(9);
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { minLength: 1, maxLength: 5 }),
      fc.nat(),
      (parts, flip) => {
        const sealed = Buffer.concat(new FrameCipher(key).sealParts(parts));
        assert.deepEqual(new FrameCipher(key).open(sealed), new Uint8Array(Buffer.concat(parts)));
        const altered = Uint8Array.from(sealed);
        altered[flip % altered.length]! ^= 1;
        assert.equal(new FrameCipher(key).open(altered), undefined);
      },
    ),
    { numRuns: 300 },
  );
});

test('an oversized length is refused before anything is buffered for it', () => {
  const decoder = new FrameDecoder(1024);
  const header = new Uint8Array(4);
  new DataView(header.buffer).setUint32(0, 0xffffffff);
  assert.throws(() => decoder.push(header), FrameTooLargeError);
});

test('mutual authentication: messages flow both ways, with early and large messages', async (t) => {
  const accepted: ControlChannel[] = [];
  const server = await listenControl('127.0.0.1', 0, { secret }, (channel) => {
    accepted.push(channel);
    channel.onMessage((message) => channel.send({ echo: message }));
  });
  t.after(() => server.close());
  const client = await connectControl('127.0.0.1', server.port, { secret });
  t.after(() => client.close());
  const big = new Uint8Array(3 * 2 ** 20).fill(7);
  client.send({ hello: 'agent', n: 1 });
  client.send({ blob: big });
  const replies: unknown[] = [];
  await new Promise<void>((resolve) =>
    client.onMessage((m) => {
      replies.push(m);
      if (replies.length === 2) resolve();
    }),
  );
  assert.deepEqual(replies[0], { echo: { hello: 'agent', n: 1 } });
  const blob = (replies[1] as { echo: { blob: Uint8Array } }).echo.blob;
  assert.equal(blob.length, big.length);
  assert.ok(blob.every((b) => b === 7));
  assert.equal(server.rejected, 0);
});

test('a peer with the wrong secret is refused on both sides', async (t) => {
  const server = await listenControl('127.0.0.1', 0, { secret }, () => assert.fail('must not accept'));
  t.after(() => server.close());
  await assert.rejects(
    connectControl('127.0.0.1', server.port, { secret: 'wrong' }),
    /not authenticated|closed/,
  );
  // The server counts it once its side of the handshake has failed.
  for (let i = 0; i < 100 && server.rejected === 0; i++) await new Promise((r) => setImmediate(r));
  assert.equal(server.rejected, 1);
});

test('an unauthenticated peer that sends junk or nothing is cut off without harm', async (t) => {
  const server = await listenControl('127.0.0.1', 0, { secret, handshakeTimeoutMs: 300 }, () =>
    assert.fail('must not accept'),
  );
  t.after(() => server.close());
  const raw = (bytes: Uint8Array) =>
    new Promise<void>((resolve) => {
      const socket = net.connect(server.port, '127.0.0.1', () => socket.write(bytes));
      socket.on('close', () => resolve());
      socket.on('error', () => undefined);
    });
  await raw(new Uint8Array([0, 0, 0, 200, 1, 2, 3])); // oversized handshake frame
  await raw(encodeFrame(new Uint8Array(65))); // a hello with an all-zero key
  await raw(new Uint8Array(0)); // silence: the handshake times out
  for (let i = 0; i < 100 && server.rejected < 3; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(server.rejected, 3);
});

test('a silent peer is detected by the idle timeout', async (t) => {
  let serverSide: ControlChannel | undefined;
  const server = await listenControl(
    '127.0.0.1',
    0,
    { secret, heartbeatMs: 60_000, idleTimeoutMs: 200 },
    (c) => {
      serverSide = c;
    },
  );
  t.after(() => server.close());
  // The client never heartbeats within the server's idle timeout.
  const client = await connectControl('127.0.0.1', server.port, {
    secret,
    heartbeatMs: 60_000,
    idleTimeoutMs: 60_000,
  });
  t.after(() => client.close());
  for (let i = 0; i < 100 && !serverSide; i++) await new Promise((r) => setImmediate(r));
  const error = await closed(serverSide!);
  assert.match(String(error), /silent/);
});

test('heartbeats keep a quiet but live connection open', async (t) => {
  let serverSide: ControlChannel | undefined;
  // Timeouts long enough that a loaded machine's event-loop stalls are not taken for silence.
  const options = { secret, heartbeatMs: 50, idleTimeoutMs: 1000 };
  const server = await listenControl('127.0.0.1', 0, options, (c) => (serverSide = c));
  t.after(() => server.close());
  const client = await connectControl('127.0.0.1', server.port, options);
  t.after(() => client.close());
  await new Promise((r) => setTimeout(r, 3000)); // three idle timeouts of quiet, heartbeats only
  assert.equal(client.closed, false);
  assert.equal(serverSide?.closed, false);
  const reply = nextMessage(client);
  serverSide!.send('still here');
  assert.equal(await reply, 'still here');
});

test('a live peer is not taken for silent when this process was held longer than the idle timeout', async (t) => {
  // The peer heartbeats every 50 ms from a child process while this process's event loop is held
  // for three idle timeouts (as a long synchronous step or a starved CPU holds an agent): its frames
  // wait in the socket, and the idle timer, which runs before the loop reads sockets, must not win.
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { listenControl } = await import(${JSON.stringify(new URL('../../src/control/control-channel.js', import.meta.url).href)});
       const server = await listenControl('127.0.0.1', 0, { secret: ${JSON.stringify(secret)}, heartbeatMs: 50, idleTimeoutMs: 60_000 }, (channel) =>
         channel.onMessage((m) => channel.send(m)));
       process.stdout.write(server.port + '\\n');`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.after(() => child.kill('SIGKILL'));
  const port = Number(
    await new Promise<string>((resolve) => child.stdout.once('data', (d) => resolve(`${d}`))),
  );
  const client = await connectControl('127.0.0.1', port, { secret, heartbeatMs: 50, idleTimeoutMs: 500 });
  t.after(() => client.close());
  const echoed = nextMessage(client);
  client.send('before');
  assert.equal(await echoed, 'before');
  const held = Date.now() + 1500;
  while (Date.now() < held); // the event loop held
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(client.closed, false, 'the peer heartbeated all along');
  const after = nextMessage(client);
  client.send('after');
  assert.equal(await after, 'after');
});

test('drain() returns when the peer dies with our buffer full (a killed agent never hangs its sender)', async (t) => {
  // The peer: a control server in a child process that stops reading after the first message.
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { listenControl } = await import(${JSON.stringify(new URL('../../src/control/control-channel.js', import.meta.url).href)});
       const server = await listenControl('127.0.0.1', 0, { secret: ${JSON.stringify(secret)} }, (channel) =>
         channel.onMessage(() => { for (;;); }));
       process.stdout.write(server.port + '\\n');`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.after(() => child.kill('SIGKILL'));
  const port = Number(
    await new Promise<string>((resolve) => child.stdout.once('data', (d) => resolve(`${d}`))),
  );
  const client = await connectControl('127.0.0.1', port, { secret });
  t.after(() => client.close());
  const blob = new Uint8Array(8 * 2 ** 20);
  // Fill the peer's receive buffer and ours until a send says the buffer is full.
  for (let i = 0; i < 64 && client.send({ blob }); i++);
  const drained = client.drain();
  child.kill('SIGKILL');
  const outcome = await Promise.race([
    drained.then(() => 'returned'),
    new Promise((resolve) => setTimeout(() => resolve('still waiting'), 10_000)),
  ]);
  assert.equal(outcome, 'returned');
  assert.equal(await closed(client).then(() => client.closed), true);
});
