/**
 * Faults and attacks: what a scatter job does to its VMs when the network, the hosts or an attacker
 * misbehave. The one figure that must stay at zero is the number of VMs lost: neither verified at
 * their target nor still running at their source.
 *
 *   npm run bench:faults [-- --quick --cases image/loss-20,live/kill-agent-migration --rate 1gbit
 *                            --mtu 9000 --out FILE --json]
 *
 * Jobs (each case runs in a fresh network lab, test/lab/lab.ts: hosts src, t1, t2 on one switch, plus
 * a relay or attacker host where the case needs one; src's link shaped to --rate, jumbo frames):
 * - image: 4 synthetic VM images x 64 MiB (two families) -> t1, t2 with `vmscatter scatter`, one
 *   `vmscatter agent` per target with an empty state directory.
 * - live: 2 running QEMU guests x 128 MiB (TCG, test/support/qemu-guest.ts: a busybox initramfs that
 *   ticks every second and prints a checksum of its private data every 5 ticks), g1 pinned to t1 and
 *   g2 to t2. The guests are booted once and saved (QEMU migration to a file); each case restores them
 *   in src's namespace, so every case starts from the same running guests without booting again.
 *
 * Faults (the method is part of the result, since tc's netem is missing from some kernels):
 * - multicast loss 0, 5, 20%: nftables `numgen random` drops of the multicast datagrams each target
 *   receives, independently per target (the control channel's TCP is left alone).
 * - reordering: the source's multicast is diverted at its switch port (nftables `fwd`) to a relay host
 *   (bench/fault-relay.ts) that sends every datagram on to its group, holding 20% back for 1-10 ms.
 * - duplicates: nftables `dup` on the source's switch port sends 10% of its multicast datagrams a
 *   second time to each target, independently.
 * - forged and replayed datagrams: an attacker host (bench/fault-attacker.ts) on the groups, without
 *   the key; for replays the receivers' feedback to the sender is mirrored to it too.
 * - an agent killed (SIGKILL) mid-multicast (its store has received 4 MiB of pages), mid-rebuild (a
 *   partial image of 4 MiB is being written; image jobs) or mid-migration (the source QEMU's
 *   migration to it is active with 8 MiB sent; live jobs).
 * - the coordinator killed (SIGKILL) mid-multicast (image), mid-migration, in the memory check (the
 *   source QEMU stopped with its stream whole, waiting for the coordinator's answer on its return
 *   path; live), at the switch-over (the source QEMU has completed its migration and is stopped, the
 *   destination not yet running: the milliseconds before it is told to run; live), or once a guest
 *   resumed at its target, before the coordinator quit its source (live); the recovery
 *   (`--resume`) runs after every coordinator kill, as an operator without its report would run it.
 * - a disk filling: t1's state directory is a tmpfs; once pages arrive in its store, the bench fills
 *   what is left.
 * The kill points are read from what the processes do (store and image files growing, the source
 * QEMU's migration status over a QMP socket of the bench's own, the agent's log), not from timers; a
 * kill point the job passes without the bench seeing it is reported as missed.
 *
 * Measured per case, after the job (or the kill) and again after the recovery an operator would run
 * (the killed agent restarted, the disk freed, then `vmscatter scatter --resume`) when VMs were left
 * unmoved: VMs verified at their target (image: the agent's verified image is byte-identical to the
 * source's; live: the destination's console ticks on and its data checksum is the source's), VMs
 * running at their source (live: its console ticks on), VMs lost (image: not at the target and the
 * source image changed; live: running at neither end), VMs running at both ends, the job's exit code
 * and error code, and the fault as the counters saw it. Lost or doubled VMs fail the bench (exit 1).
 *
 * Writes docs/bench/faults.json (full runs; --out FILE for another place). Needs root, the lab's tools
 * (ip, tc, nft) and, for live jobs, qemu-system-x86_64 and busybox-static. Every process, namespace,
 * mount and file is removed at the end, on errors and on Ctrl-C.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connectQmp } from '../src/qemu/qmp.js';
import { materialiseSyntheticImages } from '../src/local/workspace.js';
import type { Topology } from '../src/topology/model.js';
import {
  createLab,
  findTool,
  labAvailable,
  watchProcess,
  type Lab,
  type ProcessWatch,
} from './harness/lab.js';
import { livePagesFile as storePagesFile } from '../src/store/template-store.js';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  GUEST_SUM_MARKER,
  lastMarked,
  lastTick,
  type Guest,
} from './harness/qemu-guest.js';
import {
  addMulticastLoss,
  addSourceRule,
  mirrorFeedback,
  mirroredCount,
  multicastLossCounts,
  netemAvailable,
  removeSourceRule,
  sourceRuleCounts,
  udpReceiveErrors,
} from './fault-net.js';
import { CLI_NODE_OPTIONS } from '../src/cli/node-options.js';

const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, '../src/cli/main.js');
const relayScript = join(here, 'fault-relay.js');
const attackerScript = join(here, 'fault-attacker.js');
const MiB = 2 ** 20;
const TARGETS: readonly string[] = ['t1', 't2'];
const MULTICAST = { base: '239.255.97.0', size: 8, port: 7990 } as const;
const GROUPS = `${MULTICAST.base}/${MULTICAST.size}`;
const MIRROR_PORT = 7999;
/** A job here takes well under a minute; one still running after this is killed and reported. */
const JOB_TIMEOUT_MS = 4 * 60_000;
/** Cases not started within this budget are reported as not run. */
const RUN_BUDGET_MS = 30 * 60_000;
/** How long a guest gets to show it runs (a tick every second; a checksum every 5 ticks). */
const OBSERVE_MS = 30_000;
/** Kill points: pages an agent's store holds, bytes of a partial image, bytes QEMU's migration sent. */
const STORE_KILL_BYTES = 4 * MiB;
const REBUILD_KILL_BYTES = 4 * MiB;
const MIGRATION_KILL_BYTES = 8 * MiB;
/** The disk fills once this much has reached the store. */
const STORE_FILL_BYTES = 1 * MiB;

// ---------------------------------------------------------------------------------------------------
// Cases

type Kind = 'image' | 'live';
type Fault =
  | { readonly type: 'loss'; readonly percent: number }
  | {
      readonly type: 'reorder';
      readonly share: number;
      readonly minDelayMs: number;
      readonly maxDelayMs: number;
    }
  | { readonly type: 'duplicate'; readonly percent: number }
  | { readonly type: 'forge' }
  | { readonly type: 'replay' }
  | { readonly type: 'kill-agent'; readonly at: 'multicast' | 'rebuild' | 'migration' }
  | {
      readonly type: 'kill-coordinator';
      readonly at: 'multicast' | 'migration' | 'check' | 'switch-over' | 'resumed';
    }
  | { readonly type: 'disk-full' };

interface CaseDef {
  readonly id: string;
  readonly kind: Kind;
  readonly label: string;
  readonly fault: Fault;
}

/** The target a targeted fault hits (the victim agent, the filled disk). */
const VICTIM = 't1';

function caseList(): CaseDef[] {
  const cases: CaseDef[] = [];
  for (const kind of ['image', 'live'] as const) {
    const add = (slug: string, label: string, fault: Fault) =>
      cases.push({ id: `${kind}/${slug}`, kind, label, fault });
    add('loss-0', 'multicast loss 0%', { type: 'loss', percent: 0 });
    add('loss-5', 'multicast loss 5%', { type: 'loss', percent: 5 });
    add('loss-20', 'multicast loss 20%', { type: 'loss', percent: 20 });
    add('reorder', 'reordering (20% held 1-10 ms)', {
      type: 'reorder',
      share: 0.2,
      minDelayMs: 1,
      maxDelayMs: 10,
    });
    add('duplicate', 'duplicates (10%)', { type: 'duplicate', percent: 10 });
    add('forged', 'forged datagrams', { type: 'forge' });
    add('replayed', 'replayed datagrams', { type: 'replay' });
    add('kill-agent-multicast', 'agent killed mid-multicast', { type: 'kill-agent', at: 'multicast' });
    if (kind === 'image') {
      add('kill-agent-rebuild', 'agent killed mid-rebuild', { type: 'kill-agent', at: 'rebuild' });
      add('kill-coordinator-multicast', 'coordinator killed mid-multicast', {
        type: 'kill-coordinator',
        at: 'multicast',
      });
    } else {
      add('kill-agent-migration', 'agent killed mid-migration', { type: 'kill-agent', at: 'migration' });
      add('kill-coordinator-migration', 'coordinator killed mid-migration', {
        type: 'kill-coordinator',
        at: 'migration',
      });
      add('kill-coordinator-check', 'coordinator killed in the memory check', {
        type: 'kill-coordinator',
        at: 'check',
      });
      add('kill-coordinator-switch-over', 'coordinator killed at switch-over', {
        type: 'kill-coordinator',
        at: 'switch-over',
      });
      add('kill-coordinator-resumed', 'coordinator killed once a guest resumed', {
        type: 'kill-coordinator',
        at: 'resumed',
      });
    }
    add('disk-full', `disk filling (${VICTIM})`, { type: 'disk-full' });
  }
  return cases;
}

const QUICK_CASES = [
  'image/loss-20',
  'image/forged',
  'image/kill-agent-multicast',
  'image/disk-full',
  'live/loss-5',
  'live/kill-coordinator-migration',
];

// ---------------------------------------------------------------------------------------------------
// Results

/** One VM after the job, as the bench found it (not as the report says). */
interface VmOutcome {
  readonly name: string;
  /** Where the report (or the pin) puts it. */
  readonly target: string | null;
  /** What the job's report said; null without a report. */
  readonly reportVerified: boolean | null;
  readonly reportError?: string;
  readonly verifiedAtTarget: boolean;
  /** Live: its source QEMU runs (console ticking). Image: null. */
  readonly runningAtSource: boolean | null;
  /** Image: the source image is unchanged. */
  readonly sourceIntact?: boolean;
  readonly lost: boolean;
  /** Running at its target and at its source at once. */
  readonly runningTwice: boolean;
  readonly notes: readonly string[];
}

interface JobRun {
  readonly exitCode: number | null;
  readonly signal: string | null;
  /** The error's stable code: from the tool's JSON, or the one scatter throws for that exit code after its report. */
  readonly errorCode: string | null;
  readonly message: string | null;
  readonly seconds: number;
  readonly timedOut: boolean;
  readonly report: ScatterReport | undefined;
  readonly droppedDatagrams: number | null;
  /** The kill or fill point, when the case has one: what was seen, and when. */
  readonly trigger?: { readonly fired: boolean; readonly event: string; readonly atSeconds?: number };
}

interface Counts {
  readonly vms: number;
  readonly verifiedAtTarget: number;
  readonly runningAtSource: number | null;
  readonly lost: number;
  readonly runningTwice: number;
}

interface CaseResult {
  readonly id: string;
  readonly kind: Kind;
  readonly label: string;
  readonly status: 'ran' | 'not run' | 'error';
  readonly reason?: string;
  readonly seconds: number;
  readonly method?: string;
  readonly job?: JobRun;
  readonly after?: Counts;
  readonly vms?: readonly VmOutcome[];
  readonly fault?: Record<string, unknown>;
  readonly recovery?: {
    readonly steps: readonly string[];
    readonly job: JobRun;
    readonly after: Counts;
    readonly vms: readonly VmOutcome[];
  };
}

interface ScatterReport {
  ok?: boolean;
  code?: string;
  vms?: { name: string; target: string; verified: boolean; error?: string }[];
  targets?: { name: string; droppedDatagrams?: number; lost?: string }[];
}

// ---------------------------------------------------------------------------------------------------
// Options

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    cases: { type: 'string' },
    rate: { type: 'string', default: '1gbit' },
    mtu: { type: 'string', default: '9000' },
    'image-count': { type: 'string', default: '4' },
    'image-memory': { type: 'string', default: '64' },
    'live-memory': { type: 'string', default: '128' },
    out: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const quick = values.quick!;
const rate = values.rate!;
const mtu = Number(values.mtu);
const imageCount = Number(values['image-count']);
const imageMiB = Number(values['image-memory']);
const liveMiB = Number(values['live-memory']);
const defaultOut = join(here, '../../docs/bench/faults.json');
const out = values.out ?? (quick || values.cases ? undefined : defaultOut);
const log = (line: string) => process.stderr.write(`${line}\n`);
if (!/^\d+(\.\d+)?[kmg]bit$/i.test(rate))
  throw new Error(`--rate: expected e.g. 1gbit or 500mbit, got '${rate}'`);
if (imageCount < TARGETS.length || imageCount % TARGETS.length !== 0)
  throw new Error(`--image-count: a multiple of ${TARGETS.length}`);
if (liveMiB < 128) throw new Error('--live-memory: at least 128 (the guest kernel and workload need it)');

// ---------------------------------------------------------------------------------------------------
// Cleanup: mounts and the work directory go on exit and on signals (labs and QEMUs have their own hooks)

const mounts = new Set<string>();
let workDir: string | undefined;
function cleanupSync(): void {
  for (const path of mounts) spawnSync('umount', ['-l', path], { stdio: 'ignore' });
  mounts.clear();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}
process.on('exit', cleanupSync);
// Ctrl-C: exit through process.exit, so the exit hooks (the lab's, the guests', ours) run.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(signal, () => process.exit(130));

function mountTmpfs(path: string, sizeMiB: number): void {
  mkdirSync(path, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'vmscatter-bench-faults', path]);
  mounts.add(path);
}

function unmount(path: string): void {
  if (!mounts.delete(path)) return;
  spawnSync('umount', ['-l', path], { stdio: 'ignore' });
}

// ---------------------------------------------------------------------------------------------------
// Helpers

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256File = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
/** Bytes a file holds on disk (its blocks: a file created at its full size and filled later counts as it fills). */
const sizeOf = (path: string) => (existsSync(path) ? statSync(path).blocks * 512 : 0);
const topologyRate = (r: string) =>
  r.replace(/^(\d+(?:\.\d+)?)([kmg])bit$/i, (_, n: string, p: string) => `${n}${p.toUpperCase()}bit`);

/** The last `vmscatter: …` line of a command's stderr. */
function lastMessage(stderr: string): string | null {
  return (
    stderr
      .split('\n')
      .filter((line) => line.startsWith('vmscatter: '))
      .at(-1)
      ?.slice('vmscatter: '.length) ?? null
  );
}

/** Drop counts by reason from the agents' logs (`round N: dropped M datagram(s): 3 auth, 1 replay`). */
function dropReasons(logs: readonly string[]): Record<string, number> {
  const reasons: Record<string, number> = {};
  for (const text of logs)
    for (const match of text.matchAll(/dropped \d+ datagram\(s\): ([^\n]*)/g))
      for (const part of match[1]!.split(', ')) {
        const [n, why] = part.split(' ');
        if (why) reasons[why] = (reasons[why] ?? 0) + Number(n);
      }
  return reasons;
}

async function startAgent(lab: Lab, dir: string, topology: string, host: string, secret: string) {
  const agent = watchProcess(
    lab.spawn(host, process.execPath, [
      ...[...CLI_NODE_OPTIONS, cli, 'agent', '--topology', topology, '--host', host],
      ...['--dir', join(dir, 'agents', host), '--secret-file', secret],
    ]),
  );
  await agent.waitFor(/listening/, 30_000);
  return agent;
}

/** Starts a helper process in a lab host and waits for its `ready`. */
async function startHelper(lab: Lab, host: string, script: string, args: readonly string[]) {
  const helper = watchProcess(lab.spawn(host, process.execPath, [script, ...args]));
  await helper.waitFor(/^ready$/m, 20_000);
  return helper;
}

/** Stops a helper with SIGTERM and returns the JSON line it printed last. */
async function stopHelper(helper: ProcessWatch): Promise<Record<string, unknown> | undefined> {
  helper.child.kill('SIGTERM');
  const result = await helper.exit(10_000).catch(() => undefined);
  const line = result?.stdout.trim().split('\n').at(-1);
  try {
    return line ? (JSON.parse(line) as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Fills the filesystem of `dir` with a file until it is full; the bytes written. */
function fillDisk(dir: string): number {
  const chunk = Buffer.alloc(MiB);
  const fd = openSync(join(dir, 'filler'), 'w');
  let written = 0;
  try {
    for (;;) written += writeSync(fd, chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    closeSync(fd);
  }
  return written;
}

// ---------------------------------------------------------------------------------------------------
// The VMs of the two job kinds

interface SourceImage {
  readonly name: string;
  readonly path: string;
  readonly sha256: string;
}

function prepareImages(dir: string): SourceImage[] {
  const families = ['debian', 'alpine'];
  const topology: Topology = {
    file: '<bench>',
    multicast: { ...MULTICAST },
    hosts: [],
    vms: Array.from({ length: imageCount }, (_, i) => ({
      name: `vm${i + 1}`,
      memoryBytes: imageMiB * MiB,
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
  return materialiseSyntheticImages(topology, dir).vms.map((vm) => {
    const path = vm.source.kind === 'image' ? vm.source.path : '';
    return { name: vm.name, path, sha256: sha256File(path) };
  });
}

interface GuestSnapshot {
  readonly name: string;
  readonly initrd: string;
  /** QEMU's migration stream of the running guest, restored with `-incoming exec:cat FILE`. */
  readonly file: string;
  /** The checksum the guest prints of its private data; the same wherever it runs. */
  readonly sum: string;
  readonly target: string;
}

interface LiveSetup {
  readonly kernel: string;
  readonly guests: readonly GuestSnapshot[];
}

/** The guest's QEMU arguments after the binary, without QMP and serial (bootGuest adds those). */
function qemuArgs(kernel: string, initrd: string): string[] {
  return [
    ...['-accel', 'tcg', '-m', String(liveMiB), '-smp', '1'],
    ...['-nodefaults', '-display', 'none', '-no-reboot'],
    ...['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet'],
  ];
}

/** Boots the guests once (no network device: they send nothing anywhere) and saves them running. */
async function prepareGuests(dir: string): Promise<LiveSetup> {
  const kernel = await ensureGuestKernel();
  mkdirSync(dir, { recursive: true });
  const guests = await Promise.all(
    TARGETS.map(async (target, i): Promise<GuestSnapshot> => {
      const name = `g${i + 1}`;
      const initrd = join(dir, `${name}.initrd.gz`);
      buildInitramfs(initrd, { seed: i + 1, workloadMiB: 8, dirtyKiBPerSecond: 256 });
      const guest = await bootGuest({
        kernel,
        initrd,
        memoryMiB: liveMiB,
        qmpSocket: join(dir, `${name}-boot.qmp`),
        readyTimeoutMs: 240_000,
      });
      try {
        const deadline = Date.now() + 120_000;
        while (!lastMarked(guest.serial(), GUEST_SUM_MARKER) || lastTick(guest.serial()) < 2) {
          if (Date.now() > deadline) throw new Error(`${name}: no checksum line within 120 s of booting`);
          await sleep(250);
        }
        const sum = lastMarked(guest.serial(), GUEST_SUM_MARKER)!;
        const file = join(dir, `${name}.state`);
        await guest.qmp.execute('migrate', { uri: `exec:cat > ${file}` });
        for (;;) {
          const info = (await guest.qmp.execute('query-migrate')) as {
            status?: string;
            'error-desc'?: string;
          };
          if (info.status === 'completed') break;
          if (info.status === 'failed' || info.status === 'cancelled')
            throw new Error(`${name}: saving the guest failed: ${info['error-desc'] ?? info.status}`);
          await sleep(100);
        }
        return { name, initrd, file, sum, target };
      } finally {
        await guest.stop();
      }
    }),
  );
  return { kernel, guests };
}

/** A saved guest running again in src's namespace, with a second QMP socket for vmscatter. */
interface SourceGuest {
  readonly snapshot: GuestSnapshot;
  readonly guest: Guest;
  readonly vmsQmp: string;
  readonly serialAtTarget: string;
}

async function restoreGuests(lab: Lab, dir: string, live: LiveSetup): Promise<SourceGuest[]> {
  const ip = findTool('ip') ?? 'ip';
  const restored: SourceGuest[] = [];
  try {
    for (const snapshot of live.guests) {
      const vmsQmp = join(dir, `${snapshot.name}-vms.qmp`);
      const guest = await bootGuest({
        kernel: live.kernel,
        initrd: snapshot.initrd,
        memoryMiB: liveMiB,
        qmpSocket: join(dir, `${snapshot.name}.qmp`),
        incoming: `exec:cat ${snapshot.file}`,
        wrap: [ip, 'netns', 'exec', lab.host('src').namespace],
        extraArgs: ['-qmp', `unix:${vmsQmp},server=on,wait=off`],
      });
      restored.push({ snapshot, guest, vmsQmp, serialAtTarget: join(dir, `${snapshot.name}.target.serial`) });
    }
    // Running again: ticking past where they were saved.
    const deadline = Date.now() + 90_000;
    const start = restored.map((r) => lastTick(r.guest.serial()));
    while (!restored.every((r, i) => lastTick(r.guest.serial()) > start[i]! + 1)) {
      if (Date.now() > deadline) throw new Error('restored guests do not tick within 90 s');
      await sleep(250);
    }
    return restored;
  } catch (error) {
    await Promise.all(restored.map((r) => r.guest.stop().catch(() => undefined)));
    throw error;
  }
}

function writeImageTopology(lab: Lab, dir: string, images: readonly SourceImage[]): string {
  const link = topologyRate(rate);
  const perTarget = imageCount / TARGETS.length;
  const path = join(dir, 'topology.yaml');
  writeFileSync(
    path,
    [
      `multicast: { base: ${MULTICAST.base}, size: ${MULTICAST.size}, port: ${MULTICAST.port} }`,
      'hosts:',
      `  - { name: src, address: ${lab.host('src').address}, port: 7980, role: source, link: ${link} }`,
      ...TARGETS.map(
        (t) =>
          `  - { name: ${t}, address: ${lab.host(t).address}, port: 7981, role: target, ` +
          `memory: ${perTarget * imageMiB}MiB, maxVms: ${perTarget}, link: ${link} }`,
      ),
      'vms:',
      ...images.map(
        (image) => `  - { name: ${image.name}, memory: ${imageMiB}MiB, source: { image: ${image.path} } }`,
      ),
    ].join('\n'),
  );
  return path;
}

function writeLiveTopology(lab: Lab, dir: string, live: LiveSetup, sources: readonly SourceGuest[]): string {
  const link = topologyRate(rate);
  const qemu = process.env.VMSCATTER_QEMU ?? 'qemu-system-x86_64';
  const path = join(dir, 'topology.yaml');
  writeFileSync(
    path,
    [
      `multicast: { base: ${MULTICAST.base}, size: ${MULTICAST.size}, port: ${MULTICAST.port} }`,
      'hosts:',
      `  - { name: src, address: ${lab.host('src').address}, port: 7980, role: source, link: ${link} }`,
      ...TARGETS.map(
        (t) =>
          `  - { name: ${t}, address: ${lab.host(t).address}, port: 7981, role: target, ` +
          `memory: ${liveMiB}MiB, maxVms: 1, link: ${link} }`,
      ),
      'vms:',
      ...sources.flatMap(({ snapshot, vmsQmp, serialAtTarget }) => {
        const command = [
          qemu,
          ...qemuArgs(live.kernel, snapshot.initrd),
          ...['-serial', `file:${serialAtTarget}`],
        ];
        return [
          `  - name: ${snapshot.name}`,
          `    memory: ${liveMiB}MiB`,
          `    source: { qemu: { qmp: ${JSON.stringify(vmsQmp)}, command: ${JSON.stringify(command)} } }`,
          `    target: ${snapshot.target}`,
        ];
      }),
    ].join('\n'),
  );
  return path;
}

// ---------------------------------------------------------------------------------------------------
// Running a job, with a kill or fill point watched while it runs

interface Trigger {
  /** What the bench waits for, in words. */
  readonly waitsFor: string;
  /** The event seen, or undefined while it has not happened. */
  poll(): Promise<string | undefined>;
  /** Done at once when the point is reached. */
  act(): void;
  /** The trigger acts by itself the moment the event happens (poll then only reports it). */
  readonly immediate?: boolean;
  /** What the state was at the point, read after acting (appended to the event). */
  after?(): Promise<string>;
}

async function runJob(
  lab: Lab,
  dir: string,
  topology: string,
  secret: string,
  options: { resume?: boolean; trigger?: (job: ProcessWatch) => Trigger },
): Promise<JobRun> {
  const job = watchProcess(
    lab.spawn('src', process.execPath, [
      ...[...CLI_NODE_OPTIONS, cli, 'scatter', '--topology', topology, '--work-dir', join(dir, 'vms')],
      ...['--secret-file', secret, '--mtu', String(mtu), '--json'],
      ...(options.resume ? ['--resume'] : []),
    ]),
  );
  const started = performance.now();
  let exited = false;
  let trigger: JobRun['trigger'];
  const watching = (async () => {
    if (!options.trigger) return;
    const point = options.trigger(job);
    trigger = { fired: false, event: `${point.waitsFor}: not seen before the job ended` };
    for (;;) {
      const done = exited;
      const event = await point.poll().catch(() => undefined);
      if (event !== undefined && (!done || point.immediate)) {
        point.act();
        const atSeconds = (performance.now() - started) / 1000;
        const after = point.after ? await point.after().catch((e: Error) => e.message) : undefined;
        trigger = { fired: true, event: after ? `${event}; ${after}` : event, atSeconds };
        return;
      }
      if (done) return;
      await sleep(10);
    }
  })();
  let timedOut = false;
  const result = await job.exit(JOB_TIMEOUT_MS).catch((error: Error) => {
    timedOut = true;
    return {
      code: null,
      signal: 'SIGKILL',
      stdout: job.stdout(),
      stderr: `${job.stderr()}\n${error.message}`,
    };
  });
  exited = true;
  await watching;
  const seconds = (performance.now() - started) / 1000;
  let parsed: ScatterReport | undefined;
  try {
    parsed = JSON.parse(result.stdout) as ScatterReport;
  } catch {
    parsed = undefined;
  }
  const report = parsed?.vms ? parsed : undefined;
  const errorCode =
    result.code === 0
      ? null
      : typeof parsed?.code === 'string'
        ? parsed.code
        : result.signal
          ? null
          : // After printing its report, `scatter` throws these two for these exit codes (scatter-command.ts).
            result.code === 6 && report
            ? 'VMS_INCOMPLETE'
            : result.code === 130 && report
              ? 'VMS_INTERRUPTED'
              : null;
  const dropped = report?.targets?.reduce((n, t) => n + (t.droppedDatagrams ?? 0), 0);
  return {
    exitCode: result.code,
    signal: result.signal,
    errorCode,
    message: timedOut ? `timed out after ${JOB_TIMEOUT_MS / 1000} s` : lastMessage(result.stderr),
    seconds,
    timedOut,
    report,
    droppedDatagrams: dropped ?? null,
    ...(trigger ? { trigger } : {}),
  };
}

/** A trigger on a file's size (an agent's store or a partial image). */
function onFileSize(
  waitsFor: string,
  path: () => string | undefined,
  bytes: number,
  act: () => void,
): Trigger {
  return {
    waitsFor,
    poll: async () => {
      const file = path();
      const size = file ? sizeOf(file) : 0;
      return size >= bytes ? `${waitsFor} (${(size / MiB).toFixed(1)} MiB)` : undefined;
    },
    act,
  };
}

/** A trigger on the source QEMU's migration (asked over the bench's own QMP socket). */
function onMigration(guest: Guest, stage: 'active' | 'check' | 'switch-over', act: () => void): Trigger {
  return {
    waitsFor:
      stage === 'active'
        ? `${guest.pid}: migration active with ${MIGRATION_KILL_BYTES / MiB} MiB sent`
        : stage === 'check'
          ? 'stream whole, source stopped and waiting for its answer'
          : 'migration completed, source stopped',
    poll: async () => {
      if (stage === 'check' || stage === 'switch-over') {
        const { status } = (await guest.qmp.execute('query-status')) as { status?: string };
        const wanted = stage === 'check' ? 'finish-migrate' : 'postmigrate';
        return status === wanted ? `source QEMU '${status}' (stopped, stream complete)` : undefined;
      }
      const info = (await guest.qmp.execute('query-migrate')) as {
        status?: string;
        ram?: { transferred?: number };
      };
      const sent = info.ram?.transferred ?? 0;
      return info.status === 'active' && sent >= MIGRATION_KILL_BYTES
        ? `source QEMU migrating, ${(sent / MiB).toFixed(1)} MiB sent`
        : undefined;
    },
    act,
  };
}

// ---------------------------------------------------------------------------------------------------
// What became of the VMs

function observeImages(
  dir: string,
  images: readonly SourceImage[],
  report: ScatterReport | undefined,
): VmOutcome[] {
  return images.map((image) => {
    const row = report?.vms?.find((vm) => vm.name === image.name);
    const notes: string[] = [];
    const sourceIntact = existsSync(image.path) && sha256File(image.path) === image.sha256;
    if (!sourceIntact) notes.push('source image changed or gone');
    // At a target: the agent's verified image (VM.raw with its VM.raw.sha256), byte-identical.
    const at = TARGETS.filter((t) => {
      const file = join(dir, 'agents', t, 'images', `${image.name}.raw`);
      return existsSync(`${file}.sha256`) && existsSync(file) && sha256File(file) === image.sha256;
    });
    const verifiedAtTarget = at.length > 0;
    if (row?.verified && !at.includes(row.target))
      notes.push(`the report says verified at ${row.target}, where no identical verified image is`);
    if (!row?.verified && verifiedAtTarget)
      notes.push(`identical and verified at ${at.join(', ')}, unreported`);
    return {
      name: image.name,
      target: row?.target ?? at[0] ?? null,
      reportVerified: row ? row.verified : null,
      ...(row?.error ? { reportError: row.error } : {}),
      verifiedAtTarget,
      runningAtSource: null,
      sourceIntact,
      lost: !verifiedAtTarget && !sourceIntact,
      runningTwice: false,
      notes,
    };
  });
}

/** QEMU processes in a lab host whose command line mentions `needle`. */
function qemusIn(lab: Lab, host: string, needle: string): number[] {
  const ip = findTool('ip') ?? 'ip';
  const pids = spawnSync(ip, ['netns', 'pids', lab.host(host).namespace], { encoding: 'utf8' }).stdout;
  return pids
    .split('\n')
    .filter((pid) => pid !== '')
    .map(Number)
    .filter((pid) => {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
        return cmdline.startsWith('qemu') || cmdline.includes('/qemu-system')
          ? cmdline.includes(needle)
          : false;
      } catch {
        return false;
      }
    });
}

async function destinationStatus(qmpPath: string): Promise<string> {
  if (!existsSync(qmpPath)) return 'no QMP socket';
  const qmp = await connectQmp(qmpPath, { connectTimeoutMs: 2000, commandTimeoutMs: 3000 }).catch(
    () => undefined,
  );
  if (!qmp) return 'QMP busy or gone';
  try {
    const { status } = (await qmp.execute('query-status')) as { status?: string };
    return status ?? 'unknown';
  } catch {
    return 'unknown';
  } finally {
    await qmp.close().catch(() => undefined);
  }
}

/**
 * Where each guest runs: at its target (a destination QEMU whose console ticks on and prints the
 * guest's own checksum) and/or at its source (the source QEMU's console ticks on). A QEMU that is not
 * there cannot run; one that is there gets OBSERVE_MS to show it does.
 */
async function observeGuests(
  lab: Lab,
  dir: string,
  sources: readonly SourceGuest[],
  report: ScatterReport | undefined,
): Promise<VmOutcome[]> {
  return Promise.all(
    sources.map(async (source): Promise<VmOutcome> => {
      const { snapshot, guest } = source;
      const row = report?.vms?.find((vm) => vm.name === snapshot.name);
      const notes: string[] = [];
      const readTarget = () =>
        existsSync(source.serialAtTarget) ? readFileSync(source.serialAtTarget, 'latin1') : '';
      const sourceUp = () => guest.process.exitCode === null && guest.process.signalCode === null;
      const targetUp = () => qemusIn(lab, snapshot.target, `${snapshot.name}.target.serial`).length > 0;
      const sourceFrom = lastTick(guest.serial());
      const targetFrom = lastTick(readTarget());
      let atSource = false;
      let atTarget = false;
      let sum: string | undefined;
      const deadline = Date.now() + OBSERVE_MS;
      for (;;) {
        atSource ||= sourceUp() && lastTick(guest.serial()) > sourceFrom;
        const text = readTarget();
        if (!atTarget && targetUp() && lastTick(text) > targetFrom) atTarget = true;
        // The checksum printed after the guest started there (the file's own lines: it is new per destination).
        if (atTarget) sum = lastMarked(text, GUEST_SUM_MARKER);
        const sourceDone = atSource || !sourceUp();
        const targetDone = (atTarget && sum !== undefined) || !targetUp();
        if ((sourceDone && targetDone) || Date.now() > deadline) break;
        await sleep(250);
      }
      const destination = await destinationStatus(
        join(dir, 'agents', snapshot.target, 'run', `${snapshot.name}.qmp`),
      );
      const sourceState = sourceUp()
        ? (((await guest.qmp.execute('query-status').catch(() => ({}))) as { status?: string }).status ??
          'unknown')
        : 'exited';
      notes.push(`source QEMU ${sourceState}`, `destination QEMU ${targetUp() ? destination : 'none'}`);
      const sumOk = sum === snapshot.sum;
      if (atTarget && sum === undefined)
        notes.push(`runs at ${snapshot.target} but printed no checksum within ${OBSERVE_MS / 1000} s`);
      if (atTarget && sum !== undefined && !sumOk)
        notes.push(`DATA CHANGED at ${snapshot.target}: checksum ${sum}, expected ${snapshot.sum}`);
      const verifiedAtTarget = atTarget && sumOk;
      if (row?.verified && !verifiedAtTarget)
        notes.push('the report says verified, but it does not run at its target');
      if (row && !row.verified && atTarget)
        notes.push('runs at its target although the report says not verified');
      return {
        name: snapshot.name,
        target: row?.target ?? snapshot.target,
        reportVerified: row ? row.verified : null,
        ...(row?.error ? { reportError: row.error } : {}),
        verifiedAtTarget,
        runningAtSource: atSource,
        // A guest running at its target with changed data is lost as surely as one running nowhere.
        lost: !verifiedAtTarget && !atSource,
        runningTwice: atTarget && atSource,
        notes,
      };
    }),
  );
}

function countsOf(vms: readonly VmOutcome[], kind: Kind): Counts {
  return {
    vms: vms.length,
    verifiedAtTarget: vms.filter((vm) => vm.verifiedAtTarget).length,
    runningAtSource: kind === 'live' ? vms.filter((vm) => vm.runningAtSource).length : null,
    lost: vms.filter((vm) => vm.lost).length,
    runningTwice: vms.filter((vm) => vm.runningTwice).length,
  };
}

// ---------------------------------------------------------------------------------------------------
// One case

interface Context {
  readonly work: string;
  images?: readonly SourceImage[];
  live?: LiveSetup;
  liveUnavailable?: string;
  netem?: { available: boolean; why?: string };
}

function methodOf(fault: Fault): string {
  switch (fault.type) {
    case 'loss':
      return 'nftables numgen drop of multicast datagrams at each target (prerouting), independent per target';
    case 'reorder':
      return `source's multicast diverted at its switch port (nftables fwd) to a relay host that holds ${fault.share * 100}% back for ${fault.minDelayMs}-${fault.maxDelayMs} ms (bench/fault-relay.ts)`;
    case 'duplicate':
      return `nftables dup on the source's switch port: ${fault.percent}% of its multicast datagrams sent again to each target, independently`;
    case 'forge':
      return 'attacker host on the groups without the key: future-sequence, bit-flipped, junk-session and plaintext-relabelled datagrams to the groups, made-up receiver feedback to the sender (bench/fault-attacker.ts)';
    case 'replay':
      return "attacker host on the groups: captured datagrams replayed verbatim after 30 ms, 300 ms and 3 s, earlier sessions' datagrams into later ones, the sender's own datagrams reflected to it, and the receivers' feedback (mirrored to it by nftables) replayed to the sender";
    case 'kill-agent':
      return `SIGKILL to ${VICTIM}'s agent ${fault.at === 'multicast' ? `once its store holds ${STORE_KILL_BYTES / MiB} MiB of pages` : fault.at === 'rebuild' ? `once a partial image of ${REBUILD_KILL_BYTES / MiB} MiB is being written` : `once the source QEMU's migration to it is active with ${MIGRATION_KILL_BYTES / MiB} MiB sent`}; then restarted for the --resume`;
    case 'kill-coordinator': {
      const when = {
        multicast: `once a target's store holds ${STORE_KILL_BYTES / MiB} MiB of pages`,
        migration: `once g1's source QEMU is migrating with ${MIGRATION_KILL_BYTES / MiB} MiB sent`,
        check:
          "once g1's source QEMU stopped with its stream whole and waits for the coordinator's answer (the memory check)",
        'switch-over':
          "once g1's source QEMU has completed its migration (stopped; its destination not yet running)",
        resumed: `once ${VICTIM}'s agent logs that g1 runs there (before the coordinator quits g1's source)`,
      }[fault.at];
      return `SIGKILL to the coordinator ${when}; then --resume, as an operator without its report would`;
    }
    case 'disk-full':
      return `${VICTIM}'s state directory on a tmpfs, filled up once ${STORE_FILL_BYTES / MiB} MiB of pages reached its store; freed for the --resume`;
  }
}

async function runCase(ctx: Context, def: CaseDef): Promise<CaseResult> {
  const started = performance.now();
  const base = { id: def.id, kind: def.kind, label: def.label, method: methodOf(def.fault) };
  const elapsed = () => (performance.now() - started) / 1000;
  if (def.kind === 'live' && !ctx.live)
    return { ...base, status: 'not run', reason: ctx.liveUnavailable ?? 'no guests', seconds: 0 };
  const fault = def.fault;
  const extraHost =
    fault.type === 'reorder'
      ? ['relay']
      : fault.type === 'forge' || fault.type === 'replay'
        ? ['attacker']
        : [];
  const dir = mkdtempSync(join(ctx.work, `${def.id.replace('/', '-')}-`));
  const lab = await createLab({ hosts: ['src', ...TARGETS, ...extraHost], mtu });
  const agents = new Map<string, ProcessWatch>();
  let sources: SourceGuest[] = [];
  const victimDir = join(dir, 'agents', VICTIM);
  let stage = 'setting up';
  try {
    ctx.netem ??= await netemAvailable(lab);
    await lab.shape('src', { rate });
    const secret = join(dir, 'secret');
    writeFileSync(secret, 'faults bench deployment secret, 32+ bytes', { mode: 0o600 });
    let topology: string;
    if (def.kind === 'image') topology = writeImageTopology(lab, dir, ctx.images!);
    else {
      sources = await restoreGuests(lab, dir, ctx.live!);
      topology = writeLiveTopology(lab, dir, ctx.live!, sources);
    }
    if (fault.type === 'disk-full') {
      // Room for the pre-flight check (store and images of its VMs), filled once pages arrive.
      const perTarget = def.kind === 'image' ? (2 * imageCount * imageMiB) / TARGETS.length : liveMiB;
      mountTmpfs(victimDir, Math.ceil(perTarget * 1.25) + 16);
    }
    for (const t of TARGETS) agents.set(t, await startAgent(lab, dir, topology, t, secret));

    // The network fault, and the helper processes it needs.
    const hostArgs = (host: string) => [
      ...['--groups', GROUPS, '--port', String(MULTICAST.port), '--interface', lab.host(host).address],
    ];
    let helper: ProcessWatch | undefined;
    stage = 'applying the fault';
    if (fault.type === 'loss') await addMulticastLoss(lab, TARGETS, MULTICAST.port, fault.percent);
    if (fault.type === 'duplicate')
      await addSourceRule(lab, MULTICAST.port, { duplicate: { targets: TARGETS, percent: fault.percent } });
    if (fault.type === 'reorder') {
      helper = await startHelper(lab, 'relay', relayScript, [
        ...hostArgs('relay'),
        ...['--share', String(fault.share), '--min-delay-ms', String(fault.minDelayMs)],
        ...['--max-delay-ms', String(fault.maxDelayMs), '--seconds', String(JOB_TIMEOUT_MS / 1000 + 60)],
      ]);
      await addSourceRule(lab, MULTICAST.port, { divertTo: 'relay' });
    }
    if (fault.type === 'forge' || fault.type === 'replay') {
      if (fault.type === 'replay') await mirrorFeedback(lab, TARGETS, 'attacker', MIRROR_PORT);
      helper = await startHelper(lab, 'attacker', attackerScript, [
        ...['--mode', fault.type, ...hostArgs('attacker'), '--rate', '2000'],
        ...(fault.type === 'replay' ? ['--mirror-port', String(MIRROR_PORT)] : []),
        ...['--seconds', String(JOB_TIMEOUT_MS / 1000 + 60)],
      ]);
    }

    // The kill or fill point.
    const storeOf = (t: string) => () => storePagesFile(join(dir, 'agents', t, 'store'));
    const partialImage = () => {
      const images = join(victimDir, 'images');
      const partial = existsSync(images)
        ? readdirSync(images).find((f) => f.endsWith('.partial'))
        : undefined;
      return partial ? join(images, partial) : undefined;
    };
    const killAgent = () => agents.get(VICTIM)!.child.kill('SIGKILL');
    let filled = 0;
    const victimGuest = sources.find((s) => s.snapshot.target === VICTIM)?.guest;
    const victimName = sources.find((s) => s.snapshot.target === VICTIM)?.snapshot.name;
    const trigger =
      fault.type === 'kill-agent'
        ? fault.at === 'multicast'
          ? () => onFileSize(`${VICTIM}'s store growing`, storeOf(VICTIM), STORE_KILL_BYTES, killAgent)
          : fault.at === 'rebuild'
            ? () =>
                onFileSize(`${VICTIM} writing a partial image`, partialImage, REBUILD_KILL_BYTES, killAgent)
            : () => onMigration(victimGuest!, 'active', killAgent)
        : fault.type === 'kill-coordinator'
          ? (job: ProcessWatch) => {
              const kill = () => job.child.kill('SIGKILL');
              if (fault.at === 'multicast') {
                const stores = TARGETS.map((t) => storeOf(t));
                const biggest = () => stores.map((s) => s()).sort((a, b) => sizeOf(b) - sizeOf(a))[0];
                return onFileSize("a target's store growing", biggest, STORE_KILL_BYTES, kill);
              }
              if (fault.at === 'resumed') {
                // The agent's log line once the destination runs (the coordinator quits the source when
                // it hears of it): the kill happens in the agent's output handler, without a poll's delay.
                const line = new RegExp(`: ${victimName}: running here`);
                let seen: string | undefined;
                let text = '';
                agents.get(VICTIM)!.child.stderr!.on('data', (chunk: string) => {
                  text = (text + chunk).slice(-4096);
                  if (seen === undefined && line.test(text)) {
                    kill();
                    seen = `${VICTIM}'s agent logged that ${victimName} runs there`;
                  }
                });
                return {
                  waitsFor: `${VICTIM}'s agent saying ${victimName} runs there`,
                  poll: async () => seen,
                  act: () => undefined,
                  immediate: true,
                  after: async () => {
                    if (victimGuest!.process.exitCode !== null || victimGuest!.process.signalCode !== null)
                      return `${victimName}'s source QEMU had already quit`;
                    const { status } = (await victimGuest!.qmp.execute('query-status')) as {
                      status?: string;
                    };
                    return `${victimName}'s source QEMU '${status}'`;
                  },
                };
              }
              return onMigration(
                victimGuest!,
                fault.at === 'migration' ? 'active' : fault.at === 'check' ? 'check' : 'switch-over',
                kill,
              );
            }
          : fault.type === 'disk-full'
            ? () =>
                onFileSize(`${VICTIM}'s store growing`, storeOf(VICTIM), STORE_FILL_BYTES, () => {
                  filled = fillDisk(victimDir);
                })
            : undefined;

    stage = 'running the job';
    log(`  ${def.id}: job running`);
    const job = await runJob(lab, dir, topology, secret, trigger ? { trigger } : {});

    // The fault as applied (counters), then the fault removed.
    stage = 'reading the fault counters';
    const applied: Record<string, unknown> = {};
    if (fault.type === 'loss') applied.multicastLoss = await multicastLossCounts(lab, TARGETS);
    if (fault.type === 'duplicate') {
      const [seen = 0, ...dups] = await sourceRuleCounts(lab);
      applied.sourceMulticastDatagrams = seen;
      applied.duplicated = Object.fromEntries(TARGETS.map((t, i) => [t, dups[i] ?? 0]));
      await removeSourceRule(lab);
    }
    if (fault.type === 'reorder') {
      const [, diverted = 0] = await sourceRuleCounts(lab);
      applied.divertedToRelay = diverted;
      applied.relay = await stopHelper(helper!);
      applied.relayUdpErrors = await udpReceiveErrors(lab, 'relay');
      await removeSourceRule(lab);
    }
    if (fault.type === 'forge' || fault.type === 'replay') {
      if (fault.type === 'replay') applied.feedbackMirrored = await mirroredCount(lab, TARGETS);
      applied.attacker = await stopHelper(helper!);
    }
    if (fault.type === 'loss') await addMulticastLoss(lab, TARGETS, MULTICAST.port, 0);
    if (fault.type === 'disk-full') applied.filledBytes = filled;
    applied.droppedDatagrams = job.droppedDatagrams;
    applied.dropReasonsInAgentLogs = dropReasons([...agents.values()].map((a) => a.stderr()));
    if (job.trigger) applied.point = job.trigger;

    stage = 'observing the VMs';
    const observe = async (report: ScatterReport | undefined) =>
      def.kind === 'image'
        ? observeImages(dir, ctx.images!, report)
        : observeGuests(lab, dir, sources, report);
    const vms = await observe(job.report);
    const after = countsOf(vms, def.kind);
    log(
      `  ${def.id}: exit ${job.exitCode ?? job.signal} ${job.errorCode ?? ''}; verified ${after.verifiedAtTarget}/${after.vms}` +
        `${after.runningAtSource === null ? '' : `, at source ${after.runningAtSource}`}, lost ${after.lost}`,
    );

    // The recovery an operator would run when VMs were left behind (fix the cause, then --resume), and
    // always after the coordinator died: without its report nobody knows what moved.
    let recovery: CaseResult['recovery'];
    if (after.verifiedAtTarget < after.vms || fault.type === 'kill-coordinator') {
      stage = 'recovering';
      const steps: string[] = [];
      if (fault.type === 'kill-agent') {
        agents.get(VICTIM)!.child.kill('SIGKILL');
        await agents
          .get(VICTIM)!
          .exit(10_000)
          .catch(() => undefined);
        agents.set(VICTIM, await startAgent(lab, dir, topology, VICTIM, secret));
        steps.push(`restarted ${VICTIM}'s agent`);
      }
      if (fault.type === 'disk-full') {
        rmSync(join(victimDir, 'filler'), { force: true });
        steps.push(`removed the filler from ${VICTIM}'s disk`);
      }
      steps.push('vmscatter scatter --resume');
      log(`  ${def.id}: recovery: ${steps.join(', ')}`);
      const resumed = await runJob(lab, dir, topology, secret, { resume: true });
      const vmsAfter = await observe(resumed.report);
      const counts = countsOf(vmsAfter, def.kind);
      log(
        `  ${def.id}: after --resume: exit ${resumed.exitCode ?? resumed.signal} ${resumed.errorCode ?? ''}; ` +
          `verified ${counts.verifiedAtTarget}/${counts.vms}, lost ${counts.lost}`,
      );
      recovery = { steps, job: withoutReport(resumed), after: counts, vms: vmsAfter };
    }
    return {
      ...base,
      status: 'ran',
      seconds: elapsed(),
      job: withoutReport(job),
      after,
      vms,
      fault: applied,
      ...(recovery ? { recovery } : {}),
    };
  } catch (error) {
    const message = `${stage}: ${error instanceof Error ? error.message : String(error)}`;
    log(
      `  ${def.id}: ${stage === 'applying the fault' || stage === 'setting up' ? 'NOT RUN' : 'ERROR'}: ${message}`,
    );
    return {
      ...base,
      status: stage === 'applying the fault' || stage === 'setting up' ? 'not run' : 'error',
      reason: message,
      seconds: elapsed(),
    };
  } finally {
    for (const agent of agents.values()) agent.child.kill('SIGTERM');
    await Promise.all([...agents.values()].map((a) => a.exit(10_000).catch(() => undefined)));
    await Promise.all(sources.map((s) => s.guest.stop().catch(() => undefined)));
    await lab.destroy();
    unmount(victimDir);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A job's record without the full report (the per-VM outcomes hold what matters of it). */
function withoutReport(job: JobRun): JobRun {
  return { ...job, report: undefined };
}

// ---------------------------------------------------------------------------------------------------
// Output

const pad = (text: string, width: number, right = false) =>
  right ? text.padStart(width) : text.padEnd(width);

function countsCell(c: Counts): string {
  return `${c.verifiedAtTarget}/${c.runningAtSource ?? '-'}/${c.lost}${c.runningTwice ? ` (${c.runningTwice} twice)` : ''}`;
}

const exitOf = (job: JobRun) => (job.exitCode === null ? (job.signal ?? '?') : String(job.exitCode));
const pct = (part: number, whole: number) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-');

/** The fault as the counters saw it, in one line. */
function appliedSummary(r: CaseResult): string {
  const f = r.fault ?? {};
  const parts: string[] = [];
  const loss = f.multicastLoss as Record<string, { seen: number; dropped: number }> | undefined;
  if (loss)
    parts.push(
      `multicast dropped: ${Object.entries(loss)
        .map(([t, c]) => `${t} ${c.dropped} of ${c.seen} (${pct(c.dropped, c.seen)})`)
        .join(', ')}`,
    );
  const dups = f.duplicated as Record<string, number> | undefined;
  if (dups) {
    const sent = Number(f.sourceMulticastDatagrams ?? 0);
    parts.push(
      `duplicated: ${Object.entries(dups)
        .map(([t, n]) => `${t} ${n} of ${sent} (${pct(n, sent)})`)
        .join(', ')}`,
    );
  }
  const relay = f.relay as Record<string, number> | undefined;
  if (relay) {
    const errors = f.relayUdpErrors as { rcvbufErrors: number } | undefined;
    parts.push(
      `relay held back ${relay.heldBack} of ${relay.received} (${pct(relay.heldBack ?? 0, relay.received ?? 0)}), ` +
        `each overtaken by ${Number(relay.meanOvertaken ?? 0).toFixed(0)} on average (at most ${relay.overtakenMax}); ` +
        `relay receive-buffer drops ${errors?.rcvbufErrors ?? '?'}`,
    );
  }
  const attacker = f.attacker as { sent?: Record<string, number>; captured?: number } | undefined;
  if (attacker?.sent) {
    const total = Object.values(attacker.sent).reduce((n, x) => n + x, 0);
    parts.push(
      `attacker sent ${total} (${Object.entries(attacker.sent)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ')})`,
    );
  }
  if (f.feedbackMirrored !== undefined)
    parts.push(`${String(f.feedbackMirrored)} feedback datagrams mirrored to it`);
  if (f.droppedDatagrams !== null && f.droppedDatagrams !== undefined && Number(f.droppedDatagrams) > 0) {
    const reasons = f.dropReasonsInAgentLogs as Record<string, number> | undefined;
    parts.push(
      `receivers dropped ${String(f.droppedDatagrams)}` +
        (reasons && Object.keys(reasons).length
          ? ` (${Object.entries(reasons)
              .map(([why, n]) => `${n} ${why}`)
              .join(', ')})`
          : ''),
    );
  }
  const point = r.job?.trigger;
  if (point)
    parts.push(
      point.fired
        ? `at ${point.event}, ${point.atSeconds?.toFixed(1)} s into the job`
        : `POINT MISSED: ${point.event}`,
    );
  if (f.filledBytes !== undefined) parts.push(`filled ${(Number(f.filledBytes) / MiB).toFixed(0)} MiB`);
  return parts.join('; ');
}

function renderTable(results: readonly CaseResult[], header: string): string {
  const lines = [
    header,
    '',
    'verified: at its target, checked by the bench; at source: still running there (live jobs); lost: neither.',
    'after --resume: the same counts after the recovery an operator would run (VMs left behind, or no report).',
    '',
    [
      pad('job', 5),
      pad('case', 34),
      pad('VMs', 3, true),
      pad('verified', 8, true),
      pad('at source', 9, true),
      pad('lost', 4, true),
      pad('exit', 7, true),
      pad('error code', 14),
      'after --resume',
    ].join(' '),
  ];
  for (const r of results) {
    if (r.status !== 'ran') {
      lines.push(`${pad(r.kind, 5)} ${pad(r.label, 34)} ${r.status.toUpperCase()}: ${r.reason}`);
      continue;
    }
    const a = r.after!;
    const recovery = r.recovery
      ? `${countsCell(r.recovery.after)}, exit ${exitOf(r.recovery.job)}${r.recovery.job.errorCode ? ` ${r.recovery.job.errorCode}` : ''}`
      : '-';
    lines.push(
      [
        pad(r.kind, 5),
        pad(r.label, 34),
        pad(String(a.vms), 3, true),
        pad(String(a.verifiedAtTarget), 8, true),
        pad(a.runningAtSource === null ? '-' : String(a.runningAtSource), 9, true),
        pad(String(a.lost), 4, true),
        pad(exitOf(r.job!), 7, true),
        pad(r.job!.errorCode ?? '-', 14),
        recovery,
      ].join(' '),
    );
    if (a.runningTwice) lines.push(`${' '.repeat(6)}RUNNING TWICE: ${a.runningTwice}`);
    const applied = appliedSummary(r);
    if (applied) lines.push(`${' '.repeat(6)}${applied}`);
  }
  return lines.join('\n');
}

function lostVms(results: readonly CaseResult[]): string[] {
  const lines: string[] = [];
  for (const r of results) {
    for (const [when, vms] of [
      ['after the fault', r.vms],
      ['after --resume', r.recovery?.vms],
    ] as const)
      for (const vm of vms ?? [])
        if (vm.lost || vm.runningTwice)
          lines.push(
            `${r.id} ${when}: ${vm.name} ${vm.lost ? 'LOST' : 'RUNNING TWICE'} (${[
              vm.reportError ? `report: ${vm.reportError}` : '',
              ...vm.notes,
            ]
              .filter(Boolean)
              .join('; ')})`,
          );
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------------
// Main

let netem: { available: boolean; why?: string } | undefined;

async function main(): Promise<void> {
  const all = caseList();
  const wanted = values.cases?.split(',').map((c) => c.trim()) ?? (quick ? QUICK_CASES : undefined);
  const selected = wanted ? all.filter((c) => wanted.includes(c.id) || wanted.includes(c.kind)) : all;
  for (const w of wanted ?? [])
    if (!all.some((c) => c.id === w || c.kind === w))
      throw new Error(`--cases: unknown '${w}' (${all.map((c) => c.id).join(', ')}, or image, live)`);
  const started = Date.now();
  const available = labAvailable();
  const results: CaseResult[] = [];
  let qemuVersion: string | undefined;
  if (!available.ok) {
    for (const c of selected)
      results.push({
        id: c.id,
        kind: c.kind,
        label: c.label,
        status: 'not run',
        reason: `network lab: ${available.why}`,
        seconds: 0,
      });
  } else {
    workDir = mkdtempSync(join(tmpdir(), 'vmscatter-bench-faults-'));
    const context: Context = { work: workDir };
    if (selected.some((c) => c.kind === 'image')) {
      log(`writing ${imageCount} synthetic images of ${imageMiB} MiB`);
      context.images = prepareImages(join(workDir, 'images'));
    }
    if (selected.some((c) => c.kind === 'live')) {
      const qemu = process.env.VMSCATTER_QEMU ?? 'qemu-system-x86_64';
      const version = spawnSync(qemu, ['--version'], { encoding: 'utf8' });
      if (version.status !== 0)
        context.liveUnavailable = `${qemu} is not available (install qemu-system-x86)`;
      else {
        qemuVersion = version.stdout.split('\n')[0];
        log(`booting and saving ${TARGETS.length} guests of ${liveMiB} MiB (QEMU, TCG)`);
        try {
          context.live = await prepareGuests(join(workDir, 'guests'));
        } catch (error) {
          context.liveUnavailable = `the guests could not be booted and saved: ${(error as Error).message}`;
        }
      }
    }
    for (const [i, c] of selected.entries()) {
      if (Date.now() - started > RUN_BUDGET_MS) {
        const reason = `the run's time budget (${RUN_BUDGET_MS / 60_000} min) was spent before it started`;
        results.push({ id: c.id, kind: c.kind, label: c.label, status: 'not run', reason, seconds: 0 });
        continue;
      }
      log(
        `[${i + 1}/${selected.length}] ${c.id}: ${c.label} (${((Date.now() - started) / 1000).toFixed(0)} s so far)`,
      );
      results.push(await runCase(context, c));
    }
    netem = context.netem;
  }
  const seconds = (Date.now() - started) / 1000;
  const header =
    `faults and attacks: image jobs ${imageCount} VMs x ${imageMiB} MiB -> ${TARGETS.length} targets; ` +
    `live jobs ${TARGETS.length} running guests x ${liveMiB} MiB -> ${TARGETS.length} targets; source link ${rate}, ` +
    `MTU ${mtu}; ${seconds.toFixed(0)} s`;
  const lost = lostVms(results);
  const summary = {
    bench: 'faults',
    date: new Date().toISOString(),
    command: `npm run bench:faults${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    seconds: Math.round(seconds),
    config: {
      image: { vms: imageCount, memoryMiB: imageMiB, targets: TARGETS.length },
      live: {
        guests: TARGETS.length,
        memoryMiB: liveMiB,
        targets: TARGETS.length,
        qemu: qemuVersion ?? null,
      },
      rate,
      mtu,
      multicast: MULTICAST,
    },
    netem: netem ?? null,
    lost: results.reduce((n, r) => n + (r.after?.lost ?? 0) + (r.recovery?.after.lost ?? 0), 0),
    runningTwice: results.reduce(
      (n, r) => n + (r.after?.runningTwice ?? 0) + (r.recovery?.after.runningTwice ?? 0),
      0,
    ),
    notRun: results.filter((r) => r.status === 'not run').map((r) => ({ id: r.id, reason: r.reason })),
    errors: results.filter((r) => r.status === 'error').map((r) => ({ id: r.id, reason: r.reason })),
    cases: results,
  };
  // The work directory's temporary path means nothing elsewhere: it is written as <work>.
  const scrub = (text: string) => (workDir ? text.replaceAll(workDir, '<work>') : text);
  const print = (text: string) => process.stdout.write(scrub(text));
  if (out) {
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, scrub(`${JSON.stringify(summary, null, 2)}\n`));
    log(`wrote ${out}`);
  }
  if (values.json) print(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    print(`${renderTable(results, header)}\n`);
    if (netem && !netem.available)
      print(
        `\nnetem is not available here (${netem.why}): loss and duplicates come from nftables, ` +
          'reordering from a relay host (each case says how in the JSON)\n',
      );
    for (const r of results.filter((x) => x.status !== 'ran'))
      print(`${r.status === 'error' ? 'ERROR' : 'NOT RUN'} ${r.id}: ${r.reason}\n`);
  }
  if (lost.length > 0) {
    const banner = '!'.repeat(100);
    print(
      `\n${banner}\nVMs LOST OR RUNNING TWICE: ${lost.length}\n${lost.map((l) => `  ${l}`).join('\n')}\n${banner}\n`,
    );
    process.exitCode = 1;
  }
  if (results.some((r) => r.status === 'error')) process.exitCode = 1;
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench:faults: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
