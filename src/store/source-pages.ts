import { closeSync, openSync } from 'node:fs';
import { InputError } from '../errors.js';
import type { DigestTable } from '../memory/digest-table.js';
import { PAGE_SIZE, type VmPages } from '../memory/page.js';
import { firstLocations, type PageLocations } from '../memory/page-batches.js';
import { readExactly } from '../read-exactly.js';

/**
 * Where a VM's pages can be read: page i at byte `base + i * PAGE_SIZE` of `path`. An image never
 * changes during a job; a running guest's memory (`changing`) does, so a page read there is sent only
 * if it still has the digest the scan gave it.
 */
export interface PageFile {
  readonly path: string;
  readonly base: number;
  readonly changing: boolean;
  /**
   * A running guest's page checks from its scan (8 bytes per page, 0 for none; live/source.ts): a
   * page whose check still holds has its scanned digest without being hashed again.
   */
  readonly checks?: Uint8Array;
}

/**
 * The source's unique pages, read on demand where a VM holds each: nothing of the VMs is kept in
 * memory beyond the round being sent. A page is read from an image when one holds it, else from the
 * scan's content store (running VMs read by pmemsave), else from a running guest's memory.
 */
export class SourcePages {
  private readonly locations: PageLocations;
  private readonly fds: number[];

  /** Per VM (then the content store, when there is one): where its pages are read. */
  readonly files: readonly PageFile[];

  /**
   * `files[v]` is where VM v's pages are; undefined for a running VM whose pages the scan kept in a
   * content store (`kept`). `digestKey` is the job's page-digest key: pages read from a running
   * guest are digested again with it (round-encoder-worker.ts).
   */
  constructor(
    vms: readonly VmPages[],
    private readonly table: DigestTable,
    files: readonly (PageFile | undefined)[],
    readonly digestKey: Uint8Array,
    kept?: { readonly pagesPath: string; indexOf(digest: Uint8Array): number },
  ) {
    const steady = (v: number) => files[v] !== undefined && !files[v].changing;
    const indices = vms.map((_, v) => v);
    const order = [
      ...indices.filter(steady),
      ...indices.filter((v) => files[v] === undefined),
      ...indices.filter((v) => files[v]?.changing === true),
    ];
    const locations = firstLocations(vms, table.size, order);
    const storeIndex = files.length;
    if (kept) {
      for (let id = 1; id < locations.vm.length; id++) {
        const v = locations.vm[id]!;
        if (v < 0 || files[v] !== undefined) continue;
        locations.vm[id] = storeIndex;
        locations.page[id] = kept.indexOf(table.digestOf(id));
      }
    }
    this.locations = locations;
    const none: PageFile = { path: '/dev/null', base: 0, changing: false };
    this.files = [
      ...files.map((file) => file ?? none),
      ...(kept ? [{ path: kept.pagesPath, base: 0, changing: false }] : []),
    ];
    this.fds = this.files.map((file) => openSync(file.path, 'r'));
  }

  /** The digest of unique page `id` (a copy). */
  digestOf(id: number): Uint8Array {
    return this.table.digestOf(id).slice();
  }

  /** Where unique page `id` is read from: a file (index into `files`) and a page number. */
  locationOf(id: number): { vm: number; page: number } {
    return { vm: this.locations.vm[id]!, page: this.locations.page[id]! };
  }

  /**
   * The bytes of unique page `id`, as they are now: a page held only by running guests may have
   * changed since the scan (a sample's worth, not a page to send).
   */
  read(id: number): Uint8Array {
    const page = new Uint8Array(PAGE_SIZE);
    const file = this.files[this.locations.vm[id]!]!;
    const fd = this.fds[this.locations.vm[id]!]!;
    const position = file.base + this.locations.page[id]! * PAGE_SIZE;
    if (readExactly(fd, page, 0, PAGE_SIZE, position) !== undefined)
      throw new InputError(`${file.path}: shrank during the job`);
    return page;
  }

  close(): void {
    for (const fd of this.fds) closeSync(fd);
  }
}
