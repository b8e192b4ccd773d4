import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { PAGE_SIZE } from './page.js';

/** SHA-256 of an image file, streamed (what the source computes to compare with the target's). */
export function imageSha256(path: string): string {
  const hash = createHash('sha256');
  const buffer = new Uint8Array(1024 * PAGE_SIZE);
  const fd = openSync(path, 'r');
  try {
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/**
 * The SHA-256s of `paths`, hashed on a worker thread of their own: started with the scan, they take
 * the time the page fingerprints leave (one image after another; the scan's pool hashes pages).
 */
export function imageSha256Beside(paths: readonly string[]): Promise<string[]> {
  if (paths.length === 0) return Promise.resolve([]);
  const worker = new Worker(new URL('./image-hash-worker.js', import.meta.url), { workerData: paths });
  return new Promise<string[]>((resolve, reject) => {
    worker.once('message', (reply: { sha256?: string[]; error?: string }) =>
      reply.sha256 ? resolve(reply.sha256) : reject(new Error(reply.error)),
    );
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`image hashing stopped (exit ${code})`)));
  }).finally(() => void worker.terminate());
}
