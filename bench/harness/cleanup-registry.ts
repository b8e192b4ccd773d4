/**
 * What must be removed when this process exits or is signalled (a lab's namespaces, daemons and
 * processes): registered while it exists, destroyed synchronously on 'exit', SIGINT, SIGTERM and
 * SIGHUP. After cleaning up on a signal the handlers go, and the signal is raised again once no other
 * handler is left, so its default action (terminate) applies; with several registries (the network
 * lab's and the libvirt lab's), the last one to run re-raises, so each cleans up first.
 */
export class CleanupRegistry<T extends { destroySync(): void }> {
  private static readonly SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  private readonly live = new Set<T>();
  private installed = false;
  private readonly onExit = (): void => this.destroyAll();
  private readonly onSignal = new Map<NodeJS.Signals, () => void>(
    CleanupRegistry.SIGNALS.map((signal) => [
      signal,
      () => {
        this.destroyAll();
        this.uninstall();
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      },
    ]),
  );

  register(item: T): void {
    this.live.add(item);
    if (this.installed) return;
    this.installed = true;
    process.on('exit', this.onExit);
    for (const [signal, handler] of this.onSignal) process.on(signal, handler);
  }

  unregister(item: T): void {
    this.live.delete(item);
    if (this.live.size === 0) this.uninstall();
  }

  private destroyAll(): void {
    for (const item of [...this.live]) {
      try {
        item.destroySync();
      } catch {
        // keep going: the others still need removing
      }
    }
  }

  private uninstall(): void {
    if (!this.installed) return;
    this.installed = false;
    process.removeListener('exit', this.onExit);
    for (const [signal, handler] of this.onSignal) process.removeListener(signal, handler);
  }
}

/** Blocks this thread for `ms` (cleanup on 'exit' must be synchronous). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Sends `signal` to `pid`; one already gone is not an error. */
export function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Whether `pid` is alive (EPERM: alive, another user's). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
