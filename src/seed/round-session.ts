import { randomBytes, randomInt } from 'node:crypto';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import type { SendRound } from '../plan/job-work.js';
import { realScheduler, type OpenDatagramSocket } from '../transport/datagram.js';
import { BlockCodec } from '../transport/fec-codec.js';
import type { SessionResult } from '../transport/multicast-sender.js';
import { SenderSession } from '../transport/session.js';
import { HEADER_BYTES, IPV4_HEADER_BYTES, SYMBOL_FIXED_BYTES, TAG_BYTES } from '../transport/wire-codec.js';
import { AgentLostError, type AgentLink } from '../wire/agent-link.js';

/**
 * One seeding round's transport session, from the coordinator's side: opened on a socket of its own
 * and told to its receivers (their key, group and ids over the control channels), held until the
 * round before it settles, and read once every receiver completed or was dropped, with a promise of
 * their confirmations that they stored it. seeding.ts runs the rounds one after another.
 */

const SEEDED_TIMEOUT_MS = 60_000;
/** IP and UDP headers, our header, a symbol's fixed fields and the AEAD tag: per datagram on the wire. */
const DATAGRAM_OVERHEAD_BYTES = IPV4_HEADER_BYTES + 8 + HEADER_BYTES + SYMBOL_FIXED_BYTES + TAG_BYTES;

export interface SendSettings {
  readonly symbolSize: number;
  readonly rateBytesPerSecond: number;
  initialRateBytesPerSecond: number;
}

/** A round's session, announced to its receivers; its data goes once released. */
export interface OpenRound {
  readonly index: number;
  readonly sender: SenderSession;
  readonly session: number;
  readonly receivers: readonly number[];
  readonly payloadBytes: number;
  readonly signal: AbortSignal;
  /** When its data was let go (performance.now()). */
  startedAt: number;
  /** Settles once the session is over and its socket closed. */
  readonly ended: Promise<unknown>;
}

/**
 * Opens a round's session on a socket of its own and tells its receivers (key, group, their ids).
 * Held, it announces itself and gathers joins, and sends data only once released.
 */
export async function openRound(
  index: number,
  round: SendRound,
  batches: readonly Uint8Array[],
  receivers: readonly number[],
  how: {
    readonly plan: ScatterPlan;
    readonly links: readonly AgentLink[];
    readonly openSocket: OpenDatagramSocket;
    readonly socketOptions: Parameters<OpenDatagramSocket>[0];
    readonly insecurePlaintext: boolean;
    readonly signal: AbortSignal;
    readonly send: SendSettings;
    /** Announced while another round has the wire: no data until released. */
    readonly held: boolean;
  },
): Promise<OpenRound & { releaseData(): void }> {
  const { plan, links, send, signal } = how;
  const group = plan.groups[round.group]!;
  const session = randomInt(1, 2 ** 32 - 1);
  const key = how.insecurePlaintext ? new Uint8Array(0) : new Uint8Array(randomBytes(32));
  const identity = {
    session,
    key: how.insecurePlaintext ? ('insecure-plaintext' as const) : key,
    group: `${group.address}:${group.port}`,
  };
  const socket = await how.openSocket(how.socketOptions);
  const maxObjectBytes = batches.reduce((n, b) => Math.max(n, b.length), 0);
  receivers.forEach((t, i) =>
    links[t]!.send({
      t: 'seed',
      session,
      key,
      group: identity.group,
      sender: socket.address,
      receiver: i + 1,
      maxObjectBytes,
    }),
  );
  const sender = new SenderSession(
    socket,
    realScheduler,
    identity,
    batches.map((bytes) => ({ bytes })),
    receivers.map((_, i) => i + 1),
    {
      symbolSize: send.symbolSize,
      blockSymbols: 64,
      parity: new BlockCodec(),
      rateCapBytesPerSecond: send.rateBytesPerSecond,
      initialRateBytesPerSecond: send.initialRateBytesPerSecond,
      joinTimeoutMs: 10_000,
      startHeld: how.held,
    },
  );
  // An agent lost mid-round (its control connection closed) is dropped at once, not timed out.
  const unwatch = receivers.map((t, i) => links[t]!.onLost(() => sender.dropReceiver(i + 1)));
  const ended = sender
    .run(signal)
    .catch(() => undefined) // its outcome is read through whenSettled()
    .finally(() => {
      unwatch.forEach((stop) => stop());
      return socket.close();
    });
  const open = {
    index,
    sender,
    session,
    receivers,
    payloadBytes: batches.reduce((n, b) => n + b.length, 0),
    signal,
    startedAt: performance.now(),
    ended,
    releaseData() {
      open.startedAt = performance.now();
      sender.releaseData();
    },
  };
  return open;
}

/**
 * A round's figures once every receiver completed or was dropped, and a promise of their
 * confirmations that they stored it.
 */
export async function settledRound(
  open: OpenRound,
  links: readonly AgentLink[],
  /** Receiver t answered (stored it, failed, or its agent was lost). */
  answered: (target: number) => void,
): Promise<{
  payloadBytes: number;
  wireBytes: number;
  stats: SessionResult['stats'];
  finalRateBytesPerSecond: number;
  seconds: number;
  /** The targets that received the whole round (their agents then store it and say so: `confirmed`). */
  delivered: readonly number[];
  /**
   * Once every receiver answered: those that stored the whole round, and the datagrams each (by
   * target) dropped as forged, replayed, stale or malformed.
   */
  confirmed: Promise<{ completed: number[]; dropped: Map<number, number> }>;
  /** Stopped by the signal: the figures are what went out before it. */
  aborted: boolean;
}> {
  const { sender, signal } = open;
  const result = await sender.whenSettled().catch((error: unknown) => {
    if (!signal?.aborted) throw error;
    return undefined;
  });
  const seconds = Math.max(1e-3, (performance.now() - open.startedAt) / 1000);
  const stats = result?.stats ?? sender.result().stats;
  const packets = stats.dataPackets + stats.parityPackets + stats.repairPackets;
  const figures = {
    payloadBytes: Math.min(stats.payloadBytes, open.payloadBytes),
    wireBytes: stats.payloadBytes + packets * DATAGRAM_OVERHEAD_BYTES,
    stats,
    finalRateBytesPerSecond: sender.rateBytesPerSecond,
    seconds,
  };
  // Stopped by the signal: no receiver complete, and their 'seeded' replies are not waited for (none
  // may come for a session the sender left; the job's end releases them).
  if (!result)
    return {
      ...figures,
      delivered: [],
      confirmed: Promise.resolve({ completed: [], dropped: new Map<number, number>() }),
      aborted: true,
    };
  // An agent the session dropped gets what it lacks over the control channel at rebuild time.
  const completed: number[] = [];
  const dropped = new Map<number, number>();
  const confirmed = Promise.all(
    open.receivers.map((t) =>
      links[t]!.next('seeded', (m) => m.session === open.session, SEEDED_TIMEOUT_MS).then(
        (reply) => {
          if (reply.state === 'complete') completed.push(t);
          dropped.set(t, reply.dropped);
          answered(t);
        },
        (error: unknown) => {
          if (!(error instanceof AgentLostError)) throw error;
          answered(t);
        },
      ),
    ),
  ).then(() => ({ completed, dropped }));
  confirmed.catch(() => undefined); // awaited by the caller, after later rounds went out
  // Receiver i + 1 is open.receivers[i] (openRound).
  const delivered = result.completed.map((id) => open.receivers[id - 1]!);
  return { ...figures, payloadBytes: open.payloadBytes, delivered, confirmed, aborted: false };
}
