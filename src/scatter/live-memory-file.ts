import { closeSync, openSync, statSync } from 'node:fs';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { PAGE_SIZE } from '../memory/page.js';
import type { QmpClient } from '../qemu/qmp.js';
import { readFully } from './file-io.js';
import { LivePageCollector, type LiveScanOptions, type ScannedLiveVm } from './live-source.js';

/**
 * Scanning a running VM from its shared memory-backend file instead of a scan migration.
 *
 * A guest started with `-object memory-backend-file,id=ID,mem-path=FILE,share=on -machine
 * memory-backend=ID` keeps its RAM in FILE, mapped shared: reading the file reads the guest's memory as
 * it is now, at the speed of the page cache, with no migration thread, no stream to parse, and nothing
 * the guest can notice. A page may change while it is read; what was read is what is fingerprinted and
 * stored, so digest and bytes always agree, and a later change is sent by the live migration as any
 * dirtied page is. Only the main RAM lives in the file: the small ROM blocks are left to the live stream.
 */
export interface SharedMemoryFile {
  /** The backend's QOM path, e.g. `/objects/ram0`. */
  readonly backend: string;
  readonly path: string;
  readonly bytes: number;
}

/**
 * The VM's memory-backend file when it has one this process can read whole; undefined otherwise (no
 * `memory-backend` machine property, a RAM or memfd backend, a private mapping whose file does not see
 * the guest's writes, or a file that is not there).
 */
export async function sharedMemoryFile(qmp: QmpClient): Promise<SharedMemoryFile | undefined> {
  const qomGet = (path: string, property: string) =>
    qmp.execute('qom-get', { path, property }).catch(() => undefined);
  const link = await qomGet('/machine', 'memory-backend');
  if (typeof link !== 'string' || link === '') return undefined;
  // QEMU answers with the link's QOM path; an id alone names an object under /objects.
  const backend = link.startsWith('/') ? link : `/objects/${link}`;
  const [path, share, bytes] = await Promise.all([
    qomGet(backend, 'mem-path'),
    qomGet(backend, 'share'),
    qomGet(backend, 'size'),
  ]);
  if (typeof path !== 'string' || path === '' || share !== true || typeof bytes !== 'number')
    return undefined;
  try {
    if (statSync(path).size < bytes) return undefined;
    closeSync(openSync(path, 'r'));
  } catch {
    return undefined;
  }
  return { backend, path, bytes };
}

/** Pages read per step; between steps the event loop runs (QMP, agents' links). */
const CHUNK_PAGES = 1024;

export async function scanMemoryFile(
  options: Pick<LiveScanOptions, 'vm' | 'table' | 'digester' | 'store'> & { readonly file: SharedMemoryFile },
): Promise<ScannedLiveVm> {
  const { file } = options;
  const collector = new LivePageCollector(options.table, options.digester, options.store);
  const pageCount = Math.floor(file.bytes / PAGE_SIZE);
  collector.reset(pageCount);
  const chunk = new Uint8Array(CHUNK_PAGES * PAGE_SIZE);
  const fd = openSync(file.path, 'r');
  try {
    for (let first = 0; first < pageCount; first += CHUNK_PAGES) {
      const count = Math.min(CHUNK_PAGES, pageCount - first);
      readFully(
        fd,
        chunk,
        count * PAGE_SIZE,
        first * PAGE_SIZE,
        `${file.path} ended before ${file.bytes} bytes`,
      );
      for (let i = 0; i < count; i++) collector.page(first + i, chunk, i * PAGE_SIZE);
      await yieldToEventLoop();
    }
    collector.flush();
  } finally {
    closeSync(fd);
  }
  return {
    pages: collector.pages(options.vm),
    blocks: [{ block: { name: file.backend.split('/').at(-1)!, length: file.bytes }, firstPage: 0 }],
    method: 'memory-file',
  };
}
