import { SectionType } from './stream-records.js';

/**
 * How a stream's end is recognised. Everything after the RAM END section is device state without
 * lengths, so the parser passes it on opaque and cannot parse its way to the end: a stream may end only
 * with EOF (0x00) and the VM description (0x06, be32 length, JSON), so every place that could start a
 * description is noted, and the description is the one whose length ends exactly where the stream ends.
 * The scanner is apart from the parser because it keeps its own state across chunks (the last 6 bytes,
 * the candidates still open) and needs none of the parser's.
 */

/** VM description candidates kept while reading the tail (the real one is the last one seen). */
const MAX_DESCRIPTION_CANDIDATES = 256;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

export class TailScanner {
  /** Tail bytes scanned so far. */
  private seen = 0;
  private keep: Uint8Array = new Uint8Array(0);
  private scanNext = 0;
  private candidates: { start: number; end: number }[] = [];
  private lastByte = -1;

  /**
   * Notes every place in the tail that could start the VM description: 0x00 (EOF), 0x06, be32 length,
   * '{'. The one whose length ends exactly at the end of the stream is the description.
   */
  scan(bytes: Uint8Array): void {
    const keep = this.keep;
    const base = this.seen - keep.length;
    const size = keep.length + bytes.length;
    const at = (i: number) => (i < keep.length ? keep[i]! : bytes[i - keep.length]!);
    let i = Math.max(0, this.scanNext - base);
    for (; i + 6 < size; i++) {
      if (i >= keep.length) {
        // Jump to the next 0x00: no candidate starts anywhere else.
        const zero = bytes.indexOf(0, i - keep.length);
        if (zero < 0) {
          i = size;
          break;
        }
        i = zero + keep.length;
        if (i + 6 >= size) break; // looked at again with the next chunk
      }
      if (at(i) !== 0 || at(i + 1) !== SectionType.VMDESCRIPTION || at(i + 6) !== OPEN_BRACE) continue;
      const length = ((at(i + 2) << 24) | (at(i + 3) << 16) | (at(i + 4) << 8) | at(i + 5)) >>> 0;
      this.candidates.push({ start: base + i, end: base + i + 6 + length });
      if (this.candidates.length > MAX_DESCRIPTION_CANDIDATES) this.candidates.shift();
    }
    this.scanNext = base + i;
    this.seen += bytes.length;
    this.candidates = this.candidates.filter((c) => c.end >= this.seen);
    this.keep =
      bytes.length >= 6 ? bytes.slice(bytes.length - 6) : Buffer.concat([keep, bytes]).subarray(-6).slice();
    if (bytes.length > 0) this.lastByte = bytes[bytes.length - 1]!;
  }

  /**
   * Where the VM description's JSON text is (offset within the tail) when the tail ends a stream, or
   * why it does not: a string that says what is missing.
   */
  finish(allowMissingDescription?: boolean): { description?: { offset: number; length: number } } | string {
    if (this.seen === 0) return 'stream ended right after the RAM END section: no device state';
    const found = this.candidates.find((c) => c.end === this.seen && this.lastByte === CLOSE_BRACE);
    if (found) return { description: { offset: found.start + 6, length: found.end - found.start - 6 } };
    if (allowMissingDescription && this.lastByte === SectionType.EOF) return {};
    return (
      `stream ended inside the device state (${this.seen} bytes after the RAM END section): ` +
      'no EOF (0x00) and VM description (0x06, be32 length, JSON) end it'
    );
  }
}
