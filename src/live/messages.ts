import type { LiveRecord } from './records.js';
import type { MainRam } from '../qemu/memory-map.js';

/**
 * What the two ends of a live migration say to each other: the live part of the job protocol
 * (wire/protocol.ts adds the other kinds and checks every message's shape). In order, per VM:
 *   live-incoming (or live-attach) -> live-ready (or live-refused), live-stream* -> live-ack*, live-end -> live-verified,
 *   live-repair? -> live-repaired, live-resume -> live-resumed; live-abort at any point rolls it back.
 */
export type LiveToAgent =
  /** Start a destination QEMU from this command line, paused, waiting for a stream. */
  | { readonly t: 'live-incoming'; readonly vm: string; readonly command: readonly string[] }
  /**
   * A libvirt domain arrives: the target's libvirt starts its destination for the migration the source's
   * libvirt began, listening at `socket`; the agent connects there, writes the stream, and holds back
   * its tail (after the RAM's END section) until live-resume, so the domain cannot run before the check.
   */
  | {
      readonly t: 'live-attach';
      readonly vm: string;
      readonly domain: string;
      readonly socket: string;
      /**
       * The source's main RAM layout: the destination's is the same, and its monitor cannot be asked
       * while libvirt holds it for the incoming migration.
       */
      readonly ram: MainRam;
    }
  /** The VM's migration stream, in order; pages the agent holds come as references. */
  | { readonly t: 'live-stream'; readonly vm: string; readonly records: readonly LiveRecord[] }
  /**
   * The stream is complete; its canonical digest, to compare before resuming, and the seed of this
   * migration's memory check (memory-check.ts).
   */
  | { readonly t: 'live-end'; readonly vm: string; readonly sha256: string; readonly memorySeed: Uint8Array }
  | { readonly t: 'live-resume'; readonly vm: string }
  /**
   * The memory check found chunks of the destination's RAM that differ from the source's (pages QEMU
   * lost): write the source's bytes of those chunks (memory-check.ts encodeChunks) into the paused
   * destination and answer with their digests as read back.
   */
  | { readonly t: 'live-repair'; readonly vm: string; readonly chunks: Uint8Array }
  /** Roll back: kill the destination QEMU (the VM runs on at its source). */
  | { readonly t: 'live-abort'; readonly vm: string };

export type LiveFromAgent =
  | { readonly t: 'live-ready'; readonly vm: string }
  /** The agent will not run the destination's command line (qemu/command-policy.ts says why). */
  | { readonly t: 'live-refused'; readonly vm: string; readonly error: string }
  /** The destination took a live-stream's bytes. */
  | { readonly t: 'live-ack'; readonly vm: string }
  /**
   * The stream was loaded and its digest agreed (ok), with the loaded guest RAM's digests for the
   * memory check (memory-check.ts); or why not.
   */
  | {
      readonly t: 'live-verified';
      readonly vm: string;
      readonly ok: boolean;
      readonly error: string;
      readonly memory: Uint8Array;
    }
  | { readonly t: 'live-resumed'; readonly vm: string }
  /** The repaired chunks' digests as read back (32 bytes each, in the order sent), or why not. */
  | {
      readonly t: 'live-repaired';
      readonly vm: string;
      readonly ok: boolean;
      readonly error: string;
      readonly digests: Uint8Array;
    };

type LiveKind = LiveFromAgent['t'];
type LiveOf<K extends LiveKind> = Extract<LiveFromAgent, { t: K }>;

/**
 * The coordinator's connection to the agent of a migration's target, as the migration needs it (the
 * job's agent link is one): typed sends, and waiting for a reply of a given kind.
 */
export interface LiveLink {
  readonly host: { readonly name: string };
  /** Why the agent was lost, once it is. */
  readonly lost: string | undefined;
  send(message: LiveToAgent): void;
  /** Resolves once the connection's backlog drained. */
  drain(): Promise<void>;
  /** The next message of `kind` (or one of several kinds) matching `match`, within `timeoutMs`. */
  next<K extends LiveKind>(
    kind: K | readonly K[],
    match: (message: LiveOf<K>) => boolean,
    timeoutMs: number,
  ): Promise<LiveOf<K>>;
}
