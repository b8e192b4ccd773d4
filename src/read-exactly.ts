import { readSync } from 'node:fs';

/**
 * Reads `length` bytes at `position` of `fd` into `into` from `offset`, however many reads that takes
 * (a read may return fewer bytes than asked). Returns where the file ended first, or undefined when
 * every byte was read: the caller names the file and what its end means (a store cut short, an image
 * that shrank). The one such loop of the code base, below every layer.
 */
export function readExactly(
  fd: number,
  into: Uint8Array,
  offset: number,
  length: number,
  position: number,
): number | undefined {
  for (let done = 0; done < length;) {
    const n = readSync(fd, into, offset + done, length - done, position + done);
    if (n === 0) return position + done;
    done += n;
  }
  return undefined;
}
