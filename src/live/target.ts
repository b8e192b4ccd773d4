import net from 'node:net';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { startIncomingQemu, type IncomingQemu } from '../qemu/incoming.js';
import { StreamWriter } from '../qemu/migration-stream.js';
import { LiveStreamDecoder, type LiveDecoderOptions } from './decoder.js';
import type { LiveRecord } from './records.js';
import { MESSAGE_STREAM_BYTES } from './encoder.js';
import { STREAM_PAGE_SIZE, type StreamRecord } from '../qemu/stream-records.js';
import type { PageDigester } from '../memory/page-digest.js';
import { openGuestRam, type GuestRam } from '../qemu/guest-ram.js';
import {
  CHECK_CHUNK_BYTES,
  chunkRange,
  decodeChunks,
  digestChunk,
  digestGuestRam,
  encodeMemoryDigests,
  type MemoryDigests,
} from './memory-check.js';
import { copyBytes } from '../copy-bytes.js';

/**
 * The target side of one running VM's migration: a destination QEMU started paused, the stream from
 * the coordinator written into it with referenced pages put back from the agent's store, and the
 * canonical digest of what was written, compared with the source's before the VM may resume.
 */
export class LiveTargetError extends VmscatterError {
  constructor(message: string) {
    super('VMS_LIVE', message);
  }
}

/** The most a destination may take to load what was written to it. */
export const LOAD_TIMEOUT_MS = 120_000;
/** Pages of the main RAM kept as last written, where the destination's RAM is found by them. */
const KNOWN_PAGES = 16;

/**
 * How much expanded stream may wait in the destination socket's queue before the next message is
 * expanded: two messages' worth (MESSAGE_STREAM_BYTES each), so one is ready when the other is taken.
 */
const EXPANDED_AHEAD_BYTES = 2 * MESSAGE_STREAM_BYTES;

/** Where referenced pages are read (the decoder's `pageOf`, and `readMany` where the store has it). */
export type HeldPages = Pick<LiveDecoderOptions, 'pageOf' | 'readMany'>;

/**
 * The QEMU a stream goes into: one this agent started (`startIncomingQemu`), or one a libvirt started
 * for a domain's migration (destination-libvirt.ts). What differs is how the agent knows it loaded
 * the stream, and who lets it run.
 */
export interface Destination {
  /**
   * The stream's tail (device state and EOF, after the RAM's END section) is held back until resume:
   * a libvirt destination that read its EOF would be run by libvirt before the memory check.
   */
  readonly holdsTail: boolean;
  /**
   * The main RAM block whose last-written pages the target keeps a few of (`known` below), where the
   * destination's RAM is found by them rather than through its monitor.
   */
  readonly knownBlock?: string;
  /**
   * The guest's RAM, for the memory check: `loading` while the stream may still write it (an early
   * search), and `known` a few pages of it as the stream wrote them last (offset -> bytes).
   */
  openRam(options: {
    readonly scratchDir: string;
    readonly name: string;
    readonly loading: boolean;
    readonly known: ReadonlyMap<number, Uint8Array>;
  }): Promise<GuestRam>;
  /** Why the destination is not waiting, loaded, with the guest stopped (a repair writes only then). */
  waiting(): Promise<string | undefined>;
  /**
   * Resolves once the destination loaded every byte written to `socket` (the whole stream, or all but
   * the held tail), with why not when it cannot have.
   */
  loaded(socket: net.Socket): Promise<string | undefined>;
  /** Lets the VM run here (the held tail, if any, is written and the stream closed before). */
  resume(): Promise<void>;
  /** The VM does not run here: the destination goes (the source keeps it). */
  kill(): Promise<void>;
}

/** A destination this agent started from the VM's command line (`-S -incoming defer`). */
export function qemuDestination(qemu: IncomingQemu): Destination {
  return {
    holdsTail: false,
    openRam: ({ scratchDir, name, loading }) =>
      openGuestRam(qemu.qmp, {
        ...(qemu.process.pid !== undefined ? { pid: qemu.process.pid } : {}),
        scratchDir,
        name,
        running: loading,
      }),
    waiting: async () => {
      const { status } = await qemu.qmp.execute<{ status?: string }>('query-status');
      return status === 'paused' ? undefined : `the destination is '${status}'`;
    },
    loaded: async (socket) => {
      await new Promise<void>((resolve) => socket.end(() => resolve()));
      const deadline = Date.now() + LOAD_TIMEOUT_MS;
      for (;;) {
        const info = (await qemu.qmp.execute('query-status')) as { status?: string };
        if (info.status === 'paused' || info.status === 'prelaunch') break;
        if (info.status !== 'inmigrate') return `destination QEMU is '${info.status}' after loading`;
        if (Date.now() > deadline) return `destination QEMU still loading after ${LOAD_TIMEOUT_MS / 1000} s`;
        await new Promise((r) => setTimeout(r, 20));
      }
      const migration = (await qemu.qmp.execute('query-migrate')) as { status?: string };
      if (migration.status !== undefined && migration.status !== 'completed')
        return `destination migration status '${migration.status}'`;
      return undefined;
    },
    resume: async () => {
      await qemu.qmp.execute('cont');
      await qemu.qmp.close();
      qemu.release();
    },
    kill: () => qemu.kill(),
  };
}

export class LiveTarget {
  private readonly decoder: LiveStreamDecoder;
  /** A message's stream bytes, written to the destination in one go. */
  private readonly output = new OutputBuffer();
  private readonly writer: StreamWriter;
  /** Messages received and not yet expanded (see `expand`), and how many were received in all. */
  private readonly queued: (readonly LiveRecord[])[] = [];
  private received = 0;
  /** Up to which message (counted as received) the socket has taken. */
  private done = 0;
  private readonly waiting: { readonly at: number; readonly resolve: () => void }[] = [];
  /** The stream's tail, held back until resume where the destination holds it (copies). */
  private readonly tail: StreamRecord[] = [];
  /** A few pages of the main RAM as the stream wrote them last (Destination.knownBlock). */
  private readonly known = new Map<number, Uint8Array>();
  private failure: Error | undefined;
  /** The destination's RAM digests once loaded: what a repair may write (whole chunks of it). */
  private memory: MemoryDigests | undefined;
  /** The seed `memory` was digested under, for the digests of a repair read back. */
  private memorySeed: Uint8Array | undefined;
  private ram: GuestRam | undefined;
  /**
   * The destination's RAM, looked for while the stream loads (its mapping is there from start-up), so
   * the check after loading only reads it; undefined where it could not be told apart yet.
   */
  private readonly early: Promise<GuestRam | undefined>;

  constructor(
    readonly vm: string,
    private readonly destination: Destination,
    private readonly socket: net.Socket,
    held: HeldPages,
    digester: PageDigester,
    private readonly scratchDir: string,
  ) {
    socket.on('error', (error) => (this.failure ??= error));
    this.early = this.openRam(true).catch(() => undefined);
    const writer = (this.writer = new StreamWriter((bytes) => this.output.append(bytes), {
      sinkCopies: true,
    }));
    this.decoder = new LiveStreamDecoder(vm, {
      ...held,
      digester,
      sink: (record) => {
        if (destination.holdsTail && record.kind === 'tail')
          this.tail.push({ kind: 'tail', bytes: copyBytes(record.bytes) });
        else writer.write(record);
        if (destination.knownBlock !== undefined) this.remember(destination.knownBlock, record);
      },
    });
  }

  static async start(options: {
    readonly vm: string;
    readonly command: readonly string[];
    readonly dir: string;
    /** The agent's store, where referenced pages are read. */
    readonly held: HeldPages;
    /** The job's page digester: pages are digested as written, for the canonical stream digest. */
    readonly digester: PageDigester;
  }): Promise<LiveTarget> {
    const qemu = await startIncomingQemu(options);
    try {
      const socket = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ path: qemu.streamSocket });
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
      return new LiveTarget(
        options.vm,
        qemuDestination(qemu),
        socket,
        options.held,
        options.digester,
        join(options.dir, 'ram'),
      );
    } catch (error) {
      await qemu.kill();
      throw new LiveTargetError(
        `VM ${options.vm}: cannot open the destination's stream: ${(error as Error).message}`,
      );
    }
  }

  /**
   * Writes records into the destination, expanding references; throws if a page is not held. A
   * message's stream goes out as one write, not one per page.
   */
  write(records: readonly LiveRecord[]): void {
    if (this.failure) throw new LiveTargetError(`VM ${this.vm}: destination stream: ${this.failure.message}`);
    this.queued.push(records);
    this.received++;
    this.expand();
  }

  /**
   * Expands queued messages into QEMU's stream while the socket holds less than EXPANDED_AHEAD_BYTES
   * not yet handed to the kernel: what waits for the destination waits compact (references and
   * compressed runs, not 4 KiB a page), and a few output buffers serve the whole stream. A message
   * that cannot be expanded fails the stream (`failure`), and the rest are dropped.
   */
  private expand(): void {
    while (this.queued.length > 0 && this.socket.writableLength < EXPANDED_AHEAD_BYTES) {
      const records = this.queued.shift()!;
      const message = this.received - this.queued.length;
      try {
        if (!this.failure) this.decoder.write(records);
      } catch (error) {
        this.failure ??= error as Error;
      } finally {
        const bytes = this.output.take();
        // A write's callback runs once the socket no longer needs the bytes, in order, and also (with
        // an error) once the socket is destroyed: so a waiter never outlives the destination.
        if (bytes.length > 0 && !this.failure)
          this.socket.write(bytes, () => {
            this.output.recycle(bytes);
            this.handedOn(message);
          });
        else this.handedOn(message);
      }
    }
  }

  /** Message `message` is with the kernel (or will never be): waiters up to it resolve, more expand. */
  private handedOn(message: number): void {
    this.done = Math.max(this.done, message);
    while (this.waiting.length > 0 && this.waiting[0]!.at <= this.done) this.waiting.shift()!.resolve();
    this.expand();
  }

  /**
   * Resolves once the destination's socket took every message written so far: the destination QEMU
   * is then at most a socket buffer behind (a failure resolves too; the stream's failure is kept).
   */
  taken(): Promise<void> {
    if (this.done === this.received) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push({ at: this.received, resolve }));
  }

  /**
   * The stream is complete: closes it (or, where the destination holds the tail, writes all but the
   * tail), waits for the destination to load it, compares stream digests, then reads the loaded guest
   * RAM for the memory check (memory-check.ts). Resolves with the reason it must not resume, or with
   * the RAM's digests (encoded) when the stream agreed.
   */
  async finish(
    sourceSha256: string,
    memorySeed: Uint8Array,
  ): Promise<{ readonly why: string } | { readonly memory: Uint8Array }> {
    await this.taken();
    const notLoaded = this.streamFailure() ?? (await this.destination.loaded(this.socket));
    const why = this.streamFailure() ?? notLoaded;
    if (why) return { why };
    if (this.destination.holdsTail && this.tail.length === 0)
      return { why: 'the stream ended without device state' };
    const own = this.decoder.digest.hex();
    if (own !== sourceSha256)
      return { why: `stream digest ${own} differs from the source's ${sourceSha256}` };
    // Kept open while the destination waits: a repair writes through it. Where the early search could
    // only fall back to pmemsave (RAM still all zero, several mappings of its size), search again now.
    const early = await this.early;
    if (early?.method === 'pmemsave') early.close();
    this.ram = early?.method !== 'pmemsave' && early ? early : await this.openRam(false);
    await this.ram.remap();
    this.memorySeed = memorySeed;
    this.memory = await digestGuestRam(this.ram, memorySeed);
    return { memory: encodeMemoryDigests(this.memory) };
  }

  /**
   * Writes the source's bytes of chunks the memory check found different into the paused destination
   * and returns their SHA-256 as read back (32 bytes each). Only whole chunks of the RAM's layout, only
   * while paused after loading, and only where the RAM can be written (not through pmemsave).
   */
  async repair(encoded: Uint8Array): Promise<Uint8Array> {
    const chunks = decodeChunks(encoded);
    if (!chunks) throw new LiveTargetError(`VM ${this.vm}: a malformed memory repair`);
    const memory = this.memory;
    const seed = this.memorySeed;
    if (!memory || !seed) throw new LiveTargetError(`VM ${this.vm}: a memory repair before the memory check`);
    const layout = new Map<number, number>();
    for (let k = 0; k * 32 < memory.digests.length; k++) {
      const [offset, length] = chunkRange(memory, k);
      layout.set(offset, length);
    }
    for (const { offset, bytes } of chunks)
      if (layout.get(offset) !== bytes.length)
        throw new LiveTargetError(
          `VM ${this.vm}: a repair of ${bytes.length} bytes at ${offset} is not a chunk`,
        );
    const notWaiting = await this.destination.waiting();
    if (notWaiting) throw new LiveTargetError(`VM ${this.vm}: no repair: ${notWaiting}`);
    const ram = this.ram;
    if (!ram) throw new LiveTargetError(`VM ${this.vm}: a memory repair before the memory check`);
    if (!ram.write) throw new LiveTargetError(`VM ${this.vm}: its RAM cannot be written (${ram.method})`);
    const digests = new Uint8Array(chunks.length * 32);
    const readBack = new Uint8Array(CHECK_CHUNK_BYTES);
    for (const [i, { offset, bytes }] of chunks.entries()) {
      ram.write(bytes, offset);
      await ram.read(readBack, offset, bytes.length);
      digests.set(digestChunk(readBack.subarray(0, bytes.length), seed), i * 32);
    }
    return digests;
  }

  /**
   * Keeps the last bytes written at the first KNOWN_PAGES offsets of `block` the stream wrote (a
   * zero record writes zeros): what finds the destination's RAM where its monitor cannot.
   */
  private remember(block: string, record: StreamRecord): void {
    if ((record.kind !== 'page' && record.kind !== 'zero') || record.block !== block) return;
    let page = this.known.get(record.offset);
    if (page === undefined) {
      if (this.known.size >= KNOWN_PAGES) return;
      this.known.set(record.offset, (page = new Uint8Array(STREAM_PAGE_SIZE)));
    }
    if (record.kind === 'page') page.set(record.data);
    else page.fill(record.fill);
  }

  private streamFailure(): string | undefined {
    return this.failure && `destination stream: ${this.failure.message}`;
  }

  /** `loading`: the stream may still be writing pages, so samples may differ between two reads. */
  private openRam(loading: boolean): Promise<GuestRam> {
    return this.destination.openRam({
      scratchDir: this.scratchDir,
      name: this.vm,
      loading,
      known: this.known,
    });
  }

  async resume(): Promise<void> {
    this.ram?.close();
    this.ram = undefined;
    if (this.destination.holdsTail) {
      for (const record of this.tail.splice(0)) this.writer.write(record);
      const bytes = this.output.take();
      if (bytes.length > 0) this.socket.write(bytes);
      await new Promise<void>((resolve) => this.socket.end(() => resolve()));
      const failed = this.streamFailure();
      if (failed) throw new LiveTargetError(`VM ${this.vm}: ${failed}`);
    }
    await this.destination.resume();
  }

  async abort(): Promise<void> {
    // Nothing queued will be written: whoever waits for it is answered now.
    this.queued.length = 0;
    this.handedOn(this.received);
    this.socket.destroy();
    await this.destination.kill();
    // Its monitor gone, a search still under way ends too.
    const early = await this.early;
    if (early && early !== this.ram) early.close();
    this.ram?.close();
    this.ram = undefined;
  }
}

/**
 * Bytes appended (copied) into one buffer that grows as needed; `take` hands them over. Buffers come
 * back through `recycle` once written, so a stream of messages reuses a few buffers at their high-water
 * size instead of faulting in fresh memory and regrowing it for every message.
 */
export class OutputBuffer {
  /** Buffers kept for reuse at most (one per message in flight is all a stream needs). */
  static readonly POOL = 16;
  private readonly free: Buffer[] = [];
  private buffer: Buffer;
  private at = 0;
  private made = 1;

  /**
   * `size`: a message's expanded stream, up to MESSAGE_STREAM_BYTES of pages with their records'
   * heads, and the pages of the last socket read the coordinator's encoder took into the message.
   */
  constructor(private readonly size = MESSAGE_STREAM_BYTES + (512 << 10)) {
    this.buffer = Buffer.allocUnsafe(size);
  }

  /** Buffers made so far (grown ones included): a stream's first few, then only reused ones. */
  get buffersMade(): number {
    return this.made;
  }

  append(bytes: Uint8Array): void {
    if (this.at + bytes.length > this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.at + bytes.length));
      this.made++;
      this.buffer.copy(grown, 0, 0, this.at);
      this.buffer = grown;
    }
    this.buffer.set(bytes, this.at);
    this.at += bytes.length;
  }

  /** The bytes appended since the last take (a view of a buffer of their own), and a fresh start. */
  take(): Buffer {
    if (this.at === 0) return Buffer.alloc(0);
    const bytes = this.buffer.subarray(0, this.at);
    this.buffer = this.free.pop() ?? this.make();
    this.at = 0;
    return bytes;
  }

  /**
   * Gives back what `take` returned, once nothing reads it any more. Any buffer of at least the base
   * size is kept, a grown one too: a message that outgrew the base once does not retire the others.
   */
  recycle(taken: Buffer): void {
    const whole = Buffer.from(taken.buffer, taken.byteOffset, taken.buffer.byteLength - taken.byteOffset);
    if (taken.byteOffset !== 0 || whole.length < this.size) return;
    if (this.free.length < OutputBuffer.POOL) this.free.push(whole);
  }

  private make(): Buffer {
    this.made++;
    return Buffer.allocUnsafe(this.size);
  }
}
