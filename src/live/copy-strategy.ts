/**
 * Per-VM copy strategy (the Ada-copy idea), pure: from a VM's measured dirty rate and the bandwidth its
 * migration gets, choose how to copy it.
 *
 * Precopy sends all of memory M while the guest runs, then what it dirtied meanwhile, and so on: pass i
 * sends about M·(D/B)^i, so the passes shrink only while the dirty rate D stays below the bandwidth B,
 * and the last pass (sent with the guest stopped) fits QEMU's downtime limit after
 * k = log(L·B / M) / log(D/B) passes. The total time is about (M/B)·Σ(D/B)^i ≤ (M/B) / (1 − D/B).
 *
 * - D/B small: plain precopy converges in a pass or two; downtime within the limit, time close to M/B.
 * - D/B large but below 1: precopy would need many passes (time grows as 1/(1 − D/B)), so QEMU's
 *   auto-converge throttles the guest's CPU to bring D down: the guest slows a little instead of the
 *   migration running on. The boundary is where precopy's predicted time exceeds twice a single copy's,
 *   i.e. D/B > 1/2, or where it needs more passes than QEMU makes quickly (MAX_PLAIN_PASSES).
 * - D ≥ B: precopy cannot converge at all. Stopping the guest and copying once (stop-and-copy) has a
 *   downtime of M/B but ends; throttling a guest that dirties faster than the link for the whole copy
 *   is not better for it. So: stop-and-copy.
 * - Memory so small that one copy takes less than the downtime limit: stop-and-copy, which is then both
 *   the fastest and within the limit.
 */
export type CopyStrategy = 'precopy' | 'precopy-auto-converge' | 'stop-and-copy';

export interface CopyDecision {
  readonly strategy: CopyStrategy;
  /** Dirty rate over bandwidth. */
  readonly pressure: number;
  /** Predicted precopy passes until the last fits the downtime limit (Infinity when it never does). */
  readonly passes: number;
  readonly why: string;
}

/** Precopy passes that still finish promptly (QEMU iterates fast; beyond this, throttle). */
export const MAX_PLAIN_PASSES = 8;

export function chooseCopyStrategy(input: {
  readonly memoryBytes: number;
  readonly dirtyBytesPerSecond: number;
  readonly bandwidthBytesPerSecond: number;
  readonly downtimeLimitMs: number;
}): CopyDecision {
  const { memoryBytes: m, dirtyBytesPerSecond: d, bandwidthBytesPerSecond: b } = input;
  const limitBytes = (input.downtimeLimitMs / 1000) * b;
  const pressure = b > 0 ? d / b : Infinity;
  if (m <= limitBytes)
    return { strategy: 'stop-and-copy', pressure, passes: 0, why: 'one copy fits the downtime limit' };
  if (pressure >= 1)
    return {
      strategy: 'stop-and-copy',
      pressure,
      passes: Infinity,
      why: 'the guest dirties memory faster than the link carries it: precopy cannot converge',
    };
  const passes = pressure <= 0 ? 1 : Math.max(1, Math.ceil(Math.log(limitBytes / m) / Math.log(pressure)));
  if (pressure > 0.5 || passes > MAX_PLAIN_PASSES)
    return {
      strategy: 'precopy-auto-converge',
      pressure,
      passes,
      why: `dirty rate at ${(100 * pressure).toFixed(0)}% of the bandwidth: throttle the guest to converge`,
    };
  return { strategy: 'precopy', pressure, passes, why: `converges in about ${passes} pass(es)` };
}

/** QEMU's default downtime limit: a job's default downtime target. */
export const QEMU_DOWNTIME_LIMIT_MS = 300;

/**
 * The part of a VM's downtime target given to QEMU as its `downtime-limit` (the final pass, from the
 * stop to the stream's end); the rest is the switch-over's own: the tail drained to the target, both
 * ends' memory read and compared, the resume. Measured in bench:qemu's 8-guest lab, that second part
 * took 100-330 ms, as long as QEMU's final pass, so each gets half: with QEMU's limit at 300 ms the
 * guests' median downtime was 342-430 ms in four runs, at 150 ms 284 and 366 ms in two; in bench:soak
 * 285 ms against 374 ms. The price: QEMU iterates more, and with multi-threaded TCG each iteration is
 * a chance for its dirty tracking to miss a write. At 150 ms QEMU lost pages in 42 of 50 soak moves
 * (at most 34 MiB), at 300 ms in 6 of 14 (and 21 of 50 in an earlier soak); the memory check caught
 * and repaired every one before the guest resumed, and the repairs are inside those downtimes.
 */
export const FINAL_PASS_SHARE = 0.5;

/** QEMU's downtime limit for a VM whose whole downtime should stay within `targetMs`. */
export function finalPassLimitMs(targetMs: number): number {
  return Math.max(1, Math.round(targetMs * FINAL_PASS_SHARE));
}
