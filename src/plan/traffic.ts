import { PAGE_SIZE } from '../memory/page.js';
import type { PageIndex } from './page-index.js';
import type { MulticastSchedule } from './schedule.js';

/**
 * Traffic model: bytes on the source link and on each target link for three ways of moving the same
 * VMs to the same targets, and the time each takes at the topology's link rates.
 *
 *  naive  - per-VM unicast of every page as QEMU's precopy sends it: a page record (8-byte header plus
 *           4096 bytes) per non-zero page and a 9-byte record per zero page, one pass, nothing dirtied.
 *  dedup  - per-VM unicast of each VM's distinct non-zero pages once, zero pages elided, plus the
 *           manifest.
 *  plan   - this plan: each unique page multicast once in its group (merged groups deliver some pages
 *           to targets that discard them), plus each VM's manifest by unicast.
 *
 * The manifest tells a target which content goes where: MANIFEST_BYTES_PER_PAGE per page, an upper
 * bound for the run-length form the wire uses. Packet headers of the transport are left out of all
 * three alike.
 */

export const QEMU_PAGE_RECORD_BYTES = 8 + PAGE_SIZE;
export const QEMU_ZERO_RECORD_BYTES = 9;
export const MANIFEST_BYTES_PER_PAGE = 4;

export interface LinkBytes {
  /** Bytes leaving the source host. */
  readonly source: number;
  /** Bytes arriving at each target, by target index. */
  readonly targets: readonly number[];
  /** Seconds at the topology's link rates. */
  readonly seconds: number;
}

export interface TrafficModel {
  readonly naive: LinkBytes;
  readonly dedup: LinkBytes;
  readonly plan: LinkBytes;
}

export interface TrafficInput {
  readonly index: PageIndex;
  readonly schedule: MulticastSchedule;
  readonly assignment: Int32Array;
  /** Link rates in bits per second. */
  readonly sourceBitsPerSecond: number;
  readonly targetBitsPerSecond: readonly number[];
}

export function modelTraffic(input: TrafficInput): TrafficModel {
  const { index, schedule, assignment, sourceBitsPerSecond, targetBitsPerSecond } = input;
  const targetCount = targetBitsPerSecond.length;
  const naiveTargets = new Array<number>(targetCount).fill(0);
  const dedupTargets = new Array<number>(targetCount).fill(0);
  const manifestTargets = new Array<number>(targetCount).fill(0);
  index.vmStats.forEach((s, vm) => {
    const t = assignment[vm]!;
    naiveTargets[t]! += (s.pages - s.zero) * QEMU_PAGE_RECORD_BYTES + s.zero * QEMU_ZERO_RECORD_BYTES;
    manifestTargets[t]! += s.pages * MANIFEST_BYTES_PER_PAGE;
    dedupTargets[t]! += (s.shared + s.unique) * PAGE_SIZE + s.pages * MANIFEST_BYTES_PER_PAGE;
  });
  const planTargets = manifestTargets.slice();
  let planSource = manifestTargets.reduce((a, b) => a + b, 0);
  let planSeconds = planSource / bytesPerSecond(sourceBitsPerSecond);
  for (const group of schedule.groups) {
    const bytes = group.pages * PAGE_SIZE;
    planSource += bytes;
    for (const t of group.receivers) planTargets[t]! += bytes;
    // A multicast group moves at the pace of its slowest member, and never faster than the source.
    const pace = Math.min(sourceBitsPerSecond, ...group.receivers.map((t) => targetBitsPerSecond[t]!));
    planSeconds += bytes / bytesPerSecond(pace);
  }
  const unicast = (targets: number[]): LinkBytes => {
    const source = targets.reduce((a, b) => a + b, 0);
    const seconds = Math.max(
      source / bytesPerSecond(sourceBitsPerSecond),
      ...targets.map((bytes, t) => bytes / bytesPerSecond(targetBitsPerSecond[t]!)),
    );
    return { source, targets, seconds };
  };
  return {
    naive: unicast(naiveTargets),
    dedup: unicast(dedupTargets),
    plan: { source: planSource, targets: planTargets, seconds: planSeconds },
  };
}

function bytesPerSecond(bitsPerSecond: number): number {
  return bitsPerSecond / 8;
}
