import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { InputError } from '../errors.js';
import { DIGEST_BYTES } from '../memory/page.js';
import type { BatchCounts } from '../memory/page-batches.js';
import type { PageFile, SourcePages } from '../store/source-pages.js';

/**
 * Encodes multicast rounds on worker threads (two at most), each batch handed over as soon as it and
 * those before it are made: the coordinator's session sends a round's first batches while the workers
 * still read and compress the rest (compression pays only when it runs beside the link,
 * page-codec.ts). A page read from a running guest's memory is left out when it changed since the
 * scan: its new content goes in the guest's live stream anyway, and a target holds no page of a digest
 * it was not sent.
 */
/** Sent once, before any request: each file's page checks (PageFile.checks), by file index. */
export interface ChecksMessage {
  readonly type: 'checks';
  readonly checks: readonly (Uint8Array | undefined)[];
}

export interface EncodeRequest {
  readonly type: 'encode';
  readonly id: number;
  /** The files pages are read from, without their checks (sent once, ChecksMessage). */
  readonly files: readonly PageFile[];
  /** The page-digest key, for pages read from files that change. */
  readonly digestKey: Uint8Array;
  /** Per page of the round: the file (index into files) and page number to read it from. */
  readonly vm: Int32Array;
  readonly page: Uint32Array;
  readonly digests: Uint8Array;
  readonly batchPages: number;
  readonly compress: boolean;
}

export type EncodeReply =
  /** One batch of the round, in order: the worker goes on with the next meanwhile. */
  | { readonly type: 'batch'; readonly id: number; readonly bytes: Uint8Array }
  | {
      readonly type: 'done';
      readonly id: number;
      readonly counts: BatchCounts;
      /** Positions in the round of the pages left out: changed since the scan. */
      readonly changed: Uint32Array;
    }
  | { readonly type: 'error'; readonly id: number; readonly message: string };

export interface EncodedRound {
  /** The round's batches, in order (empty when they went to encode()'s onBatch instead). */
  readonly batches: Uint8Array[];
  readonly counts: BatchCounts;
  /** Digest ids of the round not in its batches: their page changed since the scan. */
  readonly changed: Uint32Array;
}

/** Worker threads at most: the source's other work (sending, the guests) needs cores too. */
const MAX_WORKERS = 2;

/** One batch's part of a round on its way through a worker. */
interface PartWaiter {
  /** The part's batch (none when every page of it changed since the scan). */
  bytes?: Uint8Array;
  done(reply: Extract<EncodeReply, { type: 'done' }>, bytes: Uint8Array | undefined): void;
  fail(error: Error): void;
}

export class RoundEncoder {
  private readonly workers: Worker[];
  private readonly waiting = new Map<number, PartWaiter>();
  private nextId = 1;
  private turn = 0;
  /** The source's files without their checks: what each request names (the checks went once). */
  private readonly files: readonly PageFile[];

  constructor(
    private readonly pages: SourcePages,
    private readonly batchPages: number,
    workers = Math.min(MAX_WORKERS, availableParallelism()),
  ) {
    this.files = pages.files.map(({ path, base, changing }) => ({ path, base, changing }));
    const checks: ChecksMessage = { type: 'checks', checks: pages.files.map((file) => file.checks) };
    this.workers = Array.from({ length: Math.max(1, workers) }, () => {
      const worker = new Worker(new URL('./round-encoder-worker.js', import.meta.url));
      worker.postMessage(checks);
      worker.on('message', (reply: EncodeReply) => {
        const waiter = this.waiting.get(reply.id);
        if (!waiter) return;
        if (reply.type === 'batch') {
          waiter.bytes = reply.bytes;
          return;
        }
        this.waiting.delete(reply.id);
        if (reply.type === 'done') waiter.done(reply, waiter.bytes);
        else waiter.fail(new InputError(reply.message));
      });
      worker.on('error', (error) => {
        for (const waiter of this.waiting.values()) waiter.fail(error);
        this.waiting.clear();
      });
      return worker;
    });
  }

  /**
   * Starts encoding the pages `ids`; resolves once the round is encoded. The round is cut into parts
   * of one batch each, dealt to the workers in turn; each batch goes to `onBatch` (or, without it,
   * into the result) in the round's order, as soon as it and those before it are made.
   */
  encode(ids: Uint32Array, compress: boolean, onBatch?: (bytes: Uint8Array) => void): Promise<EncodedRound> {
    const batches: Uint8Array[] = [];
    const handOn = onBatch ?? ((bytes: Uint8Array) => batches.push(bytes));
    const counts: BatchCounts = { raw: 0, uniform: 0, compressed: 0 };
    const parts = Math.ceil(ids.length / this.batchPages);
    /** Per part, the digest ids it left out (in the round's order once joined). */
    const changed: number[][] = Array.from({ length: parts }, () => []);
    /** Per part: its batch once made (null when it has none), until handed on. */
    const made: (Uint8Array | null | undefined)[] = new Array(parts);
    let handedOn = 0;
    return new Promise((resolve, reject) => {
      let failed = false;
      const fail = (error: Error) => {
        if (failed) return;
        failed = true;
        reject(error);
      };
      const handOnMade = () => {
        for (; handedOn < parts && made[handedOn] !== undefined; handedOn++) {
          const bytes = made[handedOn];
          made[handedOn] = undefined;
          if (bytes) handOn(bytes);
        }
        if (handedOn === parts) resolve({ batches, counts, changed: Uint32Array.from(changed.flat()) });
      };
      if (parts === 0) return handOnMade();
      for (let part = 0; part < parts; part++) {
        const first = part * this.batchPages;
        const partIds = ids.subarray(first, Math.min(ids.length, first + this.batchPages));
        const id = this.nextId++;
        this.waiting.set(id, {
          done: (reply, bytes) => {
            if (failed) return;
            counts.raw += reply.counts.raw;
            counts.uniform += reply.counts.uniform;
            counts.compressed += reply.counts.compressed;
            for (const i of reply.changed) changed[part]!.push(partIds[i]!);
            made[part] = bytes ?? null;
            try {
              handOnMade();
            } catch (error) {
              fail(error as Error);
            }
          },
          fail,
        });
        const worker = this.workers[this.turn++ % this.workers.length]!;
        const request = this.request(id, partIds, compress);
        const transfer = [request.vm.buffer, request.page.buffer, request.digests.buffer] as ArrayBuffer[];
        worker.postMessage(request, transfer);
      }
    });
  }

  private request(id: number, ids: Uint32Array, compress: boolean): EncodeRequest {
    const vm = new Int32Array(ids.length);
    const page = new Uint32Array(ids.length);
    const digests = new Uint8Array(ids.length * DIGEST_BYTES);
    ids.forEach((digestId, i) => {
      const where = this.pages.locationOf(digestId);
      vm[i] = where.vm;
      page[i] = where.page;
      digests.set(this.pages.digestOf(digestId), i * DIGEST_BYTES);
    });
    return {
      type: 'encode',
      id,
      files: this.files,
      digestKey: this.pages.digestKey,
      vm,
      page,
      digests,
      batchPages: this.batchPages,
      compress,
    };
  }

  async close(): Promise<void> {
    for (const worker of this.workers) worker.postMessage({ type: 'close' });
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }
}
