/**
 * A VM's manifest: for every guest page, either "zero" or the index of its content in the job's list of
 * unique pages. Sent to the target that rebuilds the VM, so it must be small: runs of zero pages and
 * runs of consecutive indices (pages sent in the VM's own order) take a few bytes each.
 *
 * Encoding, a sequence of runs, each a tag byte then unsigned LEB128 varints:
 *   0x00 n          n zero pages
 *   0x01 n start    n pages with indices start, start+1, ..., start+n-1
 *   0x02 n d1..dn   n pages with explicit indices, each a zigzag delta from the previous index
 * The decoder checks every count against the page total it was told, before allocating anything.
 */
export const ZERO_ENTRY = -1;

const TAG_ZERO = 0;
const TAG_SEQUENCE = 1;
const TAG_LIST = 2;

export class ManifestError extends Error {}

/** Encodes page entries (an index >= 0, or ZERO_ENTRY). */
export function encodeManifest(entries: Int32Array): Uint8Array {
  const out = new ByteSink();
  let previous = 0;
  let i = 0;
  while (i < entries.length) {
    const start = i;
    if (entries[i] === ZERO_ENTRY) {
      while (i < entries.length && entries[i] === ZERO_ENTRY) i++;
      out.byte(TAG_ZERO).varint(i - start);
      continue;
    }
    while (i + 1 < entries.length && entries[i + 1] === entries[i]! + 1) i++;
    i++;
    if (i - start >= 3) {
      out
        .byte(TAG_SEQUENCE)
        .varint(i - start)
        .varint(entries[start]!);
      previous = entries[i - 1]!;
      continue;
    }
    // A short stretch: gather non-zero pages until a zero page or a long sequence begins.
    i = start;
    const list: number[] = [];
    while (i < entries.length && entries[i] !== ZERO_ENTRY && !sequenceAt(entries, i))
      list.push(entries[i++]!);
    if (list.length === 0) list.push(entries[i++]!);
    out.byte(TAG_LIST).varint(list.length);
    for (const index of list) {
      out.varint(zigzag(index - previous));
      previous = index;
    }
  }
  return out.bytes();
}

/** Decodes a manifest of exactly `pages` entries whose indices are below `uniquePages`. */
export function decodeManifest(bytes: Uint8Array, pages: number, uniquePages: number): Int32Array {
  const entries = new Int32Array(pages);
  const source = new ByteSource(bytes);
  let filled = 0;
  let previous = 0;
  const room = (n: number) => {
    if (n < 1 || n > pages - filled) throw new ManifestError(`run of ${n} pages overflows ${pages} pages`);
  };
  const checkIndex = (index: number) => {
    if (index < 0 || index >= uniquePages) throw new ManifestError(`page index ${index} out of range`);
  };
  while (!source.done) {
    const tag = source.byte();
    const n = source.varint();
    room(n);
    if (tag === TAG_ZERO) {
      entries.fill(ZERO_ENTRY, filled, filled + n);
    } else if (tag === TAG_SEQUENCE) {
      const start = source.varint();
      checkIndex(start);
      checkIndex(start + n - 1);
      for (let k = 0; k < n; k++) entries[filled + k] = start + k;
      previous = start + n - 1;
    } else if (tag === TAG_LIST) {
      for (let k = 0; k < n; k++) {
        previous += unzigzag(source.varint());
        checkIndex(previous);
        entries[filled + k] = previous;
      }
    } else {
      throw new ManifestError(`unknown run tag ${tag}`);
    }
    filled += n;
  }
  if (filled !== pages) throw new ManifestError(`manifest covers ${filled} of ${pages} pages`);
  return entries;
}

function sequenceAt(entries: Int32Array, i: number): boolean {
  return (
    i + 2 < entries.length &&
    entries[i] !== ZERO_ENTRY &&
    entries[i + 1] === entries[i]! + 1 &&
    entries[i + 2] === entries[i]! + 2
  );
}

function zigzag(n: number): number {
  return n >= 0 ? n * 2 : -n * 2 - 1;
}

function unzigzag(n: number): number {
  return n % 2 === 0 ? n / 2 : -(n + 1) / 2;
}

class ByteSink {
  private buffer = new Uint8Array(256);
  private length = 0;

  byte(value: number): this {
    if (this.length === this.buffer.length) {
      const grown = new Uint8Array(this.buffer.length * 2);
      grown.set(this.buffer);
      this.buffer = grown;
    }
    this.buffer[this.length++] = value;
    return this;
  }

  varint(value: number): this {
    let v = value;
    while (v >= 0x80) {
      this.byte((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    return this.byte(v);
  }

  bytes(): Uint8Array {
    return this.buffer.slice(0, this.length);
  }
}

class ByteSource {
  private offset = 0;

  constructor(private readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.offset >= this.bytes.length;
  }

  byte(): number {
    if (this.offset >= this.bytes.length) throw new ManifestError('manifest truncated');
    return this.bytes[this.offset++]!;
  }

  /** An unsigned varint of at most 5 bytes (values below 2^35, far above any page count). */
  varint(): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 5; i++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
      scale *= 0x80;
    }
    throw new ManifestError('varint too long');
  }
}
