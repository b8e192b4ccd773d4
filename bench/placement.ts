/**
 * Placement benchmark (npm run bench:placement): quality against the exact optimum on 200 small random
 * instances beside random and round-robin placement, then planning at fleet scale from synthetic
 * fingerprints (500 VMs x 256 MiB onto 64 targets: page tables, index, classes, placement, schedule)
 * with its wall time and peak memory, beside round-robin and random placements of the same fleet.
 *
 *   npm run bench:placement [-- --json] [-- --vms 500 --targets 64]
 *
 * Targets: mean gap <= 1%, max gap <= 5% on small instances; <= 30 s for the fleet.
 */
import { parseArgs } from 'node:util';
import { runPlacementQuality } from './placement-quality.js';
import { runPlacementScale } from './placement-scale.js';

const { values } = parseArgs({
  options: {
    json: { type: 'boolean' },
    vms: { type: 'string', default: '500' },
    targets: { type: 'string', default: '64' },
    instances: { type: 'string', default: '200' },
  },
});
const quality = runPlacementQuality({ instances: Number(values.instances) });
const scale = runPlacementScale({ vms: Number(values.vms), targets: Number(values.targets) });
if (values.json) {
  process.stdout.write(`${JSON.stringify({ quality, scale }, null, 2)}\n`);
} else {
  const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
  const verdict = (ok: boolean) => (ok ? 'PASS' : 'MISS');
  const lines = [
    `small instances: ${quality.instances} (${quality.infeasibleInstances} infeasible, left out)`,
  ];
  for (const m of quality.methods) {
    lines.push(
      `  ${m.method.padEnd(12)} mean gap ${pct(m.meanGap).padStart(7)}  max gap ${pct(m.maxGap).padStart(7)}`,
    );
  }
  const ours = quality.methods.find((m) => m.method === 'placeVms')!;
  lines.push(
    `  placeVms targets: mean <= 1% ${verdict(ours.meanGap <= 0.01)}, max <= 5% ${verdict(ours.maxGap <= 0.05)}`,
  );
  const s = scale;
  const planningSeconds = s.totalSeconds - (s.seconds['page tables'] ?? 0);
  lines.push(
    `fleet: ${s.vms} VMs x ${(s.pages / s.vms / 256).toFixed(0)} MiB onto ${s.targets} targets: ` +
      `${s.distinctDigests} distinct pages, ${s.sharingClasses} sharing classes, ${s.groups} groups`,
    `  stages: ${Object.entries(s.seconds)
      .map(([k, v]) => `${k} ${v.toFixed(2)} s`)
      .join(', ')}`,
    `  total ${s.totalSeconds.toFixed(1)} s (planning from fingerprints ${planningSeconds.toFixed(1)} s), ` +
      `peak rss ${(s.peakRssBytes / 2 ** 20).toFixed(0)} MiB   target <= 30 s: ${verdict(s.totalSeconds <= 30)}`,
    `  pages to the targets: plan ${s.cost.plan}, round-robin ${s.cost.roundRobin} ` +
      `(${(s.cost.roundRobin / s.cost.plan).toFixed(2)}x), random ${s.cost.random} (${(s.cost.random / s.cost.plan).toFixed(2)}x)`,
    `  source-link bytes: plan ${(s.sourceBytes.plan / 1e9).toFixed(1)} GB vs naive ${(s.sourceBytes.naive / 1e9).toFixed(1)} GB ` +
      `(${pct(s.sourceBytes.plan / s.sourceBytes.naive)}), per-VM dedup ${(s.sourceBytes.dedup / 1e9).toFixed(1)} GB`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
}
