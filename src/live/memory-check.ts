import { randomBytes } from 'node:crypto';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { native } from '../native/native.js';
import type { GuestRam } from '../qemu/guest-ram.js';

/**
 * The memory check before a migrated VM resumes: the target's guest RAM must equal the source's as it
 * was when the source stopped. The stream digest only proves that the target received what QEMU sent;
 * pages QEMU's dirty tracking missed (seen with multi-threaded TCG under load) never enter the stream,
 * so both ends read the RAM itself, after the source stopped and after the target loaded, and compare
 * digests of every 1 MiB of the ranges the guest sees. Any difference is repaired or rolls the VM back.
 *
 * The digest is seeded per migration (MEMORY_SEED_BYTES, chosen by the coordinator) and fast rather
 * than cryptographic: eight 32-bit lanes of xxHash32's round, one changed word always changes it, and
 * it runs at memory speed (native/chunk-digest.c, about 15 GB/s with AVX2 against SHA-256's 1.8), which
 * is what the guest's downtime pays. It guards against pages lost by accident; a guest that forged a
 * collision would only corrupt itself. This file holds the same function for builds without the addon.
 */
export const CHECK_CHUNK_BYTES = 1 << 20;
export const MEMORY_SEED_BYTES = 32;
const DIGEST_BYTES = 32;
/** Chunks per read-and-digest call in the thread pool: an abort is seen between calls. */
const CHUNKS_PER_CALL = 64;
/** Calls in flight at once: libuv's pool has four threads by default. */
const PARALLEL_CALLS = 4;

export interface MemoryDigests {
  /** The RAM block's name, for messages. */
  readonly block: string;
  /** [offset, length] of each range read, in block order. */
  readonly ranges: readonly (readonly [number, number])[];
  /** The digest of each chunk of each range in order, 32 bytes each. */
  readonly digests: Uint8Array;
}

/** A fresh seed for one migration's memory check. */
export function newMemorySeed(): Uint8Array {
  return new Uint8Array(randomBytes(MEMORY_SEED_BYTES));
}

/**
 * Digests of the guest's RAM in 1 MiB chunks: read and digested in the thread pool where the RAM is a
 * file the addon can pread, else read here with the event loop let run between chunks.
 */
export async function digestGuestRam(
  ram: GuestRam,
  seed: Uint8Array,
  signal?: AbortSignal,
): Promise<MemoryDigests> {
  const chunks = ram.map.ranges.flatMap((range) =>
    Array.from({ length: Math.ceil(range.length / CHECK_CHUNK_BYTES) }, (_, k) => {
      const at = k * CHECK_CHUNK_BYTES;
      return [range.offset + at, Math.min(CHECK_CHUNK_BYTES, range.length - at)] as const;
    }),
  );
  const digests = new Uint8Array(chunks.length * DIGEST_BYTES);
  const file = ram.file;
  if (native && file) {
    const addon = native;
    let next = 0;
    // Calls run side by side in the pool: on a loaded host, more runnable threads get the guest's
    // downtime a larger share of the cores (4 x 64 MiB for a 256 MiB guest).
    const worker = async () => {
      while (next < chunks.length) {
        signal?.throwIfAborted();
        const first = next;
        next += CHUNKS_PER_CALL;
        const batch = chunks.slice(first, first + CHUNKS_PER_CALL);
        const positions = new Float64Array(
          batch.flatMap(([offset, length]) => [file.position + offset, length]),
        );
        digests.set(await addon.digestFileChunks(file.fd, positions, seed, file.pid), first * DIGEST_BYTES);
      }
    };
    await Promise.all(Array.from({ length: PARALLEL_CALLS }, worker));
  } else {
    const buffer = new Uint8Array(CHECK_CHUNK_BYTES);
    for (const [k, [offset, length]] of chunks.entries()) {
      signal?.throwIfAborted();
      await ram.read(buffer, offset, length);
      digests.set(digestChunk(buffer.subarray(0, length), seed), k * DIGEST_BYTES);
      if (k % 16 === 15) await yieldToEventLoop();
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

/** A chunk's digest under `seed`, as the digest list holds it (the addon's where it is built). */
export function digestChunk(bytes: Uint8Array, seed: Uint8Array): Uint8Array {
  const out = new Uint8Array(DIGEST_BYTES);
  if (native) native.chunkDigest(bytes, seed, out);
  else laneDigest(bytes, seed, out);
  return out;
}

const P1 = 2654435761;
const P2 = 2246822519;
const P3 = 3266489917;
const LANES = 8;

/** native/lane-digest.h's lane_digest, word for word: eight xxHash32 lanes, avalanched, little-endian. */
export function laneDigest(bytes: Uint8Array, seed: Uint8Array, out: Uint8Array): void {
  if (seed.length !== MEMORY_SEED_BYTES) throw new RangeError(`a memory seed is ${MEMORY_SEED_BYTES} bytes`);
  const seeds = new DataView(seed.buffer, seed.byteOffset, seed.byteLength);
  const acc = new Int32Array(LANES);
  for (let i = 0; i < LANES; i++) acc[i] = seeds.getInt32(4 * i, true);
  const round = (view: DataView, at: number) => {
    for (let i = 0; i < LANES; i++) {
      const a = (acc[i]! + Math.imul(view.getInt32(at + 4 * i, true), P2)) | 0;
      acc[i] = Math.imul((a << 13) | (a >>> 19), P1);
    }
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const whole = bytes.length - (bytes.length % (LANES * 4));
  for (let at = 0; at < whole; at += LANES * 4) round(view, at);
  if (whole < bytes.length) {
    const tail = new Uint8Array(LANES * 4);
    tail.set(bytes.subarray(whole));
    round(new DataView(tail.buffer), 0);
  }
  const digest = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let i = 0; i < LANES; i++) {
    let h = acc[i]! ^ bytes.length;
    h ^= h >>> 15;
    h = Math.imul(h, P2);
    h ^= h >>> 13;
    h = Math.imul(h, P3);
    h ^= h >>> 16;
    digest.setInt32(4 * i, h, true);
  }
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
