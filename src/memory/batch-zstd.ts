import { native } from '../native/native.js';

/**
 * zstd over a whole run of pages (native/zstd-batch.c, through the system's libzstd). Per-page LZ4
 * (page-codec.ts) cannot use what neighbouring pages share; zstd over a live stream's run of a few
 * hundred pages can. On the first 32,768 non-zero pages of a real 256 MiB guest
 * (`npm run bench:compression -- --image FILE`): per-page LZ4 0.55 of the bytes at 485 MB/s, zstd
 * level 1 over 256-page runs 0.40 at 549 MB/s, decoding at 1.5 GB/s. Over all 33,071 of them in 1 MiB
 * runs, one level at a time: level -1 0.41 at 700 MB/s, level 1 0.38 at 600 MB/s, level 3 0.37 at
 * 370 MB/s. Level 1: a quarter fewer bytes than LZ4 at about its speed; the bytes saved also save
 * encryption and socket writes at both ends.
 */
export const ZSTD_LEVEL = 1;

/** A run is sent compressed only when that saves at least this share of it (as for pages). */
const MIN_SAVING = 1 / 8;

/** Whether libzstd opened, once asked (ZstdRuns.available). */
let availability: boolean | undefined;

export class ZstdRuns {
  private out = new Uint8Array(0);

  private constructor(private readonly context: object) {}

  /** The codec, or undefined where the addon is not built or the machine has no libzstd. */
  static open(level = ZSTD_LEVEL): ZstdRuns | undefined {
    const context = native?.zstdContext(level);
    return context === undefined ? undefined : new ZstdRuns(context);
  }

  /** Whether this process can compress and decompress runs (what an agent tells its coordinator). */
  static available(): boolean {
    return (availability ??= ZstdRuns.open() !== undefined);
  }

  /** The run as one zstd frame (a new array), or undefined when that saves less than an eighth. */
  compress(run: Uint8Array): Uint8Array | undefined {
    const limit = Math.floor(run.length * (1 - MIN_SAVING));
    if (limit <= 0) return undefined;
    if (this.out.length < limit) this.out = new Uint8Array(Math.max(limit, 64 << 10));
    const length = native!.zstdCompress(this.context, run, this.out.subarray(0, limit));
    return length > 0 ? this.out.slice(0, length) : undefined;
  }

  /**
   * The run a frame holds, which must be exactly `length` bytes: a view of a buffer reused by the next
   * call, or undefined when the frame is malformed or holds anything else (input off the network).
   */
  decompress(frame: Uint8Array, length: number): Uint8Array | undefined {
    if (this.out.length < length + 1) this.out = new Uint8Array(Math.max(length + 1, 64 << 10));
    // One byte of room beyond `length`, so a frame that holds more than it should is seen to.
    const decoded = native!.zstdDecompress(this.context, frame, this.out.subarray(0, length + 1));
    return decoded === length ? this.out.subarray(0, length) : undefined;
  }
}
