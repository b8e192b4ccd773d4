import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { InputError, VmscatterError } from '../errors.js';
import { DigestTable } from './digest-table.js';
import type { ChunkReply, ChunkRequest } from './fingerprint-protocol.js';
import { DIGEST_BYTES, ZERO_PAGE_ID, type VmPages } from './page.js';
import { pageCountOf, type PageSourceSpec } from './page-source.js';

export interface FingerprintInput {
  readonly name: string;
  readonly source: PageSourceSpec;
}

export interface FingerprintOptions {
  /** 64-byte page-digest key (see page-digest.ts). */
  readonly key: Uint8Array;
  /** Worker threads; default: one per core. */
  readonly workers?: number;
  /** Pages per work item: large enough to amortise messages, small enough to spread (default 1024 = 4 MiB). */
  readonly chunkPages?: number;
  readonly signal?: AbortSignal;
  readonly onProgress?: (donePages: number, totalPages: number) => void;
  /** Table to intern into (several scans can share one); a new one by default. */
  readonly table?: DigestTable;
}

export interface FingerprintResult {
  readonly table: DigestTable;
  readonly vms: VmPages[];
  readonly totalPages: number;
}

/** Work items in flight per worker: two keeps a worker busy while its last reply is interned. */
const IN_FLIGHT_PER_WORKER = 2;

/**
 * Fingerprints every page of every VM on a pool of worker threads. Workers read and hash; this thread
 * only interns digests into the compact page tables (4 bytes per page plus the shared digest table).
 */
export async function fingerprintVms(
  inputs: readonly FingerprintInput[],
  options: FingerprintOptions,
): Promise<FingerprintResult> {
  const chunkPages = options.chunkPages ?? 1024;
  const counts = inputs.map((input) => pageCountOf(input.source));
  const totalPages = counts.reduce((a, b) => a + b, 0);
  const table = options.table ?? new DigestTable(Math.max(1024, totalPages >>> 1));
  const vms = inputs.map((input, i) => ({ name: input.name, pages: new Uint32Array(counts[i]!) }));
  const requests: ChunkRequest[] = [];
  inputs.forEach((input, vm) => {
    for (let first = 0; first < counts[vm]!; first += chunkPages) {
      const count = Math.min(chunkPages, counts[vm]! - first);
      requests.push({
        type: 'job',
        jobId: requests.length,
        vm,
        source: input.source,
        firstPage: first,
        count,
      });
    }
  });
  const workerCount = Math.max(1, Math.min(options.workers ?? availableParallelism(), requests.length));
  const pool = Array.from({ length: workerCount }, () => startWorker(options.key));
  let done = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      let next = 0;
      let outstanding = 0;
      const abort = () => reject(new VmscatterError('VMS_ABORTED', 'fingerprinting aborted'));
      if (options.signal?.aborted) return abort();
      options.signal?.addEventListener('abort', abort, { once: true });
      const dispatch = (worker: Worker) => {
        if (next >= requests.length) {
          if (outstanding === 0) resolve();
          return;
        }
        outstanding++;
        worker.postMessage(requests[next++]);
      };
      for (const worker of pool) {
        worker.on('message', (reply: ChunkReply) => {
          outstanding--;
          if (reply.type === 'error') {
            const request = requests[reply.jobId]!;
            return reject(new InputError(`${inputs[request.vm]!.name}: ${reply.message}`));
          }
          const request = requests[reply.jobId]!;
          internChunk(table, vms[request.vm]!.pages, request.firstPage, reply);
          done += request.count;
          options.onProgress?.(done, totalPages);
          dispatch(worker);
        });
        worker.on('error', reject);
        for (let i = 0; i < IN_FLIGHT_PER_WORKER; i++) dispatch(worker);
      }
    });
  } finally {
    await Promise.all(pool.map((worker) => worker.terminate()));
  }
  return { table, vms, totalPages };
}

function internChunk(table: DigestTable, pages: Uint32Array, firstPage: number, reply: ChunkReply): void {
  if (reply.type !== 'chunk') return;
  const { digests, zero } = reply;
  for (let i = 0; i < zero.length; i++) {
    pages[firstPage + i] = zero[i] === 1 ? ZERO_PAGE_ID : table.intern(digests, i * DIGEST_BYTES);
  }
}

function startWorker(key: Uint8Array): Worker {
  const worker = new Worker(new URL('./fingerprint-worker.js', import.meta.url));
  worker.postMessage({ type: 'init', key });
  return worker;
}
