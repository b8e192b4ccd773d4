import { randomBytes } from 'node:crypto';
import { openGuestRam } from '../qemu/guest-ram.js';
import { LibvirtMonitor } from '../libvirt/monitor.js';
import { domainPid, domainState } from '../libvirt/domain.js';
import { spawnVirsh, virsh, type VirshRun } from '../libvirt/virsh.js';
import { LIBVIRT_SOCKET_DIR } from './destination-libvirt.js';
import type { MigrationSource } from './migration-source.js';
import { completeSource, waitMigrationSettled, watchMigration } from './source-qemu.js';

/**
 * A libvirt domain as a migration's source. libvirt stays the owner of the domain through the move:
 * `virsh migrate --live --p2p --persistent --undefinesource` runs the whole protocol (the target's
 * libvirt starts the destination and defines the domain there; the source's undefines it), with
 * `--migrateuri unix://PATH`: the source QEMU sends its stream to PATH on this host, where this process
 * listens, and the target's QEMU listens at the same PATH on the target, where its agent connects.
 *
 * libvirt sets the migration's capabilities. With QEMU's return path on (libvirt 9 turns it on), the
 * source stops the guest, sends its last pages and device state and waits for the return path's
 * answer, as with a QEMU of its own: this process gives it once the memory check passed. Without it,
 * the source completes once its stream is written and stays stopped while libvirt waits for the
 * destination. Either way the destination waits too: its agent holds back the stream's tail until the
 * check passed (destination-libvirt.ts), and releasing it lets libvirt run the domain at the target and
 * undefine it at the source. A rollback cuts the stream: libvirt fails the migration and resumes the
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
  /** Whether QEMU waits for the return path's answer (libvirt's choice, known once it set up). */
  let answers = false;
  return {
    monitor,
    streamPath,
    destinationFor: (ram) => {
      if (!ram) throw new Error(`VM ${vm}: its RAM was not found before the migration`);
      return { t: 'live-attach', vm, domain, socket: streamPath, ram };
    },
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
      const capabilities = await monitor.execute<{ capability: string; state: boolean }[]>(
        'query-migrate-capabilities',
      );
      answers = capabilities.some((c) => c.capability === 'return-path' && c.state);
      const status = answers
        ? (await monitor.execute<{ status?: string }>('query-migrate')).status
        : await waitMigrationSettled(monitor, options.stepTimeoutMs, 5);
      if (answers ? status !== 'active' && status !== 'device' : status !== 'completed')
        throw new Error(`VM ${vm}: the source's migration is '${status}' with its stream whole`);
    },
    // Once answered the source completes and will not run the guest again by itself (unless libvirt
    // fails the migration at the destination); then the agent's releasing the tail lets it run there.
    commit: async (stream) => {
      const completedAt = answers
        ? await completeSource(stream, monitor, vm, options.stepTimeoutMs)
        : performance.now();
      // libvirt stops the source's QEMU once the destination runs: its figure is read now.
      ({ downtime: downtimeMs } = await monitor.execute<{ downtime?: number }>('query-migrate'));
      return completedAt;
    },
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
