import type { QemuMonitor } from '../qemu/qmp.js';

/**
 * Each running VM's dirty rate (bytes/s), measured by QEMU over one second, started early (as the scan
 * reaches the VM) and read when the migrations need it, so the measurement costs no time of its own.
 *
 * QEMU samples pages and hashes them twice; with its default of 512 pages per GiB a guest writing
 * ~3 MiB/s read as 0 B/s in 5 of 7 runs here, so the sample is the largest QEMU takes (SAMPLE_PAGES
 * per GiB). The exact mode, `dirty-bitmap`, is not used: QEMU 7.2 under TCG dies on it (the process
 * exits at once, the guest with it; seen here). The figure only picks the copy strategy to start
 * with: every precopy runs with QEMU's auto-converge armed, so a guest that dirties faster than its
 * pages cross is throttled by QEMU during the migration, and the report says how much
 * (`throttlePercent`). A VM whose QEMU measures nothing counts as idle.
 */
export const SAMPLE_PAGES = 10_000;
export const DIRTY_RATE_SECONDS = 1;

export interface DirtyRateProbe {
  /** The rates, in the order of the clients given; waits for the measurement's end. */
  rates(): Promise<number[]>;
}

export function startDirtyRates(clients: readonly QemuMonitor[]): DirtyRateProbe {
  const each = clients.map(startDirtyRate);
  return { rates: () => Promise.all(each) };
}

/**
 * Dirty rates started VM by VM as a job reaches each one (`start`), read later for the VMs that
 * migrate (`probe`: one not started yet starts then).
 */
export class DirtyRatesAsReached {
  private readonly started = new Map<number, Promise<number>>();

  start(vm: number, qmp: QemuMonitor): void {
    this.started.set(vm, startDirtyRate(qmp));
  }

  probe(vms: readonly number[], monitorOf: (vm: number) => QemuMonitor): DirtyRateProbe {
    return { rates: () => Promise.all(vms.map((v) => this.started.get(v) ?? startDirtyRate(monitorOf(v)))) };
  }
}

/**
 * One VM's dirty rate, measured from now (a job starts it as soon as it reached the VM's monitor, so
 * the second it takes passes during the scan); 0 where QEMU measures nothing. Never rejects.
 */
export async function startDirtyRate(qmp: QemuMonitor): Promise<number> {
  const startedAt = Date.now();
  const ok = await qmp
    .execute('calc-dirty-rate', { 'calc-time': DIRTY_RATE_SECONDS, 'sample-pages': SAMPLE_PAGES })
    .then(
      () => true,
      () => false,
    );
  if (!ok) return 0;
  const wait = startedAt + DIRTY_RATE_SECONDS * 1000 + 100 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  return measured(qmp);
}

async function measured(qmp: QemuMonitor): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const info = (await qmp.execute('query-dirty-rate').catch(() => ({}))) as {
      status?: string;
      'dirty-rate'?: number;
    };
    if (info.status === 'measured') return (info['dirty-rate'] ?? 0) * 2 ** 20;
    await new Promise((r) => setTimeout(r, 100));
  }
  return 0;
}
