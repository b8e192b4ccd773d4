import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoRoot, tempDir } from '../support/fixtures.js';
import { soakLiveScatters } from '../../bench/harness/soak.js';

/**
 * The short soak: a self-checking q35 guest with 2 vCPUs (multi-threaded TCG, a writer per vCPU) live
 * scattered three times in a row. Every move ends with the guest alive and passing its own data check
 * where the report says it runs: at its target, or at its source after a rollback. Before the memory
 * check, such a guest died at its target in 2 of 7 moves reported as verified (`npm run bench:soak`
 * runs 50).
 */
test(
  'soak: a self-checking 2-vCPU guest moved three times is alive where it runs each time',
  { timeout: 900_000 },
  async (t) => {
    const { dir, cleanup } = tempDir('vms-soak-');
    t.after(cleanup);
    const summary = await soakLiveScatters({
      runs: 3,
      dir,
      cli: join(repoRoot, 'dist/src/cli/main.js'),
      basePort: 37_000 + (process.pid % 500) * 16,
      log: (line) => t.diagnostic(line),
    });
    t.diagnostic(JSON.stringify({ ...summary, details: undefined }));
    assert.equal(summary.lost, 0, JSON.stringify(summary.details));
    assert.equal(summary.runs, 3);
    assert.ok(summary.alive >= 1, `moved at least once: ${JSON.stringify(summary.details)}`);
  },
);
