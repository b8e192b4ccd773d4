import { randomBytes, randomInt } from 'node:crypto';
import { isIPv4 } from 'node:net';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import type { Host } from '../topology/model.js';
import { realScheduler, type DatagramSocket, type OpenDatagramSocket } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { BlockCodec } from '../transport/fec-codec.js';
import type { SessionResult } from '../transport/multicast-sender.js';
import { SenderSession } from '../transport/session.js';
import {
  HEADER_BYTES,
  IPV4_HEADER_BYTES,
  maxSymbolSize,
  SYMBOL_FIXED_BYTES,
  TAG_BYTES,
} from '../transport/wire-codec.js';
import { AgentLostError, type AgentLink } from '../wire/agent-link.js';
import type { JobWork, SendRound } from '../plan/job-work.js';
import type { BatchCounts } from '../memory/page-batches.js';
import { measureCodec, shouldCompress, type CodecRates, type CompressionMode } from '../memory/page-codec.js';
import { RoundEncoder, type EncodedRound } from './round-encoder.js';
import { probeGroups, type Unheard } from './reach-check.js';
import type { SourcePages } from '../store/source-pages.js';

/**
 * Phase 5, seeding: every round of the job's work multicast once to the targets that lack its pages,
 * each round a transport session of its own with a fresh key that travels to the receivers over their
 * control channels. Rounds are encoded (pages read, compressed when it pays) on a worker one round
 * ahead of the wire, and a round goes out as soon as the last one's transport session ended: the
 * receivers' confirmations that they stored it (their 'seeded') are awaited once all rounds are out.
 * Before the first round, each group is probed (reach-check.ts): a target it does not reach is left
 * out of the group's rounds instead of timing each of them out.
 */
export interface SeedOptions {
  /** Path MTU of the multicast network. */
  readonly mtu: number;
  readonly compression: CompressionMode;
  readonly insecurePlaintext: boolean;
  readonly onProgress: (sentPages: number, totalPages: number) => void;
  /** The network the rounds go out on (default: the host's, DgramSocket). */
  readonly openSocket?: OpenDatagramSocket;
  /**
   * Ctrl-C: no new round starts, and the round on the wire stops at once. Its receivers keep what
   * they stored; the job's end (sent by the coordinator) releases them.
   */
  readonly signal?: AbortSignal;
}

export interface CompressionDecision {
  readonly mode: CompressionMode;
  /** Whether the first round was compressed. */
  readonly on: boolean;
  /** Rates measured on a sample of the job's own pages (absent when nothing is sent). */
  readonly measured?: CodecRates;
  /** The slowest declared link of the job. */
  readonly linkBitsPerSecond: number;
  /** Rounds sent compressed, of all rounds. */
  roundsCompressed: number;
  /** Multicast rate each round reached (bits/s): what later rounds' decisions compared with. */
  readonly roundBitsPerSecond: number[];
}

export interface SeedResult {
  /** Bytes of encoded batches multicast, and of all datagrams on the source's link for them. */
  readonly multicastPayloadBytes: number;
  readonly multicastWireBytes: number;
  readonly rounds: number;
  readonly uniquePagesSent: number;
  readonly encodings: BatchCounts;
  readonly compression: CompressionDecision;
  /** Datagrams of first transmission, proactive parity, and repair (after NAKs). */
  readonly packets: { data: number; parity: number; repair: number };
  /** Per round: bytes on the wire (0 when all its receivers were lost). */
  readonly roundWireBytes: number[];
  /** Per round: the receivers that reported every object of it stored. */
  readonly roundCompleted: number[][];
  /** Per target: datagrams its receivers dropped (forged, replayed, stale, malformed), all rounds. */
  readonly droppedByTarget: number[];
  /** Stopped by the signal before every round was sent (the arrays cover the rounds begun). */
  readonly interrupted: boolean;
  /** Targets a group's probe did not reach, left out of its rounds (reach-check.ts). */
  readonly unheard: readonly Unheard[];
}

/** Pages per transport object: about 4 MiB raw, the object size the transport was tuned with. */
const BATCH_PAGES = 1024;
/** Pages sampled to measure the codec on this job's data. */
const SAMPLE_PAGES = 256;
const SEEDED_TIMEOUT_MS = 60_000;
/** IP and UDP headers, our header, a symbol's fixed fields and the AEAD tag: per datagram on the wire. */
const DATAGRAM_OVERHEAD_BYTES = IPV4_HEADER_BYTES + 8 + HEADER_BYTES + SYMBOL_FIXED_BYTES + TAG_BYTES;

export async function seedRounds(
  work: JobWork,
  plan: ScatterPlan,
  links: readonly AgentLink[],
  pages: SourcePages,
  source: Host,
  options: SeedOptions,
): Promise<SeedResult> {
  const totalPages = work.rounds.reduce((n, r) => n + r.ids.length, 0);
  const linkBitsPerSecond = Math.min(
    ...[source, ...links.map((l) => l.host)].map((h) => h.linkBitsPerSecond),
  );
  const compression = decideCompression(work, pages, options.compression, linkBitsPerSecond);
  // After a round, the rate the transport actually reached is the link compression competes with:
  // when the hosts' CPUs, not the wire, limit the transport, fewer bytes per page is faster.
  const compressNext = (): boolean =>
    compression.measured === undefined
      ? compression.on
      : shouldCompress(
          'adaptive',
          Math.min(linkBitsPerSecond, ...compression.roundBitsPerSecond.slice(-1)),
          compression.measured,
        );
  const encodings: BatchCounts = { raw: 0, uniform: 0, compressed: 0 };
  let sentPages = 0;
  let interrupted = false;
  let payloadBytes = 0;
  let wireBytes = 0;
  const packets = { data: 0, parity: 0, repair: 0 };
  const roundWireBytes: number[] = [];
  const roundCompleted: number[][] = [];
  const droppedByTarget = links.map(() => 0);
  const socket = await (options.openSocket ?? DgramSocket.open)({
    bindAddress: source.address,
    ...(isIPv4(source.address) ? { multicastInterface: source.address } : {}),
  });
  const encoder = new RoundEncoder(pages, BATCH_PAGES);
  // Receivers confirm a round once they stored it; the next round goes out meanwhile.
  const confirmations: Promise<void>[] = [];
  const send = {
    symbolSize: maxSymbolSize(options.mtu),
    rateBytesPerSecond: linkBitsPerSecond / 8,
    /** Each round starts at the rate the last one arrived at, not from scratch. */
    initialRateBytesPerSecond: undefined as number | undefined,
  };
  let unheard: Unheard[] = [];
  try {
    let next: Promise<EncodedRound> | undefined =
      work.rounds[0] && encoder.encode(work.rounds[0].ids, compression.on);
    // While the first round is encoded: who hears which group.
    if (work.rounds.length > 0 && !options.signal?.aborted)
      unheard = await probeGroups({
        rounds: work.rounds,
        plan,
        links,
        source,
        mtu: options.mtu,
        rateBytesPerSecond: linkBitsPerSecond / 8,
        insecurePlaintext: options.insecurePlaintext,
        ...(options.openSocket ? { openSocket: options.openSocket } : {}),
      });
    const deaf = new Set(unheard.map((u) => `${u.group}:${u.target}`));
    for (const [r, round] of work.rounds.entries()) {
      if (options.signal?.aborted) {
        interrupted = true;
        break;
      }
      const encoded = await next!;
      if (encoded.counts.compressed > 0) compression.roundsCompressed++;
      const following = work.rounds[r + 1];
      next = following && encoder.encode(following.ids, compressNext());
      next?.catch(() => undefined); // awaited on the next turn; a failure then is thrown there
      encodings.raw += encoded.counts.raw;
      encodings.uniform += encoded.counts.uniform;
      encodings.compressed += encoded.counts.compressed;
      const receivers = round.receivers.filter((t) => !links[t]!.lost && !deaf.has(`${round.group}:${t}`));
      roundWireBytes.push(0);
      roundCompleted.push([]);
      if (receivers.length > 0) {
        const result = await seedRound(round, encoded.batches, receivers, plan, links, socket, options, send);
        payloadBytes += result.payloadBytes;
        wireBytes += result.wireBytes;
        roundWireBytes[r] = result.wireBytes;
        confirmations.push(
          result.confirmed.then(({ completed, dropped }) => {
            roundCompleted[r] = completed;
            for (const [t, n] of dropped) droppedByTarget[t]! += n;
          }),
        );
        send.initialRateBytesPerSecond = result.finalRateBytesPerSecond;
        compression.roundBitsPerSecond.push(Math.round((8 * result.wireBytes) / result.seconds));
        packets.data += result.stats.dataPackets;
        packets.parity += result.stats.parityPackets;
        packets.repair += result.stats.repairPackets;
        if (result.aborted) {
          interrupted = true;
          break;
        }
      }
      sentPages += round.ids.length;
      options.onProgress(sentPages, totalPages);
    }
    await Promise.all(confirmations);
  } finally {
    // Settled either way before the socket goes (a failure above leaves none to throw unseen).
    await Promise.allSettled(confirmations);
    await encoder.close();
    await socket.close();
  }
  return {
    multicastPayloadBytes: payloadBytes,
    multicastWireBytes: wireBytes,
    rounds: roundWireBytes.length,
    uniquePagesSent: sentPages,
    encodings,
    compression,
    packets,
    roundWireBytes,
    roundCompleted,
    droppedByTarget,
    interrupted,
    unheard,
  };
}

/** Measures the codec on pages spread over what is to be sent, and applies the mode's rule. */
function decideCompression(
  work: JobWork,
  pages: SourcePages,
  mode: CompressionMode,
  linkBitsPerSecond: number,
): CompressionDecision {
  const total = work.rounds.reduce((n, r) => n + r.ids.length, 0);
  const base = { mode, linkBitsPerSecond, roundsCompressed: 0, roundBitsPerSecond: [] };
  if (mode !== 'adaptive' || total === 0) return { ...base, on: mode === 'on' };
  // Every step-th page of the job, walking the rounds in order (the same pages as indexing their
  // concatenation, without building it).
  const step = Math.max(1, Math.floor(total / SAMPLE_PAGES));
  const sample: Uint8Array[] = [];
  let skip = 0;
  for (const round of work.rounds) {
    for (let i = skip; i < round.ids.length && sample.length < SAMPLE_PAGES; i += step)
      sample.push(pages.read(round.ids[i]!));
    skip = (skip - round.ids.length) % step;
    if (skip < 0) skip += step;
  }
  const measured = measureCodec(sample);
  return { ...base, on: shouldCompress(mode, linkBitsPerSecond, measured), measured };
}

async function seedRound(
  round: SendRound,
  batches: readonly Uint8Array[],
  receivers: readonly number[],
  plan: ScatterPlan,
  links: readonly AgentLink[],
  socket: DatagramSocket,
  options: SeedOptions,
  send: { symbolSize: number; rateBytesPerSecond: number; initialRateBytesPerSecond: number | undefined },
): Promise<{
  payloadBytes: number;
  wireBytes: number;
  stats: SessionResult['stats'];
  finalRateBytesPerSecond: number;
  seconds: number;
  /**
   * Once every receiver answered: those that stored the whole round, and the datagrams each (by
   * target) dropped as forged, replayed, stale or malformed.
   */
  confirmed: Promise<{ completed: number[]; dropped: Map<number, number> }>;
  /** Stopped by the signal: the figures are what went out before it. */
  aborted: boolean;
}> {
  const group = plan.groups[round.group]!;
  const session = randomInt(1, 2 ** 32 - 1);
  const key = options.insecurePlaintext ? new Uint8Array(0) : new Uint8Array(randomBytes(32));
  const identity = {
    session,
    key: options.insecurePlaintext ? ('insecure-plaintext' as const) : key,
    group: `${group.address}:${group.port}`,
  };
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
      ...(send.initialRateBytesPerSecond === undefined
        ? {}
        : { initialRateBytesPerSecond: send.initialRateBytesPerSecond }),
      joinTimeoutMs: 10_000,
    },
  );
  // An agent lost mid-round (its control connection closed) is dropped at once, not timed out.
  const unwatch = receivers.map((t, i) => links[t]!.onLost(() => sender.dropReceiver(i + 1)));
  const started = performance.now();
  const signal = options.signal;
  const result = await sender
    .run(signal)
    .catch((error: unknown) => {
      if (!signal?.aborted) throw error;
      return undefined;
    })
    .finally(() => unwatch.forEach((stop) => stop()));
  const seconds = Math.max(1e-3, (performance.now() - started) / 1000);
  if (!result) return abortedRound(batches, sender.result().stats, sender.rateBytesPerSecond, seconds);
  // An agent the session dropped gets what it lacks over the control channel at rebuild time.
  const completed: number[] = [];
  const dropped = new Map<number, number>();
  const confirmed = Promise.all(
    receivers.map((t) =>
      links[t]!.next('seeded', (m) => m.session === session, SEEDED_TIMEOUT_MS).then(
        (reply) => {
          if (reply.state === 'complete') completed.push(t);
          dropped.set(t, reply.dropped);
        },
        (error: unknown) => {
          if (!(error instanceof AgentLostError)) throw error;
        },
      ),
    ),
  ).then(() => ({ completed, dropped }));
  confirmed.catch(() => undefined); // awaited by the caller, after later rounds went out
  const packets = result.stats.dataPackets + result.stats.parityPackets + result.stats.repairPackets;
  return {
    payloadBytes: batches.reduce((n, b) => n + b.length, 0),
    wireBytes: result.stats.payloadBytes + packets * DATAGRAM_OVERHEAD_BYTES,
    stats: result.stats,
    finalRateBytesPerSecond: sender.rateBytesPerSecond,
    seconds,
    confirmed,
    aborted: false,
  };
}

/**
 * A round stopped by the signal: what crossed the link so far, and no receiver complete. The
 * coordinator does not wait for the receivers' 'seeded' replies: none may come for a session the
 * sender left, and its end of the job releases them.
 */
function abortedRound(
  batches: readonly Uint8Array[],
  stats: SessionResult['stats'],
  finalRateBytesPerSecond: number,
  seconds: number,
) {
  const packets = stats.dataPackets + stats.parityPackets + stats.repairPackets;
  return {
    payloadBytes: Math.min(
      stats.payloadBytes,
      batches.reduce((n, b) => n + b.length, 0),
    ),
    wireBytes: stats.payloadBytes + packets * DATAGRAM_OVERHEAD_BYTES,
    stats,
    finalRateBytesPerSecond,
    seconds,
    confirmed: Promise.resolve({ completed: [], dropped: new Map<number, number>() }),
    aborted: true,
  };
}
