import { isIPv4 } from 'node:net';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import type { Host } from '../topology/model.js';
import type { OpenDatagramSocket } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { maxSymbolSize } from '../transport/wire-codec.js';
import type { AgentLink } from '../wire/agent-link.js';
import type { JobWork, SendRound } from '../plan/job-work.js';
import { RECORD_HEADER_BYTES, type BatchCounts } from '../memory/page-batches.js';
import { PAGE_SIZE } from '../memory/page.js';
import { measureCodec, shouldCompress, type CodecRates, type CompressionMode } from '../memory/page-codec.js';
import { RoundEncoder } from './round-encoder.js';
import { openGroupSession, settledGroup, type GroupSession, type SettledGroup } from './group-session.js';
import type { SourcePages } from '../store/source-pages.js';

/**
 * Phase 5, seeding: every round of the job's work multicast once to the targets that lack its pages.
 * Each multicast group has one transport session for the whole seeding (group-session.ts), opened
 * before the first round is encoded so its receivers join while the codec is measured and the first
 * pages are read; a session sends once the one before it has sent everything once, so one session
 * at a time has the link and the next starts at once. Rounds are encoded on a worker
 * (round-encoder.ts), each batch offered to its group's session as soon as it is made, and the
 * worker starts a round once the one before is on the wire (so the source holds about two rounds).
 * Rounds are ranges of their session's objects: units of progress and of what a target is known to
 * hold when a session ends early, not of set-up. The agents' answers (what each stored) are awaited
 * once every session settled. Rounds too small to pay for multicast (worthASession) go by unicast.
 * A target its group's datagrams never reach (multicast filtered on its path) is dropped from the
 * session as 'unheard' and gets its pages over the control channel.
 */
/** A target a group's datagrams did not reach: its pages went over the control channel. */
export interface Unheard {
  readonly target: number;
  readonly group: number;
  readonly why: string;
}

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
   * their agents may still be storing it; their answers come later), `changed[r]` the pages round r
   * left out. Called once, before the answers are awaited, and not when seeding failed or was
   * stopped: what a running VM's stream may refer to from then on (its agent holds the stream back
   * until it stored what it received).
   */
  readonly onDelivered?: (delivered: readonly (readonly number[])[], changed: readonly Uint32Array[]) => void;
  /** The network the rounds go out on (default: the host's, DgramSocket). */
  readonly openSocket?: OpenDatagramSocket;
  /**
   * Ctrl-C: no new round is encoded, and the sessions stop at once. Their receivers keep what they
   * stored; the job's end (sent by the coordinator) releases them.
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
  /** Rounds too small to pay for multicast (worthASession), left to unicast. */
  readonly unicastRounds: number;
  readonly uniquePagesSent: number;
  readonly encodings: BatchCounts;
  readonly compression: CompressionDecision;
  /** Datagrams of first transmission, proactive parity, and repair (after NAKs). */
  readonly packets: { data: number; parity: number; repair: number };
  /**
   * Per round: bytes on the wire, its session's share by the bytes of its batches (0 when none was
   * multicast).
   */
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
  /** Targets a group's datagrams did not reach, dropped from its session. */
  readonly unheard: readonly Unheard[];
}

/** Pages per transport object: about 4 MiB raw, the object size the transport was tuned with. */
const BATCH_PAGES = 1024;
/** The largest batch the encoder makes: every record raw. */
const MAX_BATCH_BYTES = BATCH_PAGES * (RECORD_HEADER_BYTES + PAGE_SIZE);
/** Pages sampled to measure the codec on this job's data. */
const SAMPLE_PAGES = 256;
/**
 * Time spent measuring the codec on them: it runs before the first round is encoded (while the
 * sessions' receivers join); 256 pages take 1-2 ms a pass, so this is still 20 passes.
 */
const CODEC_BUDGET_MS = 40;
/**
 * What multicast costs a round besides its data, whatever its size (the receivers' last reports and
 * answers at the end, the pages read back at the target for storing): below it, unicast is cheaper.
 */
const SESSION_SET_UP_MS = 50;

export async function seedRounds(
  work: JobWork,
  plan: ScatterPlan,
  links: readonly AgentLink[],
  pages: SourcePages,
  source: Host,
  options: SeedOptions,
): Promise<SeedResult> {
  const { rounds } = work;
  const totalPages = rounds.reduce((n, r) => n + r.ids.length, 0);
  const linkBitsPerSecond = Math.min(
    ...[source, ...links.map((l) => l.host)].map((h) => h.linkBitsPerSecond),
  );
  const multicast = rounds.map((round) =>
    worthASession(round, linkBitsPerSecond, options.unicastBelowMs ?? SESSION_SET_UP_MS),
  );
  // The multicast rounds in send order, and their groups in the order their rounds come (a group's
  // rounds follow each other: job-work.ts).
  const order = rounds.map((_, r) => r).filter((r) => multicast[r]);
  const roundsOf = new Map<number, number[]>();
  for (const r of order) {
    const group = rounds[r]!.group;
    if (!roundsOf.has(group)) roundsOf.set(group, []);
    roundsOf.get(group)!.push(r);
  }
  const groups = [...roundsOf.keys()];
  const encodings: BatchCounts = { raw: 0, uniform: 0, compressed: 0 };
  const compression: CompressionDecision = {
    mode: options.compression,
    linkBitsPerSecond,
    roundsCompressed: 0,
    roundBitsPerSecond: [],
    on: options.compression === 'on',
  };
  // When the hosts' CPUs, not the wire, limit the transport, fewer bytes per page is faster: the
  // rate the last round reached is the link compression competes with.
  const compressNext = (): boolean =>
    compression.measured === undefined
      ? compression.on
      : shouldCompress(
          'adaptive',
          Math.min(linkBitsPerSecond, ...compression.roundBitsPerSecond.slice(-1)),
          compression.measured,
        );
  // Per target, the sessions it has yet to hear the end of: at 0 it may start building.
  const sessionsLeft = links.map(() => 0);
  const told = links.map(() => false);
  const targetDone = (t: number, seeded: boolean) => {
    if (told[t]) return;
    told[t] = true;
    options.onTargetDone?.(t, seeded);
  };
  const answered = (t: number) => {
    if (--sessionsLeft[t]! === 0) targetDone(t, true);
  };
  let progressPages = 0;
  const progress = (count: number) => {
    progressPages += count;
    options.onProgress(progressPages, totalPages);
  };
  const roundStart = rounds.map(() => 0);
  const roundEnd = rounds.map(() => 0);
  const roundPayload = rounds.map(() => 0);
  const roundChanged: Uint32Array[] = rounds.map(() => new Uint32Array(0));
  const roundWireBytes: number[] = rounds.map(() => 0);
  const roundDelivered: number[][] = rounds.map(() => []);
  const roundCompleted: number[][] = rounds.map(() => []);
  const droppedByTarget = links.map(() => 0);
  const encoder = new RoundEncoder(pages, BATCH_PAGES);
  // The sessions stop on the caller's signal, or when seeding fails.
  const stop = new AbortController();
  const stopWithCaller = () => stop.abort(options.signal?.reason);
  if (options.signal?.aborted) stopWithCaller();
  options.signal?.addEventListener('abort', stopWithCaller, { once: true });
  let failed = true;
  let interrupted = false;
  const sessions = new Map<number, GroupSession>();
  /** The sessions in the order they have the wire; settled[i] is onWire[i]'s outcome. */
  let onWire: GroupSession[] = [];
  let settled: SettledGroup[] = [];
  /**
   * Per group, its session's outcome, watched from the moment it is closed: its receivers' agents
   * answer then, and a target done with every session it is in starts building while the others send.
   */
  const settling = new Map<number, Promise<SettledGroup>>();
  const settle = (open: GroupSession) => {
    let watched = settling.get(open.group);
    if (!watched) settling.set(open.group, (watched = settledGroup(open, links, stop.signal, answered)));
    return watched;
  };
  try {
    // Every group's session first: its receivers join while the codec is measured and the first
    // round is read.
    const opened = await Promise.all(
      groups.map((group) => {
        const receivers = rounds[roundsOf.get(group)![0]!]!.receivers.filter((t) => !links[t]!.lost);
        if (receivers.length === 0 || stop.signal.aborted) return undefined;
        return openGroupSession(group, receivers, {
          plan,
          links,
          openSocket: options.openSocket ?? DgramSocket.open,
          socketOptions: {
            bindAddress: source.address,
            ...(isIPv4(source.address) ? { multicastInterface: source.address } : {}),
          },
          insecurePlaintext: options.insecurePlaintext,
          signal: stop.signal,
          send: {
            symbolSize: maxSymbolSize(options.mtu),
            rateBytesPerSecond: linkBitsPerSecond / 8,
            // The declared link rate (congestion control cuts it where the path is narrower).
            initialRateBytesPerSecond: linkBitsPerSecond / 8,
          },
          maxObjectBytes: MAX_BATCH_BYTES,
        });
      }),
    );
    for (const open of opened) {
      if (!open) continue;
      sessions.set(open.group, open);
      for (const t of open.receivers) sessionsLeft[t]!++;
    }
    links.forEach((_, t) => sessionsLeft[t] === 0 && targetDone(t, true));
    // One session at a time has the wire: each sends once the one before it sent everything once.
    onWire = [...sessions.values()];
    onWire.forEach((open, i) => {
      if (i === 0) open.sender.releaseData();
      else void onWire[i - 1]!.sender.whenFirstPassDone().then(() => open.sender.releaseData());
    });
    Object.assign(compression, decideCompression(work, pages, options.compression, linkBitsPerSecond));
    // Rounds too small for multicast, and those of a group nobody is left to receive, are done with.
    for (const [r, round] of rounds.entries())
      if (!multicast[r] || !sessions.has(round.group)) progress(round.ids.length);
    for (const r of order) {
      const round = rounds[r]!;
      const open = sessions.get(round.group);
      if (!open) continue;
      if (options.signal?.aborted) {
        interrupted = true;
        break;
      }
      const { sender } = open;
      roundStart[r] = sender.objectCount;
      // From the moment the wire has sent everything before the round: its batches follow as made.
      const started = sender.whenSending(roundStart[r]!).then(() => performance.now());
      const compress = compressNext();
      const encoded = await encoder.encode(round.ids, compress, (bytes) => {
        roundPayload[r]! += bytes.length;
        sender.append([{ bytes }]);
      });
      roundEnd[r] = sender.objectCount;
      if (encoded.counts.compressed > 0) compression.roundsCompressed++;
      encodings.raw += encoded.counts.raw;
      encodings.uniform += encoded.counts.uniform;
      encodings.compressed += encoded.counts.compressed;
      roundChanged[r] = encoded.changed;
      if (roundsOf.get(round.group)!.at(-1) === r) {
        sender.close();
        settle(open).catch(() => undefined); // awaited below
      }
      if (roundEnd[r] === roundStart[r]) {
        progress(round.ids.length); // every page changed since the scan: nothing to send
        continue;
      }
      // The rate the round went out at, once it did (what the next rounds' compression weighs).
      void Promise.all([started, sender.whenSending(roundEnd[r]!)]).then(([from]) => {
        const seconds = (performance.now() - from) / 1000;
        if (seconds > 0) compression.roundBitsPerSecond.push(Math.round((8 * roundPayload[r]!) / seconds));
        progress(round.ids.length);
      });
      // The next round is read once this one has the wire: the source holds about two rounds.
      await started;
    }
    // Every round is offered: each session ends once its receivers have all of it, or were dropped.
    settled = await Promise.all(onWire.map(settle));
    if (settled.some((s) => s.aborted)) interrupted = true;
    // A receiver holds round r when it has every object up to the round's end (an empty round: none).
    const holding = (receivers: readonly number[], objects: readonly number[], r: number) =>
      roundEnd[r] === roundStart[r] ? [] : receivers.filter((_, i) => objects[i]! >= roundEnd[r]!);
    onWire.forEach((open, i) => {
      for (const r of roundsOf.get(open.group)!)
        roundDelivered[r] = holding(open.receivers, settled[i]!.received, r);
    });
    if (!interrupted) options.onDelivered?.(roundDelivered, roundChanged);
    const answers = await Promise.all(settled.map((s) => s.confirmed));
    onWire.forEach((open, i) => {
      const { stored, dropped } = answers[i]!;
      const ofSession = roundsOf.get(open.group)!;
      const sessionPayload = ofSession.reduce((n, r) => n + roundPayload[r]!, 0);
      for (const r of ofSession) {
        if (sessionPayload > 0)
          roundWireBytes[r] = Math.round((settled[i]!.wireBytes * roundPayload[r]!) / sessionPayload);
        roundCompleted[r] = holding(open.receivers, stored, r);
      }
      open.receivers.forEach((t, j) => (droppedByTarget[t]! += dropped[j]!));
    });
    failed = false;
  } finally {
    // A failure leaves no session announcing itself forever: those not over yet stop.
    if (failed) stop.abort(new Error('seeding failed'));
    // Targets still waiting: not seeded when seeding failed or was stopped (then nothing is built).
    links.forEach((_, t) => targetDone(t, !failed && !interrupted));
    // Settled either way before the sockets go (a failure above leaves none to throw unseen).
    for (const watched of settling.values()) await watched.then((s) => s.confirmed).catch(() => undefined);
    await Promise.allSettled([...sessions.values()].map((s) => s.ended));
    options.signal?.removeEventListener('abort', stopWithCaller);
    await encoder.close();
  }
  const stats = settled.map((s) => s.stats);
  const unheard = settled.flatMap((result, i) => {
    const open = onWire[i]!;
    const group = plan.groups[open.group]!;
    return result.unheard.map((target) => ({
      target,
      group: open.group,
      why: `multicast group ${group.address}:${group.port} did not reach it (no answer to its datagrams; filtered on its path?): its pages went over the control channel`,
    }));
  });
  return {
    multicastPayloadBytes: settled.reduce((n, s) => n + s.payloadBytes, 0),
    multicastWireBytes: settled.reduce((n, s) => n + s.wireBytes, 0),
    rounds: rounds.length,
    unicastRounds: multicast.filter((m) => !m).length,
    uniquePagesSent: order.reduce(
      (n, r) => n + (roundEnd[r]! > roundStart[r]! ? rounds[r]!.ids.length - roundChanged[r]!.length : 0),
      0,
    ),
    encodings,
    compression,
    packets: {
      data: stats.reduce((n, s) => n + s.dataPackets, 0),
      parity: stats.reduce((n, s) => n + s.parityPackets, 0),
      repair: stats.reduce((n, s) => n + s.repairPackets, 0),
    },
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
