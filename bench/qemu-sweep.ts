/**
 * The scaling sweep of bench:qemu: the same comparison (QEMU's defaults, multifd+zstd, vmscatter) over
 * guests x memory per guest, as far as this machine's memory allows (every guest runs twice during a
 * move: at its source and at its destination). Per configuration and method: seconds, bytes on the
 * source's link and median downtime, each also as a ratio to QEMU's defaults measured in the same
 * configuration. Writes docs/bench/qemu-sweep.json and .svg (time and bytes against guests).
 *
 *   npm run bench:qemu-sweep -- [--counts 2,4,8,16] [--memory 128,256,1024] [--methods a,b-zstd,c]
 *                               [--budget-gib 16] [--targets 4] [--rate 1gbit]
 *
 * Needs what bench:qemu needs (root, the lab tools, qemu-system-x86_64).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { runQemuVsScatter, type BenchResult, type MethodId } from './qemu-vs-scatter.js';

interface Point {
  readonly count: number;
  readonly memoryMiB: number;
  readonly method: string;
  readonly label: string;
  readonly ok: boolean;
  readonly seconds: number;
  readonly bytes: number;
  readonly medianDowntimeMs: number;
  readonly ratioToQemuDefaults: { readonly seconds: number | null; readonly bytes: number | null };
}

function list(name: string, text: string): number[] {
  const values = text.split(',').map((v) => Number(v.trim()));
  if (values.some((v) => !Number.isInteger(v) || v <= 0))
    throw new Error(`--${name}: expected whole numbers separated by commas, got '${text}'`);
  return values;
}

function pointsOf(result: BenchResult, count: number, memoryMiB: number): Point[] {
  const a = result.summary.find((m) => m.method === 'a');
  const ratio = (value: number, base: number | undefined) =>
    base === undefined || base === 0 ? null : Math.round((value / base) * 1000) / 1000;
  return result.summary.map((m) => ({
    count,
    memoryMiB,
    method: m.method,
    label: m.label,
    ok: m.ok,
    seconds: m.seconds,
    bytes: m.bytes,
    medianDowntimeMs: m.downtimeMs.median,
    ratioToQemuDefaults: { seconds: ratio(m.seconds, a?.seconds), bytes: ratio(m.bytes, a?.bytes) },
  }));
}

/** Two panels (seconds, MiB on the link) against the number of guests, a line per method and size. */
export function renderSweepSvg(points: readonly Point[]): string {
  const width = 900;
  const height = 360;
  const panel = (x0: number, title: string, value: (p: Point) => number) => {
    const counts = [...new Set(points.map((p) => p.count))].sort((a, b) => a - b);
    const max = Math.max(1, ...points.map(value));
    const px = (count: number) => x0 + 50 + (counts.indexOf(count) / Math.max(1, counts.length - 1)) * 340;
    const py = (v: number) => 310 - (v / max) * 260;
    const series = [...new Set(points.map((p) => `${p.method}|${p.memoryMiB}`))];
    const colors = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
    const lines = series.map((key, i) => {
      const [method, memory] = key.split('|');
      const line = points
        .filter((p) => p.method === method && String(p.memoryMiB) === memory && p.ok)
        .sort((a, b) => a.count - b.count)
        .map((p) => `${px(p.count).toFixed(1)},${py(value(p)).toFixed(1)}`)
        .join(' ');
      const color = colors[i % colors.length];
      return (
        `<polyline fill="none" stroke="${color}" stroke-width="2" points="${line}"/>` +
        `<text x="${x0 + 60}" y="${60 + i * 14}" font-size="11" fill="${color}">${method} ${memory} MiB</text>`
      );
    });
    const ticks = counts.map(
      (c) => `<text x="${px(c)}" y="328" font-size="11" text-anchor="middle">${c}</text>`,
    );
    return [
      `<text x="${x0 + 220}" y="24" font-size="14" text-anchor="middle">${title}</text>`,
      `<line x1="${x0 + 50}" y1="310" x2="${x0 + 400}" y2="310" stroke="#000"/>`,
      `<line x1="${x0 + 50}" y1="50" x2="${x0 + 50}" y2="310" stroke="#000"/>`,
      `<text x="${x0 + 45}" y="54" font-size="11" text-anchor="end">${max.toFixed(max < 10 ? 1 : 0)}</text>`,
      `<text x="${x0 + 220}" y="350" font-size="11" text-anchor="middle">guests</text>`,
      ...ticks,
      ...lines,
    ].join('\n');
  };
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">`,
    panel(0, 'seconds until the last guest runs at its target', (p) => p.seconds),
    panel(450, 'MiB on the source link', (p) => p.bytes / 2 ** 20),
    '</svg>',
  ].join('\n');
}

async function main(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      counts: { type: 'string', default: '2,4,8,16' },
      memory: { type: 'string', default: '128,256,1024' },
      methods: { type: 'string', default: 'a,b-zstd,c' },
      'budget-gib': { type: 'string', default: String(Math.floor((totalmem() / 2 ** 30) * 0.66)) },
      targets: { type: 'string', default: '4' },
      rate: { type: 'string', default: '1gbit' },
      summary: {
        type: 'string',
        default: join(dirname(fileURLToPath(import.meta.url)), '../../docs/bench/qemu-sweep.json'),
      },
    },
  });
  const counts = list('counts', values.counts!);
  const sizes = list('memory', values.memory!);
  const budgetMiB = list('budget-gib', values['budget-gib']!)[0]! * 1024;
  const points: Point[] = [];
  const skipped: { count: number; memoryMiB: number; why: string }[] = [];
  for (const memoryMiB of sizes)
    for (const count of counts) {
      // Each guest runs at its source and, once moved, at its destination: twice its memory.
      if (2 * count * memoryMiB > budgetMiB) {
        const why = `${count} x ${memoryMiB} MiB runs twice: ${2 * count * memoryMiB} MiB, over the ${budgetMiB} MiB budget`;
        skipped.push({ count, memoryMiB, why });
        process.stderr.write(`skipped: ${why}\n`);
        continue;
      }
      process.stderr.write(`sweep: ${count} guests x ${memoryMiB} MiB\n`);
      const result = await runQemuVsScatter({
        count,
        memoryMiB,
        targets: Math.min(Number(values.targets), count),
        rate: values.rate!,
        mtu: 9000,
        repeat: 1,
        methods: values.methods!.split(',').map((m) => m.trim()) as MethodId[],
        memoryFile: false,
        log: (line) => process.stderr.write(`  ${line}\n`),
      });
      points.push(...pointsOf(result, count, memoryMiB));
      for (const p of points.filter((q) => q.count === count && q.memoryMiB === memoryMiB))
        process.stdout.write(
          `${String(count).padStart(3)} x ${String(memoryMiB).padStart(5)} MiB  ${p.label.padEnd(32)} ` +
            `${p.seconds.toFixed(1).padStart(6)} s (${p.ratioToQemuDefaults.seconds ?? '-'}x)  ` +
            `${(p.bytes / 2 ** 20).toFixed(0).padStart(6)} MiB (${p.ratioToQemuDefaults.bytes ?? '-'}x)  ` +
            `downtime ${p.medianDowntimeMs} ms${p.ok ? '' : '  FAILED'}\n`,
        );
    }
  const summary = {
    bench: 'qemu-sweep',
    date: new Date().toISOString(),
    command: `npm run bench:qemu-sweep${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    budgetMiB,
    points,
    skipped,
  };
  mkdirSync(dirname(values.summary!), { recursive: true });
  writeFileSync(values.summary!, `${JSON.stringify(summary, null, 2)}\n`);
  writeFileSync(values.summary!.replace(/\.json$/, '.svg'), renderSweepSvg(points));
  process.stderr.write(`wrote ${values.summary}\n`);
  if (points.some((p) => !p.ok)) process.exitCode = 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`bench:qemu-sweep: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
