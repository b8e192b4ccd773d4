import { closeSync, openSync } from 'node:fs';
import { InputError } from '../errors.js';
import type { DigestTable } from '../memory/digest-table.js';
import { PAGE_SIZE, type VmPages } from '../memory/page.js';
import { firstLocations, type PageLocations } from '../memory/page-batches.js';
import { readExactly } from '../read-exactly.js';

/**
 * The source's unique pages, read on demand from the first image that holds each: nothing of the
 * images is kept in memory beyond the round being sent.
 */
export class SourcePages {
  private readonly locations: PageLocations;
  private readonly fds: number[];

  readonly paths: readonly string[];

  /**
   * `paths[v]` is VM v's image. A running VM has no image: its pages were kept at the scan in a
   * content store (`live`), and are read from there.
   */
  constructor(
    vms: readonly VmPages[],
    private readonly table: DigestTable,
    paths: readonly (string | undefined)[],
    live?: { readonly pagesPath: string; indexOf(digest: Uint8Array): number },
  ) {
    const locations = firstLocations(vms, table.size);
    const storeIndex = paths.length;
    if (live) {
      for (let id = 1; id < locations.vm.length; id++) {
        const v = locations.vm[id]!;
        if (v < 0 || paths[v] !== undefined) continue;
        locations.vm[id] = storeIndex;
        locations.page[id] = live.indexOf(table.digestOf(id));
      }
    }
    this.locations = locations;
    this.paths = [...paths.map((path) => path ?? '/dev/null'), ...(live ? [live.pagesPath] : [])];
    this.fds = this.paths.map((path) => openSync(path, 'r'));
  }

  /** The digest of unique page `id` (a copy). */
  digestOf(id: number): Uint8Array {
    return this.table.digestOf(id).slice();
  }

  /** Where unique page `id` is read from: an image (index into paths) and a page number. */
  locationOf(id: number): { vm: number; page: number } {
    return { vm: this.locations.vm[id]!, page: this.locations.page[id]! };
  }

  /** The bytes of unique page `id`. */
  read(id: number): Uint8Array {
    const page = new Uint8Array(PAGE_SIZE);
    const fd = this.fds[this.locations.vm[id]!]!;
    const position = this.locations.page[id]! * PAGE_SIZE;
    if (readExactly(fd, page, 0, PAGE_SIZE, position) !== undefined)
      throw new InputError(`${this.paths[this.locations.vm[id]!]}: image shrank during the job`);
    return page;
  }

  close(): void {
    for (const fd of this.fds) closeSync(fd);
  }
}
