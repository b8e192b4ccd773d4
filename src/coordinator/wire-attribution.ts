import { holdersOf, type PageIndex } from '../plan/page-index.js';
import type { SendRound } from '../plan/job-work.js';

/**
 * Who the bytes on the source's link were for (pure). A round's bytes on the wire are shared equally
 * by its pages, and a page's share equally by the VMs being built that hold it: per VM, what its move
 * cost the source's link, summing to the total. (What each target received is for the report to say:
 * job-report.ts.)
 */
export interface WireAttribution {
  readonly vmBytes: Float64Array;
}

export function attributeWireBytes(input: {
  readonly rounds: readonly SendRound[];
  /** Bytes on the wire of each round (0 for a round that was not sent). */
  readonly roundWireBytes: readonly number[];
  readonly index: PageIndex;
  /** VMs not built in this job (verified earlier): charged nothing. */
  readonly done: readonly boolean[];
  readonly vmCount: number;
}): WireAttribution {
  const vmBytes = new Float64Array(input.vmCount);
  input.rounds.forEach((round, r) => {
    const bytes = input.roundWireBytes[r] ?? 0;
    if (bytes === 0 || round.ids.length === 0) return;
    const perPage = bytes / round.ids.length;
    for (const id of round.ids) {
      const holders = [...holdersOf(input.index, id)].filter((v) => !input.done[v]);
      for (const v of holders) vmBytes[v]! += perPage / holders.length;
    }
  });
  return { vmBytes };
}
