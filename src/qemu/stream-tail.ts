import { SectionType } from './stream-records.js';

/**
 * How a stream's end is recognised. Everything after the RAM END section is device state without
 * lengths, so the parser passes it on opaque and cannot parse its way to the end: a stream ends with EOF
 * (0x00) and the VM description (0x06, be32 length, JSON). Every place that could start a description
 * is followed as a candidate while its JSON stays well formed; the first candidate whose JSON closes
 * exactly at its declared length is the description, and the stream ends there. A byte after it is
 * trailing data (a stream followed by a copy of itself, say), refused as soon as it arrives: were the
 * last candidate taken instead, the description could point into the copy.
 *
 * The cost: device state that holds a well-formed description of its own, with the exact length before
 * it, ends the stream early. QEMU's own device state does not (checked on pc and q35); a guest that
 * plants one in a device buffer on purpose only fails its own migration.
 *
 * The scanner is apart from the parser because it keeps its own state across chunks (the last 6 bytes,
 * the candidates still open) and needs none of the parser's.
 */

/** Bounds on the scan; the parser's StreamLimits give them. */
export interface TailLimits {
  readonly maxDescriptionBytes: number;
}

/** Where trailing data starts, if it does. Offsets here and in TailDescription are stream offsets. */
export type TailScan =
  | { readonly kind: 'open' }
  | { readonly kind: 'trailing'; readonly at: number; readonly description: TailDescription };

export interface TailDescription {
  /** The EOF byte before the description. */
  readonly eof: number;
  /** The JSON text. */
  readonly offset: number;
  readonly length: number;
}

const HEADER_BYTES = 6; // 0x00, 0x06, be32 length; the JSON's '{' follows
const OPEN_BRACE = 0x7b;
const QUOTE = 0x22;
/** QEMU's description nests about 8 deep; a candidate deeper than this is not one. */
const MAX_JSON_DEPTH = 64;

export class TailScanner {
  /** Tail bytes scanned so far. */
  private seen = 0;
  /** The last HEADER_BYTES bytes scanned, for headers that span two chunks. */
  private keep: Uint8Array = new Uint8Array(0);
  /**
   * The candidates being followed: seldom more than one, as JSON holds no 0x00 and the byte that
   * starts a header breaks every candidate whose JSON has begun.
   */
  private candidates: Candidate[] = [];
  private found: TailDescription | undefined;
  /** The last header whose length exceeded maxDescriptionBytes, for the error at the end. */
  private oversized: { at: number; length: number } | undefined;
  private lastByte = -1;

  constructor(
    private readonly limits: TailLimits,
    /** The stream offset of the tail's first byte. */
    private readonly origin: number,
  ) {}

  /**
   * Follows `bytes` (the next tail bytes). Returns 'trailing' when they go on past the description,
   * with the offset of the first byte after it.
   */
  /** Whether the VM description was found: the stream is whole, and any byte more is refused. */
  get complete(): boolean {
    return this.found !== undefined;
  }

  scan(bytes: Uint8Array): TailScan {
    if (bytes.length === 0) return { kind: 'open' };
    if (this.found) return this.trailing(this.found);
    const base = this.seen;
    const chunkEnd = base + bytes.length;
    for (const header of this.headers(bytes, base)) {
      if (this.follow(bytes, base, header + HEADER_BYTES)) break;
      const candidate = this.newCandidate(header, bytes, base);
      if (candidate) this.candidates.push(candidate);
    }
    this.follow(bytes, base, chunkEnd);
    this.seen = chunkEnd;
    this.lastByte = bytes[bytes.length - 1]!;
    this.keep = Buffer.concat([this.keep, bytes.subarray(-HEADER_BYTES)])
      .subarray(-HEADER_BYTES)
      .slice();
    if (!this.found) return { kind: 'open' };
    const { offset, length } = this.found;
    return offset + length < this.origin + chunkEnd ? this.trailing(this.found) : { kind: 'open' };
  }

  /**
   * Where the VM description's JSON text is when the tail ends a stream, or why it does not: a string
   * that says what is missing.
   */
  finish(allowMissingDescription?: boolean): { description?: TailDescription } | string {
    if (this.seen === 0) return 'stream ended right after the RAM END section: no device state';
    if (this.found) return { description: this.found };
    if (allowMissingDescription && this.lastByte === SectionType.EOF) return {};
    const oversized = this.oversized
      ? ` (the last header, at byte ${this.origin + this.oversized.at}, declares ${this.oversized.length} ` +
        `bytes, over maxDescriptionBytes ${this.limits.maxDescriptionBytes})`
      : '';
    return (
      `stream ended inside the device state (${this.seen} bytes after the RAM END section): ` +
      `no EOF (0x00) and VM description (0x06, be32 length, JSON) end it${oversized}`
    );
  }

  private trailing(description: TailDescription): TailScan {
    return { kind: 'trailing', at: description.offset + description.length, description };
  }

  /**
   * Follows the candidates up to tail offset `limit`; true once the description is found: the first
   * to complete (the one that ends first, should two complete before `limit`).
   */
  private follow(bytes: Uint8Array, base: number, limit: number): boolean {
    if (this.found) return true;
    let first: Candidate | undefined;
    for (const candidate of this.candidates) {
      candidate.follow(bytes, base, limit);
      if (candidate.state === 'complete' && (!first || candidate.end < first.end)) first = candidate;
    }
    this.candidates = first ? [] : this.candidates.filter((candidate) => candidate.state === 'open');
    if (!first) return false;
    const json = first.start + HEADER_BYTES;
    this.found = { eof: this.origin + first.start, offset: this.origin + json, length: first.end - json };
    return true;
  }

  /**
   * Tail offsets of the headers (0x00, 0x06, be32 length, '{') whose '{' is in `bytes`: each header is
   * found once, in the chunk that completes it, the first few through the bytes kept from the last.
   */
  private *headers(bytes: Uint8Array, base: number): Generator<number> {
    const keep = this.keep;
    const at = (p: number) => (p < base ? keep[keep.length - (base - p)]! : bytes[p - base]!);
    const last = base + bytes.length - 1 - HEADER_BYTES; // the last header start whose '{' is here
    const isHeader = (p: number) =>
      at(p) === SectionType.EOF &&
      at(p + 1) === SectionType.VMDESCRIPTION &&
      at(p + HEADER_BYTES) === OPEN_BRACE;
    for (let p = base - keep.length; p < base && p <= last; p++) if (isHeader(p)) yield p;
    for (let p = base; p <= last; p++) {
      // Jump to the next 0x00: no header starts anywhere else.
      const zero = bytes.indexOf(SectionType.EOF, p - base);
      if (zero < 0 || base + zero > last) return;
      p = base + zero;
      if (isHeader(p)) yield p;
    }
  }

  /** A candidate for the header at `p`, unless its length is over the limit. */
  private newCandidate(p: number, bytes: Uint8Array, base: number): Candidate | undefined {
    const keep = this.keep;
    const at = (i: number) => (i < base ? keep[keep.length - (base - i)]! : bytes[i - base]!);
    const length = ((at(p + 2) << 24) | (at(p + 3) << 16) | (at(p + 4) << 8) | at(p + 5)) >>> 0;
    if (length <= this.limits.maxDescriptionBytes) return new Candidate(p, p + HEADER_BYTES + length);
    this.oversized = { at: p, length };
    return undefined;
  }
}

/**
 * A place that could start the VM description, followed byte by byte until its JSON breaks (it is not
 * the description) or closes: exactly at its declared end it is complete, anywhere else it is not.
 * Only the JSON's shape is checked (strings, nesting, the characters between tokens), enough to tell
 * QEMU's description from device bytes, and done in one pass with no copy of the text.
 */
class Candidate {
  state: 'open' | 'complete' | 'broken' = 'open';
  /** Tail offset of the next byte to check. */
  private next: number;
  /** The open brackets, innermost last. */
  private readonly nesting: number[] = [];
  private inString = false;
  private escaped = false;

  constructor(
    /** Tail offset of the EOF byte. */
    readonly start: number,
    /** Tail offset just after the JSON. */
    readonly end: number,
  ) {
    this.next = start + HEADER_BYTES;
  }

  /** Checks this candidate's bytes in `bytes` (at tail offset `base`) before tail offset `limit`. */
  follow(bytes: Uint8Array, base: number, limit: number): void {
    const stop = Math.min(limit, this.end);
    for (; this.state === 'open' && this.next < stop; this.next++) {
      this.state = this.step(bytes[this.next - base]!, this.next - this.start - HEADER_BYTES);
      if (this.state === 'complete' && this.next + 1 !== this.end) this.state = 'broken';
    }
    if (this.state === 'open' && this.next === this.end) this.state = 'broken';
  }

  /** One byte of the JSON text at `index`. */
  private step(byte: number, index: number): Candidate['state'] {
    // QEMU writes '{"page_size": ...': an empty object or a space after '{' is not a description.
    if (index === 1 && byte !== QUOTE) return 'broken';
    if (this.inString) return this.stringByte(byte);
    if (byte === QUOTE) {
      this.inString = true;
      return 'open';
    }
    if (byte === OPEN_BRACE || byte === 0x5b) {
      if (this.nesting.length >= MAX_JSON_DEPTH) return 'broken';
      this.nesting.push(byte + 2); // '}' is '{' + 2, ']' is '[' + 2
      return 'open';
    }
    if (byte === 0x7d || byte === 0x5d) {
      if (this.nesting.pop() !== byte) return 'broken';
      return this.nesting.length === 0 ? 'complete' : 'open';
    }
    return BETWEEN_TOKENS[byte] === 1 ? 'open' : 'broken';
  }

  private stringByte(byte: number): Candidate['state'] {
    if (this.escaped) this.escaped = false;
    else if (byte === 0x5c) this.escaped = true;
    else if (byte === QUOTE) this.inString = false;
    else if (byte < 0x20) return 'broken'; // JSON escapes control characters
    return 'open';
  }
}

/** Bytes allowed outside strings besides brackets and quotes: whitespace, ':', ',', numbers, literals. */
const BETWEEN_TOKENS = (() => {
  const table = new Uint8Array(256);
  for (const char of ' \t\r\n:,-+.0123456789eEtrufalsn') table[char.charCodeAt(0)] = 1;
  return table;
})();
