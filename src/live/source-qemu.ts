import { chmodSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { openGuestRam } from '../qemu/guest-ram.js';
import type { MigrationSource } from './migration-source.js';
import net from 'node:net';
import { QmpClient, type QemuMonitor } from '../qemu/qmp.js';
import type { CopyStrategy } from './copy-strategy.js';
import { LiveSourceError } from './source.js';

/**
 * The source QEMU's side of a live migration, as QMP steps and its stream socket: what migrate.ts
 * drives. Preparing the migration (its caps and capabilities), watching it, completing it through
 * the return path once the target may run the VM, and rolling it back.
 */

/** `max-bandwidth` for the migration: high enough never to bind (QEMU takes bytes per second). */
const QEMU_UNCAPPED_BYTES_PER_SECOND = 100 * 2 ** 30;

/** Refuses a source neither running nor paused; sets the migration up. Resolves with whether it ran. */
export async function prepareSource(
  source: QemuMonitor,
  vm: string,
  options: {
    readonly strategy: CopyStrategy;
    readonly downtimeLimitMs: number;
    readonly qemuMaxBandwidth?: number;
  },
): Promise<{ readonly wasRunning: boolean }> {
  const before = (await source.execute('query-status')) as { status?: string };
  if (before.status !== 'running' && before.status !== 'paused')
    throw new Error(`VM ${vm}: its source QEMU is '${before.status}', not running: nothing to migrate`);
  // QEMU's own cap would apply to its whole stream, references included: the link's cap is ours
  // (flow.ts WireBudget), on what crosses it, and end-to-end acks give QEMU the real rate.
  await source.execute('migrate-set-parameters', {
    'max-bandwidth': Math.round(options.qemuMaxBandwidth ?? QEMU_UNCAPPED_BYTES_PER_SECOND),
    'downtime-limit': Math.max(1, Math.round(options.downtimeLimitMs)),
  });
  // Auto-converge is armed for every precopy: QEMU throttles the guest only if its pages dirty faster
  // than they cross, so a dirty rate measured wrong before the migration is corrected during it.
  // The auto-converge strategy (a rate measured near the bandwidth share) starts throttling harder.
  // The return path makes the switch-over safe from this process dying: QEMU completes its side only
  // once it reads our answer on it (RETURN_PATH_SHUT_OK, sent when the target may run); if this
  // process dies first, the stream closes unanswered, the migration fails and QEMU restarts the guest.
  await source.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'auto-converge', state: options.strategy !== 'stop-and-copy' },
      { capability: 'return-path', state: true },
    ],
  });
  await source.execute('migrate-set-parameters', {
    'cpu-throttle-initial': options.strategy === 'precopy-auto-converge' ? 40 : 20,
  });
  return { wasRunning: before.status === 'running' };
}

/**
 * Polls the running migration for what QEMU measured of the guest: how much auto-converge throttled it
 * and the dirty rate between passes (the figure the strategy was chosen on, but from the migration's
 * own dirty bitmap instead of a sample).
 */
export function watchMigration(
  source: QemuMonitor,
  observed: { throttlePercent: number; migrationDirtyBytesPerSecond: number },
): { stop: () => void } {
  const timer = setInterval(() => {
    source.execute('query-migrate').then(
      (info) => {
        const { ram, 'cpu-throttle-percentage': throttle } = info as {
          ram?: { 'dirty-pages-rate'?: number; 'page-size'?: number };
          'cpu-throttle-percentage'?: number;
        };
        observed.throttlePercent = Math.max(observed.throttlePercent, throttle ?? 0);
        const rate = (ram?.['dirty-pages-rate'] ?? 0) * (ram?.['page-size'] ?? 4096);
        observed.migrationDirtyBytesPerSecond = Math.max(observed.migrationDirtyBytesPerSecond, rate);
      },
      () => undefined,
    );
  }, 500);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/**
 * The return path's answer that completes a source's migration (migration.c: MIG_RP_MSG_SHUT, be16
 * type 1, be16 length 4, be32 error 0).
 */
const RETURN_PATH_SHUT_OK = Uint8Array.of(0, 1, 0, 4, 0, 0, 0, 0);
/** How often the source's completion is polled once answered (it is a matter of milliseconds). */
const COMPLETION_POLL_MS = 5;

/**
 * Commits the source: answers the return path, so QEMU completes its migration and will not restart
 * the guest, and waits until it did. Resolves with when (performance.now()).
 */
export async function completeSource(
  socket: net.Socket,
  source: QemuMonitor,
  vm: string,
  timeoutMs: number,
): Promise<number> {
  await new Promise<void>((resolve, reject) =>
    socket.write(RETURN_PATH_SHUT_OK, (error) => (error ? reject(error) : resolve())),
  );
  const completed = await waitMigrationSettled(source, timeoutMs, COMPLETION_POLL_MS);
  if (completed !== 'completed')
    throw new Error(`VM ${vm}: the source's migration ended '${completed}' after its answer`);
  return performance.now();
}

/**
 * Rolls the source back: cancels its migration (a stream cut before the return path's answer fails
 * it already, and QEMU restarts a guest that ran) and resumes the guest if it ran when the migration
 * began; a source left stopped by an earlier migration may have its VM running elsewhere.
 */
export async function rollBackSource(source: QemuMonitor, wasRunning: boolean): Promise<void> {
  await source.execute('migrate_cancel').catch(() => undefined);
  await waitMigrationSettled(source).catch(() => undefined);
  const status = (await source.execute('query-status').catch(() => ({}))) as { status?: string };
  if (wasRunning && status.status !== 'running') await source.execute('cont').catch(() => undefined);
}

/** Opens a unix socket at `path` for QEMU's outgoing stream and resolves with the first connection. */
export function streamListener(path: string): { accepted: Promise<net.Socket>; close: () => void } {
  rmSync(path, { force: true });
  // Paused before its first read, so it can be read through a socket of its own (stream-socket.ts).
  const server = net.createServer({ pauseOnConnect: true });
  const accepted = new Promise<net.Socket>((resolve, reject) => {
    server.once('connection', (socket) => resolve(socket));
    server.once('error', reject);
  });
  // Only this user may connect (QEMU runs as root or as us), whatever the umask: a stream fed in by
  // anyone else would be taken for the guest's memory.
  server.listen(path, () => chmodSync(path, 0o600));
  return {
    accepted,
    close: () => {
      server.close();
      rmSync(path, { force: true });
    },
  };
}

/** Waits until the source's migration is no longer active (after a cancel or a completion). */
export async function waitMigrationSettled(
  qmp: QemuMonitor,
  timeoutMs = 30_000,
  pollMs = 50,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = (await qmp.execute('query-migrate')) as { status?: string };
    const status = info.status ?? 'none';
    if (!['setup', 'active', 'cancelling', 'pre-switchover', 'device', 'wait-unplug'].includes(status))
      return status;
    if (Date.now() > deadline) return status;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new LiveSourceError(`${what} within ${ms / 1000} s`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/** A QEMU of its own as a migration's source, driven through its QMP socket (the steps above). */
export function qemuMigrationSource(options: {
  readonly vm: string;
  /** The destination's command line, as the agent starts it. */
  readonly command: readonly string[];
  readonly monitor: QemuMonitor;
  /** Its QMP socket (finds the QEMU process, whose memory the check reads). */
  readonly qmpSocket?: string;
  readonly runDir: string;
  readonly strategy: CopyStrategy;
  readonly downtimeLimitMs: number;
  readonly qemuMaxBandwidth?: number;
  readonly stepTimeoutMs: number;
}): MigrationSource {
  const { vm, monitor } = options;
  const streamPath = join(options.runDir, `${vm}.out`);
  return {
    monitor,
    streamPath,
    destinationFor: () => ({ t: 'live-incoming', vm, command: [...options.command] }),
    destinationAfterStart: false,
    gaveUp: new Promise<string>(() => undefined),
    prepare: () => prepareSource(monitor, vm, options),
    stop: async () => {
      await monitor.execute('stop');
    },
    openRam: (scratchDir, running) =>
      openGuestRam(monitor, {
        ...(options.qmpSocket ? { qmpSocket: options.qmpSocket } : {}),
        scratchDir,
        name: vm,
        running,
      }),
    start: async () => {
      await monitor.execute('migrate', { uri: `unix:${streamPath}` });
    },
    ...(monitor instanceof QmpClient
      ? { onStopped: (listener: () => void) => monitor.onEvent('STOP', () => listener()) }
      : {}),
    watch: (observed) => watchMigration(monitor, observed),
    whole: async () => {
      // QEMU waits in its completion for our answer: anything else means its migration failed.
      const { status } = (await monitor.execute('query-migrate')) as { status?: string };
      if (status !== 'active' && status !== 'device')
        throw new Error(`VM ${vm}: the source's migration is '${status}' with its stream whole`);
    },
    commit: (stream) => completeSource(stream, monitor, vm, options.stepTimeoutMs),
    finish: async () => {
      const info = (await monitor.execute('query-migrate')) as { downtime?: number };
      // The VM runs at its target: the source's QEMU has nothing left to do.
      await monitor.execute('quit').catch(() => undefined);
      return info.downtime;
    },
    rollBack: (wasRunning) => rollBackSource(monitor, wasRunning),
  };
}
