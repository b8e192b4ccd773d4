import { VmscatterError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { PageIndex } from '../plan/page-index.js';
import type { Host, Topology } from '../topology/model.js';
import type { JobScan } from './job-scan.js';
import type { JobWork } from '../plan/job-work.js';
import { formatBytes } from '../topology/units.js';

/**
 * Checks before anything moves (pure, but for gathering the sources' QEMU versions): every problem found is named, all of them at once, so an
 * operator fixes them in one go. A failed pre-flight changes nothing anywhere.
 */
export class PreflightError extends VmscatterError {
  constructor(readonly problems: readonly string[]) {
    super('VMS_PREFLIGHT', `pre-flight checks failed, nothing moved:\n  - ${problems.join('\n  - ')}`);
  }
}

export interface PreflightTarget {
  readonly name: string;
  readonly freeBytes: number;
  /** Bytes it will store for this job (pages it receives, images it writes). */
  readonly neededBytes: number;
  /** Its QEMU's version ('' when it has none). */
  readonly qemuVersion: string;
  /** QEMU versions of the running VMs placed on it (their sources'). */
  readonly incomingQemuVersions: readonly string[];
}

export function preflightProblems(targets: readonly PreflightTarget[]): string[] {
  const problems: string[] = [];
  for (const t of targets) {
    if (t.neededBytes > t.freeBytes)
      problems.push(
        `${t.name}: needs ${formatBytes(t.neededBytes)} for its store and images, has ${formatBytes(t.freeBytes)} free`,
      );
    if (t.incomingQemuVersions.length === 0) continue;
    if (t.qemuVersion === '') {
      problems.push(`${t.name}: running VMs are placed on it but it has no qemu-system-x86_64`);
      continue;
    }
    // A destination older than its source may not load the source's stream (or machine type).
    for (const version of new Set(t.incomingQemuVersions))
      if (compareVersions(t.qemuVersion, version) < 0)
        problems.push(`${t.name}: QEMU ${t.qemuVersion} is older than a source's ${version}`);
  }
  return problems;
}

/** Compares dotted versions numerically: negative when a < b. */
export function compareVersions(a: string, b: string): number {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** What each target will need (disk, QEMU) for the pre-flight checks. */
export async function preflightTargets(
  targets: readonly Host[],
  readies: readonly { freeBytes: number; qemuVersion: string }[],
  work: JobWork,
  scan: JobScan,
  { assignment, index }: { readonly assignment: Int32Array; readonly index: PageIndex },
  topology: Topology,
): Promise<PreflightTarget[]> {
  const versions = new Map<number, string>();
  for (const [v, qmp] of scan.qmp) {
    const info = (await qmp.execute('query-version').catch(() => ({}))) as {
      qemu?: { major: number; minor: number; micro: number };
    };
    if (info.qemu) versions.set(v, `${info.qemu.major}.${info.qemu.minor}.${info.qemu.micro}`);
  }
  return targets.map((host, t) => {
    const placed = work.pendingVms.filter((v) => assignment[v] === t);
    const imageBytes = placed
      .filter((v) => topology.vms[v]!.source.kind === 'image')
      .reduce((n, v) => n + (index.vmStats[v]!.pages - index.vmStats[v]!.zero) * PAGE_SIZE, 0);
    return {
      name: host.name,
      freeBytes: readies[t]!.freeBytes,
      neededBytes: (work.neededPages[t]! + work.peerPages[t]!) * PAGE_SIZE + imageBytes,
      qemuVersion: readies[t]!.qemuVersion,
      incomingQemuVersions: placed.flatMap((v) => (versions.has(v) ? [versions.get(v)!] : [])),
    };
  });
}
