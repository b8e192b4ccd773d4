import { basename } from 'node:path';
import { fingerprintVms } from '../memory/fingerprint.js';
import { PAGE_SIZE } from '../memory/page.js';
import { randomDigestKey } from '../memory/page-digest.js';
import { buildPageIndex, rankTemplates, setSharingStats } from '../plan/page-index.js';
import { formatBytes } from '../topology/units.js';
import { Progress } from './progress.js';
import { percent, renderTable } from './table.js';

export interface InspectOptions {
  readonly json?: boolean;
  readonly templates: number;
}

/** `vmscatter inspect IMAGE...`: how the pages of memory images split and what they share. */
export async function inspectCommand(images: string[], options: InspectOptions): Promise<void> {
  const progress = new Progress(!options.json);
  progress.phase(`Scanning ${images.length} image(s)`);
  const started = performance.now();
  const inputs = images.map((path) => ({ name: basename(path), source: { kind: 'image' as const, path } }));
  const scan = await fingerprintVms(inputs, {
    key: randomDigestKey(),
    onProgress: (done, total) => progress.pages('Scanning', done, total),
  }).finally(() => progress.stop());
  const seconds = (performance.now() - started) / 1000;
  const index = buildPageIndex(scan.vms, scan.table.size);
  const set = setSharingStats(index);
  const templates = rankTemplates(index, options.templates).map((t) => ({
    digest: Buffer.from(scan.table.digestOf(t.id)).toString('hex'),
    vms: t.vms,
    occurrences: t.occurrences,
  }));
  if (options.json) {
    const report = { pageSize: PAGE_SIZE, scanSeconds: seconds, vms: index.vmStats, set, templates };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return;
  }
  const rows = index.vmStats.map((s) => [
    s.name,
    formatBytes(s.pages * PAGE_SIZE),
    percent(s.zero, s.pages),
    percent(s.duplicateWithin, s.pages),
    percent(s.shared, s.pages),
    percent(s.unique, s.pages),
  ]);
  const out = [
    renderTable(['image', 'size', 'zero', 'dup within', 'shared', 'unique'], rows),
    '',
    `${set.vms} image(s), ${formatBytes(set.pages * PAGE_SIZE)} scanned in ${seconds.toFixed(2)} s ` +
      `(${formatBytes((set.pages * PAGE_SIZE) / seconds)}/s)`,
    `non-zero pages: ${set.nonZero} (${percent(set.nonZero, set.pages)} of all pages)`,
    `distinct non-zero pages: ${set.distinct} (${percent(set.distinct, set.nonZero)} of non-zero pages): ` +
      `${formatBytes(set.distinct * PAGE_SIZE)} to move at least once`,
    `pages whose content another image also holds: ${set.sharedPages} (${percent(set.sharedPages, set.nonZero)} of non-zero)`,
  ];
  if (templates.length > 0) {
    out.push('', `top ${templates.length} template pages (held by the most images):`);
    out.push(
      renderTable(
        ['digest', 'images', 'occurrences'],
        templates.map((t) => [t.digest, `${t.vms}`, `${t.occurrences}`]),
      ),
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
}
