import { DIGEST_BYTES, PAGE_SIZE, ZERO_PAGE_ID, type VmPages } from './page.js';
import { decodePage, encodePage, PageEncoding } from './page-codec.js';
import { native } from '../native/native.js';

/**
 * Unique pages travel in batches: transport objects of records [digest | encoded page], so a target
 * can store each page under its digest, and check it against the digest, as it arrives.
 */
/** Digest, encoding byte, payload length. */
export const RECORD_HEADER_BYTES = DIGEST_BYTES + 3;

/** Where each unique page can be read at the source: the first VM and page that hold it. */
export interface PageLocations {
  readonly vm: Int32Array;
  readonly page: Uint32Array;
}

/** The first VM (taken in `order`, by default as listed) and page holding each unique page. */
export function firstLocations(
  vms: readonly VmPages[],
  digestCount: number,
  order: readonly number[] = vms.map((_, v) => v),
): PageLocations {
  const vm = new Int32Array(digestCount + 1).fill(-1);
  const page = new Uint32Array(digestCount + 1);
  for (const index of order)
    vms[index]!.pages.forEach((id, p) => {
      if (id !== ZERO_PAGE_ID && vm[id] === -1) {
        vm[id] = index;
        page[id] = p;
      }
    });
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

/** Pages of a batch by how they travel. */
export interface BatchCounts {
  raw: number;
  uniform: number;
  compressed: number;
}

/**
 * Encodes pages into a batch: per page a record [digest (16) | encoding (1) | length (u16 LE) | payload],
 * each page encoded per its class (page-codec.ts), compressed only when `compress` is on.
 * `digests` holds 16 bytes per page and `pages` 4096 bytes per page, in the same order.
 */
export function encodeRecords(
  digests: Uint8Array,
  pages: Uint8Array,
  compress: boolean,
  counts?: BatchCounts,
): Uint8Array {
  const n = digests.length / DIGEST_BYTES;
  const addon = native;
  // The addon writes every record in one call (native/page-records.c): the binding's LZ4 costs a call
  // and a fresh buffer per page. Its blocks decode with the same decoder as the binding's.
  if (typeof addon?.encodePageRecords === 'function' && pages.length === n * PAGE_SIZE) {
    const out = new Uint8Array(n * (RECORD_HEADER_BYTES + PAGE_SIZE));
    const tally = new Int32Array(3);
    const length = addon.encodePageRecords(digests, pages, compress, out, tally);
    if (counts) {
      counts.raw += tally[0]!;
      counts.uniform += tally[1]!;
      counts.compressed += tally[2]!;
    }
    return out.slice(0, length);
  }
  return encodeRecordsOneByOne(digests, pages, compress, counts);
}

/** encodeRecords a page at a time through page-codec.ts: where the addon is not built. */
export function encodeRecordsOneByOne(
  digests: Uint8Array,
  pages: Uint8Array,
  compress: boolean,
  counts?: BatchCounts,
): Uint8Array {
  const n = digests.length / DIGEST_BYTES;
  const parts: { encoding: PageEncoding; payload: Uint8Array }[] = [];
  let size = 0;
  for (let i = 0; i < n; i++) {
    const encoded = encodePage(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), compress);
    parts.push(encoded);
    size += RECORD_HEADER_BYTES + encoded.payload.length;
    if (counts) {
      if (encoded.encoding === PageEncoding.Raw) counts.raw++;
      else if (encoded.encoding === PageEncoding.Uniform) counts.uniform++;
      else counts.compressed++;
    }
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let offset = 0;
  parts.forEach(({ encoding, payload }, i) => {
    out.set(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), offset);
    out[offset + DIGEST_BYTES] = encoding;
    view.setUint16(offset + DIGEST_BYTES + 1, payload.length, true);
    out.set(payload, offset + RECORD_HEADER_BYTES);
    offset += RECORD_HEADER_BYTES + payload.length;
  });
  return out;
}

/** Builds a batch object from digest ids, reading each page through `pageOf`. */
export function encodeBatch(
  ids: Uint32Array,
  digestOf: (id: number) => Uint8Array,
  pageOf: (id: number) => Uint8Array,
  compress = false,
  counts?: BatchCounts,
): Uint8Array {
  const digests = new Uint8Array(ids.length * DIGEST_BYTES);
  const pages = new Uint8Array(ids.length * PAGE_SIZE);
  ids.forEach((id, i) => {
    digests.set(digestOf(id), i * DIGEST_BYTES);
    pages.set(pageOf(id), i * PAGE_SIZE);
  });
  return encodeRecords(digests, pages, compress, counts);
}

/**
 * The records of a batch, in order. A record whose payload does not decode to a page yields
 * `page: undefined` (counted by the caller); a truncated record ends the batch. Never throws: batches
 * come off the network.
 */
export function* decodeBatch(
  bytes: Uint8Array,
): Generator<{ digest: Uint8Array; page: Uint8Array | undefined }> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let offset = 0; offset + RECORD_HEADER_BYTES <= bytes.length;) {
    const length = view.getUint16(offset + DIGEST_BYTES + 1, true);
    const end = offset + RECORD_HEADER_BYTES + length;
    if (end > bytes.length) return;
    yield {
      digest: bytes.subarray(offset, offset + DIGEST_BYTES),
      page: decodePage(bytes[offset + DIGEST_BYTES]!, bytes.subarray(offset + RECORD_HEADER_BYTES, end)),
    };
    offset = end;
  }
}

/** Pages decoded from a batch, side by side, and how many of its records were not pages. */
export interface DecodedRecords {
  /** 16 bytes per page, `count` of them (the arrays may have room for more). */
  readonly digests: Uint8Array;
  /** 4096 bytes per page, in the same order. */
  readonly pages: Uint8Array;
  readonly count: number;
  /** Records whose payload did not decode to a page. */
  readonly rejected: number;
}

/**
 * Arrays that decodeRecords decodes into, reused from batch to batch by a receiver that is done with
 * one batch's pages before it decodes the next: memory faulted in once, not once per batch.
 */
export class DecodeScratch {
  digests = new Uint8Array(0);
  pages = new Uint8Array(0);

  /** Room for `records` records (growing only). */
  fit(records: number): this {
    if (this.pages.length < records * PAGE_SIZE) {
      this.digests = new Uint8Array(records * DIGEST_BYTES);
      this.pages = new Uint8Array(records * PAGE_SIZE);
    }
    return this;
  }
}

/**
 * decodeBatch's pages in two arrays instead of an object per record: by one call into the addon where
 * it is built (native/page-records.c), else through decodeBatch. Into `scratch` when given (the
 * result is then valid until its next use). Never throws: batches come off the network.
 */
export function decodeRecords(bytes: Uint8Array, scratch?: DecodeScratch): DecodedRecords {
  const records = countRecords(bytes);
  const { digests, pages } = scratch
    ? scratch.fit(records)
    : { digests: new Uint8Array(records * DIGEST_BYTES), pages: new Uint8Array(records * PAGE_SIZE) };
  const addon = native;
  if (typeof addon?.decodePageRecords === 'function') {
    const tally = new Int32Array(2);
    addon.decodePageRecords(bytes, digests, pages, tally);
    return { digests, pages, count: tally[0]!, rejected: tally[1]! };
  }
  return decodeRecordsOneByOne(bytes);
}

/** decodeRecords through decodeBatch: where the addon is not built. */
export function decodeRecordsOneByOne(bytes: Uint8Array): DecodedRecords {
  const records = countRecords(bytes);
  const digests = new Uint8Array(records * DIGEST_BYTES);
  const pages = new Uint8Array(records * PAGE_SIZE);
  let count = 0;
  let rejected = 0;
  for (const record of decodeBatch(bytes)) {
    if (!record.page) {
      rejected++;
      continue;
    }
    digests.set(record.digest, count * DIGEST_BYTES);
    pages.set(record.page, count * PAGE_SIZE);
    count++;
  }
  return { digests, pages, count, rejected };
}

/** Records in a batch up to its first truncated one (what decodeBatch yields). */
function countRecords(bytes: Uint8Array): number {
  let records = 0;
  for (let offset = 0; offset + RECORD_HEADER_BYTES <= bytes.length; records++) {
    const length = bytes[offset + DIGEST_BYTES + 1]! | (bytes[offset + DIGEST_BYTES + 2]! << 8);
    offset += RECORD_HEADER_BYTES + length;
    if (offset > bytes.length) break;
  }
  return records;
}

/** A batch cut into consecutive batches of at most `records` records (views, no copy). */
export function* sliceBatch(bytes: Uint8Array, records: number): Generator<Uint8Array> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let start = 0;
  let count = 0;
  let offset = 0;
  while (offset + RECORD_HEADER_BYTES <= bytes.length) {
    const end = offset + RECORD_HEADER_BYTES + view.getUint16(offset + DIGEST_BYTES + 1, true);
    if (end > bytes.length) break;
    offset = end;
    if (++count === records) {
      yield bytes.subarray(start, offset);
      start = offset;
      count = 0;
    }
  }
  // The rest, a truncated record included (decodeBatch then stops at it).
  if (start < bytes.length) yield bytes.subarray(start);
}
