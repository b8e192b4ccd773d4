import { chmodSync, closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { VmscatterError } from '../errors.js';
import { readExactly } from '../read-exactly.js';

/** Positioned file I/O for the stores and images: whole reads and writes, whatever the kernel returns. */

/**
 * A directory that holds guest memory (stores, images, a migration's scratch): made if missing, and
 * readable by its owner only whatever the umask or an earlier run left.
 */
export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
}

/** Mode of every file holding guest memory: its owner's only. */
export const PRIVATE_FILE_MODE = 0o600;

/** Opens for positioned reads and writes, creating the file (not append mode: it ignores positions). */
export function openForUpdate(path: string): number {
  closeSync(openSync(path, 'a', PRIVATE_FILE_MODE));
  return openSync(path, 'r+');
}

/** Reads exactly `length` bytes at `position`; a file that ends first is `what` (a store error). */
export function readFully(
  fd: number,
  into: Uint8Array,
  length: number,
  position: number,
  what: string,
): void {
  if (readExactly(fd, into, 0, length, position) !== undefined) throw new VmscatterError('VMS_STORE', what);
}

export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length;)
    done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}
