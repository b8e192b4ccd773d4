import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { InputError } from '../errors.js';
import { PAGE_SIZE } from './page.js';
import { readSyntheticPages, syntheticContentIds, type SyntheticVm } from './synthetic.js';
import { readExactly } from '../read-exactly.js';

/**
 * Where a VM's memory is read from during a scan. Plain data, so it crosses to worker threads.
 * Images are raw guest-memory files (a Firecracker memory file, a `pmemsave` dump, a memory-backend
 * file), read in chunks and never whole.
 */
export type PageSourceSpec =
  | { readonly kind: 'image'; readonly path: string }
  | { readonly kind: 'synthetic'; readonly vm: SyntheticVm };

/** Synchronous page reader, used inside fingerprint workers where blocking reads are the fast path. */
export interface PageReader {
  readonly pageCount: number;
  /** Fills out[0 .. count*PAGE_SIZE) with pages firstPage .. firstPage+count-1. */
  read(firstPage: number, count: number, out: Uint8Array): void;
  close(): void;
}

/** Number of pages of a source; checks that an image exists and is a whole number of pages. */
export function pageCountOf(spec: PageSourceSpec): number {
  if (spec.kind === 'synthetic') return spec.vm.pageCount;
  let size: number;
  try {
    const stat = statSync(spec.path);
    if (!stat.isFile()) throw new InputError(`${spec.path}: not a regular file`);
    size = stat.size;
  } catch (error) {
    if (error instanceof InputError) throw error;
    throw new InputError(
      `${spec.path}: cannot read memory image (${(error as NodeJS.ErrnoException).code ?? error})`,
    );
  }
  if (size % PAGE_SIZE !== 0) {
    throw new InputError(
      `${spec.path}: memory image is ${size} bytes, not a whole number of ${PAGE_SIZE}-byte pages`,
    );
  }
  return size / PAGE_SIZE;
}

export function openPageReader(spec: PageSourceSpec): PageReader {
  return spec.kind === 'image' ? new ImageReader(spec.path) : new SyntheticReader(spec.vm);
}

class ImageReader implements PageReader {
  readonly pageCount: number;
  private readonly fd: number;

  constructor(private readonly path: string) {
    this.fd = openSync(path, 'r');
    this.pageCount = Math.floor(fstatSync(this.fd).size / PAGE_SIZE);
  }

  read(firstPage: number, count: number, out: Uint8Array): void {
    if (readExactly(this.fd, out, 0, count * PAGE_SIZE, firstPage * PAGE_SIZE) !== undefined)
      throw new InputError(`${this.path}: image shrank while being read`);
  }

  close(): void {
    closeSync(this.fd);
  }
}

class SyntheticReader implements PageReader {
  readonly pageCount: number;
  private readonly ids: Uint32Array;

  constructor(vm: SyntheticVm) {
    this.pageCount = vm.pageCount;
    this.ids = syntheticContentIds(vm);
  }

  read(firstPage: number, count: number, out: Uint8Array): void {
    readSyntheticPages(this.ids, firstPage, count, out);
  }

  close(): void {}
}
