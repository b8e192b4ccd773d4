import { isIPv4 } from 'node:net';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import type { Host } from '../topology/model.js';
import type { OpenDatagramSocket } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { maxSymbolSize } from '../transport/wire-codec.js';
import type { AgentLink } from '../wire/agent-link.js';
import type { JobWork, SendRound } from '../plan/job-work.js';
import type { BatchCounts } from '../memory/page-batches.js';
import { PAGE_SIZE } from '../memory/page.js';
import { measureCodec, shouldCompress, type CodecRates, type CompressionMode } from '../memory/page-codec.js';
import { RoundEncoder, type EncodedRound } from './round-encoder.js';
import { probeGroups, type Unheard } from './reach-check.js';
import { openRound, settledRound, type OpenRound, type SendSettings } from './round-session.js';
import type { SourcePages } from '../store/source-pages.js';

/**
 * Phase 5, seeding: every round of the job's work multicast once to the targets that lack its pages,
 * each round a transport session of its own with a fresh key that travels to the receivers over their
 * control channels. Rounds are encoded (pages read, compressed when it pays) on a worker one round
 * ahead of the wire. A round's session is announced while the one before it still sends its last
 * data, so its receivers have joined when that one settles, and its data follows at once (each
 * session on a socket of its own, ending its Done repeats in the background). The receivers'
 * confirmations that they stored a round (their 'seeded') are awaited once all rounds are out.
 * Rounds too small to pay for a session (worthASession) are not multicast: their pages go by unicast.
 * Before the first round, each group is probed (reach-check.ts): a target it does not reach is left
 * out of the group's rounds instead of timing each of them out.
 */
export interface SeedOptions {
  /** Path MTU of the multicast network. */
  readonly mtu: number;
  readonly compression: CompressionMode;
  readonly insecurePlaintext: boolean;
  /** Rounds unicast sends in less link time than this (ms) go by unicast (default SESSION_SET_UP_MS). */
  readonly unicastBelowMs?: number;
  readonly onProgress: (sentPages: number, totalPages: number) => void;
  /**
   * Target t will get no more multicast from this job: every round it was to receive it reported
   * stored (or failed, or it was left out). `seeded` false: seeding stopped on a failure or the
   * signal, and what t holds is not to be built on. Called once per target, by the end at the latest.
   */
  readonly onTargetDone?: (target: number, seeded: boolean) => void;
  /**
   * Every round is out: `delivered[r]` the targets that received all of round r (at the transport:
   * their agents may still be storing it; their 'seeded' comes later), `changed[r]` the pages round r
   * left out. Called once, before the confirmations are awaited, and not when seeding failed or was
   * stopped: what a running VM's stream may refer to from then on (its agent holds the stream back
   * until it stored what it received).
   */
  readonly onDelivered?: (delivered: readonly (readonly number[])[], changed: readonly Uint32Array[]) => void;
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
  /** Rounds too small for a session of their own (worthASession), left to unicast. */
  readonly unicastRounds: number;
  readonly uniquePagesSent: number;
  readonly encodings: BatchCounts;
  readonly compression: CompressionDecision;
  /** Datagrams of first transmission, proactive parity, and repair (after NAKs). */
  readonly packets: { data: number; parity: number; repair: number };
  /** Per round: bytes on the wire (0 when all its receivers were lost). */
  readonly roundWireBytes: number[];
  /** Per round: the receivers that reported every object of it stored. */
  readonly roundCompleted: number[][];
  /**
   * Per round: digest ids it did not carry, read from a running guest that had changed them since the
   * scan (their new content goes in the guest's live stream; no target holds them from this round).
   */
  readonly roundChanged: Uint32Array[];
  /** Pages left out of their rounds for that reason, all rounds. */
  readonly changedPages: number;
  /** Per target: datagrams its receivers dropped (forged, replayed, stale, malformed), all rounds. */
  readonly droppedByTarget: number[];
  /** Stopped by the signal before every round was sent (rounds not sent: 0 bytes, no receiver). */
  readonly interrupted: boolean;
  /** Targets a group's probe did not reach, left out of its rounds (reach-check.ts). */
  readonly unheard: readonly Unheard[];
}

/** Pages per transport object: about 4 MiB raw, the object size the transport was tuned with. */
const BATCH_PAGES = 1024;
/** Pages sampled to measure the codec on this job's data. */
const SAMPLE_PAGES = 256;
/**
 * Time spent measuring the codec on them: it runs before the first round is encoded, so every
 * millisecond of it is one of the phase; 256 pages take 1-2 ms a pass, so this is still 20 passes.
 */
const CODEC_BUDGET_MS = 40;
/**
 * What a round's session costs besides its data, whatever its size (measured here: 50-70 ms for a
 * round of a few pages, announce and joins to the last confirmation): below it, unicast is cheaper.
 */
const SESSION_SET_UP_MS = 50;
/**
 * The next round is announced when the one on the wire has this long left of its first pass: its
 * receivers' joins (10-35 ms measured here) happen meanwhile instead of on an idle wire.
 */
const ANNOUNCE_AHEAD_MS = 40;

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
  const multicast = work.rounds.map((round) =>
    worthASession(round, linkBitsPerSecond, options.unicastBelowMs ?? SESSION_SET_UP_MS),
  );
  // Per target, the multicast rounds it has yet to be done with: at 0 it may start building.
  const roundsLeft = links.map(() => 0);
  work.rounds.forEach((round, r) => {
    if (multicast[r]) for (const t of round.receivers) roundsLeft[t]!++;
  });
  const told = links.map(() => false);
  const targetDone = (t: number, seeded: boolean) => {
    if (told[t]) return;
    told[t] = true;
    options.onTargetDone?.(t, seeded);
  };
  const roundDoneFor = (t: number) => {
    if (--roundsLeft[t]! === 0) targetDone(t, true);
  };
  const encodings: BatchCounts = { raw: 0, uniform: 0, compressed: 0 };
  let sentPages = 0;
  let interrupted = false;
  let payloadBytes = 0;
  let wireBytes = 0;
  const packets = { data: 0, parity: 0, repair: 0 };
  const roundWireBytes: number[] = work.rounds.map(() => 0);
  const roundCompleted: number[][] = work.rounds.map(() => []);
  const roundDelivered: number[][] = work.rounds.map(() => []);
  const roundChanged: Uint32Array[] = work.rounds.map(() => new Uint32Array(0));
  const droppedByTarget = links.map(() => 0);
  const openSocket = options.openSocket ?? DgramSocket.open;
  const socketOptions = {
    bindAddress: source.address,
    ...(isIPv4(source.address) ? { multicastInterface: source.address } : {}),
  };
  const encoder = new RoundEncoder(pages, BATCH_PAGES);
  // The sessions stop on the caller's signal, or when seeding fails.
  const stop = new AbortController();
  const stopWithCaller = () => stop.abort(options.signal?.reason);
  if (options.signal?.aborted) stopWithCaller();
  options.signal?.addEventListener('abort', stopWithCaller, { once: true });
  let failed = true;
  // Receivers confirm a round once they stored it; the next round goes out meanwhile.
  const confirmations: Promise<void>[] = [];
  // Each round's session ends (its last Done repeats, its socket closed) while the next one sends.
  const endings: Promise<unknown>[] = [];
  const send: SendSettings = {
    symbolSize: maxSymbolSize(options.mtu),
    rateBytesPerSecond: linkBitsPerSecond / 8,
    // The first round starts at the declared link rate (congestion control cuts it where the path
    // is narrower); each later one where the last arrived.
    initialRateBytesPerSecond: linkBitsPerSecond / 8,
  };
  let unheard: Unheard[] = [];
  /** The round whose data has the wire, if any. */
  let onWire: (OpenRound & { releaseData(): void }) | undefined;
  /** Records a round on the wire once its receivers all completed or were dropped. */
  const settle = async (open: OpenRound): Promise<void> => {
    const result = await settledRound(open, links, roundDoneFor);
    const r = open.index;
    if (result.aborted) interrupted = true;
    else sent(r);
    payloadBytes += result.payloadBytes;
    wireBytes += result.wireBytes;
    roundWireBytes[r] = result.wireBytes;
    roundDelivered[r] = [...result.delivered];
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
  };
  let progressPages = 0;
  /** Round r is done with, by multicast (`multicasted`) or left to unicast. */
  const sent = (r: number, multicasted = true) => {
    if (multicasted) sentPages += work.rounds[r]!.ids.length - roundChanged[r]!.length;
    progressPages += work.rounds[r]!.ids.length;
    options.onProgress(progressPages, totalPages);
  };
  const nextMulticast = (after: number): number => {
    let r = after + 1;
    while (r < work.rounds.length && !multicast[r]) r++;
    return r;
  };
  try {
    roundsLeft.forEach((left, t) => left === 0 && targetDone(t, true));
    let r = nextMulticast(-1);
    let next: Promise<EncodedRound> | undefined =
      r < work.rounds.length ? encoder.encode(work.rounds[r]!.ids, compression.on) : undefined;
    // While the first round is encoded: who hears which group.
    if (next && !options.signal?.aborted)
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
    // Rounds too small for a session of their own go by unicast (see worthASession).
    for (let u = 0; u < work.rounds.length; u++) if (!multicast[u]) sent(u, false);
    for (; r < work.rounds.length; r = nextMulticast(r)) {
      if (options.signal?.aborted) {
        interrupted = true;
        break;
      }
      const round = work.rounds[r]!;
      const encoded = await next!;
      if (encoded.counts.compressed > 0) compression.roundsCompressed++;
      const following = nextMulticast(r);
      next =
        following < work.rounds.length
          ? encoder.encode(work.rounds[following]!.ids, compressNext())
          : undefined;
      next?.catch(() => undefined); // awaited on the next turn; a failure then is thrown there
      encodings.raw += encoded.counts.raw;
      encodings.uniform += encoded.counts.uniform;
      encodings.compressed += encoded.counts.compressed;
      roundChanged[r] = encoded.changed;
      const receivers = round.receivers.filter((t) => !links[t]!.lost && !deaf.has(`${round.group}:${t}`));
      for (const t of round.receivers)
        if (!receivers.includes(t) || encoded.batches.length === 0) roundDoneFor(t);
      if (receivers.length === 0 || encoded.batches.length === 0) {
        sent(r);
        continue;
      }
      // Announced while the round before still has the wire, so its receivers join meanwhile: its
      // data starts the moment the wire is free.
      if (onWire) await onWire.sender.whenFirstPassWithin(ANNOUNCE_AHEAD_MS);
      // Stopped meanwhile: no receiver is told of a round that will not be sent.
      if (stop.signal.aborted) {
        interrupted = true;
        break;
      }
      const open = await openRound(r, round, encoded.batches, receivers, {
        plan,
        links,
        openSocket,
        socketOptions,
        insecurePlaintext: options.insecurePlaintext,
        signal: stop.signal,
        send,
        held: onWire !== undefined,
      });
      endings.push(open.ended);
      if (onWire) await settle(onWire);
      onWire = open;
      if (interrupted) break;
      open.releaseData();
    }
    if (onWire) await settle(onWire);
    if (!interrupted) options.onDelivered?.(roundDelivered, roundChanged);
    await Promise.all(confirmations);
    failed = false;
  } finally {
    // A failure leaves no session announcing itself forever: those not over yet stop.
    if (failed) stop.abort(new Error('seeding failed'));
    // Targets still waiting: not seeded when seeding failed or was stopped (then nothing is built).
    links.forEach((_, t) => targetDone(t, !failed && !interrupted));
    // Settled either way before the sockets go (a failure above leaves none to throw unseen).
    await Promise.allSettled(confirmations);
    await Promise.allSettled(endings);
    options.signal?.removeEventListener('abort', stopWithCaller);
    await encoder.close();
  }
  return {
    multicastPayloadBytes: payloadBytes,
    multicastWireBytes: wireBytes,
    rounds: work.rounds.length,
    unicastRounds: multicast.filter((m) => !m).length,
    uniquePagesSent: sentPages,
    encodings,
    compression,
    packets,
    roundWireBytes,
    roundCompleted,
    roundChanged,
    changedPages: roundChanged.reduce((n, ids) => n + ids.length, 0),
    droppedByTarget,
    interrupted,
    unheard,
  };
}

/**
 * Whether a round is worth a multicast session of its own. A session costs its set-up besides its
 * data (announce and joins, the last receivers' confirmations: about 50 ms here, whatever its size);
 * a round whose pages, sent once to each receiver, would take the link less time than that goes by
 * unicast instead: images' at rebuild, running VMs' in their stream, as for a target multicast does
 * not reach.
 */
export function worthASession(round: SendRound, linkBitsPerSecond: number, setUpMs: number): boolean {
  const unicastBytes = round.ids.length * PAGE_SIZE * round.receivers.length;
  return unicastBytes >= (linkBitsPerSecond / 8) * (setUpMs / 1000);
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
  const measured = measureCodec(sample, CODEC_BUDGET_MS);
  return { ...base, on: shouldCompress(mode, linkBitsPerSecond, measured), measured };
}
