import { Worker } from 'node:worker_threads';
import { InputError } from '../errors.js';
import { DIGEST_BYTES } from '../memory/page.js';
import type { BatchCounts } from '../memory/page-batches.js';
import type { PageFile, SourcePages } from '../store/source-pages.js';

/**
 * Encodes multicast rounds on a worker thread, each batch handed over as soon as it is made: the
 * coordinator's session sends a round's first batches while the worker still reads and compresses
 * the rest (compression pays only when it runs beside the link, page-codec.ts). A page read from a
 * running guest's memory is digested again and left out when it changed since the scan: its new
 * content goes in the guest's live stream anyway, and a target holds no page of a digest it was not
 * sent.
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

export class RoundEncoder {
  private readonly worker = new Worker(new URL('./round-encoder-worker.js', import.meta.url));
  private readonly waiting = new Map<
    number,
    {
      ids: Uint32Array;
      onBatch: (bytes: Uint8Array) => void;
      batches: Uint8Array[];
      resolve: (r: EncodedRound) => void;
      reject: (e: Error) => void;
    }
  >();
  private nextId = 1;
  /** The source's files without their checks: what each request names (the checks went once). */
  private readonly files: readonly PageFile[];

  constructor(
    private readonly pages: SourcePages,
    private readonly batchPages: number,
  ) {
    this.files = pages.files.map(({ path, base, changing }) => ({ path, base, changing }));
    const checks: ChecksMessage = { type: 'checks', checks: pages.files.map((file) => file.checks) };
    this.worker.postMessage(checks);
    this.worker.on('message', (reply: EncodeReply) => {
      const waiter = this.waiting.get(reply.id);
      if (reply.type === 'batch') {
        try {
          waiter?.onBatch(reply.bytes);
        } catch (error) {
          this.waiting.delete(reply.id);
          waiter?.reject(error as Error);
        }
        return;
      }
      this.waiting.delete(reply.id);
      if (reply.type === 'done')
        waiter?.resolve({
          batches: waiter.batches,
          counts: reply.counts,
          changed: Uint32Array.from(reply.changed, (i) => waiter.ids[i]!),
        });
      else waiter?.reject(new InputError(reply.message));
    });
    this.worker.on('error', (error) => {
      for (const waiter of this.waiting.values()) waiter.reject(error);
      this.waiting.clear();
    });
  }

  /**
   * Starts encoding the pages `ids`; resolves once the round is encoded. Each batch goes to `onBatch`
   * as soon as it is made, or, without it, comes in the result.
   */
  encode(ids: Uint32Array, compress: boolean, onBatch?: (bytes: Uint8Array) => void): Promise<EncodedRound> {
    const id = this.nextId++;
    const vm = new Int32Array(ids.length);
    const page = new Uint32Array(ids.length);
    const digests = new Uint8Array(ids.length * DIGEST_BYTES);
    ids.forEach((digestId, i) => {
      const where = this.pages.locationOf(digestId);
      vm[i] = where.vm;
      page[i] = where.page;
      digests.set(this.pages.digestOf(digestId), i * DIGEST_BYTES);
    });
    const request: EncodeRequest = {
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
    return new Promise((resolve, reject) => {
      const batches: Uint8Array[] = [];
      this.waiting.set(id, {
        ids,
        onBatch: onBatch ?? ((bytes) => batches.push(bytes)),
        batches,
        resolve,
        reject,
      });
      this.worker.postMessage(request, [vm.buffer, page.buffer, digests.buffer]);
    });
  }

  async close(): Promise<void> {
    this.worker.postMessage({ type: 'close' });
    await this.worker.terminate();
  }
}
