import { randomBytes, randomInt } from 'node:crypto';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import { realScheduler, type OpenDatagramSocket } from '../transport/datagram.js';
import { BlockCodec } from '../transport/fec-codec.js';
import type { SessionResult } from '../transport/multicast-sender.js';
import { SenderSession } from '../transport/session.js';
import { HEADER_BYTES, IPV4_HEADER_BYTES, SYMBOL_FIXED_BYTES, TAG_BYTES } from '../transport/wire-codec.js';
import { AgentLostError, type AgentLink } from '../wire/agent-link.js';

/**
 * One multicast group's transport session for the whole seeding, from the coordinator's side. It is
 * opened before the first round is encoded and told to its receivers over their control channels
 * (its key, group and their ids), so they have joined by the time it may send; it stays open while
 * the rounds of its group are encoded, each batch offered to it as it is made, and is closed after
 * the group's last round. Rounds are ranges of its objects: units of progress (what a target holds
 * when the session ends early), not of set-up. A group's session is held until the one before it on
 * the wire has sent everything once (seeding.ts), so one session at a time has the link.
 *
 * Whether the group reaches each receiver is learnt on the way: a receiver whose join came over its
 * unicast path but that never answers what the group carries is dropped 'unheard' (the transport's
 * receiver time-out, 3 s), and gets its pages over the control channel.
 */

const SEEDED_TIMEOUT_MS = 60_000;
/** IP and UDP headers, our header, a symbol's fixed fields and the AEAD tag: per datagram on the wire. */
const DATAGRAM_OVERHEAD_BYTES = IPV4_HEADER_BYTES + 8 + HEADER_BYTES + SYMBOL_FIXED_BYTES + TAG_BYTES;

export interface SendSettings {
  readonly symbolSize: number;
  readonly rateBytesPerSecond: number;
  readonly initialRateBytesPerSecond: number;
}

/** A group's session, announced to its receivers; it sends once released. */
export interface GroupSession {
  readonly group: number;
  readonly sender: SenderSession;
  readonly session: number;
  /** Its receivers' targets: receiver id i + 1 is receivers[i]. */
  readonly receivers: readonly number[];
  /** Settles once the session is over and its socket closed. */
  readonly ended: Promise<unknown>;
}

/** Where and how sessions go: the job's plan and agents, the source's socket, the send settings. */
export interface GroupSessionOptions {
  readonly plan: ScatterPlan;
  readonly links: readonly AgentLink[];
  readonly openSocket: OpenDatagramSocket;
  readonly socketOptions: Parameters<OpenDatagramSocket>[0];
  readonly insecurePlaintext: boolean;
  readonly signal: AbortSignal;
  readonly send: SendSettings;
  /** Largest object it will carry (bytes): receivers refuse anything longer. */
  readonly maxObjectBytes: number;
}

/** Opens group `group`'s session for `receivers`, held (no data until its sender is released). */
export async function openGroupSession(
  group: number,
  receivers: readonly number[],
  how: GroupSessionOptions,
): Promise<GroupSession> {
  const { plan, links, send } = how;
  const planned = plan.groups[group]!;
  const session = randomInt(1, 2 ** 32 - 1);
  const key = how.insecurePlaintext ? new Uint8Array(0) : new Uint8Array(randomBytes(32));
  const address = `${planned.address}:${planned.port}`;
  const socket = await how.openSocket(how.socketOptions);
  receivers.forEach((t, i) =>
    links[t]!.send({
      t: 'seed',
      session,
      key,
      group: address,
      sender: socket.address,
      receiver: i + 1,
      maxObjectBytes: how.maxObjectBytes,
    }),
  );
  const sender = new SenderSession(
    socket,
    realScheduler,
    { session, key: how.insecurePlaintext ? 'insecure-plaintext' : key, group: address },
    [],
    receivers.map((_, i) => i + 1),
    {
      symbolSize: send.symbolSize,
      blockSymbols: 64,
      parity: new BlockCodec(),
      rateCapBytesPerSecond: send.rateBytesPerSecond,
      initialRateBytesPerSecond: send.initialRateBytesPerSecond,
      joinTimeoutMs: 10_000,
      startHeld: true,
      open: true,
    },
  );
  // An agent lost mid-session (its control connection closed) is dropped at once, not timed out.
  const unwatch = receivers.map((t, i) => links[t]!.onLost(() => sender.dropReceiver(i + 1)));
  const ended = sender
    .run(how.signal)
    .catch(() => undefined) // its outcome is read through whenSettled()
    .finally(() => {
      unwatch.forEach((stop) => stop());
      return socket.close();
    });
  return { group, sender, session, receivers, ended };
}

/** A group session's figures once every receiver completed or was dropped. */
export interface SettledGroup {
  readonly payloadBytes: number;
  readonly wireBytes: number;
  readonly stats: SessionResult['stats'];
  /** Per receiver (same order as the session's): leading objects it received whole. */
  readonly received: readonly number[];
  /** Receivers the group never reached (dropped 'unheard'). */
  readonly unheard: readonly number[];
  /**
   * Once every receiver answered: per receiver, the leading objects its agent stored (0 when it was
   * lost) and the datagrams it dropped as forged, replayed, stale or malformed.
   */
  readonly confirmed: Promise<{ stored: number[]; dropped: number[] }>;
  /** Stopped by the signal: the figures are what went out before it. */
  readonly aborted: boolean;
}

/**
 * Waits until every receiver of `open` completed or was dropped; `answered(t)` is called as each
 * target's agent says what it stored (or is lost).
 */
export async function settledGroup(
  open: GroupSession,
  links: readonly AgentLink[],
  signal: AbortSignal,
  answered: (target: number) => void,
): Promise<SettledGroup> {
  const { sender, receivers } = open;
  const result = await sender.whenSettled().catch((error: unknown) => {
    if (!signal.aborted) throw error;
    return undefined;
  });
  const stats = result?.stats ?? sender.result().stats;
  const packets = stats.dataPackets + stats.parityPackets + stats.repairPackets;
  const figures = {
    payloadBytes: stats.payloadBytes,
    wireBytes: stats.payloadBytes + packets * DATAGRAM_OVERHEAD_BYTES,
    stats,
  };
  // Stopped by the signal: nothing counts as received, and the agents' answers are not waited for
  // (none may come for a session the sender left; the job's end releases them).
  if (!result)
    return {
      ...figures,
      received: receivers.map(() => 0),
      unheard: [],
      confirmed: Promise.resolve({ stored: receivers.map(() => 0), dropped: receivers.map(() => 0) }),
      aborted: true,
    };
  const received = receivers.map((_, i) => sender.objectsCompleteAt(i + 1));
  const unheard = result.dropped.filter((d) => d.reason === 'unheard').map((d) => receivers[d.receiver - 1]!);
  const stored = receivers.map(() => 0);
  const dropped = receivers.map(() => 0);
  const confirmed = Promise.all(
    receivers.map((t, i) => {
      const answer = links[t]!.next('seeded', (m) => m.session === open.session, SEEDED_TIMEOUT_MS);
      // One the group never reached answers only when its receiver gives up on the silence: taken
      // when it comes (so it does not wait in the link's queue), not waited for.
      if (unheard.includes(t)) {
        answer.catch(() => undefined);
        answered(t);
        return undefined;
      }
      return answer.then(
        (reply) => {
          stored[i] =
            reply.state === 'complete' ? sender.objectCount : Math.min(reply.objects, sender.objectCount);
          dropped[i] = reply.dropped;
          answered(t);
        },
        (error: unknown) => {
          if (!(error instanceof AgentLostError)) throw error;
          answered(t);
        },
      );
    }),
  ).then(() => ({ stored, dropped }));
  confirmed.catch(() => undefined); // awaited by the caller
  return { ...figures, received, unheard, confirmed, aborted: false };
}
