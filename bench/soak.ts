import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { soakLiveScatters, soakQemuMigrations, type SoakSummary } from './harness/soak.js';

/**
 * `npm run bench:soak`: live scatters in a row of a self-checking q35 guest with 2 vCPUs (a writer per
 * vCPU under multi-threaded TCG), each alive at its target with its own check passing, beside the
 * same guest moved by QEMU's own migration (no vmscatter, no memory check) as the baseline: what QEMU
 * loses by itself. Memory checks that caught lost pages (rolled back, retried) are counted apart.
 * Writes docs/bench/soak.json.
 */
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '50' },
    baseline: { type: 'string', default: '10' },
    'memory-mib': { type: 'string', default: '256' },
    out: {
      type: 'string',
      default: join(dirname(fileURLToPath(import.meta.url)), '../../docs/bench/soak.json'),
    },
  },
});
const runs = Number(values.runs);
const baselineRuns = Number(values.baseline);
const memoryMiB = Number(values['memory-mib']);
const cli = join(dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');

function row(name: string, s: SoakSummary): string {
  return `${name.padEnd(28)} runs ${String(s.runs).padStart(3)}  alive ${String(s.alive).padStart(3)}  stayed ${String(s.stayed).padStart(3)}  lost ${String(s.lost).padStart(3)}  memory-check catches ${s.qemuLostPagesCaught} (repaired ${s.repaired}, ${s.repairedMiB} MiB)`;
}

const dir = mkdtempSync(join(tmpdir(), 'vms-bench-soak-'));
try {
  mkdirSync(join(dir, 'qemu'));
  mkdirSync(join(dir, 'scatter'));
  console.log(
    `baseline: QEMU's own migration, ${baselineRuns} moves of a ${memoryMiB} MiB q35 guest, 2 vCPUs`,
  );
  const qemu = await soakQemuMigrations({
    runs: baselineRuns,
    dir: join(dir, 'qemu'),
    cli,
    memoryMiB,
    basePort: 0,
    log: (line) => console.log(`  qemu ${line}`),
  });
  console.log(`vmscatter: ${runs} live scatters of the same guest`);
  const scatter = await soakLiveScatters({
    runs,
    dir: join(dir, 'scatter'),
    cli,
    memoryMiB,
    basePort: 38_000,
    log: (line) => console.log(`  scatter ${line}`),
  });
  console.log('');
  console.log(row("QEMU's own migration", qemu));
  console.log(row('vmscatter live scatter', scatter));
  const failures = (s: SoakSummary) =>
    s.details
      .filter((d) => d.outcome !== 'alive' || d.rollbacks.length > 0 || (d.repairedMiB ?? 0) > 0)
      .map((d) => ({ ...d }));
  const summary = {
    bench: 'soak',
    date: new Date().toISOString(),
    guest: { machine: 'q35', vcpus: 2, memoryMiB, accel: 'tcg (multi-threaded)' },
    vmscatter: { ...scatter, details: undefined, failures: failures(scatter) },
    qemu: { ...qemu, details: undefined, failures: failures(qemu) },
    command: `npm run bench:soak -- --runs ${runs} --baseline ${baselineRuns}`,
  };
  mkdirSync(dirname(values.out!), { recursive: true });
  writeFileSync(values.out!, `${JSON.stringify(summary, null, 2)}\n`);
  console.log(`summary written to ${values.out}`);
  if (scatter.lost > 0) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
