/**
 * Length-prefixed frames on a byte stream: be32 length, then that many bytes. The decoder takes chunks
 * as they come (any split) and yields whole frames; a length over the limit is refused before anything
 * is allocated for it, so a peer cannot make us buffer without bound.
 */
export const FRAME_HEADER_BYTES = 4;

export class FrameTooLargeError extends Error {
  constructor(
    readonly length: number,
    readonly limit: number,
  ) {
    super(`frame of ${length} bytes exceeds the limit of ${limit}`);
  }
}

/** The header of a frame of `length` bytes (written before its parts; see encodeFrame). */
export function frameHeader(length: number): Uint8Array {
  const header = new Uint8Array(FRAME_HEADER_BYTES);
  new DataView(header.buffer).setUint32(0, length);
  return header;
}

export function encodeFrame(payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Where nextReusing joins a frame that spans reads (grown, reused). */
  private scratch = new Uint8Array(0);

  constructor(private limit: number) {}

  /** Changes the limit (a handshake allows small frames only; the session larger ones). */
  setLimit(limit: number): void {
    this.limit = limit;
  }

  /** Bytes held while waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /** Adds a chunk and returns every frame it completes. Throws FrameTooLargeError on an oversize length. */
  push(chunk: Uint8Array): Uint8Array[] {
    this.append(chunk);
    const frames: Uint8Array[] = [];
    for (let frame = this.next(); frame; frame = this.next()) frames.push(frame);
    return frames;
  }

  append(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * The next whole frame, or undefined until more bytes arrive. One at a time, so a caller can change
   * the limit between frames (the handshake's last frame may share a chunk with the first large one).
   */
  next(): Uint8Array | undefined {
    const length = this.wholeFrameLength();
    return length === undefined ? undefined : this.take(length);
  }

  /**
   * As `next`, but a frame that spans reads is joined into this decoder's own buffer, reused by the
   * next call: for a caller done with each frame before it asks for the next (a stream of large
   * frames then fills one buffer, not fresh memory per frame).
   */
  nextReusing(): Uint8Array | undefined {
    const length = this.wholeFrameLength();
    if (length === undefined) return undefined;
    if (length === 0 || this.chunks[0]!.length >= length) return this.take(length);
    if (this.scratch.length < length)
      this.scratch = new Uint8Array(Math.max(length, 2 * this.scratch.length));
    return this.take(length, this.scratch);
  }

  /** The next frame's length once all of it is here (its header then taken off), else undefined. */
  private wholeFrameLength(): number | undefined {
    if (this.buffered < FRAME_HEADER_BYTES) return undefined;
    const length = this.peekLength();
    if (length > this.limit) throw new FrameTooLargeError(length, this.limit);
    if (this.buffered < FRAME_HEADER_BYTES + length) return undefined;
    this.take(FRAME_HEADER_BYTES);
    return length;
  }

  private peekLength(): number {
    const head =
      this.chunks[0]!.length >= FRAME_HEADER_BYTES ? this.chunks[0]! : this.gather(FRAME_HEADER_BYTES);
    return new DataView(head.buffer, head.byteOffset, FRAME_HEADER_BYTES).getUint32(0);
  }

  /** Joins the first chunks (into `into` when given) so the first one holds at least n bytes. */
  private gather(n: number, into?: Uint8Array): Uint8Array {
    const joined = into ? into.subarray(0, n) : new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks.shift()!;
      const part = chunk.subarray(0, n - filled);
      joined.set(part, filled);
      filled += part.length;
      if (part.length < chunk.length) this.chunks.unshift(chunk.subarray(part.length));
    }
    this.chunks.unshift(joined);
    return joined;
  }

  /**
   * Removes and returns the next n bytes (the caller has checked they are buffered): a view of the
   * chunk that holds them all, or one fresh buffer joining those that do. The chunks are the socket's
   * reads, which nothing writes to again, so a view stays as it was.
   */
  private take(n: number, into?: Uint8Array): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[0]!.length >= n ? this.chunks[0]! : this.gather(n, into);
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
  }
}
