/**
 * One end of a transport session, as a process for the network lab (tests and bench/transport).
 *
 *   node transport-peer.js send    --group G:P --iface A --port N --receivers 4 --size 64MiB [--object 4MiB]
 *                                  [--rate 1Gbit] [--mtu 1500] [--seed 1] [--plaintext]
 *   node transport-peer.js receive --group G:P --iface A --id I --sender A:N --size 64MiB [--object 4MiB]
 *                                  [--mtu 1500] [--seed 1] [--plaintext]
 *
 * The session key comes in the environment (VMS_SESSION_KEY, hex): in a job the control channel
 * carries it. The payload is a seeded, incompressible stream both ends can generate, so a receiver
 * checks every object byte-exact without a copy being shipped. Prints one JSON line when done.
 *
 * CPU: `cpuSeconds` is the transport's own (process.cpuUsage, all threads, from the socket's opening to
 * the session's end): the sender makes its payload before, a receiver the expected objects before,
 * and compares each object with its expected one as it completes (then gives its memory back for the
 * next object, as an agent does once it stored one). That work is the harness's, reported apart
 * (`harnessCpuSeconds`);
 * udpcast and uftp read and write files instead. A receiver says `{"event":"received",…}` on stderr
 * the moment its session completes (bench/transport times it from that line, as
 * it times uftpd from its status line).
 */
import { createHash, createCipheriv } from 'node:crypto';
import { cpuUsage } from 'node:process';
import { parseArgs } from 'node:util';
import { realScheduler } from '../../src/transport/datagram.js';
import { DgramSocket } from '../../src/transport/dgram-socket.js';
import { BlockCodec } from '../../src/transport/fec-codec.js';
import { ObjectMemory } from '../../src/transport/object-memory.js';
import { ReceiverSession, SenderSession, type SessionKey } from '../../src/transport/session.js';
import { maxSymbolSize } from '../../src/transport/wire-codec.js';
import { parseRate, parseSize } from '../../src/topology/units.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    group: { type: 'string' },
    iface: { type: 'string' },
    port: { type: 'string', default: '7430' },
    receivers: { type: 'string', default: '1' },
    id: { type: 'string', default: '1' },
    sender: { type: 'string' },
    size: { type: 'string', default: '64MiB' },
    object: { type: 'string', default: '4MiB' },
    rate: { type: 'string', default: '1Gbit' },
    mtu: { type: 'string', default: '1500' },
    seed: { type: 'string', default: '1' },
    'block-symbols': { type: 'string', default: '64' },
    'timeout-ms': { type: 'string', default: '300000' },
    plaintext: { type: 'boolean', default: false },
  },
});

function needString(value: string | undefined, what: string): string {
  if (value === undefined) throw new Error(`${what} is required`);
  return value;
}

/** A parsed unit value, or the parser's problem as an error naming the option. */
function needNumber(value: number | string, what: string): number {
  if (typeof value === 'string') throw new Error(`${what}: ${value}`);
  return value;
}

/** Object i of the seeded payload: AES-CTR keystream of a key derived from the seed (fast, incompressible). */
export function payloadObject(seed: number, index: number, length: number): Uint8Array {
  const key = createHash('sha256').update(`vmscatter transport payload ${seed}`).digest();
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(index, 0);
  return new Uint8Array(createCipheriv('aes-256-ctr', key, iv).update(Buffer.alloc(length)));
}

function objectLengths(total: number, objectBytes: number): number[] {
  const lengths: number[] = [];
  for (let done = 0; done < total; done += objectBytes) lengths.push(Math.min(objectBytes, total - done));
  return lengths;
}

async function main(): Promise<void> {
  const role = positionals[0];
  const group = needString(values.group, '--group');
  const iface = needString(values.iface, '--iface');
  const total = needNumber(parseSize(values.size!), '--size');
  const objectBytes = needNumber(parseSize(values.object!), '--object');
  const seed = Number(values.seed);
  const mtu = Number(values.mtu);
  const key: SessionKey = values.plaintext
    ? 'insecure-plaintext'
    : new Uint8Array(Buffer.from(needString(process.env.VMS_SESSION_KEY, 'VMS_SESSION_KEY'), 'hex'));
  const identity = { session: 1, key, group };
  const rateBytesPerSecond = needNumber(parseRate(values.rate!), '--rate') / 8;
  const codec = new BlockCodec();
  const lengths = objectLengths(total, objectBytes);
  const signal = AbortSignal.timeout(Number(values['timeout-ms']));
  const harnessStart = cpuUsage();
  if (role === 'send') {
    const objects = lengths.map((length, i) => ({ bytes: payloadObject(seed, i, length) }));
    const harness = cpuUsage(harnessStart);
    const cpuStart = cpuUsage();
    const started = performance.now();
    const socket = await DgramSocket.open({
      bindAddress: iface,
      port: Number(values.port),
      multicastInterface: iface,
    });
    const receivers = Array.from({ length: Number(values.receivers) }, (_, i) => i + 1);
    const session = new SenderSession(socket, realScheduler, identity, objects, receivers, {
      symbolSize: maxSymbolSize(mtu),
      blockSymbols: Number(values['block-symbols']),
      parity: codec,
      rateCapBytesPerSecond: rateBytesPerSecond,
      joinTimeoutMs: 10_000,
    });
    // The congestion control's rate every 100 ms, for reading a run's shape.
    const rates: number[] = [];
    const sampler = setInterval(() => rates.push(Math.round((session.rateBytesPerSecond * 8) / 1e6)), 100);
    const result = await session.run(signal);
    clearInterval(sampler);
    const used = cpuUsage(cpuStart);
    report(
      {
        role,
        ...result,
        bufferReport: socket.bufferReport,
        sendErrors: socket.sendErrors,
        aead: session.aeadEngine ?? 'plaintext',
        harnessCpuSeconds: seconds(harness),
        rateMbitPer100ms: rates,
        rateCuts: session.rateCuts,
      },
      started,
      used,
      total,
    );
    await socket.close();
    return;
  }
  if (role === 'receive') {
    const port = Number(group.slice(group.lastIndexOf(':') + 1));
    // What each object must be is made before the session; an object is compared with it as it
    // completes (a memcmp, a fraction of a millisecond for 4 MiB) and its memory given back for the
    // next, as an agent stores a round's object and gives it back. The comparing is the harness's
    // CPU, taken out of the transport's below.
    const expected = lengths.map((length, i) => Buffer.from(payloadObject(seed, i, length)));
    let harness = cpuUsage(harnessStart);
    const cpuStart = cpuUsage();
    const started = performance.now();
    const socket = await DgramSocket.open({ port, multicastInterface: iface });
    const memory = new ObjectMemory();
    const checked = new Array<boolean>(lengths.length).fill(false);
    let checking: NodeJS.CpuUsage = { user: 0, system: 0 };
    let verified = 0;
    let corrupt = 0;
    const session = new ReceiverSession(
      socket,
      realScheduler,
      identity,
      Number(values.id),
      needString(values.sender, '--sender'),
      { decoder: codec, senderTimeoutMs: 15_000, maxObjectBytes: objectBytes },
      (id, bytes) => {
        const checkStart = cpuUsage();
        if (id >= lengths.length || checked[id]) corrupt++;
        else {
          checked[id] = true;
          if (Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).equals(expected[id]!)) verified++;
          else corrupt++;
        }
        memory.give(bytes);
        checking = add(checking, cpuUsage(checkStart));
      },
      Math.random,
      undefined,
      memory,
    );
    const state = await session.run(signal);
    const used = subtract(cpuUsage(cpuStart), checking);
    const seconds_ = (performance.now() - started) / 1000;
    process.stderr.write(
      `${JSON.stringify({ event: 'received', state, seconds: seconds_, cpuSeconds: seconds(used) })}\n`,
    );
    harness = add(harness, checking);
    const exact = state === 'complete' && corrupt === 0 && verified === lengths.length;
    report(
      {
        role,
        state,
        exact,
        corrupt,
        objectsReceived: verified,
        stats: session.stats,
        drops: session.drops.snapshot(),
        bufferReport: socket.bufferReport,
        aead: session.aeadEngine ?? 'plaintext',
        harnessCpuSeconds: seconds(harness),
      },
      started,
      used,
      total,
      seconds_,
    );
    await socket.close();
    process.exitCode = exact ? 0 : 1;
    return;
  }
  throw new Error(`role must be send or receive, got ${role}`);
}

function seconds(usage: NodeJS.CpuUsage): number {
  return (usage.user + usage.system) / 1e6;
}

function subtract(a: NodeJS.CpuUsage, b: NodeJS.CpuUsage): NodeJS.CpuUsage {
  return { user: a.user - b.user, system: a.system - b.system };
}

function add(a: NodeJS.CpuUsage, b: NodeJS.CpuUsage): NodeJS.CpuUsage {
  return { user: a.user + b.user, system: a.system + b.system };
}

/** The one JSON line on stdout: `cpuSeconds` is the transport's (see the header). */
function report(
  fields: object,
  started: number,
  used: NodeJS.CpuUsage,
  bytes: number,
  elapsed = (performance.now() - started) / 1000,
): void {
  process.stdout.write(
    `${JSON.stringify({
      ...fields,
      seconds: elapsed,
      cpuSeconds: seconds(used),
      cpuUserSeconds: used.user / 1e6,
      cpuSystemSeconds: used.system / 1e6,
      goodputBitsPerSecond: (bytes * 8) / elapsed,
    })}\n`,
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`transport-peer: ${(error as Error).stack ?? error}\n`);
  process.exitCode = 2;
});
