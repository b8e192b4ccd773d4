/**
 * Repairs the sender owes, per block, in the order they were first asked for. A block's repairs are
 * parity symbols with fresh indices (k, k+1, ...: each one repairs any single loss at any receiver), as
 * many as the neediest receiver lacks; past the last parity row, source symbols are resent in turn.
 */
interface BlockRepair {
  readonly object: number;
  readonly block: number;
  readonly k: number;
  pending: number;
  nextIndex: number;
  queued: boolean;
  /** When the last repair for this block went out, and how many since the round began. */
  lastRepairMs: number;
  sentInRound: number;
}

export interface RepairSymbol {
  readonly object: number;
  readonly block: number;
  readonly index: number;
}

const LAST_PARITY_INDEX = 254;

export class RepairQueue {
  private readonly blocks = new Map<string, BlockRepair>();
  private queue: BlockRepair[] = [];
  private head = 0;

  /** True while some repair is owed. */
  get owed(): boolean {
    return this.head < this.queue.length;
  }

  /**
   * A receiver lacks `missing` symbols of a block of k source symbols. A NAK sent before our last
   * repairs reached its receiver still counts them as missing, so within `holdoffMs` of the last repair
   * only what exceeds the repairs already sent in that round is new.
   */
  request(
    object: number,
    block: number,
    k: number,
    missing: number,
    firstParityIndex: number,
    nowMs: number,
    holdoffMs: number,
  ): void {
    const key = `${object}:${block}`;
    let state = this.blocks.get(key);
    if (!state) {
      state = {
        object,
        block,
        k,
        pending: 0,
        nextIndex: firstParityIndex,
        queued: false,
        lastRepairMs: -Infinity,
        sentInRound: 0,
      };
      this.blocks.set(key, state);
    }
    if (nowMs - state.lastRepairMs > holdoffMs) state.sentInRound = 0;
    state.pending = Math.max(state.pending, Math.min(missing, k) - state.sentInRound);
    if (!state.queued && state.pending > 0) {
      state.queued = true;
      this.queue.push(state);
    }
  }

  /** The next repair symbol to send, or undefined when none is owed. */
  next(nowMs: number): RepairSymbol | undefined {
    while (this.head < this.queue.length) {
      const state = this.queue[this.head]!;
      if (state.pending === 0) {
        state.queued = false;
        this.head++;
        this.compact();
        continue;
      }
      const index =
        state.nextIndex <= LAST_PARITY_INDEX
          ? state.nextIndex
          : (state.nextIndex - LAST_PARITY_INDEX - 1) % state.k;
      state.nextIndex++;
      state.pending--;
      state.sentInRound++;
      state.lastRepairMs = nowMs;
      return { object: state.object, block: state.block, index };
    }
    return undefined;
  }

  /** Drops the consumed front of the queue once it is most of it (amortised O(1) per repair). */
  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}
