import { randomBytes } from 'node:crypto';
import { openGuestRam } from '../qemu/guest-ram.js';
import { LibvirtMonitor } from '../libvirt/monitor.js';
import { domainPid, domainState } from '../libvirt/domain.js';
import { spawnVirsh, virsh, type VirshRun } from '../libvirt/virsh.js';
import { LIBVIRT_SOCKET_DIR } from './destination-libvirt.js';
import type { MigrationSource } from './migration-source.js';
import { waitMigrationSettled, watchMigration } from './source-qemu.js';

/**
 * A libvirt domain as a migration's source. libvirt stays the owner of the domain through the move:
 * `virsh migrate --live --p2p --persistent --undefinesource` runs the whole protocol (the target's
 * libvirt starts the destination and defines the domain there; the source's undefines it), with
 * `--migrateuri unix://PATH`: the source QEMU sends its stream to PATH on this host, where this process
 * listens, and the target's QEMU listens at the same PATH on the target, where its agent connects.
 *
 * Without QEMU's return path (libvirt sets the capabilities), the source completes once its stream is
 * written, and stays stopped while libvirt waits for the destination, which waits for the stream's
 * tail that its agent holds back until the memory check passed (destination-libvirt.ts). So the
 * commit is the agent releasing the tail; a rollback is the stream cut, after which libvirt resumes the
 * domain at its source, still defined there.
 */
export function libvirtMigrationSource(options: {
  readonly vm: string;
  readonly domain: string;
  /** The source's libvirt (this host's). */
  readonly uri: string;
  /** The target's libvirt, as the source's reaches it. */
  readonly targetUri: string;
  readonly autoConverge: boolean;
  readonly downtimeLimitMs: number;
  readonly stepTimeoutMs: number;
}): MigrationSource {
  const { vm, domain, uri } = options;
  const monitor = new LibvirtMonitor(uri, domain);
  // A fresh name per attempt: neither libvirt nor QEMU removes a migration socket it made.
  const streamPath = `${LIBVIRT_SOCKET_DIR}/vmscatter-${randomBytes(8).toString('hex')}.sock`;
  let run: VirshRun | undefined;
  let giveUp: (why: string) => void = () => undefined;
  const gaveUp = new Promise<string>((resolve) => (giveUp = resolve));
  let downtimeMs: number | undefined;
  return {
    monitor,
    streamPath,
    destination: { t: 'live-attach', vm, domain, socket: streamPath },
    destinationAfterStart: true,
    gaveUp,
    prepare: async () => {
      const state = await domainState(uri, domain);
      if (state !== 'running' && state !== 'paused')
        throw new Error(
          `VM ${vm}: domain ${domain} at ${uri} is '${state}', not running: nothing to migrate`,
        );
      // libvirt sets the bandwidth (unlimited unless told) and the capabilities; the downtime limit
      // it leaves to QEMU's own parameter.
      await monitor.execute('migrate-set-parameters', {
        'downtime-limit': Math.max(1, Math.round(options.downtimeLimitMs)),
      });
      return { wasRunning: state === 'running' };
    },
    openRam: (scratchDir, running) =>
      openGuestRam(monitor, { pid: domainPid(domain), scratchDir, name: vm, running }),
    start: () => {
      run = spawnVirsh(uri, [
        ...['migrate', '--live', '--p2p', '--persistent', '--undefinesource'],
        ...(options.autoConverge ? ['--auto-converge'] : []),
        ...[domain, options.targetUri, '--migrateuri', `unix://${streamPath}`],
      ]);
      void run.exited.then(({ code, error }) => {
        if (code !== 0) giveUp(`VM ${vm}: virsh migrate failed: ${error || `exit code ${code}`}`);
      });
      return Promise.resolve();
    },
    watch: (observed) => watchMigration(monitor, observed),
    whole: async () => {
      const status = await waitMigrationSettled(monitor, options.stepTimeoutMs, 5);
      if (status !== 'completed')
        throw new Error(`VM ${vm}: the source's migration is '${status}' with its stream whole`);
      ({ downtime: downtimeMs } = await monitor.execute<{ downtime?: number }>('query-migrate'));
    },
    // The source completed already and stays stopped: what commits is the tail the agent releases.
    commit: () => Promise.resolve(performance.now()),
    finish: async () => {
      const { code, error } = await run!.exited;
      if (code !== 0) throw new Error(`virsh migrate: ${error || `exit code ${code}`}`);
      return downtimeMs;
    },
    rollBack: async (wasRunning) => {
      if (run) {
        // With its stream cut, libvirt fails the migration and resumes the domain by itself.
        const ended = await Promise.race([
          run.exited,
          new Promise<undefined>((r) => setTimeout(() => r(undefined), options.stepTimeoutMs).unref()),
        ]);
        if (!ended) {
          await virsh(uri, ['domjobabort', domain]).catch(() => undefined);
          run.kill();
          await run.exited;
        }
      }
      const state = await domainState(uri, domain).catch(() => 'unknown');
      if (wasRunning && state === 'paused') await virsh(uri, ['resume', domain]);
    },
  };
}
