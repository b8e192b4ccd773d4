/**
 * An attacker on the migration network for bench/faults.ts: a lab host of its own that joins the job's
 * multicast groups (the switch floods them to every port, as a plain switch does), learns the
 * sender's address from what it hears, and sends datagrams the receivers and the sender must drop.
 * It holds no key: it can only reuse what it captured or make up the rest.
 *
 *   node dist/bench/fault-attacker.js --mode forge|replay --groups 239.255.97.0/8 --port 7990
 *        --interface 10.77.5.5 [--mirror-port 7999] [--rate 2000] [--seconds 900] [--seed 1]
 *
 * forge, in turn per captured datagram while the rate allows:
 * - future: a captured header (its session, sender and type) with a sequence up to 256 ahead and
 *   random bytes for the ciphertext and tag, to the group (must fail authentication without moving
 *   the receivers' replay windows);
 * - flipped: a captured datagram with one bit flipped past the header, to the group;
 * - junk: a well-formed header of a random session with random bytes, to the group;
 * - plaintext: a captured datagram relabelled as plaintext ('VP'), to the group (a sealed receiver
 *   refuses the mode);
 * - feedback: a made-up Nak, Status, Complete, Join or Leave of receiver 1..4 of the captured session,
 *   to the sender's own address (must fail authentication at the sender).
 * replay, bounded by the rate:
 * - every captured datagram again, verbatim, to its group after 30 ms, 300 ms or 3 s in turn (inside
 *   the replay window, past it, and much later);
 * - when a new session starts, datagrams kept from the sessions before it, to the new session's group;
 * - the sender's own datagrams back to the sender's address (reflection);
 * - with --mirror-port: the receivers' datagrams to the sender (Nak, Status, Complete...), which the
 *   bench mirrors to this port, replayed verbatim to the sender 30 ms, 300 ms or 3 s later.
 *
 * Prints `ready` once it has joined every group, and on SIGTERM (or at --seconds) one JSON line of
 * counters: datagrams captured, sent by kind, skipped for the rate.
 */
import { randomFillSync } from 'node:crypto';
import dgram from 'node:dgram';
import { parseArgs } from 'node:util';
import { Prng } from '../src/memory/prng.js';
import { MessageType, WIRE_VERSION } from '../src/transport/messages.js';
import {
  decodeHeader,
  encodeHeader,
  HEADER_BYTES,
  isDecodeFailure,
  MAGIC_PLAINTEXT,
  TAG_BYTES,
  type DecodedHeader,
} from '../src/transport/wire-codec.js';
import { groupAddresses } from './fault-wire.js';

const { values } = parseArgs({
  options: {
    mode: { type: 'string' },
    groups: { type: 'string' },
    port: { type: 'string' },
    interface: { type: 'string' },
    'mirror-port': { type: 'string' },
    rate: { type: 'string', default: '2000' },
    seconds: { type: 'string', default: '900' },
    seed: { type: 'string', default: '1' },
  },
});
const mode = values.mode;
if ((mode !== 'forge' && mode !== 'replay') || !values.groups || !values.port || !values.interface) {
  process.stderr.write(
    'usage: fault-attacker --mode forge|replay --groups BASE/SIZE --port P --interface ADDR\n',
  );
  process.exit(2);
}
const groups = groupAddresses(values.groups);
const port = Number(values.port);
const iface = values.interface;
const rate = Number(values.rate);
const prng = new Prng(Number(values.seed));

const stats = {
  captured: 0,
  capturedFeedback: 0,
  sessions: 0,
  sent: {} as Record<string, number>,
  skippedForRate: 0,
  sendErrors: 0,
};
const count = (kind: string) => (stats.sent[kind] = (stats.sent[kind] ?? 0) + 1);

/** A token bucket: at most `rate` datagrams a second, bursts of a tenth of a second. */
let tokens = rate / 10;
let refilled = performance.now();
function allowed(): boolean {
  const now = performance.now();
  tokens = Math.min(rate / 10, tokens + ((now - refilled) / 1000) * rate);
  refilled = now;
  if (tokens < 1) {
    stats.skippedForRate++;
    return false;
  }
  tokens--;
  return true;
}

const out = dgram.createSocket({ type: 'udp4', reuseAddr: true });
out.on('error', () => stats.sendErrors++);
await new Promise<void>((resolve) => out.bind(0, iface, resolve));
out.setMulticastInterface(iface);
out.setMulticastTTL(1);
out.setMulticastLoopback(false);
const send = (kind: string, bytes: Uint8Array, to: { host: string; port: number }): void => {
  count(kind);
  out.send(bytes, to.port, to.host, (error) => {
    if (error) stats.sendErrors++;
  });
};

const random = (length: number): Buffer => randomFillSync(Buffer.alloc(length));
/** The sender's unicast address, as its multicast datagrams come from it. */
let sender: { host: string; port: number } | undefined;
const sessions = new Set<number>();
/** Datagrams kept per session (at most 256 each) for replays into later sessions. */
const kept = new Map<number, Buffer[]>();
const REPLAY_DELAYS_MS = [30, 300, 3000];
let replayTurn = 0;
const forgeKinds = ['future', 'flipped', 'junk', 'plaintext', 'feedback'] as const;
let forgeTurn = 0;

function forge(header: DecodedHeader, bytes: Buffer, group: string): void {
  if (!allowed()) return;
  const to = { host: group, port };
  const kind = forgeKinds[forgeTurn++ % forgeKinds.length]!;
  switch (kind) {
    case 'future': {
      const forged = random(bytes.length);
      forged.set(encodeHeader({ ...header, sequence: header.sequence + 1n + BigInt(prng.below(256)) }), 0);
      return send(kind, forged, to);
    }
    case 'flipped': {
      const forged = Buffer.from(bytes);
      const at = HEADER_BYTES + prng.below(Math.max(1, forged.length - HEADER_BYTES));
      forged[at] = forged[at]! ^ (1 << prng.below(8));
      return send(kind, forged, to);
    }
    case 'junk': {
      const forged = random(HEADER_BYTES + 100 + prng.below(1300));
      forged.set(
        encodeHeader({
          version: WIRE_VERSION,
          type: MessageType.Data,
          session: prng.nextU32(),
          sender: 0,
          sequence: BigInt(1 + prng.below(1 << 30)),
        }),
        0,
      );
      return send(kind, forged, to);
    }
    case 'plaintext': {
      const forged = Buffer.from(bytes);
      forged.writeUInt16BE(MAGIC_PLAINTEXT, 0);
      return send(kind, forged, to);
    }
    case 'feedback': {
      if (!sender) return;
      const types = [
        MessageType.Nak,
        MessageType.Status,
        MessageType.Complete,
        MessageType.Join,
        MessageType.Leave,
      ];
      const forged = random(HEADER_BYTES + prng.below(64) + TAG_BYTES);
      forged.set(
        encodeHeader({
          version: WIRE_VERSION,
          type: types[prng.below(types.length)]!,
          session: header.session,
          sender: 1 + prng.below(4),
          sequence: BigInt(1 + prng.below(1 << 30)),
        }),
        0,
      );
      return send(kind, forged, sender);
    }
  }
}

function replay(header: DecodedHeader, bytes: Buffer, group: string): void {
  const to = { host: group, port };
  const delay = REPLAY_DELAYS_MS[replayTurn++ % REPLAY_DELAYS_MS.length]!;
  setTimeout(() => {
    if (allowed()) send(`verbatim +${delay} ms`, bytes, to);
  }, delay).unref();
  if (sender && replayTurn % 8 === 0 && allowed()) send('reflected to the sender', bytes, sender);
  if (!sessions.has(header.session)) {
    // A new session: what earlier sessions said, replayed into it.
    for (const [session, datagrams] of kept) {
      if (session === header.session) continue;
      for (const old of datagrams) if (allowed()) send('earlier session', old, to);
    }
  }
  const mine = kept.get(header.session) ?? [];
  if (mine.length < 256) mine.push(bytes);
  kept.set(header.session, mine);
}

const sockets: dgram.Socket[] = [];
for (const group of groups) {
  // Bound to the group's address: each socket hears only its own group, so we know where to aim.
  const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve) => socket.bind(port, group, resolve));
  socket.addMembership(group, iface);
  socket.setRecvBufferSize(4 * 2 ** 20);
  socket.on('message', (bytes, from) => {
    stats.captured++;
    const header = decodeHeader(bytes);
    if (isDecodeFailure(header) || header.sender !== 0) return;
    sender = { host: from.address, port: from.port };
    if (mode === 'forge') forge(header, bytes, group);
    else replay(header, bytes, group);
    if (!sessions.has(header.session)) {
      sessions.add(header.session);
      stats.sessions++;
    }
  });
  sockets.push(socket);
}

if (values['mirror-port'] !== undefined) {
  // The receivers' feedback to the sender, mirrored here by the bench's switch rule: replayed verbatim.
  const mirror = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve) => mirror.bind(Number(values['mirror-port']), iface, resolve));
  mirror.on('message', (bytes) => {
    stats.capturedFeedback++;
    const delay = REPLAY_DELAYS_MS[replayTurn++ % REPLAY_DELAYS_MS.length]!;
    setTimeout(() => {
      if (sender && allowed()) send(`receiver feedback +${delay} ms`, bytes, sender);
    }, delay).unref();
  });
  sockets.push(mirror);
}
process.stdout.write('ready\n');

let finished = false;
const finish = (): void => {
  if (finished) return;
  finished = true;
  process.stdout.write(`${JSON.stringify({ mode, rate, ...stats })}\n`);
  for (const socket of sockets) socket.close();
  out.close();
  process.exit(0);
};
process.once('SIGTERM', finish);
process.once('SIGINT', finish);
setTimeout(finish, Number(values.seconds) * 1000).unref();
