import { VmscatterError } from '../errors.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import {
  compressPageInto,
  isUniformPage,
  MAX_COMPRESSED_BYTES,
  PageEncoding,
  UNIFORM_WORD_BYTES,
} from '../memory/page-codec.js';

/**
 * The page records of a live stream as they cross the control channel: a run of entries of one RAM
 * block packed into one byte array, so that a message of thousands of pages is one buffer to encode,
 * encrypt and decode, not thousands of objects. An entry is a type byte, the page number within the
 * block (u32 LE), then:
 *
 *   Zero     fill byte                     QEMU's zero record
 *   ZeroData -                             a page record whose 4096 bytes are all zero
 *   Ref      digest (16 bytes)             a page the target holds, or that this stream carried before
 *   Raw      digest, 4096 bytes            a page sent in full
 *   Packed   digest, encoding u8,          a page sent in full, encoded smaller (page-codec.ts)
 *            length u16 LE, payload
 *
 * A page sent in full travels with its keyed digest (the one the coordinator decided by), so the agent
 * need not hash it again: it serves the stream memory and the canonical stream digest there too, and
 * the memory check before resume proves the bytes.
 *
 * The type byte of a Raw or Packed entry may carry KEEP: both ends remember that page, so the stream
 * may refer to it later (StreamPageMemory in records.ts).
 */
export const enum EntryType {
  Zero = 0,
  ZeroData = 1,
  Ref = 2,
  Raw = 3,
  Packed = 4,
}

/** In a Raw or Packed entry's type byte: the page is one both ends remember (StreamPageMemory). */
export const KEEP = 0x80;

/**
 * How a stream's pages sent in full travel: as they are, LZ4-compressed each (Packed entries), or raw
 * within runs that zstd compresses whole (memory/batch-zstd.ts; the record says so, records.ts).
 */
export type FullPageCodec = 'none' | 'lz4' | 'zstd';

export class LiveBatchError extends VmscatterError {
  constructor(message: string) {
    super('VMS_PROTOCOL', `live stream batch: ${message}`);
  }
}

/** Appends entries to one growing buffer; `take()` hands the bytes over and starts afresh. */
export class EntryWriter {
  private buffer: Uint8Array;
  private view: DataView;
  private at = 0;
  /** Entries written since the last take. */
  count = 0;

  constructor(initialBytes = 64 << 10) {
    this.buffer = new Uint8Array(initialBytes);
    this.view = new DataView(this.buffer.buffer);
  }

  get length(): number {
    return this.at;
  }

  zero(page: number, fill: number): void {
    this.head(EntryType.Zero, page, 1);
    this.buffer[this.at++] = fill;
  }

  zeroData(page: number): void {
    this.head(EntryType.ZeroData, page, 0);
  }

  ref(page: number, digest: Uint8Array): void {
    this.head(EntryType.Ref, page, DIGEST_BYTES);
    this.buffer.set(digest.subarray(0, DIGEST_BYTES), this.at);
    this.at += DIGEST_BYTES;
  }

  /** The page at data[from..] as it is, with its digest; `keep`: both ends remember it. */
  raw(page: number, digest: Uint8Array, data: Uint8Array, from = 0, keep = false): void {
    this.head(EntryType.Raw, page, DIGEST_BYTES + PAGE_SIZE, keep);
    this.digest(digest);
    this.buffer.set(data.subarray(from, from + PAGE_SIZE), this.at);
    this.at += PAGE_SIZE;
  }

  /**
   * A page sent in full (the one at data[from..]), encoded as page-codec.ts's encodePage would: its
   * word when uniform, LZ4 (with `compress`) when that saves an eighth, else raw; compressed straight
   * into this buffer. Returns the encoding. `keep`: both ends remember the page, unless it is uniform
   * (its entry is smaller than a reference to it).
   */
  full(
    page: number,
    digest: Uint8Array,
    data: Uint8Array,
    compress: boolean,
    from = 0,
    keep = false,
  ): PageEncoding {
    if (isUniformPage(data, from)) {
      this.packed(page, digest, PageEncoding.Uniform, data.subarray(from, from + UNIFORM_WORD_BYTES));
      return PageEncoding.Uniform;
    }
    if (compress) {
      // Compressed where its entry's body will be; the head is written only once it paid.
      const body = 5 + DIGEST_BYTES + 3;
      this.room(body + MAX_COMPRESSED_BYTES);
      const length = compressPageInto(data, from, this.buffer, this.at + body);
      if (length > 0) {
        this.head(EntryType.Packed, page, DIGEST_BYTES + 3 + length, keep);
        this.digest(digest);
        this.buffer[this.at] = PageEncoding.Lz4;
        this.view.setUint16(this.at + 1, length, true);
        this.at += 3 + length;
        return PageEncoding.Lz4;
      }
    }
    this.raw(page, digest, data, from, keep);
    return PageEncoding.Raw;
  }

  packed(page: number, digest: Uint8Array, encoding: number, payload: Uint8Array, keep = false): void {
    this.head(EntryType.Packed, page, DIGEST_BYTES + 3 + payload.length, keep);
    this.digest(digest);
    this.buffer[this.at] = encoding;
    this.view.setUint16(this.at + 1, payload.length, true);
    this.buffer.set(payload, this.at + 3);
    this.at += 3 + payload.length;
  }

  /** A copy of the entries written (the buffer is reused), and a fresh start. */
  take(): Uint8Array {
    const bytes = this.buffer.slice(0, this.at);
    this.clear();
    return bytes;
  }

  /** The entries written, in place: valid until the next write or clear. */
  written(): Uint8Array {
    return this.buffer.subarray(0, this.at);
  }

  /** A fresh start, the buffer kept. */
  clear(): void {
    this.at = 0;
    this.count = 0;
  }

  private head(type: EntryType, page: number, bodyBytes: number, keep = false): void {
    this.room(5 + bodyBytes);
    this.buffer[this.at] = keep ? type | KEEP : type;
    this.view.setUint32(this.at + 1, page, true);
    this.at += 5;
    this.count++;
  }

  private digest(digest: Uint8Array): void {
    for (let i = 0; i < DIGEST_BYTES; i++) this.buffer[this.at + i] = digest[i]!;
    this.at += DIGEST_BYTES;
  }

  /** Grows the buffer, keeping what is written, to hold `bytes` more. */
  private room(bytes: number): void {
    const needed = this.at + bytes;
    if (needed <= this.buffer.length) return;
    const grown = new Uint8Array(Math.max(needed, this.buffer.length * 2));
    grown.set(this.buffer.subarray(0, this.at));
    this.buffer = grown;
    this.view = new DataView(grown.buffer);
  }
}

/** One entry as read; `body` aliases the batch. */
export interface Entry {
  readonly type: EntryType;
  readonly page: number;
  /** Zero: the fill byte; Packed: the encoding. */
  readonly value: number;
  /** Ref: the digest; Raw: the page; Packed: the payload; else empty. */
  readonly body: Uint8Array;
  /** Raw and Packed: the page's digest as the coordinator sent it; else empty. */
  readonly digest: Uint8Array;
  /** Raw and Packed: both ends remember the page (KEEP). */
  readonly keep: boolean;
}

const EMPTY = new Uint8Array(0);

/** Reads every entry of a batch; a truncated or unknown entry is a LiveBatchError. */
export function* readEntries(bytes: Uint8Array): Generator<Entry> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const need = (n: number) => {
    if (at + n > bytes.length) throw new LiveBatchError(`an entry is cut short at byte ${at}`);
  };
  while (at < bytes.length) {
    need(5);
    const keep = (bytes[at]! & KEEP) !== 0;
    const type = bytes[at]! & ~KEEP;
    const page = view.getUint32(at + 1, true);
    at += 5;
    if (keep && type !== EntryType.Raw && type !== EntryType.Packed)
      throw new LiveBatchError(`a kept entry of type ${type} at byte ${at - 5}`);
    switch (type) {
      case EntryType.Zero:
        need(1);
        yield { type, page, value: bytes[at++]!, body: EMPTY, digest: EMPTY, keep };
        break;
      case EntryType.ZeroData:
        yield { type, page, value: 0, body: EMPTY, digest: EMPTY, keep };
        break;
      case EntryType.Ref:
        need(DIGEST_BYTES);
        yield { type, page, value: 0, body: bytes.subarray(at, at + DIGEST_BYTES), digest: EMPTY, keep };
        at += DIGEST_BYTES;
        break;
      case EntryType.Raw: {
        need(DIGEST_BYTES + PAGE_SIZE);
        const digest = bytes.subarray(at, at + DIGEST_BYTES);
        at += DIGEST_BYTES;
        yield { type, page, value: 0, body: bytes.subarray(at, at + PAGE_SIZE), digest, keep };
        at += PAGE_SIZE;
        break;
      }
      case EntryType.Packed: {
        need(DIGEST_BYTES + 3);
        const digest = bytes.subarray(at, at + DIGEST_BYTES);
        at += DIGEST_BYTES;
        const encoding = bytes[at]!;
        const length = view.getUint16(at + 1, true);
        at += 3;
        if (length >= PAGE_SIZE) throw new LiveBatchError(`a packed page of ${length} bytes`);
        need(length);
        yield { type, page, value: encoding, body: bytes.subarray(at, at + length), digest, keep };
        at += length;
        break;
      }
      default:
        throw new LiveBatchError(`unknown entry type ${type} at byte ${at - 5}`);
    }
  }
}
