import { DigestTable } from '../memory/digest-table.js';
import { DIGEST_BYTES } from '../memory/page.js';

/** What an agent says it holds, as the coordinator reads it. */
export interface HeldDigests {
  mayHold(digest: Uint8Array): boolean;
  readonly count: number;
}

/** An agent's announcement of the digests it holds. */
export function announceDigests(digests: Iterable<Uint8Array>, count: number): Uint8Array {
  const out = new Uint8Array(count * DIGEST_BYTES);
  let i = 0;
  for (const digest of digests) out.set(digest, DIGEST_BYTES * i++);
  return out;
}

/** Reads an announcement; undefined when it is malformed. */
export function readAnnouncement(bytes: Uint8Array): HeldDigests | undefined {
  if (bytes.length % DIGEST_BYTES !== 0) return undefined;
  const count = bytes.length / DIGEST_BYTES;
  const table = new DigestTable(Math.max(16, count));
  for (let i = 0; i < count; i++) table.intern(bytes, i * DIGEST_BYTES);
  return { count, mayHold: (digest) => table.lookup(digest) > 0 };
}
