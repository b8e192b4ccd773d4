/**
 * Worker thread of the round encoder: reads a round's unique pages from the source images itself and
 * encodes them into batches, so page reads and compression run beside the multicast of the round
 * before, never on the thread that paces packets.
 */
import { closeSync, openSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import { encodeRecords, type BatchCounts } from '../memory/page-batches.js';
import type { EncodeReply, EncodeRequest } from './round-encoder.js';
import { readExactly } from '../read-exactly.js';

if (!parentPort) throw new Error('round-encoder-worker must run as a worker thread');
const port = parentPort;
const fds = new Map<string, number>();

port.on('message', (message: EncodeRequest | { type: 'close' }) => {
  if (message.type === 'close') {
    for (const fd of fds.values()) closeSync(fd);
    fds.clear();
    return;
  }
  try {
    const reply = encodeRound(message);
    port.postMessage(
      reply,
      reply.batches.map((b) => b.buffer as ArrayBuffer),
    );
  } catch (error) {
    port.postMessage({ type: 'error', id: message.id, message: String((error as Error).message) });
  }
});

function encodeRound(request: EncodeRequest): Extract<EncodeReply, { type: 'done' }> {
  const counts: BatchCounts = { raw: 0, uniform: 0, compressed: 0 };
  const batches: Uint8Array[] = [];
  const n = request.page.length;
  for (let first = 0; first < n; first += request.batchPages) {
    const count = Math.min(request.batchPages, n - first);
    const pages = new Uint8Array(count * PAGE_SIZE);
    // Pages that lie next to each other in the same file (a round's pages mostly do: ids follow the
    // scan's order) are read in one call.
    for (let i = 0; i < count;) {
      const vm = request.vm[first + i]!;
      const page = request.page[first + i]!;
      let run = 1;
      while (
        i + run < count &&
        request.vm[first + i + run] === vm &&
        request.page[first + i + run] === page + run
      )
        run++;
      readPages(request.paths[vm]!, page, run, pages, i * PAGE_SIZE);
      i += run;
    }
    const digests = request.digests.subarray(first * DIGEST_BYTES, (first + count) * DIGEST_BYTES);
    batches.push(encodeRecords(digests, pages, request.compress, counts));
  }
  return { type: 'done', id: request.id, batches, counts };
}

function readPages(path: string, page: number, count: number, into: Uint8Array, offset: number): void {
  let fd = fds.get(path);
  if (fd === undefined) {
    fd = openSync(path, 'r');
    fds.set(path, fd);
  }
  if (readExactly(fd, into, offset, count * PAGE_SIZE, page * PAGE_SIZE) !== undefined)
    throw new Error(`${path}: image shrank during the job`);
}
