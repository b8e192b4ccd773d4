import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { streamListener } from '../../src/live/source-qemu.js';
import { adoptStream, READ_BUFFER_BYTES } from '../../src/live/stream-socket.js';
import { native } from '../../src/native/native.js';
import { tempDir } from '../support/fixtures.js';

test("QEMU's stream is read whole and in order through one reused buffer, and answered on it", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const listener = streamListener(join(dir, 'vm.out'));
  t.after(() => listener.close());
  // What QEMU would send: more than many reads' worth, so the buffer is reused again and again.
  const sent = Buffer.alloc(8 * READ_BUFFER_BYTES + 12_345);
  for (let i = 0; i < sent.length; i++) sent[i] = (i * 131 + (i >> 12)) & 0xff;
  // QEMU keeps the socket open after its stream until the return path answers it.
  const qemu = net.connect({ path: join(dir, 'vm.out') });
  t.after(() => qemu.destroy());
  const answer = new Promise<string>((resolve) =>
    qemu.once('data', (chunk: Buffer) => resolve(chunk.toString())),
  );
  qemu.write(sent);
  const { socket, read } = adoptStream(await listener.accepted);
  t.after(() => socket.destroy());
  const hash = createHash('sha256');
  let bytes = 0;
  const views = new Set<ArrayBufferLike>();
  await new Promise<void>((resolve) =>
    read((chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
      views.add(chunk.buffer);
      if (bytes >= sent.length) resolve();
    }),
  );
  socket.write('answer');
  assert.equal(bytes, sent.length);
  assert.equal(hash.digest('hex'), createHash('sha256').update(sent).digest('hex'));
  if (native) assert.equal(views.size, 1, 'every read lands in the same buffer');
  assert.equal(await answer, 'answer');
});
