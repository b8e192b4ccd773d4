/**
 * Worker thread of the round encoder: reads a round's unique pages from the source's files itself
 * (images, the scan's store, running guests' memory) and encodes them into batches, each posted as
 * soon as it is made, so page reads and compression run beside the multicast of the batches before,
 * never on the thread that paces packets.
 * A page read from a running guest is sent only if it still has the digest the scan gave it.
 */
import { closeSync, openSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import { encodeRecords, type BatchCounts } from '../memory/page-batches.js';
import { PageDigester } from '../memory/page-digest.js';
import type { PageFile } from '../store/source-pages.js';
import type { ChecksMessage, EncodeReply, EncodeRequest } from './round-encoder.js';
import { readExactly } from '../read-exactly.js';

if (!parentPort) throw new Error('round-encoder-worker must run as a worker thread');
const port = parentPort;
const fds = new Map<string, number>();
/** Digests pages read from running guests again (one job, one key, per worker). */
let digester: PageDigester | undefined;
/** Per file, the scan's page checks (copies: a failed check is cleared here only). */
let fileChecks: readonly (Uint8Array | undefined)[] = [];

port.on('message', (message: EncodeRequest | ChecksMessage | { type: 'close' }) => {
  if (message.type === 'checks') {
    fileChecks = message.checks;
    return;
  }
  if (message.type === 'close') {
    for (const fd of fds.values()) closeSync(fd);
    fds.clear();
    return;
  }
  try {
    const reply = encodeRound(message, (bytes) =>
      port.postMessage({ type: 'batch', id: message.id, bytes }, [bytes.buffer as ArrayBuffer]),
    );
    port.postMessage(reply);
  } catch (error) {
    port.postMessage({ type: 'error', id: message.id, message: String((error as Error).message) });
  }
});

function encodeRound(
  request: EncodeRequest,
  emit: (batch: Uint8Array) => void,
): Extract<EncodeReply, { type: 'done' }> {
  const counts: BatchCounts = { raw: 0, uniform: 0, compressed: 0 };
  const changed: number[] = [];
  const n = request.page.length;
  for (let first = 0; first < n; first += request.batchPages) {
    const count = Math.min(request.batchPages, n - first);
    let pages: Uint8Array = new Uint8Array(count * PAGE_SIZE);
    // Pages that lie next to each other in the same file (a round's pages mostly do: ids follow the
    // scan's order) are read in one call.
    let fromChanging = false;
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
      readPages(request.files[vm]!, page, run, pages, i * PAGE_SIZE);
      fromChanging ||= request.files[vm]!.changing;
      i += run;
    }
    let digests = request.digests.subarray(first * DIGEST_BYTES, (first + count) * DIGEST_BYTES);
    if (fromChanging) {
      const kept = unchangedPages(request, first, count, pages, digests);
      for (let i = 0; i < count; i++) if (kept[i] === 0) changed.push(first + i);
      ({ pages, digests } = compact(kept, pages, digests));
    }
    if (digests.length > 0) emit(encodeRecords(digests, pages, request.compress, counts));
  }
  return { type: 'done', id: request.id, counts, changed: Uint32Array.from(changed) };
}

/**
 * Per page of a batch: 1 when its bytes still have the scanned digest. Only pages read from a file
 * that changes (a running guest) are looked at again: one whose scanned check still holds is
 * unchanged (the check is a keyed 64-bit digest, a tenth of SHA-256's cost), the others are digested
 * again; pages read from other files are kept as read.
 */
function unchangedPages(
  request: EncodeRequest,
  first: number,
  count: number,
  pages: Uint8Array,
  digests: Uint8Array,
): Uint8Array {
  digester ??= new PageDigester(request.digestKey);
  const now = new Uint8Array(DIGEST_BYTES);
  const kept = new Uint8Array(count).fill(1);
  for (let i = 0; i < count; i++) {
    const file = request.vm[first + i]!;
    if (!request.files[file]!.changing) continue;
    const checks = fileChecks[file];
    if (checks) {
      if (digester.digestChecked(pages, i * PAGE_SIZE, checks, request.page[first + i]!, now)) continue;
    } else digester.digestInto(pages, i * PAGE_SIZE, now, 0);
    const at = i * DIGEST_BYTES;
    if (Buffer.compare(now, digests.subarray(at, at + DIGEST_BYTES)) !== 0) kept[i] = 0;
  }
  return kept;
}

/** The kept pages and their digests, in order (the same arrays when every page is kept). */
function compact(
  kept: Uint8Array,
  pages: Uint8Array,
  digests: Uint8Array,
): { pages: Uint8Array; digests: Uint8Array } {
  const count = kept.reduce((n, k) => n + k, 0);
  if (count === kept.length) return { pages, digests };
  const keptPages = new Uint8Array(count * PAGE_SIZE);
  const keptDigests = new Uint8Array(count * DIGEST_BYTES);
  let j = 0;
  kept.forEach((k, i) => {
    if (k === 0) return;
    keptPages.set(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), j * PAGE_SIZE);
    keptDigests.set(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), j * DIGEST_BYTES);
    j++;
  });
  return { pages: keptPages, digests: keptDigests };
}

function readPages(file: PageFile, page: number, count: number, into: Uint8Array, offset: number): void {
  let fd = fds.get(file.path);
  if (fd === undefined) {
    fd = openSync(file.path, 'r');
    fds.set(file.path, fd);
  }
  if (readExactly(fd, into, offset, count * PAGE_SIZE, file.base + page * PAGE_SIZE) !== undefined)
    throw new Error(`${file.path}: shrank during the job`);
}
