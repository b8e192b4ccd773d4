/**
 * A reordering middlebox for bench/faults.ts (the kernel here has no sch_netem, so tc cannot delay a
 * share of the packets): it runs in a lab host of its own, receives the multicast datagrams the
 * switch forwards to it instead of flooding them (an nftables `fwd` on the source's switch port), and
 * sends each one on to the same group and port, holding a random share of them back for a random
 * delay so that later datagrams overtake them. Nothing is dropped, changed or added on purpose; what
 * the relay itself could not keep up with shows in its namespace's UDP receive-buffer errors, which
 * the bench reads and reports beside these counters.
 *
 *   node dist/bench/fault-relay.js --groups 239.255.97.0/8 --port 7990 --interface 10.77.5.4
 *        [--share 0.2] [--min-delay-ms 1] [--max-delay-ms 10] [--seconds 900] [--seed 1]
 *
 * Prints `ready` once it has joined every group, and on SIGTERM (or at --seconds) one JSON line of
 * counters: received, sent at once, held back, the largest and mean number of datagrams of the same
 * group that overtook a held one, and send errors.
 */
import dgram from 'node:dgram';
import { parseArgs } from 'node:util';
import { Prng } from '../src/memory/prng.js';
import { groupAddresses } from './fault-wire.js';

const { values } = parseArgs({
  options: {
    groups: { type: 'string' },
    port: { type: 'string' },
    interface: { type: 'string' },
    share: { type: 'string', default: '0.2' },
    'min-delay-ms': { type: 'string', default: '1' },
    'max-delay-ms': { type: 'string', default: '10' },
    seconds: { type: 'string', default: '900' },
    seed: { type: 'string', default: '1' },
  },
});
if (!values.groups || !values.port || !values.interface) {
  process.stderr.write('usage: fault-relay --groups BASE/SIZE --port P --interface ADDR [--share S]\n');
  process.exit(2);
}
const groups = groupAddresses(values.groups);
const port = Number(values.port);
const iface = values.interface;
const share = Number(values.share);
const minDelay = Number(values['min-delay-ms']);
const maxDelay = Number(values['max-delay-ms']);
const prng = new Prng(Number(values.seed));

const stats = {
  received: 0,
  sentAtOnce: 0,
  heldBack: 0,
  sentLate: 0,
  overtakenMax: 0,
  overtakenTotal: 0,
  sendErrors: 0,
};
/** Datagrams sent so far per group: a held datagram was overtaken by the difference at its release. */
const sentPerGroup = new Map<string, number>();

const out = dgram.createSocket({ type: 'udp4', reuseAddr: true });
out.on('error', () => stats.sendErrors++);
await new Promise<void>((resolve) => out.bind(0, iface, resolve));
out.setMulticastInterface(iface);
out.setMulticastTTL(1);
out.setMulticastLoopback(false);
out.setSendBufferSize(4 * 2 ** 20);

const send = (group: string, bytes: Buffer): void => {
  sentPerGroup.set(group, (sentPerGroup.get(group) ?? 0) + 1);
  out.send(bytes, port, group, (error) => {
    if (error) stats.sendErrors++;
  });
};

const sockets: dgram.Socket[] = [];
for (const group of groups) {
  // Bound to the group's address, so each socket sees only its group's datagrams (and we know which).
  const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve) => socket.bind(port, group, resolve));
  socket.addMembership(group, iface);
  socket.setRecvBufferSize(16 * 2 ** 20); // capped by net.core.rmem_max
  socket.on('message', (bytes) => {
    stats.received++;
    if (prng.next() >= share) {
      stats.sentAtOnce++;
      send(group, bytes);
      return;
    }
    stats.heldBack++;
    const sentBefore = sentPerGroup.get(group) ?? 0;
    const delay = minDelay + prng.next() * (maxDelay - minDelay);
    setTimeout(() => {
      const overtaken = (sentPerGroup.get(group) ?? 0) - sentBefore;
      stats.overtakenMax = Math.max(stats.overtakenMax, overtaken);
      stats.overtakenTotal += overtaken;
      stats.sentLate++;
      send(group, bytes);
    }, delay);
  });
  sockets.push(socket);
}
process.stdout.write('ready\n');

let finished = false;
const finish = (): void => {
  if (finished) return;
  finished = true;
  const meanOvertaken = stats.sentLate > 0 ? stats.overtakenTotal / stats.sentLate : 0;
  process.stdout.write(`${JSON.stringify({ ...stats, meanOvertaken, share, minDelay, maxDelay })}\n`);
  for (const socket of sockets) socket.close();
  out.close();
  process.exit(0);
};
process.once('SIGTERM', finish);
process.once('SIGINT', finish);
setTimeout(finish, Number(values.seconds) * 1000).unref();
