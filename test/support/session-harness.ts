import { randomBytes } from 'node:crypto';
import { BlockCodec } from '../../src/transport/fec-codec.js';
import { MemoryNetwork, type NetworkConditions } from '../../src/transport/memory-network.js';
import { Prng } from '../../src/memory/prng.js';
import { ObjectMemory } from '../../src/transport/object-memory.js';
import { ReceiverSession, SenderSession, type SessionIdentity } from '../../src/transport/session.js';
import type { SessionResult } from '../../src/transport/multicast-sender.js';
import { VirtualClock } from '../../src/transport/virtual-clock.js';

export interface HarnessOptions {
  readonly receivers: number;
  readonly objectSizes: readonly number[];
  readonly conditions?: NetworkConditions;
  readonly seed?: number;
  readonly symbolSize?: number;
  readonly blockSymbols?: number;
  readonly rateBytesPerSecond?: number;
  readonly windowBytes?: number;
  /** Receivers rebuild objects in memory given back once each was copied out (ObjectMemory). */
  readonly reuseMemory?: boolean;
}

/** A sender and receivers on an in-memory network with a virtual clock: one session, end to end. */
export function sessionHarness(options: HarnessOptions) {
  const clock = new VirtualClock();
  const rng = new Prng(options.seed ?? 1);
  const random = () => rng.next();
  const network = new MemoryNetwork(clock, random, options.conditions ?? {});
  const identity: SessionIdentity = {
    session: 7,
    key: new Uint8Array(randomBytes(32)),
    group: '239.255.1.1:7420',
  };
  const objects = options.objectSizes.map((size) => ({ bytes: new Uint8Array(randomBytes(size)) }));
  const codec = new BlockCodec();
  const senderSocket = network.socket('10.0.0.1:7000');
  const ids = Array.from({ length: options.receivers }, (_, i) => i + 1);
  const sender = new SenderSession(senderSocket, clock, identity, objects, ids, {
    symbolSize: options.symbolSize ?? 1024,
    blockSymbols: options.blockSymbols ?? 16,
    parity: codec,
    rateCapBytesPerSecond: options.rateBytesPerSecond ?? 50e6,
    receiverTimeoutMs: 500,
    lagTimeoutMs: 500,
    ...(options.windowBytes === undefined ? {} : { windowBytes: options.windowBytes }),
  });
  const received = ids.map(() => new Map<number, Uint8Array>());
  const memories = ids.map(() => (options.reuseMemory ? new ObjectMemory() : undefined));
  const receiverSockets = ids.map((id) => network.socket(`10.0.0.${id + 1}:7001`));
  const receivers = ids.map(
    (id, i) =>
      new ReceiverSession(
        receiverSockets[i]!,
        clock,
        identity,
        id,
        '10.0.0.1:7000',
        { decoder: codec, senderTimeoutMs: 1000 },
        (objectId, bytes) => {
          const memory = memories[i];
          received[i]!.set(objectId, memory ? Uint8Array.from(bytes) : bytes);
          memory?.give(bytes);
        },
        random,
        undefined,
        memories[i],
      ),
  );
  /** Receivers join first, as they do in a job (the coordinator starts the sender once they are in). */
  const start = () => {
    receivers.forEach((r) => void r.run());
    void sender.run();
  };
  /** Whether receiver i holds every object byte-exact. */
  const holdsAll = (i: number) =>
    objects.every((o, id) => {
      const got = received[i]!.get(id);
      return got !== undefined && Buffer.compare(Buffer.from(got), Buffer.from(o.bytes)) === 0;
    });
  return {
    clock,
    network,
    identity,
    objects,
    sender,
    receivers,
    receiverSockets,
    received,
    memories,
    start,
    holdsAll,
    /** The sender's result once the session is over (checked synchronously, on the virtual clock). */
    senderResult: (): SessionResult | undefined => (sender.done ? sender.result() : undefined),
  };
}
