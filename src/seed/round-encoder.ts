import { Worker } from 'node:worker_threads';
import { InputError } from '../errors.js';
import { DIGEST_BYTES } from '../memory/page.js';
import type { BatchCounts } from '../memory/page-batches.js';
import type { PageFile, SourcePages } from '../store/source-pages.js';

/**
 * Encodes multicast rounds on a worker thread: the coordinator asks for round r+1 while round r is on
 * the wire, so reading and compressing pages overlaps sending them (compression pays only when it runs
 * beside the link, page-codec.ts). A page read from a running guest's memory is digested again and
 * left out when it changed since the scan: its new content goes in the guest's live stream anyway,
 * and a target holds no page of a digest it was not sent.
 */
export interface EncodeRequest {
  readonly type: 'encode';
  readonly id: number;
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
  | {
      readonly type: 'done';
      readonly id: number;
      readonly batches: Uint8Array[];
      readonly counts: BatchCounts;
      /** Positions in the round of the pages left out: changed since the scan. */
      readonly changed: Uint32Array;
    }
  | { readonly type: 'error'; readonly id: number; readonly message: string };

export interface EncodedRound {
  readonly batches: Uint8Array[];
  readonly counts: BatchCounts;
  /** Digest ids of the round not in its batches: their page changed since the scan. */
  readonly changed: Uint32Array;
}

export class RoundEncoder {
  private readonly worker = new Worker(new URL('./round-encoder-worker.js', import.meta.url));
  private readonly waiting = new Map<
    number,
    { ids: Uint32Array; resolve: (r: EncodedRound) => void; reject: (e: Error) => void }
  >();
  private nextId = 1;

  constructor(
    private readonly pages: SourcePages,
    private readonly batchPages: number,
  ) {
    this.worker.on('message', (reply: EncodeReply) => {
      const waiter = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      if (reply.type === 'done')
        waiter?.resolve({
          batches: reply.batches,
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

  /** Starts encoding the pages `ids`; resolves with the round's batches. */
  encode(ids: Uint32Array, compress: boolean): Promise<EncodedRound> {
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
      files: this.pages.files,
      digestKey: this.pages.digestKey,
      vm,
      page,
      digests,
      batchPages: this.batchPages,
      compress,
    };
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { ids, resolve, reject });
      this.worker.postMessage(request, [vm.buffer, page.buffer, digests.buffer]);
    });
  }

  async close(): Promise<void> {
    this.worker.postMessage({ type: 'close' });
    await this.worker.terminate();
  }
}
