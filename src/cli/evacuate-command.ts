import { createInterface } from 'node:readline/promises';
import { InputError, VmscatterError } from '../errors.js';
import { evacuationTopology, presentVms, type AbsentVm } from '../coordinator/evacuation.js';
import { loadTopology } from '../topology/load.js';
import { withLibvirtInventory } from '../coordinator/inventory.js';
import { parseRate } from '../topology/units.js';
import { runJobFromCli } from './scatter-command.js';
import { renderTable } from './table.js';

/**
 * `vmscatter evacuate --host NAME`: empties a host onto the others before maintenance, as
 * evacuation scripts call it. Exit codes: 0 every VM moved and verified (or nothing was left to move);
 * 2 partial (the JSON says which VMs moved, which stayed and why); 1 an error before anything moved.
 * Running it again moves only what is still on the host.
 */
export interface EvacuateCommandOptions {
  readonly host: string;
  readonly topology: string;
  readonly excludeHost?: string[];
  readonly dryRun?: boolean;
  readonly maxParallel: number;
  readonly bandwidth?: string;
  readonly downtimeLimit: number;
  readonly timeoutPerGib?: number;
  readonly onTimeout: 'abort' | 'stop-and-copy';
  readonly yes?: boolean;
  readonly json?: boolean;
  readonly secretFile?: string;
  readonly workDir: string;
  readonly mtu?: number;
}

/** Moved some, not all: the report says which stayed. */
export class PartialEvacuationError extends VmscatterError {
  constructor(message: string) {
    super('VMS_PARTIAL', message);
  }
}

export async function evacuateCommand(options: EvacuateCommandOptions): Promise<void> {
  try {
    await evacuate(options);
  } catch (error) {
    // Anything that stops an evacuation before a VM moved is exit 1, whatever its kind.
    if (error instanceof VmscatterError && !(error instanceof PartialEvacuationError))
      throw new VmscatterError(error.code, error.message, 1);
    throw error;
  }
}

async function evacuate(options: EvacuateCommandOptions): Promise<void> {
  const loaded = loadTopology(options.topology);
  let bandwidthBitsPerSecond: number | undefined;
  if (options.bandwidth !== undefined) {
    const rate = parseRate(options.bandwidth);
    if (typeof rate === 'string') throw new InputError(`--bandwidth ${options.bandwidth}: ${rate}`);
    bandwidthBitsPerSecond = rate;
  }
  const whole = evacuationTopology(loaded, options.host, options.excludeHost ?? [], bandwidthBitsPerSecond);
  // A host with a libvirt: what runs there is what moves, whether the topology lists it or not.
  const { topology, absent } = await presentVms(await withLibvirtInventory(whole));
  if (topology.vms.length === 0) {
    report(options, { moved: [], stayed: [], absent, dryRun: options.dryRun ?? false, vms: [] });
    return;
  }
  if (!options.dryRun && !options.yes) await confirm(options.host, topology.vms.length);
  // Ctrl-C is handled by runJobFromCli: a migration in flight rolls back, the rest stay (exit 1 or 2).
  const result = await runJobFromCli(topology, options, {
    maxGroups: 16,
    seed: 1,
    resume: true,
    insecurePlaintext: false,
    compression: 'adaptive',
    dryRun: options.dryRun ?? false,
    downtimeLimitMs: options.downtimeLimit,
    maxParallel: options.maxParallel,
    ...(options.timeoutPerGib === undefined
      ? {}
      : { timeoutPerGiB: { seconds: options.timeoutPerGib, action: options.onTimeout } }),
  });
  const vms = result.report.vms;
  const moved = vms.filter((vm) => vm.verified).map((vm) => ({ name: vm.name, target: vm.target }));
  const stayed = vms
    .filter((vm) => !vm.verified)
    .map((vm) => ({ name: vm.name, reason: vm.error ?? 'not moved' }));
  report(options, { moved, stayed, absent, dryRun: options.dryRun ?? false, vms });
  if (options.dryRun || stayed.length === 0) return;
  const why = stayed.map((vm) => `${vm.name} (${vm.reason})`).join('; ');
  if (moved.length === 0)
    throw new VmscatterError('VMS_NOT_MOVED', `no VM moved off ${options.host}: ${why}`);
  throw new PartialEvacuationError(
    `${moved.length} VMs moved off ${options.host}, ${stayed.length} stayed (running there): ${why}; ` +
      'run the same command again to move the rest',
  );
}

interface Outcome {
  readonly moved: readonly { name: string; target: string }[];
  readonly stayed: readonly { name: string; reason: string }[];
  readonly absent: readonly AbsentVm[];
  readonly dryRun: boolean;
  readonly vms: readonly { name: string; target: string }[];
}

function report(options: EvacuateCommandOptions, outcome: Outcome): void {
  if (options.json) {
    const { moved, stayed, absent, dryRun, vms } = outcome;
    const plan = dryRun ? { plan: vms.map((vm) => ({ name: vm.name, target: vm.target })) } : {};
    process.stdout.write(
      `${JSON.stringify({ host: options.host, dryRun, moved, stayed, absent, ...plan }, null, 2)}\n`,
    );
    return;
  }
  const rows = [
    ...(outcome.dryRun
      ? outcome.vms.map((vm) => [vm.name, vm.target, 'would move'])
      : [
          ...outcome.moved.map((vm) => [vm.name, vm.target, 'moved, verified, running there']),
          ...outcome.stayed.map((vm) => [vm.name, '-', `stayed: ${vm.reason}`]),
        ]),
    ...outcome.absent.map((vm) => [vm.name, '-', `not on ${options.host}: ${vm.reason}`]),
  ];
  process.stdout.write(
    `Evacuation of ${options.host}${outcome.dryRun ? ' (dry run: nothing moved)' : ''}\n\n` +
      `${renderTable(['VM', 'to', 'result'], rows, 'lll')}\n`,
  );
}

async function confirm(host: string, count: number): Promise<void> {
  if (!process.stdin.isTTY)
    throw new InputError('evacuate moves running VMs: pass --yes to run without a prompt (scripts)');
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  const answer = await prompt.question(`Move ${count} VMs off ${host}? [y/N] `);
  prompt.close();
  if (!/^y(es)?$/i.test(answer.trim())) throw new InputError('evacuation cancelled: nothing moved');
}
