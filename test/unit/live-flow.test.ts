import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { parseStream, StreamWriter, writeStream } from '../../src/qemu/migration-stream.js';
import { AckWindow, SwitchoverGate } from '../../src/live/flow.js';
import type { LiveLink } from '../../src/live/messages.js';
import { OutputBuffer } from '../../src/live/target.js';

/**
 * The live stream's flow control and the agent's output buffers: the window never lets more than its
 * limit wait for an acknowledgement, and reused output buffers give back exactly the stream written.
 */

/** A LiveLink whose acks arrive when the test says. */
function fakeLink() {
  const waiting: (() => void)[] = [];
  let acks = 0;
  const link = {
    host: { name: 't1' },
    lost: undefined,
    send: () => undefined,
    drain: () => Promise.resolve(),
    next: () =>
      new Promise<never>((resolve) => {
        if (acks > 0) {
          acks--;
          return resolve({ t: 'live-ack', vm: 'g1' } as never);
        }
        waiting.push(() => resolve({ t: 'live-ack', vm: 'g1' } as never));
      }),
  } as unknown as LiveLink;
  return {
    link,
    ack() {
      const wake = waiting.shift();
      if (wake) wake();
      else acks++;
    },
  };
}

const DESCRIPTION = Buffer.from('{"page_size": 4096, "devices": []}', 'latin1');
const TAIL = Buffer.concat([Buffer.from([0x00, 0x06, 0, 0, 0, DESCRIPTION.length]), DESCRIPTION]);

const settle = () => new Promise((r) => setImmediate(r));

test('ack window: room waits while the limit is reached, and all() for every message', async () => {
  const { link, ack } = fakeLink();
  const window = new AckWindow(link, 'g1', 10_000, 3);
  let roomed = 0;
  for (let i = 0; i < 3; i++) {
    window.sent();
    if (i < 2) {
      await window.room();
      roomed++;
    }
  }
  assert.equal(roomed, 2, 'two messages in flight leave room for a third');
  let free = false;
  const room = window.room().then(() => (free = true));
  await settle();
  assert.equal(free, false, 'three in flight: no room until one is acknowledged');
  ack();
  await room;
  assert.equal(window.inFlight, 2);
  let done = false;
  const all = window.all().then(() => (done = true));
  ack();
  await settle();
  assert.equal(done, false, 'one message still unacknowledged');
  ack();
  await all;
  assert.equal(window.inFlight, 0);
  assert.throws(() => new AckWindow(link, 'g1', 1, 0), RangeError);
});

test('output buffer: recycled buffers give back exactly the stream written, message after message', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 300 }),
      fc.integer({ min: 1, max: 64 }),
      (kinds, perMessage) => {
        const pages = kinds.map((kind, i) =>
          kind === 0
            ? { kind: 'zero' as const, block: 'pc.ram', offset: i * PAGE_SIZE, fill: 0 }
            : {
                kind: 'page' as const,
                block: 'pc.ram',
                offset: i * PAGE_SIZE,
                data: new Uint8Array(PAGE_SIZE).fill((i * 31 + kind) & 0xff),
              },
        );
        const expected = writeStream({
          config: Buffer.concat([Buffer.from([0x07, 0, 0, 0, 13]), Buffer.from('pc-i440fx-7.2', 'latin1')]),
          blocks: [{ name: 'pc.ram', length: kinds.length * PAGE_SIZE }],
          pages,
          tail: TAIL,
        });
        // The agent's way: a reused head buffer, an output buffer handed on per message and recycled
        // once "written" (copied out here, as the socket would).
        const output = new OutputBuffer();
        const writer = new StreamWriter((bytes) => output.append(bytes), { sinkCopies: true });
        const written: Buffer[] = [];
        const hand = () => {
          const bytes = output.take();
          written.push(Buffer.from(bytes));
          output.recycle(bytes);
        };
        parseStream(expected).records.forEach((record, i) => {
          writer.write(record);
          if (i % perMessage === perMessage - 1) hand();
        });
        hand();
        assert.deepEqual(Buffer.concat(written), Buffer.from(expected));
      },
    ),
    { numRuns: 60 },
  );
});

test('output buffer: a taken buffer is not written to until it comes back', () => {
  const output = new OutputBuffer();
  output.append(new Uint8Array(1000).fill(1));
  const first = output.take();
  output.append(new Uint8Array(1000).fill(2));
  const second = output.take();
  assert.ok(first.buffer !== second.buffer, 'a fresh buffer while the first is out');
  assert.ok(first.every((b) => b === 1));
  output.recycle(first);
  output.append(new Uint8Array(10).fill(3));
  output.take();
  output.append(new Uint8Array(10).fill(4));
  const fourth = output.take();
  assert.ok(fourth.buffer === first.buffer, 'the recycled buffer is used again');
  assert.ok(
    second.every((b) => b === 2),
    'the buffer still out is untouched',
  );
});

test('output buffer: a message that outgrew the base size does not retire the buffers in circulation', () => {
  const output = new OutputBuffer(4096);
  const out: Buffer[] = [];
  for (let m = 0; m < 200; m++) {
    // Three messages in flight at a time; every tenth outgrows the base size.
    output.append(new Uint8Array(m % 10 === 0 ? 6000 : 3000).fill(m));
    out.push(output.take());
    if (out.length === 3) output.recycle(out.shift()!);
  }
  assert.ok(output.buffersMade <= 8, `${output.buffersMade} buffers made for 200 messages`);
});

/**
 * While a VM is in its switch-over, the job's other streams wait before their next message, and go on
 * when it is over; the VM itself never waits (nor does a second VM in its switch-over at the same
 * time, or the two would wait for each other); a switch-over that does not end holds the others no
 * longer than the gate's bound.
 */
test('switch-over gate: others wait for a switch-over, its own VM never, and never past the bound', async () => {
  const gate = new SwitchoverGate(60_000);
  const settled = async (p: Promise<void>) =>
    Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 30))]);
  assert.equal(await settled(gate.clear('a')), true, 'nobody down: no wait');
  const leaveB = gate.enter('b');
  const leaveC = gate.enter('c');
  assert.equal(await settled(gate.clear('b')), true, 'b in its own switch-over goes on');
  assert.equal(await settled(gate.clear('c')), true, 'c too, though b is down as well');
  const a = gate.clear('a');
  assert.equal(await settled(a), false, 'a waits while b and c are down');
  leaveB();
  assert.equal(await settled(a), false, 'still waiting: c is down');
  leaveC();
  assert.equal(await settled(a), true, 'a goes on once both are over');
  // A switch-over that never ends: the others wait, and then go on (the test would time out else).
  const bounded = new SwitchoverGate(100);
  bounded.enter('d');
  const waiting = bounded.clear('a');
  assert.equal(await settled(waiting), false, 'a waits for the hung switch-over');
  await waiting;
});
