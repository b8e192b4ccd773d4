import { createHash } from 'node:crypto';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { GuestRam } from '../qemu/guest-ram.js';

/**
 * The memory check before a migrated VM resumes: the target's guest RAM must equal the source's as it
 * was when the source stopped. The stream digest only proves that the target received what QEMU sent;
 * pages QEMU's dirty tracking missed (seen with multi-threaded TCG under load) never enter the stream,
 * so both ends read the RAM itself, after the source stopped and after the target loaded, and compare
 * SHA-256 digests of every 1 MiB of the ranges the guest sees. Any difference rolls the VM back.
 */
export const CHECK_CHUNK_BYTES = 1 << 20;
const DIGEST_BYTES = 32;

export interface MemoryDigests {
  /** The RAM block's name, for messages. */
  readonly block: string;
  /** [offset, length] of each range read, in block order. */
  readonly ranges: readonly (readonly [number, number])[];
  /** SHA-256 of each chunk of each range in order, 32 bytes each. */
  readonly digests: Uint8Array;
}

/** Digests of the guest's RAM, read in 1 MiB chunks with the event loop let run between them. */
export async function digestGuestRam(ram: GuestRam, signal?: AbortSignal): Promise<MemoryDigests> {
  const chunks = ram.map.ranges.reduce((n, r) => n + Math.ceil(r.length / CHECK_CHUNK_BYTES), 0);
  const digests = new Uint8Array(chunks * DIGEST_BYTES);
  const buffer = new Uint8Array(CHECK_CHUNK_BYTES);
  let k = 0;
  for (const range of ram.map.ranges) {
    for (let at = 0; at < range.length; at += CHECK_CHUNK_BYTES) {
      signal?.throwIfAborted();
      const length = Math.min(CHECK_CHUNK_BYTES, range.length - at);
      await ram.read(buffer, range.offset + at, length);
      digests.set(createHash('sha256').update(buffer.subarray(0, length)).digest(), k++ * DIGEST_BYTES);
      if (k % 16 === 0) await yieldToEventLoop();
    }
  }
  return { block: ram.map.block, ranges: ram.map.ranges.map((r) => [r.offset, r.length] as const), digests };
}

/** Why the target's memory is not the source's, or undefined when every chunk agrees. */
export function compareMemory(source: MemoryDigests, target: MemoryDigests): string | undefined {
  const layout = (m: MemoryDigests) => m.ranges.map(([o, l]) => `${o}+${l}`).join(',');
  if (layout(source) !== layout(target))
    return `guest RAM layouts differ (source ${source.block} ${layout(source)}, target ${target.block} ${layout(target)})`;
  if (source.digests.length !== target.digests.length) return 'guest RAM digests of different lengths';
  const differing: number[] = [];
  for (let k = 0; k * DIGEST_BYTES < source.digests.length; k++) {
    const a = source.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
    const b = target.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
    if (Buffer.compare(a, b) !== 0) differing.push(k);
  }
  if (differing.length === 0) return undefined;
  const where = differing
    .slice(0, 4)
    .map((k) => `${source.block}+0x${chunkOffset(source, k).toString(16)}`)
    .join(', ');
  const more = differing.length > 4 ? ` and ${differing.length - 4} more` : '';
  return `guest memory differs from the source's in ${differing.length} MiB chunk(s) (${where}${more})`;
}

function chunkOffset(m: MemoryDigests, k: number): number {
  for (const [offset, length] of m.ranges) {
    const n = Math.ceil(length / CHECK_CHUNK_BYTES);
    if (k < n) return offset + k * CHECK_CHUNK_BYTES;
    k -= n;
  }
  return -1;
}

/** On the wire: u32 range count, then f64 offset and length per range, the block name, the digests. */
export function encodeMemoryDigests(m: MemoryDigests): Uint8Array {
  const name = Buffer.from(m.block, 'utf8');
  const out = Buffer.alloc(4 + m.ranges.length * 16 + 2 + name.length + m.digests.length);
  let at = out.writeUInt32LE(m.ranges.length, 0);
  for (const [offset, length] of m.ranges) {
    at = out.writeDoubleLE(offset, at);
    at = out.writeDoubleLE(length, at);
  }
  at = out.writeUInt16LE(name.length, at);
  at += name.copy(out, at);
  out.set(m.digests, at);
  return out;
}

/** The digests, or undefined when the bytes are not a well-formed encoding. */
export function decodeMemoryDigests(bytes: Uint8Array): MemoryDigests | undefined {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < 6) return undefined;
  const count = b.readUInt32LE(0);
  if (count > 4096 || b.length < 4 + count * 16 + 2) return undefined;
  const ranges: [number, number][] = [];
  let chunks = 0;
  let at = 4;
  for (let i = 0; i < count; i++, at += 16) {
    const offset = b.readDoubleLE(at);
    const length = b.readDoubleLE(at + 8);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0)
      return undefined;
    ranges.push([offset, length]);
    chunks += Math.ceil(length / CHECK_CHUNK_BYTES);
  }
  const nameLength = b.readUInt16LE(at);
  at += 2;
  if (b.length !== at + nameLength + chunks * DIGEST_BYTES) return undefined;
  const block = b.toString('utf8', at, at + nameLength);
  return { block, ranges, digests: new Uint8Array(b.subarray(at + nameLength)) };
}
