import { ZERO_PAGE_ID, type VmPages } from '../memory/page.js';
import { holdersOf, type PageIndex } from './page-index.js';
import type { MulticastSchedule } from './schedule.js';

/**
 * What a job still has to move, given the plan and what the targets already hold: the pure core of
 * `scatter` (and of `--resume`, which is the same computation with more held).
 *
 * A unique page goes to target t when a VM placed on t still needs building and holds the page, and t
 * has not announced the page. Pages nobody needs are not sent at all; each group's pages go out in
 * rounds of a bounded size (one multicast session each), so the source never holds more than a round
 * in memory and an agent that drops out loses at most a round's progress.
 */
export interface SendRound {
  /** Index of the schedule group the round belongs to. */
  readonly group: number;
  /** Targets that need at least one page of the round's group, ascending. */
  readonly receivers: readonly number[];
  /**
   * How many of the round's pages each receiver needs (same order as `receivers`): what it has
   * received by multicast once it reports the round stored, for the report.
   */
  readonly needed: readonly number[];
  /** Digest ids carried, ascending. */
  readonly ids: Uint32Array;
}

/** Pages a target fetches from a peer of its site that already holds them (off the source's link). */
export interface PeerFetch {
  readonly target: number;
  readonly peer: number;
  readonly ids: Uint32Array;
}

export interface JobWork {
  readonly rounds: readonly SendRound[];
  readonly peerFetches: readonly PeerFetch[];
  /** VMs to build in this job (not already verified at their target). */
  readonly pendingVms: readonly number[];
  /** Per target: pages its pending VMs need that it already holds (not sent). */
  readonly heldPages: Int32Array;
  /** Per target: pages it will receive by multicast that it needs. */
  readonly neededPages: Int32Array;
  /** Per target: pages it will fetch from a peer of its site. */
  readonly peerPages: Int32Array;
  /** Per target: pages only one of its running VMs holds, left to that VM's live stream. */
  readonly streamedPages: Int32Array;
}

export interface JobWorkInput {
  readonly vms: readonly VmPages[];
  readonly index: PageIndex;
  readonly schedule: MulticastSchedule;
  readonly assignment: Int32Array;
  readonly targetCount: number;
  /** Whether target t announced digest id. */
  readonly held: (target: number, id: number) => boolean;
  /** A target of t's site that announced digest id (t fetches it there), or undefined. */
  readonly peerHolding?: (target: number, id: number) => number | undefined;
  /** VMs already verified at their target (skipped). */
  readonly done: readonly boolean[];
  /** Most pages in one round. */
  readonly roundPages: number;
  /**
   * VMs that carry their own pages in a live stream (running VMs). A page only one pending VM holds,
   * and that one is streamed, is not multicast: the stream sends it in full, compressed as a round
   * would be, with the same bytes on the link, and without the round's cost at both ends (read,
   * encode, send, receive, check, store, then read back for the stream).
   */
  readonly streamed?: (v: number) => boolean;
}

export function planJobWork(input: JobWorkInput): JobWork {
  const { index, schedule, assignment, targetCount, held, done } = input;
  const pendingVms = input.vms.map((_, v) => v).filter((v) => !done[v]);
  const heldPages = new Int32Array(targetCount);
  const neededPages = new Int32Array(targetCount);
  const peerPages = new Int32Array(targetCount);
  const streamedPages = new Int32Array(targetCount);
  const fetches = new Map<number, number[]>(); // key target * targetCount + peer
  const groupIds: number[][] = schedule.groups.map(() => []);
  const groupReceivers = schedule.groups.map(() => new Set<number>());
  /** Per group, per target: pages it needs in each of the group's rounds, by round. */
  const groupNeeds = schedule.groups.map(() => new Map<number, number[]>());
  // Stamped per digest so a target holding the page in several VMs counts once.
  const seen = new Int32Array(targetCount).fill(-1);
  const needers: number[] = [];
  for (let id = 1; id < index.holderCount.length; id++) {
    if (id === ZERO_PAGE_ID || index.holderCount[id] === 0) continue;
    const group = schedule.groupOfDigest[id]!;
    needers.length = 0;
    const holders = holdersOf(index, id);
    let pendingHolders = 0;
    let onlyHolder = -1;
    for (const v of holders)
      if (!done[v]) {
        pendingHolders++;
        onlyHolder = v;
      }
    const streamedAlone = pendingHolders === 1 && input.streamed?.(onlyHolder) === true;
    for (const v of holders) {
      const t = assignment[v]!;
      if (done[v] || seen[t] === id) continue;
      seen[t] = id;
      if (held(t, id)) {
        heldPages[t]!++;
        continue;
      }
      const peer = input.peerHolding?.(t, id);
      if (peer !== undefined) {
        peerPages[t]!++;
        const key = t * targetCount + peer;
        let ids = fetches.get(key);
        if (!ids) fetches.set(key, (ids = []));
        ids.push(id);
        continue;
      }
      if (streamedAlone) {
        streamedPages[t]!++;
        continue;
      }
      neededPages[t]!++;
      groupReceivers[group]!.add(t);
      needers.push(t);
    }
    if (needers.length === 0) continue;
    const round = Math.floor(groupIds[group]!.length / input.roundPages);
    groupIds[group]!.push(id);
    for (const t of needers) {
      const byRound = groupNeeds[group]!.get(t) ?? [];
      byRound[round] = (byRound[round] ?? 0) + 1;
      groupNeeds[group]!.set(t, byRound);
    }
  }
  const rounds: SendRound[] = [];
  groupIds.forEach((ids, group) => {
    const receivers = [...groupReceivers[group]!].sort((a, b) => a - b);
    for (let i = 0, round = 0; i < ids.length; i += input.roundPages, round++) {
      const needed = receivers.map((t) => groupNeeds[group]!.get(t)?.[round] ?? 0);
      rounds.push({ group, receivers, needed, ids: Uint32Array.from(ids.slice(i, i + input.roundPages)) });
    }
  });
  const peerFetches = [...fetches].map(([key, ids]) => ({
    target: Math.floor(key / targetCount),
    peer: key % targetCount,
    ids: Uint32Array.from(ids),
  }));
  return { rounds, peerFetches, pendingVms, heldPages, neededPages, peerPages, streamedPages };
}
