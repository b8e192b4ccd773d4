/**
 * Big-endian cursors over byte arrays, for the wire codec. The writer is handed its exact size up front
 * (encoders compute it), so it never grows. The reader never checks bounds itself: decoders compare
 * `remaining` with what a field needs before reading it, so each failure gets its own reason; a missed
 * check still cannot read past the input, as DataView throws rather than returning garbage.
 */

const TWO_POW_32 = 2 ** 32;

/** Largest value of a 64-bit field that still reads back as a JavaScript number without rounding. */
const MAX_SAFE_HIGH_WORD = Math.floor(Number.MAX_SAFE_INTEGER / TWO_POW_32);

export class BinaryWriter {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private offset = 0;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }

  u8(value: number): this {
    this.view.setUint8(this.offset, value);
    this.offset += 1;
    return this;
  }

  u16(value: number): this {
    this.view.setUint16(this.offset, value);
    this.offset += 2;
    return this;
  }

  u32(value: number): this {
    this.view.setUint32(this.offset, value);
    this.offset += 4;
    return this;
  }

  /** A non-negative safe integer as 64 bits (high word first). */
  u64(value: number): this {
    this.view.setUint32(this.offset, Math.floor(value / TWO_POW_32));
    this.view.setUint32(this.offset + 4, value % TWO_POW_32);
    this.offset += 8;
    return this;
  }

  u64big(value: bigint): this {
    this.view.setBigUint64(this.offset, value);
    this.offset += 8;
    return this;
  }

  raw(bytes: Uint8Array): this {
    this.bytes.set(bytes, this.offset);
    this.offset += bytes.length;
    return this;
  }

  /** The encoding; throws if an encoder's size computation and its writes disagree (a bug, not input). */
  finish(): Uint8Array {
    if (this.offset !== this.bytes.length) {
      throw new Error(`BinaryWriter: wrote ${this.offset} of ${this.bytes.length} bytes`);
    }
    return this.bytes;
  }
}

export class BinaryReader {
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private offset = 0;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.length - this.offset;
  }

  u8(): number {
    const value = this.view.getUint8(this.offset);
    this.offset += 1;
    return value;
  }

  u16(): number {
    const value = this.view.getUint16(this.offset);
    this.offset += 2;
    return value;
  }

  u32(): number {
    const value = this.view.getUint32(this.offset);
    this.offset += 4;
    return value;
  }

  /**
   * A 64-bit field read as two u32 so that no BigInt is made; undefined when it exceeds
   * Number.MAX_SAFE_INTEGER (the caller names the field in its reason). Always consumes 8 bytes.
   */
  u64safe(): number | undefined {
    const high = this.u32();
    const low = this.u32();
    return high > MAX_SAFE_HIGH_WORD ? undefined : high * TWO_POW_32 + low;
  }

  u64big(): bigint {
    const value = this.view.getBigUint64(this.offset);
    this.offset += 8;
    return value;
  }

  /** The next `length` bytes as a view of the input (no copy). */
  take(length: number): Uint8Array {
    const slice = this.bytes.subarray(this.offset, this.offset + length);
    this.offset += length;
    return slice;
  }
}
