/**
 * Scatter of memory images: vmscatter beside per-VM unicast copies, in the network lab.
 *
 *   npm run bench:scatter-images [-- --sets real,synthetic --count 8 --memory 256 --rate 1gbit --mtu 9000
 *                                     --modes-rates 100mbit,1gbit,unshaped --modes-count 4 --modes-memory 128
 *                                     --images DIR --quick --json]
 *
 * Sets: "real", the memory of booted Linux guests (QEMU under TCG, Debian's kernel, a busybox
 * initramfs with a per-guest workload; saved with QMP pmemsave by bench/guest-images.ts), and
 * "synthetic", the seeded model of src/memory/synthetic.ts (two families). Images are cached in
 * --images (default: a directory under the OS tmpdir), so only the first run boots guests.
 *
 * Lab: hosts src, t1..t4 in network namespaces on one switch, jumbo frames (--mtu, as migration
 * networks use; every method runs on the same links); the source's link is shaped to --rate (tc tbf). Each VM goes to the target vmscatter's plan gives it (two per target), in every method:
 * - vmscatter: `vmscatter scatter` in src, `vmscatter agent` in each target with an empty store,
 *   adaptive compression, encryption on. Time: the command's wall time (scan, plan, multicast, rebuild
 *   and verification included).
 * - unicast raw: one TCP copy per VM, all at once, each image written to a file at its target
 *   (bench/unicast-copy.ts): baseline (a).
 * - unicast LZ4: the same with each image LZ4-compressed in 1 MiB blocks as it is sent and
 *   decompressed at the target (lz4-napi): baseline (b).
 * Bytes: what the source put on its link (the lab's counter on its switch port, headers included).
 *
 * Then compression off, on and adaptive at each --modes-rates, on the first --modes-count images of the
 * first set cut to --modes-memory MiB (a smaller job, so the 100 Mbit/s runs stay short).
 *
 * Targets (issues): vmscatter's bytes <= 20% of (a) and <= 60% of (b); its time <= 40% of (a) and
 * <= 0.8x (b). A full run (not --quick) writes its summary to docs/bench/scatter-images.json.
 * Needs root, the lab tools (ip, tc, nft), and QEMU for the real set. Bounded: every process has a
 * deadline; the lab and all processes are removed at the end.
 */
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { materialiseSyntheticImages } from '../src/local/workspace.js';
import type { Topology } from '../src/topology/model.js';
import { createLab, labAvailable, watchProcess, type Lab } from './harness/lab.js';
import { ensureGuestImages } from './guest-images.js';
import { CLI_NODE_OPTIONS } from '../src/cli/node-options.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const copier = fileURLToPath(new URL('./unicast-copy.js', import.meta.url));
const TARGETS = ['t1', 't2', 't3', 't4'];
const RUN_TIMEOUT_MS = 10 * 60_000;

interface Run {
  readonly set: string;
  readonly method: string;
  readonly rate: string;
  readonly bytes: number;
  readonly seconds: number;
  readonly verified: boolean;
  readonly detail?: Record<string, unknown>;
}

const { values } = parseArgs({
  options: {
    sets: { type: 'string', default: 'real,synthetic' },
    count: { type: 'string', default: '8' },
    memory: { type: 'string', default: '256' },
    rate: { type: 'string', default: '1gbit' },
    mtu: { type: 'string', default: '9000' },
    'modes-rates': { type: 'string', default: '100mbit,1gbit,unshaped' },
    'modes-count': { type: 'string', default: '4' },
    'modes-memory': { type: 'string', default: '128' },
    images: { type: 'string', default: join(tmpdir(), 'vmscatter-bench-images') },
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const quick = values.quick!;
const count = quick ? 4 : Number(values.count);
// 128 MiB is the least a Debian kernel with its initramfs and workload boots in.
const memoryMiB = quick ? 128 : Number(values.memory);
const sets = values.sets!.split(',');
const log = (line: string) => process.stderr.write(`${line}\n`);

/** Image paths of a set, made (and cached) on first use. */
async function imagesOf(set: string, n: number, mib: number): Promise<string[]> {
  const dir = join(values.images!, `${set}-${n}x${mib}`);
  mkdirSync(dir, { recursive: true });
  if (set === 'real') {
    log(`preparing ${n} guest images of ${mib} MiB (booting QEMU guests on first use)`);
    const report = await ensureGuestImages({ count: n, memoryMiB: mib, outDir: dir });
    return report.images.map((image) => image.path);
  }
  const families = ['debian', 'alpine'];
  const topology: Topology = {
    file: '<bench>',
    multicast: { base: '239.255.93.0', size: 8, port: 7590 },
    hosts: [],
    vms: Array.from({ length: n }, (_, i) => ({
      name: `vm${i + 1}`,
      memoryBytes: mib * 2 ** 20,
      source: {
        kind: 'synthetic' as const,
        model: {
          seed: i + 1,
          family: families[i % 2]!,
          zeroShare: 0.3,
          osShare: 0.4,
          commonShare: 0.05,
          duplicateShare: 0.02,
        },
      },
      excludedTargets: [],
    })),
  };
  return materialiseSyntheticImages(topology, dir).vms.map((vm) =>
    vm.source.kind === 'image' ? vm.source.path : '',
  );
}

/** The first `mib` MiB of each image, for the smaller compression-modes job. */
function cutImages(paths: readonly string[], mib: number, dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  return paths.map((path, i) => {
    const out = join(dir, `cut${i + 1}-${mib}.raw`);
    if (existsSync(out)) return out;
    const buffer = new Uint8Array(mib * 2 ** 20);
    const fd = openSync(path, 'r');
    readSync(fd, buffer, 0, buffer.length, 0);
    closeSync(fd);
    const outFd = openSync(`${out}.partial`, 'w');
    writeSync(outFd, buffer);
    closeSync(outFd);
    renameSync(`${out}.partial`, out);
    return out;
  });
}

/** A tc rate ('1gbit') in topology units ('1Gbit'); an unshaped lab link is declared 10 Gbit/s. */
function topologyRate(rate: string): string {
  if (rate === 'unshaped') return '10Gbit';
  return rate.replace(
    /^(\d+(?:\.\d+)?)([kmgt]?)bit$/i,
    (_, n: string, prefix: string) => `${n}${prefix.toUpperCase()}bit`,
  );
}

function writeTopology(lab: Lab, dir: string, images: readonly string[], mib: number, rate: string): string {
  const link = topologyRate(rate);
  const path = join(dir, 'topology.yaml');
  const perTarget = Math.ceil(images.length / TARGETS.length);
  writeFileSync(
    path,
    [
      'multicast: { base: 239.255.93.0, size: 8, port: 7590 }',
      'hosts:',
      `  - { name: src, address: ${lab.host('src').address}, port: 7580, role: source, link: ${link} }`,
      ...TARGETS.map(
        (t) =>
          `  - { name: ${t}, address: ${lab.host(t).address}, port: 7581, role: target, memory: ${perTarget * mib}MiB, maxVms: ${perTarget}, link: ${link} }`,
      ),
      'vms:',
      ...images.map((image, i) => `  - { name: vm${i + 1}, memory: ${mib}MiB, source: { image: ${image} } }`),
    ].join('\n'),
  );
  return path;
}

async function runVmscatter(
  lab: Lab,
  dir: string,
  topology: string,
  compression: string,
): Promise<{ bytes: number; seconds: number; report: Record<string, unknown> }> {
  const secret = join(dir, 'secret');
  if (!existsSync(secret)) writeFileSync(secret, 'bench deployment secret, 32 bytes...', { mode: 0o600 });
  rmSync(join(dir, 'agents'), { recursive: true, force: true });
  const agents = await Promise.all(
    TARGETS.map(async (t) => {
      const agent = watchProcess(
        lab.spawn(t, process.execPath, [
          ...CLI_NODE_OPTIONS,
          cli,
          'agent',
          '--topology',
          topology,
          '--host',
          t,
          '--dir',
          join(dir, 'agents', t),
          '--secret-file',
          secret,
        ]),
      );
      await agent.waitFor(/listening/, 20_000);
      return agent;
    }),
  );
  try {
    const before = await lab.txBytes('src');
    const started = performance.now();
    const job = watchProcess(
      lab.spawn('src', process.execPath, [
        ...CLI_NODE_OPTIONS,
        cli,
        'scatter',
        '--topology',
        topology,
        '--work-dir',
        dir,
        '--secret-file',
        secret,
        '--compression',
        compression,
        '--mtu',
        values.mtu!,
        '--json',
      ]),
    );
    const result = await job.exit(RUN_TIMEOUT_MS);
    const seconds = (performance.now() - started) / 1000;
    const bytes = (await lab.txBytes('src')) - before;
    if (result.code !== 0)
      throw new Error(`vmscatter scatter failed (${result.code}): ${result.stderr.slice(-2000)}`);
    return { bytes, seconds, report: JSON.parse(result.stdout) as Record<string, unknown> };
  } finally {
    for (const agent of agents) agent.child.kill('SIGTERM');
    await Promise.all(agents.map((a) => a.exit(10_000).catch(() => undefined)));
  }
}

async function runUnicast(
  lab: Lab,
  dir: string,
  images: readonly string[],
  placement: Readonly<Record<string, string>>,
  codec: 'raw' | 'lz4',
): Promise<{ bytes: number; seconds: number; verified: boolean }> {
  const servers = await Promise.all(
    TARGETS.map(async (t) => {
      const out = join(dir, 'unicast', t);
      rmSync(out, { recursive: true, force: true });
      mkdirSync(out, { recursive: true });
      const server = watchProcess(
        lab.spawn(t, process.execPath, [
          copier,
          'serve',
          '--listen',
          `${lab.host(t).address}:7599`,
          '--dir',
          out,
        ]),
      );
      await server.waitFor(/listening/, 20_000);
      return server;
    }),
  );
  try {
    const before = await lab.txBytes('src');
    const started = performance.now();
    const senders = images.map((image, i) => {
      const target = placement[`vm${i + 1}`]!;
      return watchProcess(
        lab.spawn('src', process.execPath, [
          copier,
          'send',
          '--to',
          `${lab.host(target).address}:7599`,
          '--file',
          image,
          '--name',
          `vm${i + 1}`,
          '--codec',
          codec,
        ]),
      );
    });
    const results = await Promise.all(senders.map((s) => s.exit(RUN_TIMEOUT_MS)));
    // The copy is done when every server has written its last file.
    for (const [t, server] of servers.entries()) {
      const expected = Object.values(placement).filter((x) => x === TARGETS[t]).length;
      for (let n = 1; n <= expected; n++)
        await server.waitFor(new RegExp(`(\\{[^\\n]*\\n){${n}}`), RUN_TIMEOUT_MS);
    }
    const seconds = (performance.now() - started) / 1000;
    const bytes = (await lab.txBytes('src')) - before;
    // Whole files at their targets (sizes; the content is not rehashed: TCP checked it in transit).
    const verified =
      results.every((r) => r.code === 0) &&
      images.every((image, i) => {
        const file = join(dir, 'unicast', placement[`vm${i + 1}`]!, `vm${i + 1}.raw`);
        return existsSync(file) && statSync(file).size === statSync(image).size;
      });
    return { bytes, seconds, verified };
  } finally {
    for (const server of servers) server.child.kill('SIGTERM');
  }
}

async function main(): Promise<void> {
  const available = labAvailable();
  if (!available.ok) throw new Error(`the network lab is needed: ${available.why}`);
  const rate = values.rate!;
  const runs: Run[] = [];
  const work = join(tmpdir(), `vmscatter-bench-scatter-${process.pid}`);
  const lab = await createLab({ hosts: ['src', ...TARGETS], mtu: Number(values.mtu) });
  try {
    await lab.shape('src', { rate });
    for (const set of sets) {
      const images = await imagesOf(set, count, memoryMiB);
      const dir = join(work, set);
      mkdirSync(dir, { recursive: true });
      const topology = writeTopology(lab, dir, images, memoryMiB, rate);
      log(`${set}: vmscatter`);
      const scatter = await runVmscatter(lab, dir, topology, 'adaptive');
      const placement = scatter.report.placement as Record<string, string> | undefined;
      const vms = scatter.report.vms as { name: string; target: string; verified: boolean }[];
      const where = placement ?? Object.fromEntries(vms.map((vm) => [vm.name, vm.target]));
      runs.push({
        set,
        method: 'vmscatter',
        rate,
        bytes: scatter.bytes,
        seconds: scatter.seconds,
        verified: vms.every((vm) => vm.verified),
        detail: {
          pages: scatter.report.pages,
          compression: scatter.report.compression,
          seconds: scatter.report.seconds,
        },
      });
      for (const codec of ['raw', 'lz4'] as const) {
        log(`${set}: unicast ${codec}`);
        const copy = await runUnicast(lab, dir, images, where, codec);
        runs.push({ set, method: `unicast ${codec}`, rate, ...copy });
      }
    }
    // Compression modes on a smaller job.
    const modesImages = cutImages(
      (await imagesOf(sets[0]!, count, memoryMiB)).slice(0, Number(values['modes-count'])),
      quick ? 64 : Number(values['modes-memory']),
      join(work, 'cut'),
    );
    const modesDir = join(work, 'modes');
    mkdirSync(modesDir, { recursive: true });
    for (const modesRate of values['modes-rates']!.split(',')) {
      const modesMiB = quick ? 64 : Number(values['modes-memory']);
      const modesTopology = writeTopology(lab, modesDir, modesImages, modesMiB, modesRate);
      await lab.unshape('src');
      if (modesRate !== 'unshaped') await lab.shape('src', { rate: modesRate });
      for (const mode of ['off', 'on', 'adaptive']) {
        log(`modes: ${modesRate} compression ${mode}`);
        const result = await runVmscatter(lab, modesDir, modesTopology, mode);
        const vms = result.report.vms as { verified: boolean }[];
        runs.push({
          set: `${sets[0]} (cut)`,
          method: `vmscatter compression ${mode}`,
          rate: modesRate,
          bytes: result.bytes,
          seconds: result.seconds,
          verified: vms.every((vm) => vm.verified),
          detail: { compression: result.report.compression },
        });
      }
    }
  } finally {
    await lab.destroy();
    rmSync(work, { recursive: true, force: true });
  }
  report(runs);
}

/** Per set: vmscatter beside both unicast baselines, as ratios; what the README's table comes from. */
function summary(runs: readonly Run[]) {
  const ratio = (x: number, base: number) => Math.round((1000 * x) / base) / 1000;
  return sets.flatMap((set) => {
    const v = runs.find((r) => r.set === set && r.method === 'vmscatter');
    const a = runs.find((r) => r.set === set && r.method === 'unicast raw');
    const b = runs.find((r) => r.set === set && r.method === 'unicast lz4');
    if (!v || !a || !b) return [];
    const row = (r: Run) => ({ bytes: r.bytes, seconds: r.seconds, verified: r.verified });
    return [
      {
        set,
        vmscatter: { ...row(v), phases: v.detail?.seconds ?? null },
        unicastRaw: row(a),
        unicastLz4: row(b),
        ratios: {
          bytesToRaw: ratio(v.bytes, a.bytes),
          bytesToLz4: ratio(v.bytes, b.bytes),
          secondsToRaw: ratio(v.seconds, a.seconds),
          secondsToLz4: ratio(v.seconds, b.seconds),
        },
      },
    ];
  });
}

function report(runs: readonly Run[]): void {
  if (!quick) {
    const path = join(dirname(fileURLToPath(import.meta.url)), '../../docs/bench/scatter-images.json');
    mkdirSync(dirname(path), { recursive: true });
    const command = `npm run bench:scatter-images -- ${process.argv.slice(2).join(' ')}`.trim();
    writeFileSync(
      path,
      `${JSON.stringify({ bench: 'scatter-images', date: new Date().toISOString(), count, memoryMiB, rate: values.rate, mtu: Number(values.mtu), sets: summary(runs), runs, command }, null, 2)}\n`,
    );
    log(`wrote ${path}`);
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ count, memoryMiB, rate: values.rate, runs }, null, 2)}\n`);
    return;
  }
  const lines = [
    `scatter of images: ${count} VMs x ${memoryMiB} MiB -> 4 targets, source link ${values.rate}`,
  ];
  lines.push(
    'set                 method                          rate       source link      time   vs (a) bytes  vs (a) time  ok',
  );
  for (const run of runs) {
    const a = runs.find((r) => r.set === run.set && r.method === 'unicast raw');
    lines.push(
      [
        run.set.padEnd(19),
        run.method.padEnd(31),
        run.rate.padEnd(10),
        `${(run.bytes / 2 ** 20).toFixed(1)} MiB`.padStart(12),
        `${run.seconds.toFixed(1)} s`.padStart(9),
        (a ? `${((100 * run.bytes) / a.bytes).toFixed(1)}%` : '-').padStart(13),
        (a ? `${((100 * run.seconds) / a.seconds).toFixed(1)}%` : '-').padStart(12),
        run.verified ? ' yes' : ' NO',
      ].join(' '),
    );
    const phases = run.detail?.seconds as Record<string, number> | undefined;
    if (phases)
      lines.push(
        `    phases: ${Object.entries(phases)
          .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
          .join(', ')}`,
      );
  }
  for (const set of sets) {
    const v = runs.find((r) => r.set === set && r.method === 'vmscatter');
    const a = runs.find((r) => r.set === set && r.method === 'unicast raw');
    const b = runs.find((r) => r.set === set && r.method === 'unicast lz4');
    if (!v || !a || !b) continue;
    const check = (ok: boolean) => (ok ? 'PASS' : 'MISS');
    lines.push(
      `${set}: bytes ${((100 * v.bytes) / a.bytes).toFixed(1)}% of (a) [target <= 20%: ${check(v.bytes <= 0.2 * a.bytes)}], ` +
        `${((100 * v.bytes) / b.bytes).toFixed(1)}% of (b) [<= 60%: ${check(v.bytes <= 0.6 * b.bytes)}]; ` +
        `time ${((100 * v.seconds) / a.seconds).toFixed(1)}% of (a) [<= 40%: ${check(v.seconds <= 0.4 * a.seconds)}], ` +
        `${(v.seconds / b.seconds).toFixed(2)}x (b) [<= 0.8x: ${check(v.seconds <= 0.8 * b.seconds)}]`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

await main();
