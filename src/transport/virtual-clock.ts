import type { Scheduler } from './datagram.js';

/**
 * A discrete-event clock: timers fire in time order as the test advances, so protocol tests cover
 * seconds of traffic in milliseconds, with no sleeps and the same result every run.
 */
export class VirtualClock implements Scheduler {
  private time = 0;
  private sequence = 0;
  private readonly queue: { at: number; order: number; fn: () => void; cancelled: boolean }[] = [];

  now(): number {
    return this.time;
  }

  schedule(ms: number, fn: () => void): () => void {
    const timer = { at: this.time + Math.max(0, ms), order: this.sequence++, fn, cancelled: false };
    // Binary insertion keeps the queue ordered by (time, order of scheduling).
    let lo = 0;
    let hi = this.queue.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const other = this.queue[mid]!;
      if (other.at < timer.at || (other.at === timer.at && other.order < timer.order)) lo = mid + 1;
      else hi = mid;
    }
    this.queue.splice(lo, 0, timer);
    return () => {
      timer.cancelled = true;
    };
  }

  /**
   * Runs timers in order until `done()` holds, no timer is left, or virtual time passes `limitMs`.
   * Returns whether `done()` held.
   */
  runUntil(done: () => boolean, limitMs: number): boolean {
    const end = this.time + limitMs;
    while (!done()) {
      const next = this.queue.shift();
      if (!next || next.at > end) {
        if (next) this.queue.unshift(next);
        this.time = Math.max(this.time, Math.min(end, next?.at ?? end));
        return done();
      }
      this.time = next.at;
      if (!next.cancelled) next.fn();
    }
    return true;
  }
}
