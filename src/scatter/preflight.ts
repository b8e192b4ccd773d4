import { VmscatterError } from '../errors.js';
import { formatBytes } from '../topology/units.js';

/**
 * Checks before anything moves (pure): every problem found is named, all of them at once, so an
 * operator fixes them in one go. A failed pre-flight changes nothing anywhere.
 */
export class PreflightError extends VmscatterError {
  constructor(readonly problems: readonly string[]) {
    super('VMS_PREFLIGHT', `pre-flight checks failed, nothing moved:\n  - ${problems.join('\n  - ')}`, 1);
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
