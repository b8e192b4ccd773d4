import { native } from '../native/native.js';

/**
 * Memory for the objects a receiver rebuilds. Every byte of an object is written before it is handed
 * over (its source symbols as they land, or recovered ones), so memory a consumer gives back serves
 * the next object as it is. Fresh memory is what it saves: a page a process never touched costs a
 * fault and the kernel's zeroing, and memory freed a while ago comes back cold on these machines (the
 * host reclaims it: 1.8-2 s per GiB to touch again, against 0.05 s warm), so a receiver of a gigabyte
 * that took fresh memory per object spent more on that than on decrypting it.
 */
export class ObjectMemory {
  private readonly free: ArrayBuffer[] = [];
  private freeBytes = 0;
  /** Objects served from given-back memory so far. */
  reused = 0;

  /** `keepBytes`: how much given-back memory is kept for reuse at most. */
  constructor(private readonly keepBytes = 64 << 20) {}

  /** Memory for an object of `length` bytes: the smallest given-back buffer that holds it, else new. */
  take(length: number): Uint8Array {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = this.free[i]!.byteLength;
      if (size >= length && (best < 0 || size < this.free[best]!.byteLength)) best = i;
    }
    if (best < 0) return freshObjectMemory(Math.ceil(length / ROUND_BYTES) * ROUND_BYTES).subarray(0, length);
    const [buffer] = this.free.splice(best, 1);
    this.freeBytes -= buffer!.byteLength;
    this.reused++;
    return new Uint8Array(buffer!, 0, length);
  }

  /** Gives back memory `take` returned, once nothing reads it any more. */
  give(bytes: Uint8Array): void {
    const { buffer } = bytes;
    if (!(buffer instanceof ArrayBuffer) || bytes.byteOffset !== 0) return;
    if (this.free.includes(buffer) || this.freeBytes + buffer.byteLength > this.keepBytes) return;
    this.free.push(buffer);
    this.freeBytes += buffer.byteLength;
  }
}

/** Objects' memory is made in whole MiB, so an object a little larger than the last still fits. */
const ROUND_BYTES = 1 << 20;

/**
 * Objects from 1 to 64 MiB get their memory populated at once; larger ones fault in as they fill, so
 * the event loop never stalls long on one allocation.
 */
const POPULATE_MIN_BYTES = 2 ** 20;
const POPULATE_MAX_BYTES = 64 * 2 ** 20;

/**
 * New memory for a received object: every byte of it is written once, so its pages are backed in one
 * call through the addon (MADV_POPULATE_WRITE) instead of a page fault per 4 KiB as symbols land
 * (about a third of that cost here).
 */
export function freshObjectMemory(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  if (length >= POPULATE_MIN_BYTES && length <= POPULATE_MAX_BYTES && typeof native?.populate === 'function')
    native.populate(bytes);
  return bytes;
}
