import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
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
