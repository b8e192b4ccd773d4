import assert from 'node:assert/strict';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { StreamParser } from '../../src/qemu/migration-stream.js';
import { waitMigrationSettled } from '../../src/live/source-qemu.js';
import { bootGuest, buildInitramfs, ensureGuestKernel, lastTick } from '../../bench/harness/qemu-guest.js';
import { tempDir } from '../support/fixtures.js';

/**
 * What makes a live switch-over safe from the coordinator dying (live/migrate.ts): with the return path
 * on, a source QEMU whose stream is whole waits, guest stopped, for the answer on that path. Answered
 * (RETURN_PATH_SHUT_OK), it completes; left unanswered because the reading process died (its socket
 * closed), its migration fails and QEMU restarts the guest by itself. Without this, a coordinator
 * killed between the source's completion and the target's resume left the guest running nowhere.
 */
test(
  'return path: a whole stream left unanswered fails the migration and the guest runs on; answered, it completes',
  {
    timeout: 240_000,
  },
  async (t) => {
    const { dir, cleanup } = tempDir('vms-rp-');
    t.after(cleanup);
    const kernel = await ensureGuestKernel();
    const initrd = join(dir, 'initrd.gz');
    buildInitramfs(initrd, { seed: 3, workloadMiB: 4 });
    const guest = await bootGuest({ kernel, initrd, memoryMiB: 128, qmpSocket: join(dir, 'src.qmp') });
    t.after(() => guest.stop());
    while (lastTick(guest.serial()) < 2) await new Promise((r) => setTimeout(r, 200));
    await guest.qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'return-path', state: true }],
    });

    /** Migrates into a socket read to the stream's end, then answers it or dies (closes it). */
    const migrate = async (name: string, answer: Uint8Array | undefined) => {
      const path = join(dir, `${name}.sock`);
      const whole = new Promise<net.Socket>((resolve, reject) => {
        const server = net.createServer((socket) => {
          server.close();
          const parser = new StreamParser();
          socket.on('data', (chunk: Buffer) => {
            try {
              parser.push(chunk);
            } catch (error) {
              reject(error as Error);
            }
            if (parser.complete) resolve(socket);
          });
        });
        server.listen(path);
      });
      await guest.qmp.execute('migrate', { uri: `unix:${path}` });
      const socket = await whole;
      // Whole, unanswered: QEMU still waits, the guest stopped.
      const waiting = (await guest.qmp.execute('query-migrate')) as { status?: string };
      assert.equal(waiting.status, 'active', `${name}: waits for the answer`);
      if (answer) socket.write(answer);
      else socket.destroy();
      return waitMigrationSettled(guest.qmp, 60_000, 20);
    };

    assert.equal(await migrate('dies', undefined), 'failed');
    const after = (await guest.qmp.execute('query-status')) as { status?: string };
    assert.equal(after.status, 'running', 'QEMU restarted the guest itself');
    const tick = lastTick(guest.serial());
    while (lastTick(guest.serial()) <= tick) await new Promise((r) => setTimeout(r, 200));

    assert.equal(await migrate('answered', Uint8Array.of(0, 1, 0, 4, 0, 0, 0, 0)), 'completed');
    const done = (await guest.qmp.execute('query-status')) as { status?: string };
    assert.equal(done.status, 'postmigrate');
  },
);
