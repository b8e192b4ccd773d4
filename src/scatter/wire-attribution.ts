import { holdersOf, type PageIndex } from '../plan/page-index.js';
import type { SendRound } from './job-work.js';

/**
 * Who the bytes on the source's link were for (pure). A round's bytes on the wire are shared equally
 * by its pages, and a page's share equally by the VMs being built that hold it: per VM, what its move
 * cost the source's link, summing to the total. A target is charged every round it received (it took
 * all of the round's datagrams) and the pages sent to it over the control channel.
 */
export interface WireAttribution {
  readonly vmBytes: Float64Array;
  readonly targetBytes: Float64Array;
}

export function attributeWireBytes(input: {
  readonly rounds: readonly SendRound[];
  /** Bytes on the wire of each round (0 for a round that was not sent). */
  readonly roundWireBytes: readonly number[];
  /** Receivers each round was actually sent to. */
  readonly roundReceivers: readonly (readonly number[])[];
  readonly index: PageIndex;
  /** VMs not built in this job (verified earlier): charged nothing. */
  readonly done: readonly boolean[];
  readonly vmCount: number;
  readonly targetCount: number;
  /** Bytes sent over the control channel to fill gaps, per target. */
  readonly unicastBytes: readonly number[];
}): WireAttribution {
  const vmBytes = new Float64Array(input.vmCount);
  const targetBytes = new Float64Array(input.targetCount);
  input.rounds.forEach((round, r) => {
    const bytes = input.roundWireBytes[r] ?? 0;
    if (bytes === 0 || round.ids.length === 0) return;
    for (const t of input.roundReceivers[r] ?? []) targetBytes[t]! += bytes;
    const perPage = bytes / round.ids.length;
    for (const id of round.ids) {
      const holders = [...holdersOf(input.index, id)].filter((v) => !input.done[v]);
      for (const v of holders) vmBytes[v]! += perPage / holders.length;
    }
  });
  input.unicastBytes.forEach((bytes, t) => (targetBytes[t]! += bytes));
  return { vmBytes, targetBytes };
}
