import { createRequire } from 'node:module';

/**
 * The project's own native addon (`native/`, built by `npm ci` with node-gyp against the installed
 * Node's headers; `binding.gyp` at the top). Hot paths use it where it is loaded and fall back to
 * Node's own APIs where it is not (a checkout compiled with tsc alone); `test/unit/native.test.ts`
 * fails when an install did not build it.
 */
export interface NativeAddon {
  /** The SHA-256 state after a 64-byte key and the page checks' seed, for digestPages and the like. */
  keyedState(key: Uint8Array): object;
  /** Writes the first 16 bytes of SHA-256(key || page) of `count` 4 KiB pages to `out`. */
  digestPages(
    state: object,
    pages: Uint8Array,
    offset: number,
    count: number,
    out: Uint8Array,
    outOffset: number,
  ): void;
  /**
   * Whether the page at pages[offset..] still has the 8-byte check checks[8 index..]; where it has
   * not, writes its digest to out[0..16) and zeroes that check.
   */
  digestPageChecked(
    state: object,
    pages: Uint8Array,
    offset: number,
    checks: Uint8Array,
    index: number,
    out: Uint8Array,
  ): boolean;
  /**
   * In the thread pool: pread `count` pages from `fd` at `position` into `pages` (fd -1: they are
   * there already), then set zeros[i] = 1 for a zero page or write its digest to digests[16 i..],
   * and with `checks` its check to checks[8 i..] (0 for a zero page). With a pid, `fd` is that
   * process's /proc/PID/mem and its memory is read with process_vm_readv (one copy, not two).
   */
  scanPages(
    state: object,
    fd: number,
    position: number,
    pages: Uint8Array,
    count: number,
    digests: Uint8Array,
    zeros: Uint8Array,
    checks?: Uint8Array,
    pid?: number,
  ): Promise<void>;
  /** The memory check's digest of one chunk (native/chunk-digest.c), 32 bytes into `out`. */
  chunkDigest(bytes: Uint8Array, seed: Uint8Array, out: Uint8Array): void;
  /**
   * The digests of chunks of a file, `chunks` holding [position, length] pairs (lengths up to 1 MiB),
   * read with pread (with a pid, that process's memory with process_vm_readv: `fd` is its
   * /proc/PID/mem) and digested in libuv's thread pool: 32 bytes per chunk.
   */
  digestFileChunks(fd: number, chunks: Float64Array, seed: Uint8Array, pid?: number): Promise<Uint8Array>;
  /**
   * AES-256-GCM contexts (one to seal, one to open) keyed once with a 32-byte key, for aeadSeal and
   * aeadOpen (native/transport.c): per packet only the nonce is set.
   */
  aeadKey(key: Uint8Array): object;
  /**
   * Seals a datagram whose first 20 bytes are the header (the associated data; the nonce is bytes
   * 8..20): encrypts datagram[20..20+plainLength) in place, then source[sourceOffset..+sourceLength)
   * into the datagram right after it, then writes the 16-byte tag. Returns the datagram's length.
   */
  aeadSeal(
    key: object,
    datagram: Uint8Array,
    plainLength: number,
    source: Uint8Array | null,
    sourceOffset: number,
    sourceLength: number,
  ): number;
  /**
   * Opens datagram[0..datagramLength) (header, ciphertext, tag): decrypts into out[outOffset..] and
   * returns whether the tag is right (what it wrote is zeroed when not).
   */
  aeadOpen(
    key: object,
    datagram: Uint8Array,
    datagramLength: number,
    out: Uint8Array,
    outOffset: number,
  ): boolean;
  /**
   * Backs the pages of `bytes` with memory now (MADV_POPULATE_WRITE) rather than a page fault per 4 KiB
   * at first write; false where the kernel cannot.
   */
  populate(bytes: Uint8Array): boolean;
  /**
   * outputs[r][0..length) = sum over j of coefficients[r * inputs.length + j] * inputs[j][0..length) over
   * GF(2^8) with the polynomial 0x11d (src/transport/gf256.ts's region kernel; AVX2 where the CPU has it).
   */
  gfCombine(
    coefficients: Uint8Array,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): void;
  /** SO_RCVBUFFORCE (which 0) or SO_SNDBUFFORCE (1) on a socket: 0, or the errno (EPERM unprivileged). */
  forceSocketBuffer(fd: number, which: 0 | 1, bytes: number): number;
  /** A duplicate of a descriptor (close-on-exec), or -errno. */
  duplicateDescriptor(fd: number): number;
  /** Bytes written to a connected stream socket that its peer has not read yet (SIOCOUTQ), or -errno. */
  socketUnread(fd: number): number;
  /**
   * A batch's page records (page-batches.ts encodeRecords) written into `out` (4115 bytes per page);
   * their length. `counts` [raw, uniform, compressed] gets the batch's pages added.
   */
  encodePageRecords(
    digests: Uint8Array,
    pages: Uint8Array,
    compress: boolean,
    out: Uint8Array,
    counts: Int32Array,
  ): number;
  /**
   * A batch's records decoded into `digests` and `pages` (as many as they hold); a record that is not
   * a page is skipped. `tally` [decoded, skipped] gets them added.
   */
  decodePageRecords(batch: Uint8Array, digests: Uint8Array, pages: Uint8Array, tally: Int32Array): void;
  /**
   * The page at pages[offset..] as an LZ4 payload (size prefix, block) at out[at..] (3584 bytes of
   * room): its length when it saves at least an eighth of the page, else 0.
   */
  compressPage(pages: Uint8Array, offset: number, out: Uint8Array, at: number): number;
  /** Whether an LZ4 payload decodes to exactly one page, written at out[at..]. */
  decompressPage(payload: Uint8Array, out: Uint8Array, at: number): boolean;
  /** A zstd context at this level (native/zstd-batch.c), or undefined where there is no libzstd.so.1. */
  zstdContext(level: number): object | undefined;
  /** `src` as one zstd frame in `dst`: its length, or 0 when it does not fit there. */
  zstdCompress(context: object, src: Uint8Array, dst: Uint8Array): number;
  /** The content of zstd frames `src` decoded into `dst`: its length, or -1 (malformed, or too large). */
  zstdDecompress(context: object, src: Uint8Array, dst: Uint8Array): number;
  /** IP_MULTICAST_ALL off: the socket gets only the groups it joined itself. 0, or the errno. */
  onlyJoinedGroups(fd: number): number;
  /**
   * Reads datagrams from a duplicate of `fd` on libuv's loop, up to one per slot of `buffer`
   * (`slotBytes` each) per recvmmsg call, and calls `callback(count)` per batch; meta holds [length (0:
   * truncated), IPv4 address, port] per slot. The slots are only valid during the callback. Once a
   * readiness event found datagrams it reads again every `coalesceMs` (a timer) while it finds some,
   * rather than waking per datagram; 0: on every readiness event.
   */
  udpReceiveStart(
    fd: number,
    buffer: Uint8Array,
    slotBytes: number,
    meta: Uint32Array,
    callback: (count: number) => void,
    coalesceMs?: number,
  ): object;
  /**
   * Stops a udpReceiveStart reader and closes its descriptor, then calls `closed` (once; later calls do
   * nothing).
   */
  udpReceiveStop(handle: object, closed?: () => void): void;
}

function load(): NativeAddon | undefined {
  const require = createRequire(import.meta.url);
  // From dist/src/native/ (compiled) to the package root's build/.
  for (const path of [
    '../../../build/Release/vmscatter_native.node',
    '../../build/Release/vmscatter_native.node',
  ]) {
    try {
      return require(path) as NativeAddon;
    } catch {
      // not built there
    }
  }
  return undefined;
}

export const native: NativeAddon | undefined = load();
