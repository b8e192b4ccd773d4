import { VmscatterError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import {
  runScatter,
  type ScatterOptions,
  type ScatterProgress,
  type ScatterReport,
} from '../scatter/coordinator.js';
import type { Topology } from '../topology/model.js';
import { startLocalAgents } from '../scatter/local-agents.js';
import type { CompressionMode } from '../scatter/page-codec.js';
import {
  allLoopback,
  materialiseSyntheticImages,
  readSecretFile,
  resolveSecretFile,
} from '../scatter/workspace.js';
import { loadTopology } from '../topology/load.js';
import { formatBytes } from '../topology/units.js';
import { Progress } from './progress.js';
import { displayPath, percent, renderTable } from './table.js';

export interface ScatterCommandOptions {
  readonly topology: string;
  readonly maxGroups: number;
  readonly seed: number;
  readonly mtu?: number;
  readonly roundPages?: number;
  readonly compression?: CompressionMode;
  readonly resume?: boolean;
  readonly secretFile?: string;
  readonly workDir: string;
  readonly insecurePlaintext?: boolean;
  readonly json?: boolean;
  readonly dryRun?: boolean;
}

/** Some VMs were not verified at their target: they keep running at the source. */
export class ScatterIncompleteError extends VmscatterError {
  constructor(message: string) {
    super('VMS_INCOMPLETE', message, 6);
  }
}

/** What a job run from the command line needs besides its topology. */
export interface JobCommandOptions {
  readonly workDir: string;
  readonly secretFile?: string;
  readonly json?: boolean;
  readonly mtu?: number;
}

/**
 * Runs a job the way the commands do: the deployment secret, synthetic VMs written out as images,
 * agents started for loopback targets with none listening (and stopped after), progress on stderr.
 */
export async function runJobFromCli(
  loaded: Topology,
  options: JobCommandOptions,
  job: Omit<ScatterOptions, 'topology' | 'secret' | 'mtu' | 'onProgress' | 'onWarning' | 'workDir'>,
): Promise<{ report: ScatterReport; topology: Topology; localAgents: readonly string[] }> {
  const progress = new Progress(!options.json);
  const secretFile = resolveSecretFile(
    options.secretFile ?? process.env.VMSCATTER_SECRET_FILE,
    loaded,
    options.workDir,
  );
  const secret = readSecretFile(secretFile);
  progress.phase('Preparing images');
  const topology = materialiseSyntheticImages(loaded, options.workDir, (name, done, total) =>
    progress.pages(`Generating synthetic image ${name}`, done, total),
  );
  progress.phase('Starting agents');
  const agents = await startLocalAgents(
    topology.hosts.filter((h) => h.role === 'target'),
    topology.file,
    secretFile,
    options.workDir,
  );
  try {
    const report = await runScatter({
      ...job,
      topology,
      secret,
      // Loopback carries 64 KiB datagrams; a real network gets the safe default unless told.
      mtu: options.mtu ?? (allLoopback(topology.hosts) ? 9000 : 1500),
      workDir: options.workDir,
      onProgress: (event) => showProgress(progress, event),
      onWarning: (line) => process.stderr.write(`vmscatter: warning: ${line}\n`),
    });
    return { report, topology, localAgents: agents.started };
  } finally {
    progress.stop();
    await agents.stop();
  }
}

/** `vmscatter scatter`: the whole job, from the source host. */
export async function scatterCommand(options: ScatterCommandOptions): Promise<void> {
  const { report, topology, localAgents } = await runJobFromCli(loadTopology(options.topology), options, {
    maxGroups: options.maxGroups,
    seed: options.seed,
    resume: options.resume ?? false,
    ...(options.roundPages === undefined ? {} : { roundPages: options.roundPages }),
    insecurePlaintext: options.insecurePlaintext ?? false,
    compression: options.compression ?? 'adaptive',
    dryRun: options.dryRun ?? false,
  });
  const agents = { started: localAgents };
  process.stdout.write(
    options.json
      ? `${JSON.stringify({ topology: topology.file, localAgents: agents.started, ...report }, null, 2)}\n`
      : `${renderReport(report, topology.file)}\n`,
  );
  const failed = report.vms.filter((vm) => !vm.verified);
  if (failed.length > 0 && !report.planned?.dryRun)
    throw new ScatterIncompleteError(
      `${failed.length} of ${report.vms.length} VMs not verified (they keep running at the source): ` +
        failed.map((vm) => `${vm.name} (${vm.error})`).join('; ') +
        '; run again with --resume once the cause is fixed',
    );
}

const phaseNames: Record<ScatterProgress['phase'], string> = {
  connect: 'Connecting to agents',
  scan: 'Scanning',
  plan: 'Planning',
  seed: 'Multicasting unique pages',
  rebuild: 'Rebuilding and verifying images',
  migrate: 'Migrating running VMs',
};

function showProgress(progress: Progress, event: ScatterProgress): void {
  if (event.done === 0) progress.phase(phaseNames[event.phase]);
  if (event.unit === 'pages') progress.pages(phaseNames[event.phase], event.done, event.total);
  else progress.count(phaseNames[event.phase], event.done, event.total, event.unit);
}

function renderReport(report: ScatterReport, file: string): string {
  const rows = report.vms.map((vm) => [
    vm.name,
    vm.target,
    formatBytes(vm.pages * PAGE_SIZE),
    percent(vm.zeroPages, vm.pages),
    formatBytes(vm.wireBytes),
    vm.verified ? (vm.alreadyVerified ? 'verified (earlier job)' : 'verified') : `FAILED: ${vm.error}`,
  ]);
  const targetRows = report.targets.map((t) => [
    t.name,
    formatBytes(t.wireBytes),
    formatBytes(t.heldPages * PAGE_SIZE),
    formatBytes(t.multicastPages * PAGE_SIZE),
    formatBytes(t.peerPages * PAGE_SIZE),
    formatBytes(t.unicastPages * PAGE_SIZE),
    t.lost ?? 'ok',
  ]);
  const s = report.seconds;
  const memory = report.pages.total * PAGE_SIZE;
  return [
    `Scatter of ${displayPath(file)} (${report.job}): ${report.vms.filter((vm) => vm.verified).length} of ` +
      `${report.vms.length} VMs verified at their targets`,
    '',
    renderTable(['VM', 'target', 'memory', 'zero', 'on the wire', 'result'], rows, 'llrrrl'),
    '',
    renderTable(
      ['target', 'received', 'held already', 'by multicast', 'from site peers', 'by unicast', 'agent'],
      targetRows,
      'lrrrrrl',
    ),
    '',
    `guest memory ${formatBytes(memory)}; on the source's link ${formatBytes(report.source.multicastWireBytes + report.source.unicastBytes)} ` +
      `(${percent(report.source.multicastWireBytes + report.source.unicastBytes, memory)}) in ${report.source.rounds} multicast round(s)`,
    `time ${s.total.toFixed(1)} s: connect ${s.connect.toFixed(1)}, scan ${s.scan.toFixed(1)}, plan ${s.plan.toFixed(1)}, ` +
      `multicast ${s.seed.toFixed(1)}, rebuild ${s.rebuild.toFixed(1)}, live migration ${s.migrate.toFixed(1)}`,
  ].join('\n');
}
