import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { streamListener } from '../../src/live/source-qemu.js';
import { tempDir } from '../support/fixtures.js';

test("a migration stream's socket admits its owner only, whatever the umask", async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const path = join(dir, 'vm.out');
  const umask = process.umask(0);
  t.after(() => process.umask(umask));
  const listener = streamListener(path);
  t.after(() => listener.close());
  const deadline = Date.now() + 5000;
  let mode = -1;
  while (Date.now() < deadline) {
    try {
      mode = statSync(path).mode & 0o777;
      if (mode === 0o600) break;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.equal(mode.toString(8), '600');
});
