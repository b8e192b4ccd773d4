import net from 'node:net';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { startIncomingQemu, type IncomingQemu } from '../qemu/incoming.js';
import { StreamWriter, type StreamRecord } from '../qemu/migration-stream.js';
import { StreamDigest, StreamPageMemory, type LiveRecord } from './live-records.js';
import { decodePage } from './page-codec.js';
import { DIGEST_BYTES, isZeroPage } from '../memory/page.js';
import type { PageDigester } from '../memory/page-digest.js';
import { openGuestRam } from '../qemu/guest-ram.js';
import { digestGuestRam, encodeMemoryDigests } from './live-memory-check.js';

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
  private readonly digest = new StreamDigest();
  private readonly sentBefore = new StreamPageMemory();
  private readonly pageDigest = new Uint8Array(DIGEST_BYTES);
  private failure: Error | undefined;

  private constructor(
    readonly vm: string,
    private readonly qemu: IncomingQemu,
    private readonly socket: net.Socket,
    private readonly writer: StreamWriter,
    private readonly writes: CountedWrites,
    private readonly pageOf: (digest: Uint8Array) => Uint8Array | undefined,
    private readonly digester: PageDigester,
    private readonly scratchDir: string,
  ) {
    socket.on('error', (error) => (this.failure ??= error));
  }

  static async start(options: {
    readonly vm: string;
    readonly command: readonly string[];
    readonly dir: string;
    readonly pageOf: (digest: Uint8Array) => Uint8Array | undefined;
    /** The job's page digester: pages sent in full are remembered by digest. */
    readonly digester: PageDigester;
  }): Promise<LiveTarget> {
    const qemu = await startIncomingQemu(options);
    try {
      const socket = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ path: qemu.streamSocket });
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
      const writes = new CountedWrites(socket);
      const writer = new StreamWriter((bytes) => writes.write(bytes));
      return new LiveTarget(
        options.vm,
        qemu,
        socket,
        writer,
        writes,
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

  /** Writes records into the destination, expanding references; throws if a page is not held. */
  write(records: readonly LiveRecord[]): void {
    if (this.failure) throw new LiveTargetError(`VM ${this.vm}: destination stream: ${this.failure.message}`);
    for (const record of records) {
      let full: StreamRecord;
      if (record.kind === 'ref') {
        const data = this.pageOf(record.digest) ?? this.sentBefore.get(record.digest);
        if (!data)
          throw new LiveTargetError(
            `VM ${this.vm}: a page referenced at ${record.block}+${record.offset} is not held`,
          );
        full = { kind: 'page', block: record.block, offset: record.offset, data };
      } else if (record.kind === 'packed') {
        const data = decodePage(record.encoding, record.payload);
        if (!data)
          throw new LiveTargetError(
            `VM ${this.vm}: a packed page at ${record.block}+${record.offset} does not decode`,
          );
        full = { kind: 'page', block: record.block, offset: record.offset, data };
        this.remember(data);
      } else {
        full = record;
        if (record.kind === 'page') this.remember(record.data);
      }
      this.digest.add(full);
      this.writer.write(full);
    }
  }

  /** Remembers a page that came in full as the coordinator does (StreamPageMemory): if not zero. */
  private remember(page: Uint8Array): void {
    if (isZeroPage(page, 0)) return;
    this.digester.digestInto(page, 0, this.pageDigest, 0);
    this.sentBefore.remember(this.pageDigest.slice(), page.slice());
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
   * digests, then reads the loaded guest RAM for the memory check (live-memory-check.ts). Resolves with
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
    const own = this.digest.hex();
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
