import { DigestTable } from '../memory/digest-table.js';
import { DIGEST_BYTES } from '../memory/page.js';

/**
 * The exact answer to an announcement's "may hold". An announcement is a Bloom filter or a list of
 * digest prefixes, so now and then it says a page is held that is not. The image path tolerates that
 * (a target names the pages it lacks, and they are sent), but a running VM's stream refers to held
 * pages by digest: one false positive among the hundreds of thousands of pages a stream carries, and
 * the target cannot put the guest back, so the VM stays at its source. Before the streams start, the
 * coordinator therefore asks each target which of the announced pages it means to refer to it holds,
 * and refers to those only.
 */

/** The agent's answer: bit i (bit i % 8 of byte i / 8) set when the i-th digest of `digests` is held. */
export function heldBitmap(digests: Uint8Array, holds: (digest: Uint8Array) => boolean): Uint8Array {
  const count = Math.floor(digests.length / DIGEST_BYTES);
  const bits = new Uint8Array(Math.ceil(count / 8));
  for (let i = 0; i < count; i++)
    if (holds(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES))) bits[i >> 3]! |= 1 << (i & 7);
  return bits;
}

/**
 * Adds the digests an agent confirmed to `into` (a new table when not given) and returns it. A bitmap
 * of the wrong length is an answer to another question: it confirms nothing.
 */
export function confirmedDigests(digests: Uint8Array, bitmap: Uint8Array, into?: DigestTable): DigestTable {
  const count = Math.floor(digests.length / DIGEST_BYTES);
  const table = into ?? new DigestTable(Math.max(16, count));
  if (bitmap.length !== Math.ceil(count / 8)) return table;
  for (let i = 0; i < count; i++)
    if ((bitmap[i >> 3]! >> (i & 7)) & 1) table.intern(digests, i * DIGEST_BYTES);
  return table;
}
