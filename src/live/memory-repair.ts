import type { GuestRam } from '../qemu/guest-ram.js';
import type { LiveLink } from './messages.js';
import {
  CHECK_CHUNK_BYTES,
  chunkDigest,
  chunkRange,
  compareMemory,
  differingChunks,
  digestChunk,
  encodeChunks,
  type MemoryDigests,
} from './memory-check.js';

/**
 * The coordinator's answer to a memory check that found the target's RAM different from the stopped
 * source's (pages QEMU never sent): the differing chunks are copied from the source, which is stopped
 * with the true bytes, into the paused destination, and checked again there; beyond a bound, or where
 * the layouts differ or the destination's RAM cannot be written, the VM rolls back instead
 * (MemoryMismatch, which live-phase.ts retries).
 */

/** The target's memory differs from the source's: the one failure another attempt may cure. */
export class MemoryMismatch extends Error {}

/**
 * Compares the two ends' memory digests; when they differ, repairs the target or throws
 * MemoryMismatch. Resolves with the MiB repaired (0 when both ends agreed).
 */
export async function reconcileMemory(options: {
  readonly vm: string;
  readonly link: LiveLink;
  /** The stopped source's RAM, as the check read it. */
  readonly ram: GuestRam;
  readonly source: MemoryDigests;
  readonly target: MemoryDigests;
  /** The memory check's seed, under which both were digested. */
  readonly seed: Uint8Array;
  readonly maxRepairBytes: number;
  /** How long the agent may take to answer one repair message. */
  readonly stepTimeoutMs: number;
}): Promise<number> {
  const { vm, link, source, target } = options;
  const differs = compareMemory(source, target);
  if (!differs) return 0;
  const chunks = sameLayout(source, target) ? differingChunks(source, target) : [];
  if (chunks.length === 0 || chunks.length * CHECK_CHUNK_BYTES > options.maxRepairBytes)
    throw new MemoryMismatch(`VM ${vm}: at ${link.host.name}, ${differs}`);
  await repairMemory({ ...options, memory: source, chunks, why: differs });
  return chunks.length;
}

/** The most of the destination's RAM a repair rewrites (it adds to the downtime); beyond, a rollback. */
export const MAX_REPAIR_BYTES = 64 << 20;

function sameLayout(a: MemoryDigests, b: MemoryDigests): boolean {
  return a.digests.length === b.digests.length && JSON.stringify(a.ranges) === JSON.stringify(b.ranges);
}

/**
 * Copies the source's bytes of `chunks` into the paused destination and checks them read back there;
 * throws MemoryMismatch when the agent cannot or the bytes read back differ.
 */
async function repairMemory(options: {
  readonly vm: string;
  readonly link: LiveLink;
  /** The stopped source's RAM, as the check read it. */
  readonly ram: GuestRam;
  readonly memory: MemoryDigests;
  /** The memory check's seed, under which `memory` was digested. */
  readonly seed: Uint8Array;
  readonly chunks: readonly number[];
  readonly why: string;
  readonly stepTimeoutMs: number;
}): Promise<void> {
  const { vm, link, ram, memory, chunks } = options;
  const parts: { offset: number; bytes: Uint8Array }[] = [];
  for (const k of chunks) {
    const [offset, length] = chunkRange(memory, k);
    const bytes = new Uint8Array(length);
    await ram.read(bytes, offset, length);
    // The source is stopped: what it holds now is what the check read.
    if (Buffer.compare(digestChunk(bytes, options.seed), chunkDigest(memory, k)) !== 0)
      throw new MemoryMismatch(`VM ${vm}: the source's memory changed while stopped`);
    parts.push({ offset, bytes });
  }
  // In messages of at most REPAIR_MESSAGE_CHUNKS MiB: the control channel refuses frames over 16 MiB.
  for (let first = 0; first < parts.length; first += REPAIR_MESSAGE_CHUNKS) {
    const batch = parts.slice(first, first + REPAIR_MESSAGE_CHUNKS);
    link.send({ t: 'live-repair', vm, chunks: encodeChunks(batch) });
    const repaired = await link.next('live-repaired', (m) => m.vm === vm, options.stepTimeoutMs);
    const expected = Buffer.concat(
      chunks.slice(first, first + batch.length).map((k) => chunkDigest(memory, k)),
    );
    if (!repaired.ok || Buffer.compare(Buffer.from(repaired.digests), expected) !== 0)
      throw new MemoryMismatch(
        `VM ${vm}: at ${link.host.name}, ${options.why}, and the repair failed: ${repaired.error || 'read back different'}`,
      );
  }
}

/** MiB chunks a repair message carries at most (well under the control channel's 16 MiB frames). */
const REPAIR_MESSAGE_CHUNKS = 8;
