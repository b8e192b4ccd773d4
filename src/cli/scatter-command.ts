import { ERROR_CATALOGUE, VmscatterError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import {
  runScatter,
  type ScatterOptions,
  type ScatterProgress,
  type ScatterReport,
} from '../coordinator/coordinator.js';
import { isRunning, type Topology } from '../topology/model.js';
import { startLocalAgents, type LocalAgents } from '../local/local-agents.js';
import type { CompressionMode } from '../memory/page-codec.js';
import {
  allLoopback,
  materialiseSyntheticImages,
  readSecretFile,
  resolveSecretFile,
} from '../local/workspace.js';
import { loadTopology } from '../topology/load.js';
import { requireVms, withLibvirtInventory } from '../coordinator/inventory.js';
import { formatBytes } from '../topology/units.js';
import { Progress } from './progress.js';
import { displayPath, percent, renderTable } from './table.js';

export interface ScatterCommandOptions {
  readonly topology: string;
  readonly maxGroups: number;
  readonly seed: number;
  readonly mtu?: number;
  readonly roundPages?: number;
  readonly unicastBelowMs?: number;
  readonly compression?: CompressionMode;
  readonly downtimeLimit?: number;
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
    super('VMS_INCOMPLETE', message);
  }
}

/** Interrupted (Ctrl-C or SIGTERM): the report says which VMs did not move; `--resume` finishes. */
export class ScatterInterruptedError extends VmscatterError {
  constructor(message: string) {
    super('VMS_INTERRUPTED', message);
  }
}

/** 128 + SIGINT, as shells report a command stopped by Ctrl-C. */
export const INTERRUPTED_EXIT_CODE = ERROR_CATALOGUE.VMS_INTERRUPTED.exitCode;

/** What a job run from the command line needs besides its topology. */
export interface JobCommandOptions {
  readonly workDir: string;
  readonly secretFile?: string;
  readonly json?: boolean;
  readonly mtu?: number;
}

/** A job run from the command line, and why it was interrupted if it was. */
export interface CliJobResult {
  readonly report: ScatterReport;
  readonly topology: Topology;
  readonly localAgents: readonly string[];
  /** The interruption's reason ('interrupted (Ctrl-C)'), the error of every VM it kept from moving. */
  readonly interrupted?: string;
}

/**
 * Runs a job the way the commands do: the deployment secret, synthetic VMs written out as images,
 * agents started for loopback targets with none listening (and stopped after), progress on stderr,
 * and Ctrl-C (or SIGTERM) ending the job cleanly: see `interruptOnSignals`.
 */
export async function runJobFromCli(
  loaded: Topology,
  options: JobCommandOptions,
  job: Omit<
    ScatterOptions,
    'topology' | 'secret' | 'mtu' | 'onProgress' | 'onWarning' | 'workDir' | 'signal'
  >,
): Promise<CliJobResult> {
  const progress = new Progress(!options.json);
  let agents: LocalAgents | undefined;
  const running = loaded.vms.some((vm) => isRunning(vm.source));
  const interrupt = interruptOnSignals(progress, running, () => agents?.stopNow());
  try {
    return await runJob(loaded, options, job, progress, interrupt.signal, (started) => (agents = started));
  } finally {
    interrupt.dispose();
  }
}

async function runJob(
  loaded: Topology,
  options: JobCommandOptions,
  job: Omit<ScatterOptions, 'topology' | 'secret' | 'mtu' | 'onProgress' | 'onWarning' | 'workDir'>,
  progress: Progress,
  signal: AbortSignal,
  onAgents: (agents: LocalAgents) => void,
): Promise<CliJobResult> {
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
  if (job.insecurePlaintext)
    process.stderr.write(
      'vmscatter: WARNING: --insecure-plaintext: guest memory crosses the network UNENCRYPTED; ' +
        'agents refuse it unless started with --insecure-plaintext too\n',
    );
  progress.phase('Starting agents');
  const agents = await startLocalAgents(
    topology.hosts.filter((h) => h.role === 'target'),
    topology.file,
    secretFile,
    options.workDir,
    // Local agents are this command's own: they accept what it was told to send.
    { insecurePlaintext: job.insecurePlaintext },
  );
  onAgents(agents);
  try {
    const report = await runScatter({
      ...job,
      topology,
      secret,
      signal,
      // Loopback carries 64 KiB datagrams; a real network gets the safe default unless told.
      mtu: options.mtu ?? (allLoopback(topology.hosts) ? 9000 : 1500),
      workDir: options.workDir,
      onProgress: (event) => showProgress(progress, event),
      onWarning: (line) => process.stderr.write(`vmscatter: warning: ${line}\n`),
    });
    const interrupted = signal.aborted ? reasonOf(signal) : undefined;
    return { report, topology, localAgents: agents.started, ...(interrupted ? { interrupted } : {}) };
  } finally {
    progress.stop();
    await agents.stop();
  }
}

/**
 * Ctrl-C (SIGINT) or SIGTERM during a job: the first aborts the signal, which the job honours
 * promptly (no VM starts moving, the multicast round on the wire stops, a live migration in flight
 * rolls back), so the report still comes and the agents are told the job ended. A second one is
 * the operator insisting: the local agents are told to stop and the process exits at once (130),
 * unless the job has running VMs: exiting then could leave one stopped at its source (mid-scan,
 * stop-and-copy, past the switch-over) with its destination gone, so the rollback, which takes
 * seconds, always runs to its end.
 */
function interruptOnSignals(
  progress: Progress,
  runningVms: boolean,
  stopAgentsNow: () => void,
): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals) => {
    if (!controller.signal.aborted) {
      const why = name === 'SIGINT' ? 'interrupted (Ctrl-C)' : `interrupted (${name})`;
      controller.abort(new Error(why));
      // Someone at the terminal is told the job heard them; scripts get only the final line.
      if (process.stderr.isTTY) {
        progress.stop();
        process.stderr.write(`vmscatter: ${why}: ending the job (again to stop at once)\n`);
      }
      return;
    }
    progress.stop();
    if (runningVms) {
      process.stderr.write(
        `vmscatter: ${reasonOf(controller.signal)} again: running VMs are being put back at their ` +
          'source first; this ends within seconds\n',
      );
      return;
    }
    stopAgentsNow();
    process.stderr.write(
      `vmscatter: ${reasonOf(controller.signal)} twice: stopped at once; VMs not verified keep ` +
        'running at the source, run again with --resume\n',
    );
    process.exit(INTERRUPTED_EXIT_CODE);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

function reasonOf(signal: AbortSignal): string {
  return signal.reason instanceof Error ? signal.reason.message : 'interrupted';
}

/** VM names for a one-line message: the first few, then how many more. */
function namesOf(vms: readonly { name: string }[], shown = 8): string {
  const names = vms.slice(0, shown).map((vm) => vm.name);
  return vms.length > shown ? `${names.join(', ')} and ${vms.length - shown} more` : names.join(', ');
}

const PLAINTEXT_WARNING = 'guest memory crossed the network unencrypted (--insecure-plaintext)';

/** `vmscatter scatter`: the whole job, from the source host. */
export async function scatterCommand(options: ScatterCommandOptions): Promise<void> {
  const { report, topology, localAgents, interrupted } = await runJobFromCli(
    requireVms(await withLibvirtInventory(loadTopology(options.topology))),
    options,
    {
      maxGroups: options.maxGroups,
      seed: options.seed,
      resume: options.resume ?? false,
      ...(options.roundPages === undefined ? {} : { roundPages: options.roundPages }),
      ...(options.unicastBelowMs === undefined ? {} : { unicastBelowMs: options.unicastBelowMs }),
      insecurePlaintext: options.insecurePlaintext ?? false,
      compression: options.compression ?? 'adaptive',
      ...(options.downtimeLimit === undefined ? {} : { downtimeLimitMs: options.downtimeLimit }),
      dryRun: options.dryRun ?? false,
    },
  );
  const agents = { started: localAgents };
  process.stdout.write(
    options.json
      ? `${JSON.stringify({ topology: topology.file, localAgents: agents.started, ...report, ...(options.insecurePlaintext ? { warnings: [PLAINTEXT_WARNING] } : {}) }, null, 2)}\n`
      : `${renderReport(report, topology.file)}\n${options.insecurePlaintext ? `WARNING: ${PLAINTEXT_WARNING}\n` : ''}`,
  );
  const failed = report.vms.filter((vm) => !vm.verified);
  if (report.planned?.dryRun) return;
  // Interrupted after the last VM was verified: nothing was kept from moving, so it succeeded.
  if (interrupted !== undefined && failed.length > 0)
    throw new ScatterInterruptedError(
      `${interrupted}: ${failed.length} of ${report.vms.length} VMs not moved (they keep running at the ` +
        `source): ${namesOf(failed)}; run again with --resume to finish the job`,
    );
  if (failed.length > 0)
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
    // A target lost mid-job received less than planned: both are shown, so neither is mistaken for the other.
    t.multicastPages === t.plannedMulticastPages
      ? formatBytes(t.multicastPages * PAGE_SIZE)
      : `${formatBytes(t.multicastPages * PAGE_SIZE)} of ${formatBytes(t.plannedMulticastPages * PAGE_SIZE)} planned`,
    formatBytes(t.peerPages * PAGE_SIZE),
    formatBytes(t.unicastPages * PAGE_SIZE),
    t.lost ?? (t.multicastUnreached ? 'ok, multicast did not reach it' : 'ok'),
  ]);
  const unreached = report.targets.flatMap((t) =>
    t.multicastUnreached ? [`${t.name}: ${t.multicastUnreached}`] : [],
  );
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
    ...(unreached.length > 0 ? ['', ...unreached] : []),
    '',
    `guest memory ${formatBytes(memory)}; on the source's link ${formatBytes(report.source.multicastWireBytes + report.source.unicastBytes)} ` +
      `(${percent(report.source.multicastWireBytes + report.source.unicastBytes, memory)}) in ${report.source.rounds - report.source.unicastRounds} multicast round(s)` +
      (report.source.unicastRounds > 0
        ? ` (${report.source.unicastRounds} too small for one went by unicast)`
        : '') +
      (report.source.changedPages > 0
        ? `; ${report.source.changedPages} page(s) their guests rewrote since the scan went in their live stream instead`
        : ''),
    `time ${s.total.toFixed(1)} s: connect ${s.connect.toFixed(1)}, scan ${s.scan.toFixed(1)}, plan ${s.plan.toFixed(1)}, ` +
      `multicast ${s.seed.toFixed(1)}, rebuild ${s.rebuild.toFixed(1)}, live migration ${s.migrate.toFixed(1)}`,
  ].join('\n');
}
