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
      digests.set(digestChunk(buffer.subarray(0, length)), k++ * DIGEST_BYTES);
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
  const differing = differingChunks(source, target);
  if (differing.length === 0) return undefined;
  return `guest memory differs from the source's in ${describeChunks(source, differing)}`;
}

/** "N MiB chunk(s) (block+0x..., ... and M more)". */
export function describeChunks(m: MemoryDigests, chunks: readonly number[]): string {
  const where = chunks
    .slice(0, 4)
    .map((k) => `${m.block}+0x${chunkRange(m, k)[0].toString(16)}`)
    .join(', ');
  const more = chunks.length > 4 ? ` and ${chunks.length - 4} more` : '';
  return `${chunks.length} MiB chunk(s) (${where}${more})`;
}

/** The chunks (indices into the digest list) whose digests differ; both of one layout. */
export function differingChunks(source: MemoryDigests, target: MemoryDigests): number[] {
  const differing: number[] = [];
  for (let k = 0; k * DIGEST_BYTES < source.digests.length; k++)
    if (Buffer.compare(chunkDigest(source, k), chunkDigest(target, k)) !== 0) differing.push(k);
  return differing;
}

/** [offset, length] of chunk `k` in the RAM block. */
export function chunkRange(m: MemoryDigests, k: number): [number, number] {
  for (const [offset, length] of m.ranges) {
    const n = Math.ceil(length / CHECK_CHUNK_BYTES);
    if (k < n)
      return [offset + k * CHECK_CHUNK_BYTES, Math.min(CHECK_CHUNK_BYTES, length - k * CHECK_CHUNK_BYTES)];
    k -= n;
  }
  throw new RangeError(`chunk ${k} is past the RAM's ranges`);
}

/** The digest of chunk `k`. */
export function chunkDigest(m: MemoryDigests, k: number): Uint8Array {
  return m.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
}

/** SHA-256 of a chunk's bytes, as the digest list holds it. */
export function digestChunk(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest());
}

/**
 * Chunks of guest RAM on the wire (a repair): for each, its block offset (f64 LE) and length (u32 LE),
 * then its bytes. The agent writes a chunk only where the layout has that very chunk.
 */
export function encodeChunks(
  chunks: readonly { readonly offset: number; readonly bytes: Uint8Array }[],
): Uint8Array {
  const out = Buffer.alloc(chunks.reduce((n, c) => n + 12 + c.bytes.length, 0));
  let at = 0;
  for (const { offset, bytes } of chunks) {
    at = out.writeDoubleLE(offset, at);
    at = out.writeUInt32LE(bytes.length, at);
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}

/** The chunks, or undefined when the bytes are not a well-formed encoding. */
export function decodeChunks(bytes: Uint8Array): { offset: number; bytes: Uint8Array }[] | undefined {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks: { offset: number; bytes: Uint8Array }[] = [];
  for (let at = 0; at < b.length;) {
    if (at + 12 > b.length) return undefined;
    const offset = b.readDoubleLE(at);
    const length = b.readUInt32LE(at + 8);
    at += 12;
    if (!Number.isSafeInteger(offset) || offset < 0 || length === 0 || length > CHECK_CHUNK_BYTES)
      return undefined;
    if (at + length > b.length) return undefined;
    chunks.push({ offset, bytes: b.subarray(at, at + length) });
    at += length;
  }
  return chunks;
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
