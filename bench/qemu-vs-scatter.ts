/**
 * The headline comparison: running QEMU guests moved live from one host to many, by QEMU's own
 * migration and by vmscatter, in the network lab.
 *
 *   npm run bench:qemu [-- --count 8 --memory 256 --targets 4 --rate 1gbit --mtu 9000 --repeat 1
 *                          --methods a,b-zstd,b-xbzrle,c,d --out DIR --quick --memory-file --json
 *                          --cpu-prof DIR (V8 CPU profiles of vmscatter's coordinator and agents)]
 *
 * Guests: N guests (default 8 x 256 MiB) under TCG with the same Debian kernel and a busybox initramfs
 * per guest (bench/harness/qemu-guest.ts, seed = guest number, workload memory/8 with the kernel's
 * modules as the common data). Mix: a quarter "readers" (re-read their common files every second, 90%
 * of their workload shared), a quarter "writers" (rewrite 5 MB/s of random data over a memory/8 ring;
 * their workload is memory/16 so they fit), the rest idle (64 KiB/s). --quick: 2 x 128 MiB -> 2
 * targets, one idle guest and one writer. The guests run in the lab's `src` namespace, so every byte a
 * method moves crosses src's link.
 *
 * Lab: hosts src and t1..tT (default 4) in network namespaces on one switch, MTU --mtu (default 9000,
 * as migration networks use; --mtu 1500 works too), src's link shaped to --rate (tc tbf, default
 * 1 Gbit/s). A fresh lab and freshly booted guests (2 at a time: under TCG each boot pegs a core) for
 * every method; the order of the methods alternates across --repeat.
 *
 * Methods (guest i goes to target i mod T in a, b and c):
 * - (a) `qemu`: QEMU's `migrate tcp:` of every guest at once with default settings (no capabilities;
 *   QEMU 7.2 caps each migration at 128 MiB/s by default, above a 1 Gbit/s link). Destination QEMUs
 *   are started by the bench in the target namespaces with the same command line plus
 *   `-incoming tcp:0.0.0.0:PORT`.
 * - (b) QEMU's best built-in options, two candidates; the one with fewer bytes on the link (then the
 *   faster) is (b): `b-zstd`, multifd (both ends) with multifd-compression zstd (zlib, then none, if
 *   this QEMU lacks zstd: the output says so), destinations at `-incoming defer` + `migrate-incoming`;
 *   `b-xbzrle`, XBZRLE with a cache of memory/4. Both with max-bandwidth raised to the link's rate
 *   where that is above QEMU's default cap. (QEMU's own `ram.transferred` counts multifd pages before
 *   compression: only the link counter shows what zstd saved.)
 * - (c) `vmscatter` with the same placement as (a) (`target:` pins): `vmscatter scatter --json --mtu`
 *   in src, `vmscatter agent` in each target; each guest's source is a second QMP socket of its QEMU.
 * - (d) `vmscatter` with its own placement (no pins; ceil(N/T) VMs and their memory per target).
 *
 * Measured per method: bytes src put on its link (the lab's switch-port counter, headers included);
 * time from the first `migrate` (a, b) or the start of `vmscatter scatter` (c, d) until the last guest
 * runs at its target (a, b: destinations polled with query-status every 100 ms; their QEMUs were
 * started beforehand, while vmscatter's agents start theirs within the job; c, d: the command's wall
 * time, scan, plan, multicast and the live migrations included); per-guest downtime on one clock,
 * source stopped to target running (a, b: the source's STOP event to the destination's RESUME event,
 * QEMU's own `downtime` kept beside it as qemuDowntimeMs; c, d: the report's `vms[].live.downtimeMs`,
 * QEMU's figure plus the time from the stream's end to the target confirmed running); CPU seconds at the source: the source QEMUs' threads other
 * than the vCPU (migration, multifd, main loop; from /proc, sampled every 200 ms, so a QEMU that quits
 * loses at most its last interval; the vCPU thread is the guest's own work and left out) plus, for c
 * and d, the `vmscatter scatter` process and its workers (rusage via the shell's `times`).
 * Verified after every method: each destination answers query-status 'running', its guest's tick
 * counter goes past the last value seen at the source, and the source QEMU is gone or 'postmigrate'.
 *
 * Targets (issue): vmscatter's bytes <= 30% of (a) and <= 0.7x (b)'s; its time <= 1.0x (a)'s (aim:
 * 0.5x); its median downtime <= (a)'s; its source CPU <= 5 core-seconds. Results go to --out DIR
 * (default under the OS tmpdir): results.json and chart.svg (bytes and time per method). Needs root, the lab tools (ip, tc, nft) and
 * qemu-system-x86_64. Every QEMU and the lab are removed after each method, on errors and on Ctrl-C.
 */
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { connectQmp, QmpError, type QmpClient, type QmpEvent } from '../src/qemu/qmp.js';
import { createLab, findTool, labAvailable, watchProcess, type Lab } from './harness/lab.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  lastTick,
  guestModuleFiles,
  type Guest,
} from './harness/qemu-guest.js';
import { CLI_NODE_OPTIONS } from '../src/cli/node-options.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const MiB = 2 ** 20;
const MIGRATE_TIMEOUT_MS = 10 * 60_000;
const VERIFY_TIMEOUT_MS = 60_000;
const BASE_PORT = 4440;
/** QEMU 7.2's default max-bandwidth (MAX_THROTTLE). */
const DEFAULT_MAX_BANDWIDTH = 128 * MiB;

export const METHODS = ['a', 'b-zstd', 'b-xbzrle', 'c', 'd'] as const;
export type MethodId = (typeof METHODS)[number];
export const METHOD_LABELS: Record<MethodId, string> = {
  a: '(a) QEMU migrate, defaults',
  'b-zstd': '(b) QEMU multifd+zstd',
  'b-xbzrle': '(b) QEMU xbzrle',
  c: '(c) vmscatter, same placement',
  d: '(d) vmscatter, own placement',
};

export type GuestKind = 'idle' | 'reader' | 'writer';

export interface BenchOptions {
  readonly count: number;
  readonly memoryMiB: number;
  readonly targets: number;
  /** tc rate of src's link ('1gbit'), or 'unshaped'. */
  readonly rate: string;
  readonly mtu: number;
  readonly repeat: number;
  readonly methods: readonly MethodId[];
  /**
   * Guests keep their RAM in a shared memory-backend file (sources and destinations alike, for every
   * method), which vmscatter then scans directly instead of through a scan migration.
   */
  readonly memoryFile?: boolean;
  /** Where vmscatter's processes (c, d) write V8 CPU profiles (node --cpu-prof), one per process. */
  readonly cpuProfDir?: string;
  readonly log?: (line: string) => void;
}

export interface GuestOutcome {
  readonly name: string;
  readonly kind: GuestKind;
  readonly target: string;
  /**
   * Milliseconds from the source stopped to the target running: for a, b the source's STOP event to
   * the destination's RESUME event (QEMU's timestamps); for c, d vmscatter's report (QEMU's figure at
   * the source plus the stream's end to the target confirmed running, a bound from above).
   */
  readonly downtimeMs?: number;
  /** QEMU's own `downtime` (a, b), which ends at the source, before the destination runs. */
  readonly qemuDowntimeMs?: number;
  /** QEMU's total-time of the migration (a, b) or vmscatter's seconds for this VM (c, d), in ms. */
  readonly migrationMs?: number;
  /** The last tick seen at the source before the method started, and the first past it at the target. */
  readonly tickBefore: number;
  readonly tickAfter?: number;
  readonly destinationStatus?: string;
  /** 'gone' when the source QEMU has exited. */
  readonly sourceStatus?: string;
  readonly ok: boolean;
  readonly error?: string;
}

export interface MethodRun {
  readonly method: MethodId;
  readonly label: string;
  readonly repeat: number;
  readonly ok: boolean;
  readonly error?: string;
  /** Bytes src put on its link during the method. */
  readonly bytes: number;
  /** Seconds until the last guest ran at its target. */
  readonly seconds: number;
  /** Source CPU seconds: source QEMUs outside their vCPU, and the vmscatter process (c, d). */
  readonly cpu: { readonly qemu: number; readonly tool: number; readonly total: number };
  readonly guests: readonly GuestOutcome[];
  readonly detail: Record<string, unknown>;
}

export interface MethodSummary {
  readonly method: MethodId;
  readonly label: string;
  readonly runs: number;
  readonly ok: boolean;
  /** Medians over the repeats. */
  readonly bytes: number;
  readonly seconds: number;
  readonly cpuSeconds: number;
  /** Median, smallest and largest downtime over every guest of every repeat. */
  readonly downtimeMs: { readonly median: number; readonly min: number; readonly max: number };
}

export interface BenchResult {
  readonly config: BenchOptions & { readonly qemu: string; readonly guests: readonly GuestKind[] };
  readonly runs: readonly MethodRun[];
  readonly summary: readonly MethodSummary[];
  /** Which candidate became (b), and why. */
  readonly b?: { readonly method: MethodId; readonly why: string };
  readonly checks: readonly { readonly what: string; readonly value: number; readonly pass: boolean }[];
}

// ---------------------------------------------------------------------------------------------------
// Guests

interface GuestSpec {
  readonly name: string;
  readonly index: number;
  readonly kind: GuestKind;
  readonly initrd: string;
  readonly target: string;
  readonly port: number;
}

/** A quarter readers, a quarter writers (at least one writer from two guests), the rest idle. */
export function guestKinds(count: number): GuestKind[] {
  const writers = count >= 2 ? Math.max(1, Math.round(count / 4)) : 0;
  const readers = Math.floor(count / 4);
  const idle = count - writers - readers;
  return [
    ...Array<GuestKind>(idle).fill('idle'),
    ...Array<GuestKind>(readers).fill('reader'),
    ...Array<GuestKind>(writers).fill('writer'),
  ];
}

function buildGuestImages(dir: string, options: BenchOptions, modules: readonly string[]): GuestSpec[] {
  return guestKinds(options.count).map((kind, index) => {
    const name = `g${index + 1}`;
    const initrd = join(dir, `${name}.initrd.gz`);
    const mib = options.memoryMiB;
    buildInitramfs(initrd, {
      seed: index + 1,
      sharedFiles: modules,
      workloadMiB: kind === 'writer' ? mib / 16 : mib / 8,
      dirtyKiBPerSecond: kind === 'writer' ? 5120 : 64,
      ...(kind === 'writer' ? { dirtyRingMiB: mib / 8 } : {}),
      ...(kind === 'reader' ? { rereadCommon: true, privateShare: 0.1 } : {}),
    });
    return {
      name,
      index,
      kind,
      initrd,
      target: `t${(index % options.targets) + 1}`,
      port: BASE_PORT + index,
    };
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** With --cpu-prof: node's own options for a V8 CPU profile of the process (none otherwise). */
function profileArgs(options: BenchOptions): string[] {
  return options.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', options.cpuProfDir] : [];
}

/** With --memory-file: the guest's RAM in a shared file at `path` (none otherwise). */
function memoryFileArgs(options: BenchOptions, path: string): string[] {
  if (!options.memoryFile) return [];
  return [
    ...['-object', `memory-backend-file,id=ram0,size=${options.memoryMiB}M,mem-path=${path},share=on`],
    ...['-machine', 'memory-backend=ram0'],
  ];
}

/** The guest's QEMU arguments after the binary, without QMP and serial (bootGuest adds those). */
function qemuArgs(kernel: string, initrd: string, memoryMiB: number): string[] {
  return [
    ...['-accel', 'tcg', '-m', String(memoryMiB), '-smp', '1'],
    ...['-nodefaults', '-display', 'none', '-no-reboot'],
    ...['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet'],
  ];
}

// ---------------------------------------------------------------------------------------------------
// CPU at the source

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  clockTicks ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  return clockTicks;
}

/** utime + stime (clock ticks) from a /proc stat line, and the thread's name. */
function readStat(path: string): { name: string; ticks: number } | undefined {
  try {
    const stat = readFileSync(path, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return {
      name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')),
      ticks: Number(fields[11]) + Number(fields[12]),
    };
  } catch {
    return undefined;
  }
}

/**
 * CPU of QEMU processes outside their vCPU threads (named `CPU n/TCG` with `-name ...,debug-threads=on`):
 * the process's total (which keeps the time of exited threads, such as the migration thread) minus
 * its vCPU threads'. Sampled every 200 ms, so a process that exits keeps its last sample. A vCPU
 * thread that exits before its process (a source QEMU stopping after its guest moved) keeps its last
 * sample too: the process's total still holds its time, which is the guest's, not the migration's.
 */
class QemuCpu {
  private readonly first = new Map<number, number>();
  private readonly last = new Map<number, number>();
  /** Per process, the last ticks seen of each vCPU thread (by thread id), exited ones included. */
  private readonly vcpus = new Map<number, Map<string, number>>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pids: readonly number[]) {
    this.sample();
    for (const [pid, ticks] of this.last) this.first.set(pid, ticks);
    this.timer = setInterval(() => this.sample(), 200);
  }

  private sample(): void {
    for (const pid of this.pids) {
      const total = readStat(`/proc/${pid}/stat`);
      if (!total) continue;
      let tasks: string[] = [];
      try {
        tasks = readdirSync(`/proc/${pid}/task`);
      } catch {
        continue;
      }
      let threads = this.vcpus.get(pid);
      if (!threads) this.vcpus.set(pid, (threads = new Map()));
      for (const task of tasks) {
        const thread = readStat(`/proc/${pid}/task/${task}/stat`);
        if (thread && /^CPU \d+\//.test(thread.name)) threads.set(task, thread.ticks);
      }
      let vcpu = 0;
      for (const ticks of threads.values()) vcpu += ticks;
      this.last.set(pid, total.ticks - vcpu);
    }
  }

  /** Seconds since construction, summed over the processes. */
  stop(): number {
    this.sample();
    clearInterval(this.timer);
    let ticks = 0;
    for (const [pid, last] of this.last) ticks += last - (this.first.get(pid) ?? last);
    return ticks / ticksPerSecond();
  }
}

// ---------------------------------------------------------------------------------------------------
// Rates

/** '1gbit' -> bits per second; 'unshaped' -> 10 Gbit/s (what the topology declares for it). */
function rateBits(rate: string): number {
  if (rate === 'unshaped') return 10e9;
  const match = /^(\d+(?:\.\d+)?)([kmgt]?)bit$/i.exec(rate);
  if (!match) throw new Error(`--rate: expected e.g. 1gbit, 200mbit or unshaped, got '${rate}'`);
  const scale: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 };
  return Number(match[1]) * (scale[match[2]!.toLowerCase()] ?? 1);
}

/** '1gbit' in topology units ('1Gbit'). */
function topologyRate(rate: string): string {
  if (rate === 'unshaped') return '10Gbit';
  return rate.replace(
    /^(\d+(?:\.\d+)?)([kmgt]?)bit$/i,
    (_, n: string, prefix: string) => `${n}${prefix.toUpperCase()}bit`,
  );
}

// ---------------------------------------------------------------------------------------------------
// One method on freshly booted guests

interface Context {
  readonly options: BenchOptions;
  readonly kernel: string;
  readonly specs: readonly GuestSpec[];
  readonly work: string;
  readonly log: (line: string) => void;
  /** The compression multifd ended up with (decided on the first b-zstd run). */
  multifdCompression?: string;
  multifdNote?: string;
}

interface Booted {
  readonly spec: GuestSpec;
  readonly guest: Guest;
  /** A second QMP socket, for vmscatter. */
  readonly vmsQmp: string;
}

/** Boots the source guests in src, two at a time; on failure stops what was booted. */
async function bootSources(ctx: Context, lab: Lab, dir: string): Promise<Booted[]> {
  const booted: Booted[] = [];
  const queue = [...ctx.specs];
  const worker = async () => {
    for (let spec = queue.shift(); spec !== undefined; spec = queue.shift()) {
      const vmsQmp = join(dir, `${spec.name}-vms.qmp`);
      try {
        const guest = await bootGuest({
          kernel: ctx.kernel,
          initrd: spec.initrd,
          memoryMiB: ctx.options.memoryMiB,
          qmpSocket: join(dir, `${spec.name}.qmp`),
          wrap: [findTool('ip') ?? 'ip', 'netns', 'exec', lab.host('src').namespace],
          extraArgs: [
            ...['-name', `${spec.name},debug-threads=on`],
            ...['-qmp', `unix:${vmsQmp},server=on,wait=off`],
            ...memoryFileArgs(ctx.options, join(dir, `${spec.name}.src.mem`)),
          ],
          readyTimeoutMs: 180_000,
        });
        booted.push({ spec, guest, vmsQmp });
      } catch (error) {
        queue.length = 0;
        throw error;
      }
    }
  };
  const outcomes = await Promise.allSettled([worker(), worker()]);
  const failed = outcomes.find((o) => o.status === 'rejected');
  if (failed) {
    await Promise.all(booted.map((b) => b.guest.stop()));
    throw failed.reason;
  }
  booted.sort((x, y) => x.spec.index - y.spec.index);
  // Running steadily: every guest has ticked a few times (writers are writing).
  const deadline = Date.now() + 120_000;
  while (!booted.every((b) => lastTick(b.guest.serial()) >= 3)) {
    if (Date.now() > deadline) {
      await Promise.all(booted.map((b) => b.guest.stop()));
      throw new Error('guests did not tick 3 times within 120 s of booting');
    }
    await sleep(250);
  }
  return booted;
}

/** Stops the QEMU behind a QMP socket, if one answers there. */
async function quitAt(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const qmp = await connectQmp(path, { connectTimeoutMs: 2000, commandTimeoutMs: 5000 }).catch(
    () => undefined,
  );
  await qmp?.execute('quit').catch(() => undefined);
  await qmp?.close().catch(() => undefined);
}

async function runMethod(ctx: Context, method: MethodId, repeat: number): Promise<MethodRun> {
  const { options } = ctx;
  const dir = mkdtempSync(join(ctx.work, `${method}-${repeat}-`));
  const targets = Array.from({ length: options.targets }, (_, i) => `t${i + 1}`);
  const lab = await createLab({ hosts: ['src', ...targets], mtu: options.mtu });
  const guests: Guest[] = [];
  const leftovers: string[] = [];
  try {
    if (options.rate !== 'unshaped') await lab.shape('src', { rate: options.rate });
    ctx.log(`${METHOD_LABELS[method]}, run ${repeat + 1}: booting ${ctx.specs.length} guests`);
    const sources = await bootSources(ctx, lab, dir);
    guests.push(...sources.map((s) => s.guest));
    ctx.log(`  ${sources.length} guests running; migrating`);
    const run =
      method === 'c' || method === 'd'
        ? await viaVmscatter(ctx, lab, dir, sources, method, leftovers)
        : await viaQemu(ctx, lab, dir, sources, method, guests);
    const result = { method, label: METHOD_LABELS[method], repeat, ...run };
    ctx.log(
      `  ${result.ok ? 'ok' : `FAILED: ${result.error}`}: ${(result.bytes / MiB).toFixed(1)} MiB, ` +
        `${result.seconds.toFixed(1)} s`,
    );
    return result;
  } finally {
    await Promise.all(leftovers.map(quitAt));
    await Promise.all(guests.map((g) => g.stop().catch(() => undefined)));
    await lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

type RunBody = Omit<MethodRun, 'method' | 'label' | 'repeat'>;

/** Waits until the guest's ticks pass `before` in what `read` returns; the tick, or undefined on timeout. */
async function ticksOn(read: () => string, before: number, until: number): Promise<number | undefined> {
  for (;;) {
    const tick = lastTick(read());
    if (tick > before) return tick;
    if (Date.now() > until) return undefined;
    await sleep(250);
  }
}

const status = async (qmp: QmpClient | undefined): Promise<string> =>
  qmp === undefined || qmp.closed
    ? 'gone'
    : (((await qmp.execute('query-status').catch(() => ({ status: 'gone' }))) as { status?: string })
        .status ?? 'unknown');

/** Chooses multifd's compression: zstd if this QEMU has it, else zlib, else none. */
async function setMultifdCompression(ctx: Context, qmp: QmpClient): Promise<string> {
  const candidates = ctx.multifdCompression ? [ctx.multifdCompression] : ['zstd', 'zlib', 'none'];
  const refused: string[] = [];
  for (const compression of candidates) {
    try {
      await qmp.execute('migrate-set-parameters', { 'multifd-compression': compression });
      if (!ctx.multifdCompression) {
        ctx.multifdCompression = compression;
        if (refused.length > 0) ctx.multifdNote = `this QEMU refused ${refused.join('; ')}`;
      }
      return compression;
    } catch (error) {
      if (!(error instanceof QmpError)) throw error;
      refused.push(`${compression} (${error.message})`);
    }
  }
  throw new Error(`multifd: no compression accepted: ${refused.join('; ')}`);
}

async function viaQemu(
  ctx: Context,
  lab: Lab,
  dir: string,
  sources: readonly Booted[],
  method: MethodId,
  guests: Guest[],
): Promise<RunBody> {
  const { options } = ctx;
  const defer = method !== 'a';
  const ip = findTool('ip') ?? 'ip';
  const destinations = await Promise.all(
    sources.map(async ({ spec }) => {
      const guest = await bootGuest({
        kernel: ctx.kernel,
        initrd: spec.initrd,
        memoryMiB: options.memoryMiB,
        qmpSocket: join(dir, `${spec.name}.dst.qmp`),
        incoming: defer ? 'defer' : `tcp:0.0.0.0:${spec.port}`,
        wrap: [ip, 'netns', 'exec', lab.host(spec.target).namespace],
        extraArgs: memoryFileArgs(options, join(dir, `${spec.name}.dst.mem`)),
      });
      guests.push(guest);
      return guest;
    }),
  );
  const detail: Record<string, unknown> = {};
  // QEMU 7.2 caps a migration at 128 MiB/s by default: raised (never lowered) to the link's rate.
  const linkBytes = Math.round(rateBits(options.rate) / 8);
  const maxBandwidth = Math.max(linkBytes, DEFAULT_MAX_BANDWIDTH);
  if (method === 'b-zstd') {
    for (const [i, dst] of destinations.entries()) {
      await dst.qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'multifd', state: true }],
      });
      detail.compression = await setMultifdCompression(ctx, dst.qmp);
      await dst.qmp.execute('migrate-incoming', { uri: `tcp:0.0.0.0:${sources[i]!.spec.port}` });
    }
    for (const { guest } of sources) {
      await guest.qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'multifd', state: true }],
      });
      await setMultifdCompression(ctx, guest.qmp);
      await guest.qmp.execute('migrate-set-parameters', { 'max-bandwidth': maxBandwidth });
    }
    if (ctx.multifdNote) detail.note = ctx.multifdNote;
    detail.maxBandwidth = maxBandwidth;
  } else if (method === 'b-xbzrle') {
    const cache = (options.memoryMiB / 4) * MiB;
    for (const [i, dst] of destinations.entries())
      await dst.qmp.execute('migrate-incoming', { uri: `tcp:0.0.0.0:${sources[i]!.spec.port}` });
    for (const { guest } of sources) {
      await guest.qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'xbzrle', state: true }],
      });
      await guest.qmp.execute('migrate-set-parameters', {
        'xbzrle-cache-size': cache,
        'max-bandwidth': maxBandwidth,
      });
    }
    detail.xbzrleCacheBytes = cache;
    detail.maxBandwidth = maxBandwidth;
  }
  const before = sources.map((s) => lastTick(s.guest.serial()));
  const cpu = new QemuCpu(sources.map((s) => s.guest.pid));
  const bytesBefore = await lab.txBytes('src');
  // Downtime on one clock for every method: the source's STOP to the destination's RESUME, by the
  // timestamps QEMU puts on those events (one host clock in the lab). QEMU's own `downtime` ends at the
  // source, before the destination has loaded the last of the stream and runs.
  const stoppedAt: (number | undefined)[] = sources.map(() => undefined);
  const resumedAt: (number | undefined)[] = sources.map(() => undefined);
  const eventMs = (e: QmpEvent) => e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
  const unsubscribe = sources.flatMap(({ guest }, i) => [
    guest.qmp.onEvent('STOP', (e) => (stoppedAt[i] ??= eventMs(e))),
    destinations[i]!.qmp.onEvent('RESUME', (e) => (resumedAt[i] ??= eventMs(e))),
  ]);
  const started = performance.now();
  await Promise.all(
    sources.map(({ guest, spec }) =>
      guest.qmp.execute('migrate', { uri: `tcp:${lab.host(spec.target).address}:${spec.port}` }),
    ),
  );
  const info: (Record<string, unknown> | undefined)[] = sources.map(() => undefined);
  const runningAt: (number | undefined)[] = sources.map(() => undefined);
  const errors: (string | undefined)[] = sources.map(() => undefined);
  const deadline = Date.now() + MIGRATE_TIMEOUT_MS;
  while (sources.some((_, i) => !errors[i] && (!info[i] || runningAt[i] === undefined))) {
    await Promise.all(
      sources.map(async ({ guest }, i) => {
        if (errors[i]) return;
        if (!info[i]) {
          const migration = (await guest.qmp.execute('query-migrate')) as Record<string, unknown>;
          if (migration.status === 'completed') info[i] = migration;
          else if (migration.status === 'failed' || migration.status === 'cancelled')
            errors[i] = `migration ${String(migration.status)}: ${String(migration['error-desc'] ?? '')}`;
        }
        if (runningAt[i] === undefined && (await status(destinations[i]!.qmp)) === 'running')
          runningAt[i] = performance.now() - started;
      }),
    );
    if (Date.now() > deadline) {
      sources.forEach(
        (_, i) => (errors[i] ??= `not running at its target after ${MIGRATE_TIMEOUT_MS / 1000} s`),
      );
      break;
    }
    await sleep(100);
  }
  const seconds = Math.max(0, ...runningAt.map((t) => t ?? 0)) / 1000;
  for (const stop of unsubscribe) stop();
  const bytes = (await lab.txBytes('src')) - bytesBefore;
  const qemuCpu = cpu.stop();
  const until = Date.now() + VERIFY_TIMEOUT_MS;
  const outcomes = await Promise.all(
    sources.map(async ({ spec, guest }, i): Promise<GuestOutcome> => {
      const dst = destinations[i]!;
      const tickAfter = errors[i] ? undefined : await ticksOn(() => dst.serial(), before[i]!, until);
      const destinationStatus = await status(dst.qmp);
      const sourceStatus = await status(guest.qmp);
      const error =
        errors[i] ??
        (destinationStatus !== 'running'
          ? `destination is '${destinationStatus}'`
          : sourceStatus !== 'postmigrate' && sourceStatus !== 'gone'
            ? `source is '${sourceStatus}'`
            : tickAfter === undefined
              ? `no tick past ${before[i]} at the target`
              : undefined);
      const migration = info[i];
      const stopToResume =
        stoppedAt[i] !== undefined && resumedAt[i] !== undefined
          ? Math.round(resumedAt[i]! - stoppedAt[i]!)
          : undefined;
      return {
        name: spec.name,
        kind: spec.kind,
        target: spec.target,
        ...(stopToResume !== undefined ? { downtimeMs: stopToResume } : {}),
        ...(typeof migration?.downtime === 'number' ? { qemuDowntimeMs: migration.downtime } : {}),
        ...(typeof migration?.['total-time'] === 'number' ? { migrationMs: migration['total-time'] } : {}),
        tickBefore: before[i]!,
        ...(tickAfter === undefined ? {} : { tickAfter }),
        destinationStatus,
        sourceStatus,
        ok: error === undefined,
        ...(error === undefined ? {} : { error }),
      };
    }),
  );
  detail.qemu = info.map((migration) => {
    const ram = (migration?.ram ?? {}) as Record<string, unknown>;
    return {
      transferred: ram.transferred,
      duplicate: ram.duplicate,
      normal: ram.normal,
      dirtySyncCount: ram['dirty-sync-count'],
      multifdBytes: ram['multifd-bytes'],
      setupTime: migration?.['setup-time'],
      xbzrle: migration?.['xbzrle-cache'],
    };
  });
  const failed = outcomes.filter((o) => !o.ok);
  return {
    ok: failed.length === 0,
    ...(failed.length === 0 ? {} : { error: failed.map((o) => `${o.name}: ${o.error}`).join('; ') }),
    bytes,
    seconds,
    cpu: { qemu: qemuCpu, tool: 0, total: qemuCpu },
    guests: outcomes,
    detail,
  };
}

function writeTopology(
  ctx: Context,
  lab: Lab,
  dir: string,
  sources: readonly Booted[],
  pinned: boolean,
): string {
  const { options } = ctx;
  const link = topologyRate(options.rate);
  const perTarget = Math.ceil(options.count / options.targets);
  const path = join(dir, 'topology.yaml');
  const qemu = process.env.VMSCATTER_QEMU ?? 'qemu-system-x86_64';
  writeFileSync(
    path,
    [
      'multicast: { base: 239.255.95.0, size: 8, port: 7790 }',
      'hosts:',
      `  - { name: src, address: ${lab.host('src').address}, port: 7780, role: source, link: ${link} }`,
      ...Array.from(
        { length: options.targets },
        (_, t) =>
          `  - { name: t${t + 1}, address: ${lab.host(`t${t + 1}`).address}, port: 7781, role: target, ` +
          `memory: ${perTarget * options.memoryMiB}MiB, maxVms: ${perTarget}, link: ${link} }`,
      ),
      'vms:',
      ...sources.flatMap(({ spec, vmsQmp }) => {
        const command = [
          qemu,
          ...qemuArgs(ctx.kernel, spec.initrd, options.memoryMiB),
          ...['-serial', `file:${join(dir, `${spec.name}.target.serial`)}`],
          ...memoryFileArgs(options, join(dir, `${spec.name}.dst.mem`)),
        ];
        return [
          `  - name: ${spec.name}`,
          `    memory: ${options.memoryMiB}MiB`,
          `    source: { qemu: { qmp: ${JSON.stringify(vmsQmp)}, command: ${JSON.stringify(command)} } }`,
          ...(pinned ? [`    target: ${spec.target}`] : []),
        ];
      }),
    ].join('\n'),
  );
  return path;
}

interface ScatterVm {
  name: string;
  target: string;
  verified: boolean;
  error?: string;
  /** Bytes on the source's link charged to this VM: its share of the multicast and its live stream. */
  wireBytes?: number;
  live?: { downtimeMs?: number; seconds?: number; referencedPages?: number; sentPages?: number };
}

async function viaVmscatter(
  ctx: Context,
  lab: Lab,
  dir: string,
  sources: readonly Booted[],
  method: MethodId,
  leftovers: string[],
): Promise<RunBody> {
  const { options } = ctx;
  const topology = writeTopology(ctx, lab, dir, sources, method === 'c');
  const secret = join(dir, 'secret');
  writeFileSync(secret, 'qemu-vs-scatter bench secret, 32 bytes+', { mode: 0o600 });
  const targets = Array.from({ length: options.targets }, (_, i) => `t${i + 1}`);
  for (const target of targets)
    for (const { spec } of sources) leftovers.push(join(dir, 'agents', target, 'run', `${spec.name}.qmp`));
  const agents = await Promise.all(
    targets.map(async (target) => {
      const agent = watchProcess(
        lab.spawn(target, process.execPath, [
          ...profileArgs(options),
          ...[...CLI_NODE_OPTIONS, cli, 'agent', '--topology', topology, '--host', target],
          ...['--dir', join(dir, 'agents', target), '--secret-file', secret],
        ]),
      );
      await agent.waitFor(/listening/, 20_000);
      return agent;
    }),
  );
  try {
    const before = sources.map((s) => lastTick(s.guest.serial()));
    const cpu = new QemuCpu(sources.map((s) => s.guest.pid));
    const bytesBefore = await lab.txBytes('src');
    const started = performance.now();
    // The shell's `times` reports the rusage of the command and everything it waited for.
    const job = watchProcess(
      lab.spawn('src', '/bin/sh', [
        ...['-c', '"$@"; rc=$?; times >&2; exit $rc', 'vmscatter'],
        ...[
          process.execPath,
          ...CLI_NODE_OPTIONS,
          ...profileArgs(options),
          cli,
          'scatter',
          '--topology',
          topology,
          '--json',
        ],
        ...['--mtu', String(options.mtu), '--work-dir', join(dir, 'vms'), '--secret-file', secret],
      ]),
    );
    const result = await job.exit(MIGRATE_TIMEOUT_MS);
    const seconds = (performance.now() - started) / 1000;
    const bytes = (await lab.txBytes('src')) - bytesBefore;
    const qemuCpu = cpu.stop();
    const times = [...result.stderr.matchAll(/(\d+)m([\d.]+)s (\d+)m([\d.]+)s/g)].at(-1);
    const toolCpu = times
      ? 60 * Number(times[1]) + Number(times[2]) + 60 * Number(times[3]) + Number(times[4])
      : 0;
    let report: {
      vms?: ScatterVm[];
      seconds?: unknown;
      source?: unknown;
      pages?: unknown;
      compression?: unknown;
    };
    try {
      report = JSON.parse(result.stdout) as typeof report;
    } catch {
      throw new Error(
        `vmscatter scatter exited ${result.code} without a report: ${result.stderr.slice(-2000)}`,
      );
    }
    const vms = new Map((report.vms ?? []).map((vm) => [vm.name, vm]));
    const until = Date.now() + VERIFY_TIMEOUT_MS;
    const outcomes = await Promise.all(
      sources.map(async ({ spec, guest }, i): Promise<GuestOutcome> => {
        const vm = vms.get(spec.name);
        const target = vm?.target ?? '?';
        const serialFile = join(dir, `${spec.name}.target.serial`);
        const tickAfter = vm?.verified
          ? await ticksOn(
              () => (existsSync(serialFile) ? readFileSync(serialFile, 'latin1') : ''),
              before[i]!,
              until,
            )
          : undefined;
        const qmpPath = join(dir, 'agents', target, 'run', `${spec.name}.qmp`);
        const qmp = existsSync(qmpPath)
          ? await connectQmp(qmpPath, { connectTimeoutMs: 5000 }).catch(() => undefined)
          : undefined;
        const destinationStatus = await status(qmp);
        await qmp?.close().catch(() => undefined);
        // vmscatter quits the source once the guest runs at its target.
        const sourceStatus = await Promise.race([
          guest.exited.then(() => 'gone'),
          sleep(10_000).then(() => status(guest.qmp)),
        ]);
        const error = !vm
          ? 'not in the report'
          : !vm.verified
            ? `not verified: ${vm.error}`
            : destinationStatus !== 'running'
              ? `destination is '${destinationStatus}'`
              : sourceStatus !== 'postmigrate' && sourceStatus !== 'gone'
                ? `source is '${sourceStatus}'`
                : tickAfter === undefined
                  ? `no tick past ${before[i]} at the target`
                  : undefined;
        return {
          name: spec.name,
          kind: spec.kind,
          target,
          ...(vm?.live?.downtimeMs === undefined ? {} : { downtimeMs: vm.live.downtimeMs }),
          ...(vm?.live?.seconds === undefined ? {} : { migrationMs: Math.round(vm.live.seconds * 1000) }),
          tickBefore: before[i]!,
          ...(tickAfter === undefined ? {} : { tickAfter }),
          destinationStatus,
          sourceStatus,
          ok: error === undefined,
          ...(error === undefined ? {} : { error }),
        };
      }),
    );
    const failed = outcomes.filter((o) => !o.ok);
    const errors = [
      ...(result.code === 0 ? [] : [`vmscatter exited ${result.code}: ${result.stderr.trim().slice(-500)}`]),
      ...failed.map((o) => `${o.name}: ${o.error}`),
    ];
    return {
      ok: errors.length === 0,
      ...(errors.length === 0 ? {} : { error: errors.join('; ') }),
      bytes,
      seconds,
      cpu: { qemu: qemuCpu, tool: toolCpu, total: qemuCpu + toolCpu },
      guests: outcomes,
      detail: {
        phases: report.seconds,
        source: report.source,
        pages: report.pages,
        compression: report.compression,
        live: (report.vms ?? []).map((vm) => ({
          name: vm.name,
          target: vm.target,
          wireBytes: vm.wireBytes,
          ...vm.live,
        })),
      },
    };
  } finally {
    for (const agent of agents) agent.child.kill('SIGTERM');
    await Promise.all(agents.map((a) => a.exit(10_000).catch(() => undefined)));
  }
}

// ---------------------------------------------------------------------------------------------------
// The whole benchmark

const median = (values: readonly number[]): number => {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

function summarise(runs: readonly MethodRun[], method: MethodId): MethodSummary | undefined {
  const mine = runs.filter((r) => r.method === method);
  if (mine.length === 0) return undefined;
  const downtimes = mine.flatMap((r) =>
    r.guests.flatMap((g) => (g.downtimeMs === undefined ? [] : [g.downtimeMs])),
  );
  return {
    method,
    label: METHOD_LABELS[method],
    runs: mine.length,
    ok: mine.every((r) => r.ok),
    bytes: median(mine.map((r) => r.bytes)),
    seconds: median(mine.map((r) => r.seconds)),
    cpuSeconds: median(mine.map((r) => r.cpu.total)),
    downtimeMs: {
      median: median(downtimes),
      min: downtimes.length ? Math.min(...downtimes) : NaN,
      max: downtimes.length ? Math.max(...downtimes) : NaN,
    },
  };
}

/** (b): of the QEMU candidates that completed, the one with fewer bytes on the link, then the faster. */
function chooseB(summary: readonly MethodSummary[]): BenchResult['b'] {
  const candidates = summary.filter((s) => s.method.startsWith('b-') && s.ok);
  if (candidates.length === 0) return undefined;
  const [best, other] = [...candidates].sort((x, y) => x.bytes - y.bytes || x.seconds - y.seconds);
  const why = other
    ? `${(best!.bytes / MiB).toFixed(1)} MiB vs ${(other.bytes / MiB).toFixed(1)} MiB on the link, ` +
      `${best!.seconds.toFixed(1)} s vs ${other.seconds.toFixed(1)} s`
    : 'the only candidate that completed';
  return { method: best!.method, why };
}

export async function runQemuVsScatter(options: BenchOptions): Promise<BenchResult> {
  const log = options.log ?? (() => undefined);
  const available = labAvailable();
  if (!available.ok) throw new Error(`the network lab is needed: ${available.why}`);
  const qemuBinary = process.env.VMSCATTER_QEMU ?? 'qemu-system-x86_64';
  const version = spawnSync(qemuBinary, ['--version'], { encoding: 'utf8' });
  if (version.status !== 0)
    throw new Error(
      `${qemuBinary} is needed (install qemu-system-x86): ${version.error?.message ?? version.stderr}`,
    );
  const kernel = await ensureGuestKernel();
  const work = mkdtempSync(join(tmpdir(), 'vmscatter-bench-qemu-'));
  const removeWork = () => rmSync(work, { recursive: true, force: true });
  process.once('exit', removeWork); // Ctrl-C exits through process.exit
  const runs: MethodRun[] = [];
  try {
    const ctx: Context = {
      options,
      kernel,
      specs: buildGuestImages(work, options, guestModuleFiles(kernel)),
      work,
      log,
    };
    for (let repeat = 0; repeat < options.repeat; repeat++) {
      const order = repeat % 2 === 0 ? options.methods : [...options.methods].reverse();
      for (const method of order) {
        try {
          runs.push(await runMethod(ctx, method, repeat));
        } catch (error) {
          // Recorded as a failed run (its QEMUs and lab are gone): the other methods still run.
          const message = error instanceof Error ? error.message : String(error);
          log(`  FAILED: ${message}`);
          runs.push({
            ...{ method, label: METHOD_LABELS[method], repeat, ok: false, error: message },
            ...{
              bytes: NaN,
              seconds: NaN,
              cpu: { qemu: NaN, tool: NaN, total: NaN },
              guests: [],
              detail: {},
            },
          });
        }
      }
    }
    const summary = METHODS.map((m) => summarise(runs, m)).filter((s): s is MethodSummary => !!s);
    const b = chooseB(summary);
    const of = (m: MethodId | undefined) => summary.find((s) => s.method === m);
    const checks: BenchResult['checks'][number][] = [];
    const a = of('a');
    const best = of(b?.method);
    for (const v of [of('c'), of('d')]) {
      if (!v) continue;
      const name = v.method === 'c' ? '(c)' : '(d)';
      const okAll = (...s: (MethodSummary | undefined)[]) => s.every((x) => x?.ok);
      if (a) {
        checks.push({
          what: `${name} bytes <= 30% of (a)`,
          value: v.bytes / a.bytes,
          pass: okAll(v, a) && v.bytes <= 0.3 * a.bytes,
        });
        checks.push({
          what: `${name} time <= 1.0x (a)'s`,
          value: v.seconds / a.seconds,
          pass: okAll(v, a) && v.seconds <= a.seconds,
        });
        checks.push({
          what: `${name} median downtime <= (a)'s`,
          value: v.downtimeMs.median / a.downtimeMs.median,
          pass: okAll(v, a) && v.downtimeMs.median <= a.downtimeMs.median,
        });
      }
      if (best)
        checks.push({
          what: `${name} bytes <= 0.7x (b)'s`,
          value: v.bytes / best.bytes,
          pass: okAll(v, best) && v.bytes <= 0.7 * best.bytes,
        });
      checks.push({
        what: `${name} source CPU <= 5 core-seconds (value: its share of them)`,
        value: v.cpuSeconds / 5,
        pass: okAll(v) && v.cpuSeconds <= 5,
      });
    }
    return {
      config: {
        ...options,
        log: undefined,
        qemu: version.stdout.split('\n')[0] ?? '',
        guests: guestKinds(options.count),
      },
      runs,
      summary,
      ...(b ? { b } : {}),
      checks,
    };
  } finally {
    process.removeListener('exit', removeWork);
    removeWork();
  }
}

// ---------------------------------------------------------------------------------------------------
// Output

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');

export function renderTable(result: BenchResult): string {
  const { config } = result;
  const lines = [
    `live migration of ${config.count} running guests x ${config.memoryMiB} MiB (${config.guests.join(', ')}) ` +
      `-> ${config.targets} targets; source link ${config.rate}, MTU ${config.mtu}; ${config.qemu}` +
      (config.memoryFile ? '; guest RAM in shared memory files' : ''),
    '',
    'method                          source link      time  downtime median [min-max]   src CPU   ok',
  ];
  for (const s of result.summary) {
    const d = s.downtimeMs;
    const chosen = result.b?.method === s.method ? ' <- (b)' : '';
    lines.push(
      [
        s.label.padEnd(30),
        mib(s.bytes).padStart(12),
        `${s.seconds.toFixed(1)} s`.padStart(9),
        `${d.median.toFixed(0)} ms [${d.min.toFixed(0)}-${d.max.toFixed(0)}]`.padStart(26),
        `${s.cpuSeconds.toFixed(1)} s`.padStart(9),
        s.ok ? '  yes' : '  NO',
      ].join(' ') + chosen,
    );
  }
  const of = (m: MethodId | undefined) => result.summary.find((s) => s.method === m);
  const pairs: [string, MethodSummary | undefined, MethodSummary | undefined][] = [
    ['(c)/(a)', of('c'), of('a')],
    ['(c)/(b)', of('c'), of(result.b?.method)],
    ['(d)/(a)', of('d'), of('a')],
    ['(d)/(b)', of('d'), of(result.b?.method)],
  ];
  lines.push('', 'ratio        bytes     time  median downtime  src CPU');
  for (const [name, x, y] of pairs) {
    if (!x || !y) continue;
    lines.push(
      [
        name.padEnd(9),
        pct(x.bytes / y.bytes).padStart(8),
        pct(x.seconds / y.seconds).padStart(8),
        pct(x.downtimeMs.median / y.downtimeMs.median).padStart(16),
        pct(x.cpuSeconds / y.cpuSeconds).padStart(8),
      ].join(' '),
    );
  }
  if (result.b)
    lines.push('', `(b) = ${METHOD_LABELS[result.b.method].replace(/^\(b\) /, '')}: ${result.b.why}`);
  const zstd = result.runs.find((r) => r.method === 'b-zstd');
  if (zstd?.detail.compression !== undefined)
    lines.push(
      `multifd compression: ${String(zstd.detail.compression)}${zstd.detail.note ? ` (${String(zstd.detail.note)})` : ''}`,
    );
  lines.push('');
  for (const check of result.checks)
    lines.push(`${check.pass ? 'PASS' : 'MISS'}  ${check.what} (${pct(check.value)})`);
  for (const run of result.runs.filter((r) => !r.ok))
    lines.push(`FAILED ${run.label}, run ${run.repeat + 1}: ${run.error}`);
  return lines.join('\n');
}

const escapeXml = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Two horizontal bar charts, bytes on the source's link and time, one bar per method. Hand-written SVG. */
export function renderSvg(result: BenchResult): string {
  const colors: Record<MethodId, string> = {
    a: '#8c8c8c',
    'b-zstd': '#e0a030',
    'b-xbzrle': '#d07020',
    c: '#2a7ab8',
    d: '#1f9e6e',
  };
  const rows = result.summary;
  const labelWidth = 230;
  const barWidth = 330;
  const rowHeight = 26;
  const panelHeight = 40 + rows.length * rowHeight;
  const width = labelWidth + barWidth + 90;
  const panel = (
    title: string,
    top: number,
    value: (s: MethodSummary) => number,
    text: (v: number) => string,
  ) => {
    const max = Math.max(...rows.map(value), 1e-9);
    const parts = [`<text x="10" y="${top + 20}" font-weight="bold">${escapeXml(title)}</text>`];
    rows.forEach((s, i) => {
      const y = top + 32 + i * rowHeight;
      const w = Math.max(1, (barWidth * value(s)) / max);
      parts.push(
        `<text x="${labelWidth - 8}" y="${y + 15}" text-anchor="end">${escapeXml(s.label)}</text>`,
        `<rect x="${labelWidth}" y="${y}" width="${w.toFixed(1)}" height="${rowHeight - 8}" fill="${colors[s.method]}"/>`,
        `<text x="${(labelWidth + w + 6).toFixed(1)}" y="${y + 15}">${escapeXml(text(value(s)))}</text>`,
      );
    });
    return parts.join('\n  ');
  };
  const c = result.config;
  const height = 40 + 2 * panelHeight + 10;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">`,
    `  <rect width="100%" height="100%" fill="white"/>`,
    `  <text x="10" y="22" font-size="15" font-weight="bold">${escapeXml(
      `${c.count} running guests x ${c.memoryMiB} MiB -> ${c.targets} targets, ${c.rate}, MTU ${c.mtu}`,
    )}</text>`,
    `  ${panel(
      "MiB on the source's link",
      40,
      (s) => s.bytes / MiB,
      (v) => `${v.toFixed(1)} MiB`,
    )}`,
    `  ${panel(
      'seconds until the last guest runs at its target',
      40 + panelHeight,
      (s) => s.seconds,
      (v) => `${v.toFixed(1)} s`,
    )}`,
    '</svg>',
    '',
  ].join('\n');
}

/**
 * Per method: bytes on the source link, seconds, median downtime, source CPU seconds, and each as a
 * ratio to QEMU's defaults (a) measured in the same run.
 */
export function summaryOf(result: BenchResult, argv: readonly string[]) {
  const a = result.summary.find((m) => m.method === 'a');
  const ratio = (value: number, base: number | undefined) =>
    base === undefined || base === 0 ? null : Math.round((value / base) * 1000) / 1000;
  return {
    bench: 'qemu-vs-scatter',
    date: new Date().toISOString(),
    command: `npm run bench:qemu${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    config: { ...result.config, log: undefined },
    b: result.b ?? null,
    methods: result.summary.map((m) => ({
      method: m.method,
      label: m.label,
      ok: m.ok,
      bytes: m.bytes,
      seconds: m.seconds,
      medianDowntimeMs: m.downtimeMs.median,
      sourceCpuSeconds: m.cpuSeconds,
      ratioToQemuDefaults: {
        bytes: ratio(m.bytes, a?.bytes),
        seconds: ratio(m.seconds, a?.seconds),
        medianDowntime: ratio(m.downtimeMs.median, a?.downtimeMs.median),
        sourceCpu: ratio(m.cpuSeconds, a?.cpuSeconds),
      },
    })),
    checks: result.checks,
  };
}

function positiveInteger(name: string, text: string | undefined): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0)
    throw new Error(`--${name}: expected a positive whole number, got '${text}'`);
  return value;
}

async function main(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      count: { type: 'string', default: '8' },
      memory: { type: 'string', default: '256' },
      targets: { type: 'string', default: '4' },
      rate: { type: 'string', default: '1gbit' },
      mtu: { type: 'string', default: '9000' },
      repeat: { type: 'string', default: '1' },
      methods: { type: 'string', default: METHODS.join(',') },
      out: { type: 'string', default: join(tmpdir(), 'vmscatter-bench-qemu-vs-scatter') },
      quick: { type: 'boolean', default: false },
      'memory-file': { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      json: { type: 'boolean', default: false },
      summary: {
        type: 'string',
        default: join(dirname(fileURLToPath(import.meta.url)), '../../docs/bench/qemu-vs-scatter.json'),
      },
    },
  });
  const quick = values.quick!;
  const methods = values.methods!.split(',').map((m) => m.trim());
  for (const m of methods)
    if (!(METHODS as readonly string[]).includes(m))
      throw new Error(`--methods: unknown '${m}' (${METHODS.join(', ')})`);
  const memoryMiB = quick ? 128 : positiveInteger('memory', values.memory);
  if (memoryMiB < 128) throw new Error('--memory: at least 128 MiB (the guest kernel and workload need it)');
  rateBits(values.rate!);
  const options: BenchOptions = {
    count: quick ? 2 : positiveInteger('count', values.count),
    memoryMiB,
    targets: quick ? 2 : positiveInteger('targets', values.targets),
    rate: values.rate!,
    mtu: positiveInteger('mtu', values.mtu),
    repeat: positiveInteger('repeat', values.repeat),
    methods: methods as MethodId[],
    memoryFile: values['memory-file']!,
    ...(values['cpu-prof'] ? { cpuProfDir: resolve(values['cpu-prof']) } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
  };
  // Ctrl-C: exit through process.exit, so the harness's and the lab's exit hooks kill QEMU and remove the lab.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  const result = await runQemuVsScatter(options);
  mkdirSync(values.out!, { recursive: true });
  const json = `${JSON.stringify(result, null, 2)}\n`;
  writeFileSync(join(values.out!, 'results.json'), json);
  writeFileSync(join(values.out!, 'chart.svg'), renderSvg(result));
  process.stderr.write(`wrote ${join(values.out!, 'results.json')} and ${join(values.out!, 'chart.svg')}\n`);
  // The summary the README's table comes from (a quick run is a smoke test, not a figure to publish).
  if (!quick) {
    mkdirSync(dirname(values.summary!), { recursive: true });
    writeFileSync(values.summary!, `${JSON.stringify(summaryOf(result, argv), null, 2)}\n`);
    writeFileSync(values.summary!.replace(/\.json$/, '.svg'), renderSvg(result));
    process.stderr.write(`wrote ${values.summary}\n`);
  }
  process.stdout.write(values.json ? json : `${renderTable(result)}\n`);
  if (result.runs.some((r) => !r.ok)) process.exitCode = 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
