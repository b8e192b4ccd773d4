import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import { readSyntheticPages, syntheticContentIds } from '../memory/synthetic.js';
import type { Host, Topology } from '../topology/model.js';
import { ensurePrivateDir, PRIVATE_FILE_MODE } from '../store/file-io.js';

/**
 * The coordinator's local working state: the deployment secret and the images of synthetic VMs.
 *
 * The secret authenticates the control channel and keys page digests, so every host of a deployment
 * must hold the same one. A deployment passes it as a file; only a topology that never leaves this
 * machine (every host on loopback) may have one made for it, kept in the work directory.
 */

export function isLoopback(address: string): boolean {
  return isIP(address) === 4 ? address.startsWith('127.') : address === '::1';
}

export function allLoopback(hosts: readonly Host[]): boolean {
  return hosts.every((h) => isLoopback(h.address));
}

const MIN_SECRET_BYTES = 16;

/** Reads a deployment secret file: at least 16 bytes, readable by its owner only. */
export function readSecretFile(path: string): Uint8Array {
  let stat;
  try {
    stat = statSync(path);
  } catch (error) {
    throw new InputError(`secret file ${path}: cannot read (${(error as NodeJS.ErrnoException).code})`);
  }
  // A FIFO would block the read for ever (and a device could be read without end): regular files only.
  if (!stat.isFile())
    throw new InputError(
      `secret file ${path}: not a regular file (${fileKind(stat)}); give a file of ${MIN_SECRET_BYTES} or more random bytes`,
    );
  if ((stat.mode & 0o077) !== 0)
    throw new InputError(
      `secret file ${path}: readable by others (mode ${(stat.mode & 0o777).toString(8)}); run chmod 600 ${path}`,
    );
  if (process.getuid !== undefined && stat.uid !== process.getuid())
    throw new InputError(
      `secret file ${path}: owned by uid ${stat.uid}, not by this user (uid ${process.getuid()})`,
    );
  if (stat.size > MAX_SECRET_BYTES)
    throw new InputError(`secret file ${path}: ${stat.size} bytes; a secret is at most ${MAX_SECRET_BYTES}`);
  let secret: Uint8Array;
  try {
    // O_NONBLOCK: a file swapped for a FIFO since the check cannot hang the read.
    const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const buffer = new Uint8Array(MAX_SECRET_BYTES + 1);
      const n = readSync(fd, buffer, 0, buffer.length, 0);
      if (n > MAX_SECRET_BYTES)
        throw new InputError(`secret file ${path}: more than ${MAX_SECRET_BYTES} bytes`);
      secret = buffer.slice(0, n);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    if (error instanceof InputError) throw error;
    throw new InputError(`secret file ${path}: cannot read (${(error as NodeJS.ErrnoException).code})`);
  }
  if (secret.length < MIN_SECRET_BYTES)
    throw new InputError(
      `secret file ${path}: ${secret.length} bytes; at least ${MIN_SECRET_BYTES} are needed`,
    );
  return secret;
}

/** A deployment secret is a few dozen random bytes; a larger file is a wrong file. */
const MAX_SECRET_BYTES = 4096;

function fileKind(stat: Stats): string {
  if (stat.isDirectory()) return 'a directory';
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isSocket()) return 'a socket';
  if (stat.isCharacterDevice() || stat.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/**
 * The secret file to use: the one given, or for an all-loopback topology one made in `workDir` on
 * first use; otherwise a clear error.
 */
export function resolveSecretFile(given: string | undefined, topology: Topology, workDir: string): string {
  if (given !== undefined) return given;
  if (!allLoopback(topology.hosts))
    throw new InputError(
      `${topology.file}: hosts are not all on loopback, so a deployment secret is needed: pass ` +
        '--secret-file FILE (the same file on every host; make one with: head -c 32 /dev/urandom > FILE; chmod 600 FILE)',
    );
  const path = join(workDir, 'secret');
  if (!existsSync(path)) {
    mkdirSync(workDir, { recursive: true });
    const fd = openSync(path, 'wx', 0o600);
    writeSync(fd, randomBytes(32));
    closeSync(fd);
  }
  return path;
}

/**
 * Gives every synthetic VM an image file in `workDir/images`, generated on first use (named by a hash of
 * the VM's model, so a changed model gets a fresh image), and returns the topology with image sources.
 */
export function materialiseSyntheticImages(
  topology: Topology,
  workDir: string,
  onImage?: (name: string, done: number, total: number) => void,
): Topology {
  const dir = join(workDir, 'images');
  ensurePrivateDir(dir);
  const vms = topology.vms.map((vm) => {
    if (vm.source.kind !== 'synthetic') return vm;
    const pageCount = vm.memoryBytes / PAGE_SIZE;
    const model = { name: vm.name, pageCount, spec: vm.source.model };
    const tag = createHash('sha256').update(JSON.stringify(model)).digest('hex').slice(0, 12);
    const path = join(dir, `${vm.name}-${tag}.raw`);
    if (!existsSync(path))
      writeSyntheticImage(path, syntheticContentIds(model), (done) => onImage?.(vm.name, done, pageCount));
    return { ...vm, source: { kind: 'image' as const, path } };
  });
  return { ...topology, vms };
}

function writeSyntheticImage(path: string, ids: Uint32Array, onPages: (done: number) => void): void {
  const chunkPages = 1024;
  const pageCount = ids.length / 2; // two content ids per page
  const buffer = new Uint8Array(chunkPages * PAGE_SIZE);
  const partial = `${path}.partial`;
  const fd = openSync(partial, 'w', PRIVATE_FILE_MODE);
  try {
    for (let first = 0; first < pageCount; first += chunkPages) {
      const count = Math.min(chunkPages, pageCount - first);
      readSyntheticPages(ids, first, count, buffer);
      const bytes = buffer.subarray(0, count * PAGE_SIZE);
      for (let done = 0; done < bytes.length;)
        done += writeSync(fd, bytes, done, bytes.length - done, first * PAGE_SIZE + done);
      onPages(first + count);
    }
  } finally {
    closeSync(fd);
  }
  renameSync(partial, path);
}
