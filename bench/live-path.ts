import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Packr, RESET_BUFFER_MODE } from 'msgpackr';
import { frameParts, KIND_MESSAGE } from '../src/control/control-channel.js';
import { FrameDecoder } from '../src/control/frame-decoder.js';
import { FrameCipher } from '../src/control/secure-channel.js';
import { DigestTable } from '../src/memory/digest-table.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { PAGE_CHECK_BYTES, PageDigester } from '../src/memory/page-digest.js';
import { StreamParser, StreamWriter, writeStream, type StreamRecord } from '../src/qemu/migration-stream.js';
import { ContentStore } from '../src/store/content-store.js';
import { LiveStreamDecoder } from '../src/live/decoder.js';
import { LiveStreamEncoder } from '../src/live/encoder.js';
import { OutputBuffer } from '../src/live/target.js';
import { parseToAgent } from '../src/wire/protocol.js';

/**
 * `npm run bench:live-path`: CPU per 4 KiB page of QEMU's stream on the live path, each end in one
 * process, beside a memcpy of the same bytes measured in the same run:
 *
 *   coordinator  parse QEMU's stream (64 KiB reads, as its socket gives them), check each page
 *                against the scan's check and take the scan's digest where it holds (hash the rest),
 *                decide (held at the target, carried before, or sent in full), encode page runs (zstd
 *                over a run's pages sent in full, each with its digest), msgpack, AES-256-GCM (sealed
 *                as a frame's parts, as the control channel writes them)
 *   agent        frames reassembled from 64 KiB reads, AES-256-GCM open, msgpack, the protocol's
 *                field checks, expand references from a store, take the digests pages sent in full
 *                came with, write QEMU's stream (into output buffers recycled as the socket's are)
 *
 * The stream is a 256 MiB guest as the live lab sees one: 35% zero records, 55% pages the target holds
 * (unchanged since the scan), 5% pages the guest wrote since the scan (half of them compressible), 5%
 * repeats of those.
 * Target (issue: live path at native speed): at most 5 us of CPU per page at each end.
 * Writes docs/bench/live-path.json.
 */
const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    out: {
      type: 'string',
      default: join(dirname(fileURLToPath(import.meta.url)), '../../docs/bench/live-path.json'),
    },
  },
});
const pageCount = (Number(values.mib) * 2 ** 20) / PAGE_SIZE;
const key = new Uint8Array(64).fill(5);
const digester = new PageDigester(key);

function guestPage(i: number, kind: number): Uint8Array {
  const data = new Uint8Array(PAGE_SIZE);
  const seed = kind === 3 ? i % 64 : i;
  if (kind === 2 && i % 2 === 0) {
    // compressible: text-like records
    data.set(
      Buffer.from(`record ${seed} user=u${seed % 977} balance=${seed * 31} `.repeat(80).slice(0, PAGE_SIZE)),
    );
    return data;
  }
  let x = (seed * 2654435761) >>> 0;
  for (let b = 0; b < PAGE_SIZE; b += 4) {
    x = (x * 1664525 + 1013904223) >>> 0;
    data[b] = x >>> 24;
    data[b + 1] = x >>> 16;
    data[b + 2] = x >>> 8;
    data[b + 3] = x;
  }
  return data;
}

/** 0 zero record, 1 held at the target, 2 new, 3 a repeat of new content. */
function kindOf(i: number): number {
  const r = (i * 7919) % 100;
  return r < 35 ? 0 : r < 90 ? 1 : r < 95 ? 2 : 3;
}

// The target's store is the agent's real one (pages in a file, read back with one pread each).
const storeDir = mkdtempSync(join(tmpdir(), 'vms-bench-live-path-'));
process.on('exit', () => rmSync(storeDir, { recursive: true, force: true }));
const store = ContentStore.open(storeDir);
const held = new DigestTable(1 << 16);
const digest = new Uint8Array(16);
const pages: StreamRecord[] = [];
for (let i = 0; i < pageCount; i++) {
  const kind = kindOf(i);
  if (kind === 0) {
    pages.push({ kind: 'zero', block: 'pc.ram', offset: i * PAGE_SIZE, fill: 0 });
    continue;
  }
  const data = guestPage(i, kind);
  if (kind === 1) {
    digester.digestInto(data, 0, digest, 0);
    held.intern(digest, 0);
    store.putMany(digest, data);
  }
  pages.push({ kind: 'page', block: 'pc.ram', offset: i * PAGE_SIZE, data });
}
// What the scan saw: the held pages as they are, the others before the guest wrote them.
const scanned = new Uint8Array(pageCount * PAGE_SIZE);
for (let i = 0; i < pageCount; i++) {
  const kind = kindOf(i);
  if (kind !== 0) scanned.set(guestPage(kind === 1 ? i : i + pageCount, 1), i * PAGE_SIZE);
}
const scanTable = new DigestTable(1 << 16);
const scanIds = new Uint32Array(pageCount);
const scanChecks = new Uint8Array(pageCount * PAGE_CHECK_BYTES);
{
  const step = 1024;
  const digests = new Uint8Array(step * 16);
  const zeros = new Uint8Array(step);
  for (let first = 0; first < pageCount; first += step) {
    const count = Math.min(step, pageCount - first);
    const checks = scanChecks.subarray(first * PAGE_CHECK_BYTES);
    const at = scanned.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE);
    await digester.scanPages(undefined, at, count, digests, zeros, checks);
    for (let k = 0; k < count; k++)
      if (zeros[k] === 0) scanIds[first + k] = scanTable.intern(digests, k * 16);
  }
}

const tailDescription = '{"page_size": 4096, "devices": []}';
const tail = Buffer.alloc(6 + tailDescription.length);
tail[1] = 0x06;
tail.writeUInt32BE(tailDescription.length, 2);
tail.write(tailDescription, 6, 'latin1');
const config = Buffer.concat([Buffer.from([0x07, 0, 0, 0, 13]), Buffer.from('pc-i440fx-7.2', 'latin1')]);
const stream = writeStream({
  config,
  blocks: [{ name: 'pc.ram', length: pageCount * PAGE_SIZE }],
  pages: pages as never,
  tail,
});
pages.length = 0;

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const READ = 4 << 20;
/** What a read of QEMU's Unix socket gives the coordinator (Node's stream reads). */
const SOCKET_READ = 64 << 10;

// Baseline: a memcpy of the stream, in the reads the coordinator gets.
const copy = Buffer.alloc(READ);
let t = cpu();
for (let at = 0; at < stream.length; at += READ) stream.copy(copy, 0, at, Math.min(stream.length, at + READ));
const memcpySeconds = cpu() - t;

// Coordinator.
const packr = new Packr({ useRecords: false });
const sealer = new FrameCipher(new Uint8Array(32).fill(1));
const frames: Uint8Array[] = [];
const encoder = new LiveStreamEncoder({
  digester,
  holds: (d) => held.lookup(d) > 0,
  codec: 'zstd',
  scanned: { block: 'pc.ram', checks: scanChecks, ids: scanIds, table: scanTable },
});
// As migrate.ts wires them: records to the encoder as the parser reads them, most pages by its sink.
const parser = new StreamParser({ onRecord: (record) => encoder.add(record), pages: encoder });
// As the control channel sends a message: sealed as a frame's parts (the socket writes them as one
// writev; joined below, untimed, as the wire joins them).
const send = () => {
  const message = encoder.take();
  if (!message) return;
  const body = packr.pack({ t: 'live-stream', vm: 'g1', records: message.records }, RESET_BUFFER_MODE);
  frames.push(...frameParts(sealer, KIND_MESSAGE, body));
};
t = cpu();
for (let at = 0; at < stream.length; at += SOCKET_READ) {
  parser.push(stream.subarray(at, Math.min(stream.length, at + SOCKET_READ)));
  if (encoder.full) send();
}
parser.end();
send();
const coordinatorSeconds = cpu() - t;
const wire = Buffer.concat(frames);
const wireBytes = wire.length;

// Agent.
const opener = new FrameCipher(new Uint8Array(32).fill(1));
// As LiveTarget writes: page records built in one reused buffer, a message's stream in one output.
let written = 0;
const output = new OutputBuffer();
const writer = new StreamWriter((bytes) => output.append(bytes), { sinkCopies: true });
const decoder = new LiveStreamDecoder('g1', {
  digester,
  pageOf: (d, into) => store.get(d, into),
  sink: (record) => writer.write(record),
});
// As the control channel receives: the socket's reads (64 KiB) into the frame decoder, each frame
// opened, its body unpacked and checked, then expanded into the destination's stream.
const frameDecoder = new FrameDecoder(16 * 2 ** 20);
t = cpu();
for (let at = 0; at < wire.length; at += SOCKET_READ) {
  frameDecoder.append(wire.subarray(at, Math.min(wire.length, at + SOCKET_READ)));
  for (let frame = frameDecoder.nextReusing(); frame; frame = frameDecoder.nextReusing()) {
    const plain = opener.open(frame)!;
    const message = parseToAgent(packr.unpack(plain.subarray(1)));
    if (!message || message.t !== 'live-stream') throw new Error('a frame did not decode');
    decoder.write(message.records);
    const bytes = output.take();
    written += bytes.length;
    output.recycle(bytes);
  }
}
const agentSeconds = cpu() - t;
if (decoder.digest.hex() !== encoder.digest.hex()) throw new Error('the two ends disagree on the stream');

const us = (seconds: number) => (seconds / pageCount) * 1e6;
const result = {
  bench: 'live-path',
  date: new Date().toISOString(),
  pages: pageCount,
  streamMiB: stream.length / 2 ** 20,
  wireMiB: wireBytes / 2 ** 20,
  nativeDigests: digester.isNative,
  counts: encoder.counts,
  usPerPage: {
    memcpy: us(memcpySeconds),
    coordinator: us(coordinatorSeconds),
    agent: us(agentSeconds),
  },
  ratioToMemcpy: {
    coordinator: coordinatorSeconds / memcpySeconds,
    agent: agentSeconds / memcpySeconds,
  },
  targetUsPerPage: 5,
  agentWrittenMiB: written / 2 ** 20,
  command: `npm run bench:live-path -- --mib ${values.mib}`,
};
console.log(
  `live path, ${pageCount} pages (${result.streamMiB.toFixed(0)} MiB of QEMU stream, ${result.wireMiB.toFixed(1)} MiB on the wire); native digests: ${digester.isNative}`,
);
console.log(`  memcpy (baseline)  ${result.usPerPage.memcpy.toFixed(2)} us/page`);
console.log(
  `  coordinator        ${result.usPerPage.coordinator.toFixed(2)} us/page  (${result.ratioToMemcpy.coordinator.toFixed(1)}x memcpy; target <= 5)`,
);
console.log(
  `  agent              ${result.usPerPage.agent.toFixed(2)} us/page  (${result.ratioToMemcpy.agent.toFixed(1)}x memcpy; target <= 5)`,
);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(values.out!, `${JSON.stringify(result, null, 2)}\n`);
console.log(`summary written to ${values.out}`);
