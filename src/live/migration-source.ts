import type net from 'node:net';
import type { GuestRam } from '../qemu/guest-ram.js';
import type { MainRam } from '../qemu/memory-map.js';
import type { QemuMonitor } from '../qemu/qmp.js';
import type { LiveToAgent } from './messages.js';

/**
 * The source end of one live migration, as migrate.ts drives it: a QEMU of its own, driven through
 * its QMP socket (source-qemu.ts), or a libvirt domain, moved by libvirt's own migration with this
 * process in its data path (source-libvirt.ts). Either way QEMU's stream comes into a unix socket this
 * process listens on, and the guest runs at its source until `commit`.
 */
export interface MigrationSource {
  readonly monitor: QemuMonitor;
  /** Where QEMU's stream comes in (this process listens there). */
  readonly streamPath: string;
  /** What tells the target's agent to receive the stream, given the source's RAM as openRam found it. */
  destinationFor(ram: MainRam | undefined): Extract<LiveToAgent, { t: 'live-incoming' | 'live-attach' }>;
  /**
   * The destination exists only once the migration started (libvirt starts it): the agent is told
   * after `start`, not before.
   */
  readonly destinationAfterStart: boolean;
  /** Resolves with why, should the source side give up before its stream is whole (never for QEMU's). */
  readonly gaveUp: Promise<string>;
  /** Refuses a source that is neither running nor paused; sets the migration up. Whether it ran. */
  prepare(): Promise<{ readonly wasRunning: boolean }>;
  /** Stops the guest for a stop-and-copy; undefined where the source cannot (it copies live). */
  readonly stop?: () => Promise<void>;
  /** The guest's RAM, for the memory check (found while it runs, read once it stopped). */
  openRam(scratchDir: string, running: boolean): Promise<GuestRam>;
  /** Makes QEMU migrate into `streamPath`. */
  start(): Promise<void>;
  /**
   * Calls `listener` when the guest stops at its source (QEMU's STOP event: the migration's last pass
   * begins, or a stop-and-copy); returns a function that stops listening. Undefined where the source
   * does not tell (the stream's end says it then).
   */
  readonly onStopped?: (listener: () => void) => () => void;
  /** Polls what QEMU measures of the guest during the migration. */
  watch(observed: { throttlePercent: number; migrationDirtyBytesPerSecond: number }): { stop(): void };
  /** The stream is whole: throws unless the source is stopped and waits for the commit. */
  whole(): Promise<void>;
  /**
   * Commits the source before the target is told to run the VM: once this resolves the source will
   * not run the guest again by itself. Resolves with when (performance.now()).
   */
  commit(stream: net.Socket): Promise<number>;
  /**
   * After the target runs the VM: what is left at the source goes. Resolves with the source's own
   * downtime figure (ms); throws when the source's side says the migration failed.
   */
  finish(): Promise<number | undefined>;
  /** Rolls back: the guest runs on at its source (if it ran when the migration began). */
  rollBack(wasRunning: boolean): Promise<void>;
}
