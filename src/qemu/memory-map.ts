/**
 * Where a guest's main RAM is, read from QEMU's own monitor output (pure parsing, no I/O).
 *
 * `info ramblock` lists RAM blocks with their used lengths; the largest is the guest's main RAM
 * (`pc.ram`, or the memory backend's id). `info mtree -f` gives the flat view of the system address
 * space (the flat view of address space "memory"): which guest-physical ranges map which region at
 * which offset. The ranges of the main RAM
 * region that the guest sees (as RAM or ROM) are what a memory check compares: the same block offsets
 * at both ends, whichever way each end reads them (a shared memory file, the QEMU process's memory, or
 * `pmemsave` of guest-physical addresses).
 */

export interface RamBlockInfo {
  readonly name: string;
  readonly usedBytes: number;
}

/** A piece of the main RAM the guest sees: `length` bytes at block `offset`, guest-physical `gpa`. */
export interface RamRange {
  readonly offset: number;
  readonly gpa: number;
  readonly length: number;
}

export interface MainRam {
  readonly block: string;
  readonly bytes: number;
  /** Sorted by offset, not overlapping. */
  readonly ranges: readonly RamRange[];
}

/** Parses `info ramblock` (QEMU 7.x: name, page size, offset, used, total). */
export function parseRamBlocks(text: string): RamBlockInfo[] {
  const blocks: RamBlockInfo[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\S+)\s+\d+\s+[KMG]iB\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+/i.exec(line);
    if (m) blocks.push({ name: m[1]!, usedBytes: Number(BigInt(m[2]!)) });
  }
  return blocks;
}

/**
 * The main RAM block (the largest) and the ranges of it that the system address space maps, from the
 * system flat view of `info mtree -f`. Undefined when either listing has nothing we recognise.
 */
export function mainRam(ramblockText: string, mtreeText: string): MainRam | undefined {
  const blocks = parseRamBlocks(ramblockText);
  if (blocks.length === 0) return undefined;
  const main = blocks.reduce((a, b) => (b.usedBytes > a.usedBytes ? b : a));
  const ranges: RamRange[] = [];
  // The flat view that the system address space ("memory") uses; views list their address spaces first.
  let inView: 'before' | 'memory' | 'other' = 'before';
  let done = false;
  for (const line of mtreeText.split('\n')) {
    if (/^FlatView #/.test(line)) {
      if (inView === 'memory') done = true;
      inView = 'other';
      continue;
    }
    if (done) break;
    if (/^\s*AS "memory",/.test(line)) inView = 'memory';
    if (inView !== 'memory') continue;
    const m = /^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (?:ram|rom)\): (\S+)(?: @([0-9a-f]+))?/i.exec(line);
    if (!m || m[3] !== main.name) continue;
    const gpa = Number(BigInt(`0x${m[1]}`));
    const length = Number(BigInt(`0x${m[2]}`)) - gpa + 1;
    const offset = m[4] === undefined ? 0 : Number(BigInt(`0x${m[4]}`));
    if (length <= 0 || offset + length > main.usedBytes) continue;
    ranges.push({ offset, gpa, length });
  }
  if (ranges.length === 0) return undefined;
  ranges.sort((a, b) => a.offset - b.offset);
  // Two views of the same bytes (an alias) are compared once.
  const disjoint: RamRange[] = [];
  for (const range of ranges) {
    const last = disjoint.at(-1);
    if (last && range.offset < last.offset + last.length) continue;
    disjoint.push(range);
  }
  return { block: main.name, bytes: main.usedBytes, ranges: disjoint };
}

/** An anonymous or file mapping of a process (`/proc/PID/maps`). */
export interface Mapping {
  readonly start: number;
  readonly end: number;
  readonly perms: string;
  readonly inode: number;
  readonly path: string;
}

export function parseMaps(text: string): Mapping[] {
  const mappings: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) [0-9a-f]+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    mappings.push({
      start: Number(BigInt(`0x${m[1]}`)),
      end: Number(BigInt(`0x${m[2]}`)),
      perms: m[3]!,
      inode: Number(m[4]),
      path: m[5]!.trim(),
    });
  }
  return mappings;
}

/**
 * Mappings that may hold a RAM block of `bytes`: readable and writable, anonymous (QEMU's RAM
 * allocator maps the block alone, with a guard page after it, so it is not merged with neighbours),
 * exactly that long.
 */
export function ramCandidates(mappings: readonly Mapping[], bytes: number): Mapping[] {
  return mappings.filter(
    (m) => m.end - m.start === bytes && m.perms.startsWith('rw') && m.inode === 0 && m.path === '',
  );
}

/** Finds the inode of the listening unix socket at `path` in `/proc/net/unix` text. */
export function listeningSocketInode(procNetUnix: string, path: string): number | undefined {
  for (const line of procNetUnix.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path; St 01 is listening (unconnected).
    if (fields.length >= 8 && fields.slice(7).join(' ') === path && fields[5] === '01')
      return Number(fields[6]);
  }
  return undefined;
}
