import { DIGEST_BYTES, PAGE_SIZE, ZERO_PAGE_ID, type VmPages } from '../memory/page.js';

/**
 * Unique pages travel in batches: transport objects of records [16-byte digest | 4096-byte page], so
 * a target can store each page under its digest, and check it against the digest, as it arrives.
 */
export const RECORD_BYTES = DIGEST_BYTES + PAGE_SIZE;

/** Where each unique page can be read at the source: the first VM and page that hold it. */
export interface PageLocations {
  readonly vm: Int32Array;
  readonly page: Uint32Array;
}

export function firstLocations(vms: readonly VmPages[], digestCount: number): PageLocations {
  const vm = new Int32Array(digestCount + 1).fill(-1);
  const page = new Uint32Array(digestCount + 1);
  vms.forEach((v, index) =>
    v.pages.forEach((id, p) => {
      if (id !== ZERO_PAGE_ID && vm[id] === -1) {
        vm[id] = index;
        page[id] = p;
      }
    }),
  );
  return { vm, page };
}

/** The digest ids a group carries, cut into batches of at most `batchPages`, in id order. */
export function groupBatches(
  groupOfDigest: Uint16Array,
  holders: Uint32Array,
  group: number,
  batchPages: number,
): Uint32Array[] {
  const ids: number[] = [];
  for (let id = 1; id < groupOfDigest.length; id++)
    if (holders[id]! > 0 && groupOfDigest[id] === group) ids.push(id);
  const batches: Uint32Array[] = [];
  for (let i = 0; i < ids.length; i += batchPages)
    batches.push(Uint32Array.from(ids.slice(i, i + batchPages)));
  return batches;
}

/** Builds a batch object from digest ids, reading each page through `pageOf`. */
export function encodeBatch(
  ids: Uint32Array,
  digestOf: (id: number) => Uint8Array,
  pageOf: (id: number) => Uint8Array,
): Uint8Array {
  const out = new Uint8Array(ids.length * RECORD_BYTES);
  ids.forEach((id, i) => {
    out.set(digestOf(id), i * RECORD_BYTES);
    out.set(pageOf(id), i * RECORD_BYTES + DIGEST_BYTES);
  });
  return out;
}

/** The records of a batch; a batch whose length is not whole records yields nothing (it is malformed). */
export function* decodeBatch(bytes: Uint8Array): Generator<{ digest: Uint8Array; page: Uint8Array }> {
  if (bytes.length % RECORD_BYTES !== 0) return;
  for (let offset = 0; offset < bytes.length; offset += RECORD_BYTES) {
    yield {
      digest: bytes.subarray(offset, offset + DIGEST_BYTES),
      page: bytes.subarray(offset + DIGEST_BYTES, offset + RECORD_BYTES),
    };
  }
}
