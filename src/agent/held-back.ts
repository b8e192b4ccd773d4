/**
 * Work held back, per key, until a gate settles, then run in the order it came: a VM's stream
 * messages wait while the pages rounds delivered are still being stored (they may refer to them),
 * and the messages after them wait behind them.
 */
export class HeldBack {
  private readonly queues = new Map<string, Promise<void>>();

  /** Runs `work` at once when nothing of `key` waits and there is no gate; else after both. */
  run(key: string, gate: Promise<void> | undefined, work: () => void): void {
    const before = this.queues.get(key);
    if (!gate && !before) return work();
    // Neither a gate nor earlier work rejects the queue: work that throws is the caller's to catch.
    const next = (before ?? Promise.resolve())
      .then(() => gate)
      .then(work)
      .catch(() => undefined);
    this.queues.set(key, next);
    void next.then(() => {
      if (this.queues.get(key) === next) this.queues.delete(key);
    });
  }

  /** Settles once all of `key`'s work held back so far ran (at once when none waits). */
  async drained(key: string): Promise<void> {
    await this.queues.get(key);
  }
}
