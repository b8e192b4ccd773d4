/**
 * Worker thread of the fingerprint pool: reads page ranges itself (so bytes never cross threads) and
 * returns, per page, a zero flag or a keyed digest.
 */
import { parentPort } from 'node:worker_threads';
import { DIGEST_BYTES, isZeroPage, PAGE_SIZE } from './page.js';
import { PageDigester } from './page-digest.js';
import { openPageReader, type PageReader, type PageSourceSpec } from './page-source.js';
import type { ChunkReply, ChunkRequest, WorkerInit } from './fingerprint-protocol.js';

if (!parentPort) throw new Error('fingerprint-worker must run as a worker thread');
const port = parentPort;

let digester: PageDigester | undefined;
const readers = new Map<number, PageReader>();
let buffer = new Uint8Array(0);

port.on('message', (message: WorkerInit | ChunkRequest | { type: 'close' }) => {
  if (message.type === 'init') {
    digester = new PageDigester(message.key);
    return;
  }
  if (message.type === 'close') {
    for (const reader of readers.values()) reader.close();
    readers.clear();
    return;
  }
  try {
    port.postMessage(...fingerprintChunk(message));
  } catch (error) {
    const reply: ChunkReply = {
      type: 'error',
      jobId: message.jobId,
      message: String((error as Error).message),
    };
    port.postMessage(reply);
  }
});

function fingerprintChunk(request: ChunkRequest): [ChunkReply, ArrayBuffer[]] {
  if (!digester) throw new Error('worker used before init');
  const reader = readerFor(request.vm, request.source);
  const bytes = request.count * PAGE_SIZE;
  if (buffer.length < bytes) buffer = new Uint8Array(bytes);
  reader.read(request.firstPage, request.count, buffer);
  const digests = new Uint8Array(request.count * DIGEST_BYTES);
  const zero = new Uint8Array(request.count);
  for (let i = 0; i < request.count; i++) {
    const offset = i * PAGE_SIZE;
    if (isZeroPage(buffer, offset)) zero[i] = 1;
    else digester.digestInto(buffer, offset, digests, i * DIGEST_BYTES);
  }
  const reply: ChunkReply = { type: 'chunk', jobId: request.jobId, digests, zero };
  return [reply, [digests.buffer as ArrayBuffer, zero.buffer as ArrayBuffer]];
}

function readerFor(key: number, spec: PageSourceSpec): PageReader {
  let reader = readers.get(key);
  if (!reader) {
    reader = openPageReader(spec);
    readers.set(key, reader);
  }
  return reader;
}
