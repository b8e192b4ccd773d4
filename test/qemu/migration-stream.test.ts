import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  latestPages,
  parseStream,
  streamImage,
  StreamError,
  StreamParser,
  StreamWriter,
  writeStream,
  type ConfigRecord,
  type PageRecord,
  type RamBlocksRecord,
  type StreamEnd,
  type StreamRecord,
  type ZeroRecord,
} from '../../src/qemu/migration-stream.js';
import type { QmpClient } from '../../src/qemu/qmp.js';
import { tempDir } from '../support/fixtures.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  tickCount,
  type Guest,
} from '../../bench/harness/qemu-guest.js';

/**
 * Golden streams from the installed QEMU (7.2 here), captured at test time: a booted guest is stopped and
 * migrated into a unix socket this test listens on, parsed as the bytes arrive, written back
 * byte-identical, then re-synthesised with every page in reverse order in one PART section and fed to a
 * destination QEMU (-incoming defer -S). The destination's RAM must hold exactly the pages fed, and after
 * `cont` the guest must keep running (its workload rewrites pages every second: a second migration from
 * the destination shows them changed). Variants: pc, q35, and -uuid with validate-uuid on a shared memfd
 * backend (which also gives an x-ignore-shared stream and a compressed one, refused). No skipping: CI
 * installs qemu-system-x86 and busybox-static.
 */

const MEMORY_MIB = 128;
const PAGE = 4096;
const UUID = '6a1f3c52-4b0e-4d2a-9c7e-1f2e3d4c5b6a';
const OTHER_UUID = '0b7e2d9a-1111-4c3b-8a55-77aa00cc99ee';

interface Variant {
  readonly name: string;
  readonly machine: string;
  readonly args: readonly string[];
  readonly capabilities?: Record<string, boolean>;
}

const VARIANTS: readonly Variant[] = [
  { name: 'pc', machine: 'pc-i440fx-7.2', args: [] },
  { name: 'q35', machine: 'pc-q35-7.2', args: ['-machine', 'q35'] },
  {
    name: 'uuid',
    machine: 'pc-i440fx-7.2',
    args: [
      ...['-uuid', UUID],
      ...['-object', `memory-backend-memfd,id=mem,size=${MEMORY_MIB}M,share=on`],
      ...['-machine', 'memory-backend=mem'],
    ],
    capabilities: { 'validate-uuid': true },
  },
];

interface Capture {
  readonly chunks: Buffer[];
  readonly records: StreamRecord[];
  bytes: number;
  end?: StreamEnd;
  error?: unknown;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits for `condition` (checked every 200 ms); fails naming `what` if it does not hold by `ms`. */
async function until(condition: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms / 1000} s`);
    await sleep(200);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function setCapabilities(qmp: QmpClient, capabilities: Record<string, boolean>): Promise<void> {
  const list = Object.entries(capabilities).map(([capability, state]) => ({ capability, state }));
  if (list.length > 0) await qmp.execute('migrate-set-capabilities', { capabilities: list });
}

/** Polls query-migrate until the migration (outgoing or incoming) completed; throws if it failed. */
async function migrationCompleted(qmp: QmpClient, timeoutMs: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const info = await qmp.execute<Record<string, unknown>>('query-migrate');
    if (info.status === 'completed') return info;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new Error(`migration ${String(info.status)}: ${String(info['error-desc'] ?? '')}`);
    }
    await sleep(50);
  }
  throw new Error(`migration not completed within ${timeoutMs} ms`);
}

/**
 * Migrates the (stopped) guest into a unix socket this process listens on, parsing the stream as it
 * arrives in whatever chunks the socket delivers. A refusal is kept, and the rest is read to the end.
 */
async function capture(
  guest: Guest,
  socketPath: string,
  capabilities: Record<string, boolean> = {},
): Promise<Capture> {
  const result: Capture = { chunks: [], records: [], bytes: 0 };
  const server = net.createServer();
  const received = new Promise<void>((resolve) => {
    server.once('connection', (socket) => {
      const parser = new StreamParser();
      socket.on('data', (chunk: Buffer) => {
        result.chunks.push(chunk);
        result.bytes += chunk.length;
        if (result.error) return;
        try {
          for (const record of parser.push(chunk)) result.records.push(record);
        } catch (error) {
          result.error = error;
        }
      });
      socket.on('error', () => undefined);
      socket.once('close', () => {
        if (!result.error) {
          try {
            result.end = parser.end();
          } catch (error) {
            result.error = error;
          }
        }
        resolve();
      });
    });
  });
  rmSync(socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  try {
    await setCapabilities(guest.qmp, capabilities);
    await guest.qmp.execute('migrate', { uri: `unix:${socketPath}` });
    await migrationCompleted(guest.qmp, 30_000);
    await withTimeout(received, 10_000, 'the stream socket to close');
  } finally {
    server.close();
    await setCapabilities(guest.qmp, Object.fromEntries(Object.keys(capabilities).map((c) => [c, false])));
  }
  return result;
}

/** Connects to the destination's incoming socket and writes the stream; resolves once QEMU closed it. */
async function feed(socketPath: string, stream: Uint8Array): Promise<void> {
  const socket = net.connect(socketPath);
  const closed = new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('close', () => resolve());
  });
  socket.end(stream);
  await withTimeout(closed, 30_000, 'the destination to read the stream');
}

const pagesOf = (records: readonly StreamRecord[]) =>
  records.filter((r): r is PageRecord | ZeroRecord => r.kind === 'page' || r.kind === 'zero');

/** Checks what every plain 7.2 precopy stream of a stopped guest holds, and returns its parts. */
function checkStream(t: TestContext, variant: Variant, captured: Capture) {
  assert.equal(captured.error, undefined, `parse error: ${String(captured.error)}`);
  const { records } = captured;
  const config = records.find((r): r is ConfigRecord => r.kind === 'config')!;
  const blocks = records.find((r): r is RamBlocksRecord => r.kind === 'ram-blocks')!.blocks;
  assert.deepEqual(records[0], { kind: 'header', version: 3 });
  assert.equal(config.machine, variant.machine);
  assert.equal(config.uuid, variant.capabilities?.['validate-uuid'] ? UUID : undefined);
  const main = blocks.find((block) => block.length === MEMORY_MIB * 2 ** 20);
  assert.ok(main, `no ${MEMORY_MIB} MiB block in ${JSON.stringify(blocks)}`);

  // A stopped guest: every page of every block exactly once, zero pages as ZERO records with fill 0.
  const pages = pagesOf(records);
  const keys = new Set(pages.map((p) => `${p.block}\0${p.offset}`));
  const totalPages = blocks.reduce((sum, block) => sum + block.length / PAGE, 0);
  assert.equal(pages.length, totalPages);
  assert.equal(keys.size, totalPages);
  assert.ok(pages.every((p) => p.kind === 'page' || p.fill === 0));
  // CONTINUE exactly when the block is the previous record's.
  pages.forEach((p, i) => assert.equal(p.continued, i > 0 && pages[i - 1]!.block === p.block));

  const sections = records.filter((r) => r.kind === 'section-begin');
  const ids = new Set(sections.map((r) => r.kind === 'section-begin' && r.sectionId));
  const description = captured.end!.description!;
  const whole = Buffer.concat(captured.chunks);
  const json = JSON.parse(
    whole.subarray(description.offset, description.offset + description.length).toString(),
  ) as {
    devices: { name: string }[];
  };
  assert.ok(json.devices.length > 10);

  // Parsed records written back give the stream QEMU sent, byte for byte.
  const parts: Uint8Array[] = [];
  const writer = new StreamWriter((bytes) => parts.push(bytes));
  for (const record of records) writer.write(record);
  assert.ok(Buffer.concat(parts).equals(whole), 'rewritten stream differs from the captured one');

  const zero = pages.filter((p) => p.kind === 'zero').length;
  const named = pages.filter((p) => !p.continued).length;
  t.diagnostic(
    `${variant.name}: ${captured.bytes} bytes in ${captured.chunks.length} socket chunks; ` +
      `blocks ${blocks.map((b) => `${b.name}=${b.length}`).join(' ')}; sections ` +
      `${sections.map((r) => r.kind === 'section-begin' && r.type).join(',')} id ${[...ids].join(',')}; ` +
      `${pages.length - zero} pages, ${zero} zero, ${named} named, tail ${whole.length - captured.end!.tailOffset} bytes ` +
      `(description ${description.length}, ${json.devices.length} devices)`,
  );
  return { whole, records, main: main.name };
}

/** Destination RAM (guest-physical 1 MiB .. 128 MiB, where the main block is mapped 1:1) equals the pages fed. */
function assertRamHolds(path: string, mainBlock: string, pages: readonly (PageRecord | ZeroRecord)[]): void {
  const ram = readFileSync(path);
  assert.equal(ram.length, MEMORY_MIB * 2 ** 20);
  const zeroPage = Buffer.alloc(PAGE);
  let compared = 0;
  for (const p of pages) {
    if (p.block !== mainBlock || p.offset < 2 ** 20) continue;
    const got = ram.subarray(p.offset, p.offset + PAGE);
    const want = p.kind === 'page' ? p.data : zeroPage;
    assert.ok(got.equals(want), `page ${p.offset.toString(16)} of ${mainBlock} differs at the destination`);
    compared++;
  }
  assert.equal(compared, (MEMORY_MIB - 1) * 256);
}

/** Pages of `block` whose content differs between two page lists (latest copies). */
function changedPages(
  before: readonly (PageRecord | ZeroRecord)[],
  after: readonly (PageRecord | ZeroRecord)[],
  block: string,
): number {
  const content = (p: PageRecord | ZeroRecord) =>
    p.kind === 'page' ? Buffer.from(p.data) : Buffer.alloc(PAGE);
  const old = new Map(before.filter((p) => p.block === block).map((p) => [p.offset, content(p)]));
  return after.filter((p) => p.block === block && !old.get(p.offset)?.equals(content(p))).length;
}

test(
  'golden QEMU streams: parsed, rewritten byte-identical, re-synthesised in reverse order and resumed at a destination',
  { timeout: 180_000 },
  async (t) => {
    const started = Date.now();
    const kernel = await ensureGuestKernel();
    const { dir, cleanup } = tempDir('vmscatter-stream-');
    const booted: Guest[] = [];
    t.after(async () => {
      for (const guest of booted) await guest.stop();
      cleanup();
    });
    const initrd = join(dir, 'initrd.gz');
    buildInitramfs(initrd, { seed: 7, workloadMiB: 4 });

    // The sources boot side by side (TCG, a few seconds each).
    const sources = await Promise.all(
      VARIANTS.map(async (variant) => {
        const guest = await bootGuest({
          kernel,
          initrd,
          memoryMiB: MEMORY_MIB,
          qmpSocket: join(dir, `${variant.name}-src.qmp`),
          extraArgs: variant.args,
        });
        booted.push(guest);
        return guest;
      }),
    );
    t.diagnostic(`sources booted after ${Date.now() - started} ms`);

    for (const [i, variant] of VARIANTS.entries()) {
      await t.test(variant.name, async (t) => {
        const source = sources[i]!;
        await source.qmp.execute('stop');
        const captured = await capture(source, join(dir, `${variant.name}-out.sock`), variant.capabilities);
        const { records, main } = checkStream(t, variant, captured);

        // Every page once (the last copy, were there several), in reverse order, one PART section.
        const image = streamImage(records);
        const reversed = latestPages(image.pages).reverse();
        const stream = writeStream({ ...image, pages: reversed });
        const synthesised = parseStream(stream).records;
        assert.deepEqual(
          synthesised
            .filter((r) => r.kind === 'section-begin')
            .map((r) => r.kind === 'section-begin' && r.type),
          ['start', 'part', 'end'],
        );
        assert.deepEqual(
          pagesOf(synthesised).map((p) => `${p.block}@${p.offset}`),
          reversed.map((p) => `${p.block}@${p.offset}`),
        );

        const destination = await bootGuest({
          kernel,
          initrd,
          memoryMiB: MEMORY_MIB,
          qmpSocket: join(dir, `${variant.name}-dst.qmp`),
          incoming: 'defer',
          extraArgs: [...variant.args, '-S'],
        });
        booted.push(destination);
        await setCapabilities(destination.qmp, variant.capabilities ?? {});
        const incoming = join(dir, `${variant.name}-in.sock`);
        await destination.qmp.execute('migrate-incoming', { uri: `unix:${incoming}` });
        await feed(incoming, stream);
        await migrationCompleted(destination.qmp, 30_000);
        const loaded = await destination.qmp.execute<{ status: string; running: boolean }>('query-status');
        assert.equal(loaded.status, 'paused');

        const ram = join(dir, `${variant.name}-dst.ram`);
        await destination.qmp.execute('pmemsave', { val: 0, size: MEMORY_MIB * 2 ** 20, filename: ram });
        assertRamHolds(ram, main, reversed);
        rmSync(ram);

        await destination.qmp.execute('cont');
        // Two ticks on the destination's console: its workload ran a whole turn there (each turn
        // rewrites 64 pages after printing its tick), however slowly this machine runs it.
        await until(() => tickCount(destination.serial()) >= 2, 120_000, 'two ticks at the destination');
        const running = await destination.qmp.execute<{ status: string; running: boolean }>('query-status');
        assert.equal(running.status, 'running');
        assert.equal(destination.process.exitCode, null);

        // The guest ran at the destination: its workload rewrote pages (64 a second).
        await destination.qmp.execute('stop');
        const after = await capture(destination, join(dir, `${variant.name}-again.sock`));
        assert.equal(after.error, undefined, `parse error: ${String(after.error)}`);
        const changed = changedPages(reversed, latestPages(pagesOf(after.records)), main);
        t.diagnostic(`${variant.name}: ${changed} pages of ${main} changed while the destination ran`);
        assert.ok(changed >= 64, `only ${changed} pages changed: the guest did not run`);
        await destination.stop();

        if (variant.name === 'uuid')
          await uuidExtras(t, source, stream, variant, dir, kernel, initrd, booted);
        await source.stop();
      });
    }

    for (const guest of booted) await guest.stop();
    for (const guest of booted)
      assert.throws(() => process.kill(guest.pid, 0), { code: 'ESRCH' }, 'QEMU is gone');
    t.diagnostic(`total ${Date.now() - started} ms`);
  },
);

/**
 * With the uuid + shared memfd source: a destination of another UUID refuses the stream (the configuration
 * subsection is checked); x-ignore-shared adds block addresses and skips the shared block's pages; a
 * compressed stream is refused naming the compressed page.
 */
async function uuidExtras(
  t: TestContext,
  source: Guest,
  stream: Uint8Array,
  variant: Variant,
  dir: string,
  kernel: string,
  initrd: string,
  booted: Guest[],
): Promise<void> {
  const other = await bootGuest({
    kernel,
    initrd,
    memoryMiB: MEMORY_MIB,
    qmpSocket: join(dir, 'other-dst.qmp'),
    incoming: 'defer',
    extraArgs: [...variant.args.map((arg) => (arg === UUID ? OTHER_UUID : arg)), '-S'],
  });
  booted.push(other);
  await setCapabilities(other.qmp, { 'validate-uuid': true });
  const incoming = join(dir, 'other-in.sock');
  await other.qmp.execute('migrate-incoming', { uri: `unix:${incoming}` });
  await feed(incoming, stream).catch(() => undefined); // QEMU may close the socket before all of it is sent
  await withTimeout(other.exited, 15_000, 'the destination with another UUID to exit');
  assert.notEqual(other.process.exitCode, 0);

  await source.qmp.execute('cont');
  await source.qmp.execute('stop');
  const shared = await capture(source, join(dir, 'shared-out.sock'), { 'x-ignore-shared': true });
  assert.equal(shared.error, undefined, `parse error: ${String(shared.error)}`);
  const config = shared.records.find((r): r is ConfigRecord => r.kind === 'config')!;
  assert.deepEqual(config.capabilities, ['x-ignore-shared']);
  assert.equal(config.uuid, undefined); // validate-uuid was switched off again
  const blocks = shared.records.find((r): r is RamBlocksRecord => r.kind === 'ram-blocks')!.blocks;
  assert.ok(blocks.every((block) => block.addr !== undefined));
  assert.equal(blocks.find((block) => block.name === 'pc.bios')?.addr, 2 ** 32 - 256 * 1024);
  assert.equal(pagesOf(shared.records).filter((p) => p.block === 'mem').length, 0);
  const rewritten: Uint8Array[] = [];
  const writer = new StreamWriter((bytes) => rewritten.push(bytes));
  for (const record of shared.records) writer.write(record);
  assert.ok(Buffer.concat(rewritten).equals(Buffer.concat(shared.chunks)));

  await source.qmp.execute('cont');
  await source.qmp.execute('stop');
  const compressed = await capture(source, join(dir, 'compressed-out.sock'), { compress: true });
  assert.ok(compressed.error instanceof StreamError, `expected a refusal, got ${String(compressed.error)}`);
  assert.equal(compressed.error.reason, 'unsupported');
  assert.match(compressed.error.message, /compressed page \(RAM flags 0x1[02]0; the compress capability\)/);
  t.diagnostic(
    `uuid: x-ignore-shared stream ${shared.bytes} bytes, blocks ${blocks.map((b) => `${b.name}@${b.addr}`).join(' ')}; ` +
      `compressed stream ${compressed.bytes} bytes refused: ${compressed.error.message}`,
  );
}
