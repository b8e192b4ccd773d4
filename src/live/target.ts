import net from 'node:net';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { startIncomingQemu, type IncomingQemu } from '../qemu/incoming.js';
import { StreamWriter } from '../qemu/migration-stream.js';
import { LiveStreamDecoder } from './decoder.js';
import type { LiveRecord } from './records.js';
import type { PageDigester } from '../memory/page-digest.js';
import { openGuestRam } from '../qemu/guest-ram.js';
import { digestGuestRam, encodeMemoryDigests } from './memory-check.js';

/**
 * The target side of one running VM's migration: a destination QEMU started paused, the stream from
 * the coordinator written into it with referenced pages put back from the agent's store, and the
 * canonical digest of what was written, compared with the source's before the VM may resume.
 */
export class LiveTargetError extends VmscatterError {
  constructor(message: string) {
    super('VMS_LIVE', message, 7);
  }
}

const LOAD_TIMEOUT_MS = 120_000;

export class LiveTarget {
  private readonly decoder: LiveStreamDecoder;
  /** A message's stream bytes, written to the destination in one go. */
  private readonly output = new OutputBuffer();
  private failure: Error | undefined;

  private constructor(
    readonly vm: string,
    private readonly qemu: IncomingQemu,
    private readonly socket: net.Socket,
    private readonly writes: CountedWrites,
    pageOf: (digest: Uint8Array, into: Uint8Array) => Uint8Array | undefined,
    digester: PageDigester,
    private readonly scratchDir: string,
  ) {
    socket.on('error', (error) => (this.failure ??= error));
    const writer = new StreamWriter((bytes) => this.output.append(bytes), { sinkCopies: true });
    this.decoder = new LiveStreamDecoder(vm, { pageOf, digester, sink: (record) => writer.write(record) });
  }

  static async start(options: {
    readonly vm: string;
    readonly command: readonly string[];
    readonly dir: string;
    readonly pageOf: (digest: Uint8Array, into: Uint8Array) => Uint8Array | undefined;
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
        qemu,
        socket,
        new CountedWrites(socket),
        options.pageOf,
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
    try {
      this.decoder.write(records);
    } finally {
      const bytes = this.output.take();
      if (bytes.length > 0) this.writes.write(bytes);
    }
  }

  /**
   * Resolves once the destination's socket took every byte written so far: the destination QEMU is
   * then at most a socket buffer behind (an error resolves too; the stream's failure is kept).
   */
  taken(): Promise<void> {
    return this.writes.taken();
  }

  /**
   * The stream is complete: closes it, waits for the destination to finish loading, compares stream
   * digests, then reads the loaded guest RAM for the memory check (memory-check.ts). Resolves with
   * the reason it must not resume, or with the RAM's digests (encoded) when the stream agreed.
   */
  async finish(sourceSha256: string): Promise<{ readonly why: string } | { readonly memory: Uint8Array }> {
    await new Promise<void>((resolve) => this.socket.end(() => resolve()));
    if (this.failure) return { why: `destination stream: ${this.failure.message}` };
    const deadline = Date.now() + LOAD_TIMEOUT_MS;
    for (;;) {
      const info = (await this.qemu.qmp.execute('query-status')) as { status?: string };
      if (info.status === 'paused' || info.status === 'prelaunch') break;
      if (info.status !== 'inmigrate') return { why: `destination QEMU is '${info.status}' after loading` };
      if (Date.now() > deadline)
        return { why: `destination QEMU still loading after ${LOAD_TIMEOUT_MS / 1000} s` };
      await new Promise((r) => setTimeout(r, 20));
    }
    const migration = (await this.qemu.qmp.execute('query-migrate')) as { status?: string };
    if (migration.status !== undefined && migration.status !== 'completed')
      return { why: `destination migration status '${migration.status}'` };
    const own = this.decoder.digest.hex();
    if (own !== sourceSha256)
      return { why: `stream digest ${own} differs from the source's ${sourceSha256}` };
    const ram = await openGuestRam(this.qemu.qmp, {
      ...(this.qemu.process.pid !== undefined ? { pid: this.qemu.process.pid } : {}),
      scratchDir: this.scratchDir,
      name: this.vm,
      running: false,
    });
    try {
      return { memory: encodeMemoryDigests(await digestGuestRam(ram)) };
    } finally {
      ram.close();
    }
  }

  async resume(): Promise<void> {
    await this.qemu.qmp.execute('cont');
    await this.qemu.qmp.close();
    this.qemu.release();
  }

  async abort(): Promise<void> {
    this.socket.destroy();
    await this.qemu.kill();
  }
}

/**
 * Writes to a socket, counting those the socket has handed on (their callbacks run in order, also with
 * an error once it is destroyed), so a caller can wait until everything written so far was taken
 * without writing anything more itself: after the stream's end the destination closes its side.
 */
class CountedWrites {
  private written = 0;
  private handedOn = 0;
  private readonly waiting: { readonly at: number; readonly resolve: () => void }[] = [];

  constructor(private readonly socket: net.Socket) {}

  write(bytes: Uint8Array): void {
    this.written++;
    this.socket.write(bytes, () => {
      this.handedOn++;
      while (this.waiting.length > 0 && this.waiting[0]!.at <= this.handedOn) this.waiting.shift()!.resolve();
    });
  }

  taken(): Promise<void> {
    if (this.handedOn === this.written) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push({ at: this.written, resolve }));
  }
}

/** Bytes appended (copied) into one buffer that grows as needed; `take` hands them over. */
export class OutputBuffer {
  private buffer = Buffer.allocUnsafe(1 << 20);
  private at = 0;

  append(bytes: Uint8Array): void {
    if (this.at + bytes.length > this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.at + bytes.length));
      this.buffer.copy(grown, 0, 0, this.at);
      this.buffer = grown;
    }
    this.buffer.set(bytes, this.at);
    this.at += bytes.length;
  }

  /** The bytes appended since the last take (a buffer of their own), and a fresh start. */
  take(): Buffer {
    if (this.at === 0) return Buffer.alloc(0);
    const bytes = this.buffer.subarray(0, this.at);
    this.buffer = Buffer.allocUnsafe(Math.max(1 << 20, this.buffer.length));
    this.at = 0;
    return bytes;
  }
}
