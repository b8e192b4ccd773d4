import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pidListeningAt } from '../qemu/guest-ram.js';
import { connectQmp } from '../qemu/qmp.js';

/**
 * Destination QEMUs an agent started (their QMP sockets in its run directory), which outlive it: a VM
 * that runs at this target keeps running when the agent stops or restarts.
 */
async function eachDestination(
  runDir: string,
  visit: (vm: string, status: string | undefined, quit: () => Promise<unknown>) => Promise<void>,
): Promise<void> {
  let names: string[];
  try {
    names = readdirSync(runDir);
  } catch {
    return; // no run directory yet: no destinations
  }
  for (const name of names) {
    if (!name.endsWith('.qmp')) continue;
    const path = join(runDir, name);
    const qmp = await connectQmp(path, { connectTimeoutMs: 1000 }).catch(() => undefined);
    if (!qmp) {
      // A leftover socket file nobody listens on goes; one a client holds (QEMU serves one) stays.
      if (pidListeningAt(path) === undefined) rmSync(path, { force: true });
      continue;
    }
    const status = ((await qmp.execute('query-status').catch(() => ({}))) as { status?: string }).status;
    await visit(name.slice(0, -'.qmp'.length), status, () => qmp.execute('quit').catch(() => undefined));
    await qmp.close().catch(() => undefined);
  }
}

/** At start-up: destinations an earlier run left paused (never resumed) are quit; running ones stay. */
export async function sweepStaleDestinations(runDir: string, log?: (line: string) => void): Promise<void> {
  await eachDestination(runDir, async (vm, status, quit) => {
    if (status === 'running') return;
    log?.(`quitting destination QEMU ${vm} left ${status ?? 'unanswering'} by an earlier run`);
    await quit();
  });
}

/**
 * The VMs whose destinations run here: a job's coordinator learns from them which running VMs moved
 * already (their sources may be gone, or stopped after the switch-over).
 */
export async function runningDestinations(runDir: string): Promise<string[]> {
  const running: string[] = [];
  await eachDestination(runDir, async (vm, status) => {
    if (status === 'running') running.push(vm);
  });
  return running;
}
