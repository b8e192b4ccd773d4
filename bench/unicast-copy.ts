/**
 * The per-VM unicast baselines of bench/scatter-images: a plain TCP copy of one image (raw), or of its
 * LZ4-compressed form, from the source to a target, written to a file there as a migration would.
 *
 *   node dist/bench/unicast-copy.js serve --listen ADDR:PORT --dir DIR
 *   node dist/bench/unicast-copy.js send --to ADDR:PORT --file IMAGE --name NAME --codec raw|lz4
 *
 * Stream: one JSON line {name, codec}, then the image: raw bytes, or frames [u32 LE raw length | u32 LE
 * compressed length | LZ4 block] of 1 MiB chunks, compressed as they are sent (a streaming pipeline,
 * as an operator would run `lz4 | nc`). The server prints "listening" once bound, and one JSON line per
 * finished file.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { compressSync, uncompressSync } from 'lz4-napi';

const CHUNK = 2 ** 20;

function address(text: string): { host: string; port: number } {
  const at = text.lastIndexOf(':');
  return { host: text.slice(0, at), port: Number(text.slice(at + 1)) };
}

async function serve(listen: string, dir: string): Promise<void> {
  const { host, port } = address(listen);
  const server = net.createServer((socket) => {
    let header: { name: string; codec: string } | undefined;
    let pending = Buffer.alloc(0);
    let fd = -1;
    let written = 0;
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!header) {
        const end = pending.indexOf(10);
        if (end < 0) return;
        header = JSON.parse(pending.subarray(0, end).toString('utf8')) as { name: string; codec: string };
        pending = pending.subarray(end + 1);
        fd = openSync(join(dir, `${header.name}.raw`), 'w');
      }
      if (header.codec === 'raw') {
        writeSync(fd, pending, 0, pending.length, written);
        written += pending.length;
        pending = Buffer.alloc(0);
        return;
      }
      while (pending.length >= 8) {
        const compressed = pending.readUInt32LE(4);
        if (pending.length < 8 + compressed) break;
        const block = uncompressSync(pending.subarray(8, 8 + compressed));
        writeSync(fd, block, 0, block.length, written);
        written += block.length;
        pending = pending.subarray(8 + compressed);
      }
    });
    socket.on('end', () => {
      if (fd >= 0) closeSync(fd);
      process.stdout.write(`${JSON.stringify({ name: header?.name, bytes: written })}\n`);
      socket.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(port, host, () => resolve()));
  process.stdout.write('listening\n');
}

async function send(to: string, file: string, name: string, codec: string): Promise<void> {
  const { host, port } = address(to);
  const socket = net.connect({ host, port });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  const write = (bytes: Uint8Array) =>
    socket.write(bytes) ? Promise.resolve() : new Promise<void>((r) => socket.once('drain', () => r()));
  await write(Buffer.from(`${JSON.stringify({ name, codec })}\n`));
  const fd = openSync(file, 'r');
  const buffer = Buffer.alloc(CHUNK);
  let sent = 0;
  for (let n = readSync(fd, buffer, 0, CHUNK, null); n > 0; n = readSync(fd, buffer, 0, CHUNK, null)) {
    const chunk = buffer.subarray(0, n);
    if (codec === 'raw') {
      await write(Buffer.from(chunk));
      sent += n;
      continue;
    }
    const block = compressSync(chunk);
    const frame = Buffer.alloc(8 + block.length);
    frame.writeUInt32LE(n, 0);
    frame.writeUInt32LE(block.length, 4);
    block.copy(frame, 8);
    await write(frame);
    sent += frame.length;
  }
  closeSync(fd);
  await new Promise<void>((resolve) => socket.end(() => resolve()));
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  process.stdout.write(`${JSON.stringify({ name, sentBytes: sent })}\n`);
}

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    listen: { type: 'string' },
    dir: { type: 'string' },
    to: { type: 'string' },
    file: { type: 'string' },
    name: { type: 'string' },
    codec: { type: 'string', default: 'raw' },
  },
});
if (positionals[0] === 'serve') await serve(values.listen!, values.dir!);
else if (positionals[0] === 'send') await send(values.to!, values.file!, values.name!, values.codec!);
else {
  process.stderr.write('usage: unicast-copy serve --listen A:P --dir D | send --to A:P --file F --name N\n');
  process.exitCode = 2;
}
