import { PAGE_SIZE } from '../memory/page.js';
import { randomDigestKey } from '../memory/page-digest.js';
import { buildScatterPlan, type ScatterPlan } from '../plan/scatter-plan.js';
import { scanForPlan, type LiveCopyPlan } from '../live/plan.js';
import { loadTopology } from '../topology/load.js';
import { requireVms, withLibvirtInventory } from '../coordinator/inventory.js';
import { isRunning } from '../topology/model.js';
import { formatBytes } from '../topology/units.js';
import { Progress } from './progress.js';
import { displayPath, percent, renderTable } from './table.js';

export interface PlanCommandOptions {
  readonly topology: string;
  readonly maxGroups: number;
  readonly seed: number;
  readonly json?: boolean;
}

/** `vmscatter plan`: scan, place and schedule, print the plan; nothing moves. */
export async function planCommand(options: PlanCommandOptions): Promise<void> {
  const topology = requireVms(await withLibvirtInventory(loadTopology(options.topology)));
  const progress = new Progress(!options.json);
  progress.phase(`Scanning ${topology.vms.length} VMs`);
  const scanStarted = performance.now();
  // Ctrl-C while a running VM is scanned stops the scan and leaves the VM as it was found (with no
  // running VM, Ctrl-C keeps its default: nothing to put back).
  const interrupt = new AbortController();
  const stop = (signal: NodeJS.Signals) =>
    interrupt.abort(new Error(signal === 'SIGINT' ? 'interrupted (Ctrl-C)' : `interrupted (${signal})`));
  if (topology.vms.some((vm) => isRunning(vm.source))) {
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  }
  const scan = await scanForPlan(topology, {
    key: randomDigestKey(),
    onProgress: (done, total) => progress.pages('Scanning', done, total),
    signal: interrupt.signal,
  }).finally(() => {
    progress.stop();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  });
  const scanSeconds = (performance.now() - scanStarted) / 1000;
  const planStarted = performance.now();
  const plan = buildScatterPlan(topology, scan.vms, scan.table.size, {
    maxGroups: options.maxGroups,
    seed: options.seed,
  });
  const planSeconds = (performance.now() - planStarted) / 1000;
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify(planReport(plan, scan.live, topology.file, scanSeconds, planSeconds), null, 2)}\n`,
    );
  } else {
    process.stdout.write(`${renderPlan(plan, scan.live, topology.file, scanSeconds, planSeconds)}\n`);
  }
}

/** The JSON form of a plan: stable field names scripts can rely on. */
export function planReport(
  plan: ScatterPlan,
  live: readonly LiveCopyPlan[],
  file: string,
  scanSeconds: number,
  planSeconds: number,
) {
  const { naive, dedup, plan: planned } = plan.traffic;
  return {
    topology: file,
    pageSize: PAGE_SIZE,
    placement: plan.placement,
    targets: plan.targets,
    groups: plan.groups,
    sharing: plan.sharing,
    traffic: {
      naiveBytes: naive.source,
      dedupBytes: dedup.source,
      planBytes: planned.source,
      naive,
      dedup,
      plan: planned,
      predictedSeconds: { naive: naive.seconds, dedup: dedup.seconds, plan: planned.seconds },
    },
    live: live.map((vm) => ({
      vm: vm.vm,
      scan: vm.scan,
      dirtyBytesPerSecond: Math.round(vm.dirtyBytesPerSecond),
      bandwidthBytesPerSecond: Math.round(vm.bandwidthBytesPerSecond),
      strategy: vm.copy.strategy,
      strategyReason: vm.copy.why,
      predictedPasses: Number.isFinite(vm.copy.passes) ? vm.copy.passes : null,
    })),
    timings: { scanSeconds, planSeconds },
  };
}

function renderPlan(
  plan: ScatterPlan,
  live: readonly LiveCopyPlan[],
  file: string,
  scanSeconds: number,
  planSeconds: number,
): string {
  const { naive, dedup, plan: planned } = plan.traffic;
  const targetRows = plan.targets.map((t) => [
    t.name,
    t.vms.join(' ') || '-',
    `${formatBytes(t.memoryBytes)} / ${formatBytes(t.capacityBytes)}`,
    formatBytes(t.neededPages * PAGE_SIZE),
  ]);
  const groupRows = plan.groups.map((g, i) => [
    `${i + 1}`,
    `${g.address}:${g.port}`,
    g.receivers.join(' '),
    formatBytes(g.pages * PAGE_SIZE),
    formatBytes(g.extraDeliveries * PAGE_SIZE),
  ]);
  const trafficRow = (name: string, link: typeof naive) => [
    name,
    formatBytes(link.source),
    percent(link.source, naive.source),
    `${link.seconds.toFixed(2)} s`,
  ];
  const s = plan.sharing;
  return [
    `Plan for ${displayPath(file)}: ${s.vms} VMs, ${formatBytes(s.pages * PAGE_SIZE)} of guest memory ` +
      `(scan ${scanSeconds.toFixed(2)} s, plan ${planSeconds.toFixed(2)} s)`,
    `zero pages ${percent(s.zero, s.pages)}; distinct non-zero ${formatBytes(s.distinct * PAGE_SIZE)} ` +
      `(${percent(s.distinct, s.nonZero)} of non-zero); held by 2+ VMs ${percent(s.sharedPages, s.nonZero)} of non-zero`,
    '',
    renderTable(['target', 'VMs', 'memory used', 'pages to receive'], targetRows, 'llrr'),
    '',
    renderTable(['group', 'address', 'receivers', 'carries', 'discarded'], groupRows, 'rllrr'),
    '',
    renderTable(
      ['traffic', 'source link', 'vs naive', 'predicted time'],
      [
        trafficRow('naive: per-VM unicast, every page (QEMU)', naive),
        trafficRow('dedup: per-VM unicast, distinct pages', dedup),
        trafficRow('plan: multicast schedule', planned),
      ],
    ),
    ...(live.length === 0 ? [] : ['', renderLiveCopy(live)]),
  ].join('\n');
}

const SCAN_METHOD: Record<LiveCopyPlan['scan'], string> = {
  'memory-file': 'memory file',
  'process-memory': 'process memory',
  pmemsave: 'pmemsave',
};

/** How each running VM would be copied, and why (live/copy-strategy.ts). */
function renderLiveCopy(live: readonly LiveCopyPlan[]): string {
  const rows = live.map((vm) => [
    vm.vm,
    SCAN_METHOD[vm.scan],
    `${formatBytes(vm.dirtyBytesPerSecond)}/s`,
    `${formatBytes(vm.bandwidthBytesPerSecond)}/s`,
    vm.copy.strategy,
    vm.copy.why,
  ]);
  return renderTable(
    ['running VM', 'scanned from', 'dirty rate', 'bandwidth share', 'copy', 'why'],
    rows,
    'llrrll',
  );
}
