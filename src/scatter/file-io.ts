import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { VmscatterError } from '../errors.js';

/** Positioned file I/O for the stores and images: whole reads and writes, whatever the kernel returns. */

/** Opens for positioned reads and writes, creating the file (not append mode: it ignores positions). */
export function openForUpdate(path: string): number {
  closeSync(openSync(path, 'a'));
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
  for (let done = 0; done < length;) {
    const n = readSync(fd, into, done, length - done, position + done);
    if (n === 0) throw new VmscatterError('VMS_STORE', what);
    done += n;
  }
}

export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length;)
    done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}
