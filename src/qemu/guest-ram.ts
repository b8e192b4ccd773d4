import { chmodSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { readSync, rmSync, statSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
import { VmscatterError } from '../errors.js';
import {
  listeningSocketInode,
  mainRam,
  parseMaps,
  ramCandidates,
  type MainRam,
  type Mapping,
} from './memory-map.js';
import type { QemuMonitor } from './qmp.js';
import { readExactly } from '../read-exactly.js';

/**
 * Reading a QEMU guest's main RAM from outside the guest, without a migration, the fastest way the VM
 * and our privileges allow:
 *
 * 1. `memory-file`: the guest's RAM is a shared memory-backend file; read the file.
 * 2. `process-memory`: read QEMU's own mapping of the RAM block through `/proc/PID/mem` (root, or the
 *    process that started QEMU). The mapping is found by its size among QEMU's anonymous mappings and
 *    confirmed by comparing sample pages with what `pmemsave` writes for the same guest addresses.
 * 3. `pmemsave`: QEMU writes guest-physical ranges into a private file (mode 0600 in a 0700 directory),
 *    at most 4 MiB per command so QEMU's main loop is never held for long.
 *
 * Whatever the method, offsets are offsets into the main RAM block and only the ranges the guest sees
 * (`MainRam.ranges`) are read, so two ends read the same bytes the same way.
 */
export class GuestRamError extends VmscatterError {
  constructor(message: string) {
    super('VMS_GUEST_RAM', message);
  }
}

export type GuestRamMethod = 'memory-file' | 'process-memory' | 'pmemsave';

export interface GuestRam {
  readonly method: GuestRamMethod;
  /** The block and the ranges of it the guest sees, as of opening or the last `remap`. */
  readonly map: MainRam;
  /**
   * Asks QEMU again which ranges of the block the guest sees: they follow the chipset's state (the
   * firmware's PAM settings, loaded with a destination's device state), so a check reads them when
   * it runs, not when the RAM was found. The block itself cannot change.
   */
  remap(): Promise<void>;
  /** Reads `length` bytes at block offset `offset` into `into` (within one range of `map`). */
  read(into: Uint8Array, offset: number, length: number): Promise<void>;
  /**
   * Where the method reads a file (a memory file, process memory): the block's bytes at offset `o` are
   * at `position + o` of `fd` (opened from `path`), so a reader in another thread can pread them
   * itself, or open the file again later. For process memory, `pid` is the process: where the addon
   * is built, readers take its memory with process_vm_readv, one copy where /proc/PID/mem makes two.
   */
  readonly file?: {
    readonly fd: number;
    readonly position: number;
    readonly path: string;
    readonly pid?: number;
  };
  /**
   * Writes `bytes` at block offset `offset`, where the method allows it (a memory file, process memory);
   * undefined for pmemsave. Only for a guest that is not running (a paused destination).
   */
  readonly write?: (bytes: Uint8Array, offset: number) => void;
  close(): void;
}

/** The most one `pmemsave` writes, so a running guest's I/O never waits long on QEMU's main loop. */
export const PMEMSAVE_STEP_BYTES = 4 << 20;

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
export async function sharedMemoryFile(qmp: QemuMonitor): Promise<SharedMemoryFile | undefined> {
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

/** The main RAM's layout as this QEMU reports it. */
export async function mainRamOf(qmp: QemuMonitor): Promise<MainRam> {
  const hmp = async (command: string) =>
    String(await qmp.execute('human-monitor-command', { 'command-line': command }));
  const map = mainRam(await hmp('info ramblock'), await hmp('info mtree -f'));
  if (!map) throw new GuestRamError(`QEMU at ${qmp.path}: cannot tell where the guest's RAM is`);
  return map;
}

/**
 * The pid of the process listening on the unix socket at `path` (a QEMU's QMP socket): its inode in
 * /proc/net/unix, then the process holding that socket. Undefined when it cannot be seen from here.
 */
export function pidListeningAt(path: string): number | undefined {
  let inode: number | undefined;
  try {
    inode = listeningSocketInode(readFileSync('/proc/net/unix', 'utf8'), resolve(path));
  } catch {
    return undefined;
  }
  if (inode === undefined) return undefined;
  const wanted = `socket:[${inode}]`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${entry}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${entry}/fd/${fd}`) === wanted) return Number(entry);
      } catch {
        // the fd closed meanwhile
      }
    }
  }
  return undefined;
}

export async function openGuestRam(
  qmp: QemuMonitor,
  options: {
    /** QEMU's pid, when known (the agent started it); else looked up from `qmpSocket`. */
    readonly pid?: number;
    readonly qmpSocket?: string;
    /** A directory QEMU may write `pmemsave` output into (made 0700 here). */
    readonly scratchDir: string;
    readonly name: string;
    /** Whether the guest may be running (its pages then may change between two reads). */
    readonly running: boolean;
    /** Leave out the faster methods (tests of the `pmemsave` path). */
    readonly only?: GuestRamMethod;
  },
): Promise<GuestRam> {
  const layout = { map: await mainRamOf(qmp) };
  const map = layout.map;
  const remap = async () => {
    const next = await mainRamOf(qmp);
    if (next.block !== map.block || next.bytes !== map.bytes)
      throw new GuestRamError(`${options.name}: its RAM block changed from ${map.block} to ${next.block}`);
    layout.map = next;
  };
  mkdirSync(options.scratchDir, { recursive: true, mode: 0o700 });
  chmodSync(options.scratchDir, 0o700);
  // Absolute: QEMU opens it, from a working directory of its own.
  const scratch = resolve(options.scratchDir, `${options.name}.ram`);
  const viaPmemsave = pmemsaveReader(qmp, layout, remap, scratch);
  if (options.only === undefined || options.only === 'memory-file') {
    const file = await sharedMemoryFile(qmp);
    if (file && file.bytes === map.bytes && file.backend.split('/').at(-1) === map.block)
      return fileReader('memory-file', file.path, 0, layout, remap, viaPmemsave.close);
  }
  if (options.only === undefined || options.only === 'process-memory') {
    const pid = options.pid ?? (options.qmpSocket ? pidListeningAt(options.qmpSocket) : undefined);
    const base = pid === undefined ? undefined : await findRamMapping(pid, map, viaPmemsave, options.running);
    if (pid !== undefined && base !== undefined)
      return fileReader('process-memory', `/proc/${pid}/mem`, base, layout, remap, viaPmemsave.close, pid);
  }
  if (options.only !== undefined && options.only !== 'pmemsave')
    throw new GuestRamError(`${options.name}: its RAM cannot be read by ${options.only}`);
  return viaPmemsave;
}

function fileReader(
  method: GuestRamMethod,
  path: string,
  base: number,
  layout: { readonly map: MainRam },
  remap: () => Promise<void>,
  cleanup: () => void,
  pid?: number,
): GuestRam {
  const fd = openSync(path, 'r');
  let writeFd: number | undefined;
  let closed = false;
  return {
    method,
    get map() {
      return layout.map;
    },
    remap,
    file: { fd, position: base, path, ...(pid === undefined ? {} : { pid }) },
    read: (into, offset, length) => {
      const ended = readExactly(fd, into, 0, length, base + offset);
      if (ended !== undefined) throw new GuestRamError(`${path} ended at ${ended}`);
      return Promise.resolve();
    },
    write: (bytes, offset) => {
      writeFd ??= openSync(path, 'r+');
      for (let done = 0; done < bytes.length;) {
        const n = writeSync(writeFd, bytes, done, bytes.length - done, base + offset + done);
        if (n === 0) throw new GuestRamError(`${path}: no room at ${base + offset + done}`);
        done += n;
      }
    },
    // Idempotent: a destination's RAM is closed when it resumes or is aborted, and an abort may come
    // twice (the coordinator's live-abort, then the job's end); closing a descriptor twice is EBADF,
    // or worse, another file's descriptor by then.
    close: () => {
      if (closed) return;
      closed = true;
      closeSync(fd);
      if (writeFd !== undefined) closeSync(writeFd);
      cleanup();
    },
  };
}

function pmemsaveReader(
  qmp: QemuMonitor,
  layout: { readonly map: MainRam },
  remap: () => Promise<void>,
  scratch: string,
): GuestRam {
  return {
    method: 'pmemsave',
    get map() {
      return layout.map;
    },
    remap,
    read: async (into, offset, length) => {
      const map = layout.map;
      const range = map.ranges.find((r) => offset >= r.offset && offset + length <= r.offset + r.length);
      if (!range) throw new GuestRamError(`${map.block}+${offset}: not a range the guest sees`);
      for (let done = 0; done < length; done += PMEMSAVE_STEP_BYTES) {
        const size = Math.min(PMEMSAVE_STEP_BYTES, length - done);
        await qmp.execute('pmemsave', {
          val: range.gpa + offset - range.offset + done,
          size,
          filename: scratch,
        });
        const fd = openSync(scratch, 'r');
        try {
          if (readExactly(fd, into, done, size, 0) !== undefined)
            throw new GuestRamError(`pmemsave wrote less than ${size} bytes to ${scratch}`);
        } finally {
          closeSync(fd);
          rmSync(scratch, { force: true });
        }
      }
    },
    close: () => rmSync(scratch, { force: true }),
  };
}

/**
 * A loaded, paused destination's RAM where its monitor cannot be asked (libvirt holds a domain's
 * monitor for the whole incoming migration, and refuses other commands meanwhile): the block and
 * ranges are the source's (the same machine type), and the mapping is the anonymous one of the
 * block's size whose pages at `known` offsets hold the bytes given there (pages the stream wrote last
 * at those offsets). Undefined when not exactly one mapping fits.
 */
export function openProcessRam(
  pid: number,
  map: MainRam,
  known: ReadonlyMap<number, Uint8Array>,
): GuestRam | undefined {
  const opened = openRamCandidates(pid, map);
  if (!opened) return undefined;
  const { candidates, fd } = opened;
  const seen = new Uint8Array(4096);
  const fits = candidates.filter((candidate) =>
    [...known].every(([offset, expected]) => {
      try {
        return (
          readSync(fd, seen, 0, 4096, candidate.start + offset) === 4096 &&
          Buffer.compare(seen, expected) === 0
        );
      } catch {
        return false;
      }
    }),
  );
  closeSync(fd);
  const nonZero = [...known.values()].some((page) => page.some((b) => b !== 0));
  if (fits.length !== 1 || !(nonZero || candidates.length === 1)) return undefined;
  const layout = { map };
  return fileReader(
    'process-memory',
    `/proc/${pid}/mem`,
    fits[0]!.start,
    layout,
    () => Promise.resolve(),
    () => undefined,
  );
}

/**
 * The process's anonymous mappings of the block's exact size, and its memory opened for reading;
 * undefined when it is not ours to read.
 */
function openRamCandidates(pid: number, map: MainRam): { candidates: Mapping[]; fd: number } | undefined {
  try {
    const candidates = ramCandidates(parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')), map.bytes);
    return { candidates, fd: openSync(`/proc/${pid}/mem`, 'r') };
  } catch {
    return undefined;
  }
}

const SAMPLES = 8;

/**
 * QEMU's host address of the main RAM block: the anonymous mapping of its exact size whose sample
 * pages equal what `pmemsave` gives for the same guest addresses (all of them when the guest is
 * stopped, most of them while it runs, and at least one not all zero unless it is the only candidate).
 */
async function findRamMapping(
  pid: number,
  map: MainRam,
  viaPmemsave: GuestRam,
  running: boolean,
): Promise<number | undefined> {
  const opened = openRamCandidates(pid, map);
  if (!opened) return undefined;
  const { candidates, fd } = opened;
  try {
    if (candidates.length === 0) return undefined;
    const offsets = sampleOffsets(map);
    const expected = new Uint8Array(4096);
    const seen = new Uint8Array(4096);
    const scores = candidates.map(() => ({ equal: 0, nonZero: 0 }));
    for (const offset of offsets) {
      await viaPmemsave.read(expected, offset, 4096);
      const nonZero = expected.some((b) => b !== 0);
      candidates.forEach((candidate, c) => {
        try {
          if (readSync(fd, seen, 0, 4096, candidate.start + offset) !== 4096) return;
        } catch {
          return;
        }
        if (Buffer.compare(seen, expected) !== 0) return;
        scores[c]!.equal++;
        if (nonZero) scores[c]!.nonZero++;
      });
    }
    const needed = running ? Math.ceil(offsets.length / 2) : offsets.length;
    const fits = candidates.filter(
      (_, c) => scores[c]!.equal >= needed && (scores[c]!.nonZero > 0 || candidates.length === 1),
    );
    return fits.length === 1 ? fits[0]!.start : undefined;
  } finally {
    closeSync(fd);
  }
}

/** Page offsets spread over the ranges the guest sees, past the first MiB (firmware areas). */
function sampleOffsets(map: MainRam): number[] {
  const pages = map.ranges.flatMap((r) => {
    const first = Math.ceil(Math.max(r.offset, 1 << 20) / 4096);
    const last = Math.floor((r.offset + r.length) / 4096) - 1;
    return last >= first ? [{ first, last }] : [];
  });
  const total = pages.reduce((n, p) => n + p.last - p.first + 1, 0);
  const offsets: number[] = [];
  for (let i = 0; i < SAMPLES && total > 0; i++) {
    let k = Math.floor(((i + 0.5) * total) / SAMPLES);
    for (const p of pages) {
      const n = p.last - p.first + 1;
      if (k < n) {
        offsets.push((p.first + k) * 4096);
        break;
      }
      k -= n;
    }
  }
  return offsets;
}
