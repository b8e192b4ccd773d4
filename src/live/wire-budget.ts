/**
 * The source link's rate, shared by every live migration of a job: each stream message waits until
 * the link has room for its bytes (a token bucket with a small burst). The cap applies to what
 * crosses the wire, not to QEMU's stream, most of which becomes 40-byte references: capping QEMU's
 * own `max-bandwidth` instead held an idle 256 MiB guest's stream of 132 MiB to a quarter of the link
 * although only ~4 MiB of it crossed.
 */
export class WireBudget {
  private nextFree: number;

  constructor(
    private readonly bytesPerSecond: number,
    /** Bytes that may go at once after a quiet spell. */
    private readonly burstBytes = 2 << 20,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.nextFree = now();
  }

  /** Resolves when `bytes` may be sent (at once while the link has been idle). */
  async take(bytes: number): Promise<void> {
    const wait = this.reserve(bytes);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }

  /** Reserves `bytes` of the link and returns how long to wait before sending them (ms). */
  reserve(bytes: number): number {
    const now = this.now();
    const burstMs = (this.burstBytes / this.bytesPerSecond) * 1000;
    // nextFree: when everything reserved so far has left at the link's rate; up to a burst ahead of
    // now goes at once.
    this.nextFree = Math.max(this.nextFree, now) + (bytes / this.bytesPerSecond) * 1000;
    return Math.max(0, this.nextFree - now - burstMs);
  }
}
