import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  listeningSocketInode,
  mainRam,
  parseMaps,
  parseRamBlocks,
  ramCandidates,
} from '../../src/qemu/memory-map.js';
import {
  CHECK_CHUNK_BYTES,
  compareMemory,
  decodeMemoryDigests,
  digestChunk,
  encodeMemoryDigests,
  newMemorySeed,
  type MemoryDigests,
} from '../../src/live/memory-check.js';

/** `info ramblock` and `info mtree -f` as QEMU 7.2 prints them (pc, RAM in a memory backend "ram0"). */
const RAMBLOCK_PC = `              Block Name    PSize              Offset               Used              Total
                    ram0    4 KiB  0x0000000000000000 0x0000000008000000 0x0000000008000000
    /rom@etc/acpi/tables    4 KiB  0x0000000008080000 0x0000000000020000 0x0000000000200000
                 pc.bios    4 KiB  0x0000000008000000 0x0000000000040000 0x0000000000040000
`;
const MTREE_PC = `FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000010-000000000000001f (prio 0, i/o): io @0000000000000010

FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): ram0
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-0000000007ffffff (prio 0, ram): ram0 @0000000000100000
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #2
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): ram0
  0000000000100000-0000000003ffffff (prio 0, ram): ram0 @0000000000100000
`;
/** q35 with 3 GiB: the RAM above 2 GiB is mapped at 4 GiB. */
const RAMBLOCK_Q35 = `              Block Name    PSize              Offset               Used              Total
                  pc.ram    4 KiB  0x0000000000000000 0x00000000c0000000 0x00000000c0000000
                  pc.rom    4 KiB  0x00000000c0040000 0x0000000000020000 0x0000000000020000
`;
const MTREE_Q35 = `FlatView #0
 AS "memory", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000
  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @0000000080000000
`;

test('memory map: the main RAM block and the ranges the system address space maps of it', () => {
  assert.deepEqual(
    parseRamBlocks(RAMBLOCK_PC).map((b) => b.name),
    ['ram0', '/rom@etc/acpi/tables', 'pc.bios'],
  );
  // The system view, not the I/O view before it nor the SMM view after it.
  assert.deepEqual(mainRam(RAMBLOCK_PC, MTREE_PC), {
    block: 'ram0',
    bytes: 128 << 20,
    ranges: [
      { offset: 0, gpa: 0, length: 0xc0000 },
      { offset: 0x100000, gpa: 0x100000, length: (128 << 20) - 0x100000 },
    ],
  });
  assert.deepEqual(mainRam(RAMBLOCK_Q35, MTREE_Q35)?.ranges, [
    { offset: 0, gpa: 0, length: 0xc0000 },
    { offset: 0x100000, gpa: 0x100000, length: 0x80000000 - 0x100000 },
    { offset: 0x80000000, gpa: 0x100000000, length: 0x40000000 },
  ]);
  assert.equal(mainRam('', MTREE_PC), undefined);
  assert.equal(mainRam(RAMBLOCK_PC, 'FlatView #0\n AS "memory", root: system\n'), undefined);
});

test('memory map: RAM mappings of a process, and the pid behind a listening socket', () => {
  const maps = parseMaps(
    [
      '561cc69da000-561cc6de1000 r--p 00000000 fe:00 2170889                    /usr/bin/qemu-system-x86_64',
      '7faf07e00000-7faf17e00000 rw-p 00000000 00:00 0 ',
      '7faf17e00000-7faf17e01000 ---p 00000000 00:00 0 ',
      '7faf20000000-7faf30000000 rw-p 00000000 00:00 0                          [heap]',
    ].join('\n'),
  );
  assert.equal(maps.length, 4);
  assert.deepEqual(
    ramCandidates(maps, 256 << 20).map((m) => m.start),
    [0x7faf07e00000],
  );
  const unix = [
    'Num       RefCount Protocol Flags    Type St Inode Path',
    '0000000000000000: 00000003 00000000 00000000 0001 03 41234 /tmp/x/g1.qmp',
    '0000000000000000: 00000002 00000000 00010000 0001 01 41200 /tmp/x/g1.qmp',
    '0000000000000000: 00000002 00000000 00010000 0001 01 41300 /tmp/x/other.qmp',
  ].join('\n');
  assert.equal(listeningSocketInode(unix, '/tmp/x/g1.qmp'), 41200);
  assert.equal(listeningSocketInode(unix, '/tmp/x/none.qmp'), undefined);
});

function digests(ranges: [number, number][], fill: (k: number) => number): MemoryDigests {
  const chunks = ranges.reduce((n, [, l]) => n + Math.ceil(l / CHECK_CHUNK_BYTES), 0);
  const bytes = new Uint8Array(chunks * 32);
  for (let k = 0; k < chunks; k++) bytes.fill(fill(k), k * 32, (k + 1) * 32);
  return { block: 'pc.ram', ranges, digests: bytes };
}

test('memory check: equal digests pass; a differing chunk is named by its offset; layouts must agree', () => {
  const ranges: [number, number][] = [
    [0, 0xc0000],
    [0x100000, 8 << 20],
  ];
  const source = digests(ranges, (k) => k);
  assert.equal(
    compareMemory(
      source,
      digests(ranges, (k) => k),
    ),
    undefined,
  );
  const why = compareMemory(
    source,
    digests(ranges, (k) => (k === 3 ? 99 : k)),
  );
  // Chunk 0 is the first range; chunks 1.. are the second range's MiBs from 0x100000.
  assert.match(why ?? '', /1 MiB chunk\(s\) \(pc\.ram\+0x300000\)/);
  assert.match(
    compareMemory(
      source,
      digests([[0, 0xc0000]], (k) => k),
    ) ?? '',
    /layouts differ/,
  );
});

test('memory check: digests survive the wire; malformed encodings are refused', () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(1 << 30), fc.integer({ min: 1, max: 5 << 20 })), {
        minLength: 1,
        maxLength: 5,
      }),
      fc.nat(255),
      (ranges, seed) => {
        const m = digests(ranges, (k) => (k + seed) & 255);
        const back = decodeMemoryDigests(encodeMemoryDigests(m));
        assert.deepEqual(back, { ...m, ranges });
      },
    ),
  );
  const good = encodeMemoryDigests(digests([[0, 3 << 20]], (k) => k));
  assert.equal(decodeMemoryDigests(good.subarray(0, good.length - 1)), undefined);
  assert.equal(decodeMemoryDigests(new Uint8Array(3)), undefined);
  const huge = Buffer.from(good);
  huge.writeUInt32LE(1e6, 0);
  assert.equal(decodeMemoryDigests(huge), undefined);
});

test('memory check: one changed word anywhere in a chunk changes its digest, under any seed', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.integer({ min: 0, max: 4096 / 4 - 1 }),
      fc.integer({ min: 1, max: 0xffffffff }),
      (seed, word, flip) => {
        const page = new Uint8Array(4096);
        for (let i = 0; i < page.length; i++) page[i] = (i * 31) & 0xff;
        const before = digestChunk(page, seed);
        const view = new DataView(page.buffer);
        view.setUint32(word * 4, (view.getUint32(word * 4, true) ^ flip) >>> 0, true);
        assert.notDeepEqual(digestChunk(page, seed), before);
      },
    ),
    { numRuns: 500 },
  );
  // Same bytes, another seed: another digest (a guest cannot know the seed its check will use).
  const zeros = new Uint8Array(CHECK_CHUNK_BYTES);
  assert.notDeepEqual(digestChunk(zeros, newMemorySeed()), digestChunk(zeros, newMemorySeed()));
});
