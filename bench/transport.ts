/**
 * Transport benchmark: one sender to three receivers over the network lab (bench/harness/lab.ts), vmscatter's
 * multicast transport beside udpcast (udp-sender/udp-receiver) and uftp (uftp/uftpd; unencrypted, and as
 * "uftp-gcm" with its own AES-256-GCM), each with its best settings found here.
 *
 *   npm run bench:transport [-- --size 512MiB --rate 1gbit --mtus 9000,1500 --losses 0,1
 *                               --tools vmscatter,udpcast,uftp,uftp-gcm --repeat 1 --json --quick --tune
 *                               --out DIR --summary FILE --skip-unshaped --tmp DIR --budget-min 14
 *                               --quiet-wait-s 10]
 *
 * A run that is not --quick writes its summary to docs/bench/transport.json (--summary FILE elsewhere):
 * per tool, MTU and loss the goodput, sender-link bytes / payload and CPU s/GB at the sender and at each
 * receiver (user and system apart), with vmscatter's ratios to each peer measured in the same run.
 *
 * --quick: 64 MiB, the first MTU, the first setting of each tool (a smoke run, about a minute). --tune:
 * every candidate setting. A full default run takes about 10 minutes on a quiet 2-core machine.
 *
 * Setup: one lab per MTU (hosts src, r1, r2, r3 on a bridge). The sender's egress and every receiver's
 * ingress are shaped to --rate (tc tbf: 1 Gbit/s links both ways); --losses applies
 * lab.dropShare(receiver, pct, 'in') on every receiver (random, independent). The payload is the seeded,
 * incompressible stream of bench/harness/transport-peer.ts (objects of 4 MiB, seed 1): vmscatter's peers make
 * it in memory and its receivers compare every object byte-exact; udpcast and uftp send the same bytes
 * from a file and their received files are checked by SHA-256 afterwards. Files live on /dev/shm when it
 * has room (else os.tmpdir(); --tmp DIR to choose), so no tool waits on a disk; the directory is removed
 * at the end.
 *
 * Measured per run (all times on this process's monotonic clock):
 * - data phase: from the first payload on the sender's link (its e0 tx counter, read from
 *   /proc/<pid>/net/dev of a process parked in the sender's namespace every millisecond, passing 1 MiB,
 *   less the time 1 MiB takes at the link rate) to the moment the slowest receiver has all data:
 *   vmscatter: the receiver's {"event":"received"} line (its session complete; it compared every
 *   object with the payload's as it completed, and gave its memory back, as an agent gives an object
 *   back once stored; uftp's files are checked afterwards); uftpd: its
 *   "RESULT;…;copied" status line; udp-receiver: its exit less its --exit-wait (it lingers that long
 *   after the last acknowledgement, in case the acknowledgement is lost).
 * - goodput = payload bits / data phase (slowest receiver); "% link" = goodput / --rate; setup = sender
 *   start to first data (process start, handshakes, vmscatter's payload generation, uftp's announce
 *   phase); the JSON has the wall-clock goodput (setup included) too.
 * - sender-link bytes: the lab's txBytes of the sender host (bridge-side veth counter: everything the
 *   sender put on its link, Ethernet headers, control and repairs included) over the run / payload.
 * - CPU seconds per GB of payload (10^9 bytes), user and system apart, at the sender and at each
 *   receiver: vmscatter peers report process.cpuUsage() (all threads) of the transport alone, from the
 *   socket's opening to the session's end (the sender makes its payload before, a receiver the expected
 *   objects before and compares each as it completes, timed apart; that harness work is reported
 *   apart, harnessCpuSeconds in --json). udpcast and uftp run under `bash -c '"$@"; times'`; the children's user and system from
 *   bash's `times` builtin (getrusage of the reaped child, no extra package needed); theirs include
 *   reading and writing their files on tmpfs. Kernel work done in softirq on behalf of a process may
 *   land on whichever process is running; on a 2-core machine the figures are comparable between tools,
 *   not absolute. User time is the program's own work (vmscatter: sealing, opening, erasure code, the
 *   protocol in JavaScript); system time the kernel's (copies into and out of sockets, page faults).
 * - background: the share of the machine busy (from /proc/stat) just before each run, while nothing of
 *   ours runs; above 15% the run waits (at most --quiet-wait-s) for it to calm down. Other work on a
 *   shared machine skews everything above.
 *
 * Settings, chosen with --tune (every candidate once) on this lab, 128 MiB, both MTUs and losses; the
 * default run tries the first two candidates of each tool per case and keeps the faster verified one,
 * --quick only the first:
 * - vmscatter: transport-peer send/receive with --rate 0.97 x link, then 1.0 x link (0.95 and 0.985 in
 *   --tune; the cap hardly matters: the rate controller stays far below it), --mtu = lab MTU (symbol =
 *   MTU - 84 bytes: 8916 at 9000, 1416 at 1500), 4 MiB objects, 64-symbol blocks, AES-256-GCM on.
 * - udpcast: udp-sender --interface e0 --nokbd --min-receivers 3 --start-timeout 30 and no
 *   --max-bitrate (the sender then blocks on its socket buffer behind the shaped link, which paces it
 *   exactly), then --max-bitrate 950m; udp-receiver --interface e0 --nokbd --rcvbuf 4194304
 *   --start-timeout 30 --receive-timeout 15 --exit-wait 200. --full-duplex, 900m and 980m were no better.
 *   udpcast's block is at most 1456 bytes whatever the MTU, and it spends about 2 s after start before
 *   data flows (shown as setup, not in goodput).
 * - uftp: uftp -I e0 -Y none -H <the three client ids> -R <0.97 x link on the wire, in uftp's Kbps
 *   (KB = 1024 bytes, counting block + 52 header bytes)> -b <MTU - 200> -B 4194304 -x 1 -T, with
 *   -M/-P public and private groups; uftpd -d -I e0 -D <dir> -F @LOG -q -x 1 -B 4194304 -c 20971520
 *   -M <the public group>; then the same without -B/-c (at 1% loss uftp with the big buffers sometimes
 *   aborts: "Sending thread timed out … Lost connection"). -b MTU-100 is refused at MTU 9000 (8800 is
 *   uftp's largest block). -Y none: uftp unencrypted, while vmscatter encrypts and authenticates every
 *   packet. -H (closed group) lets uftp start as soon as the three have registered instead of waiting
 *   out its announce period.
 * - uftp-gcm: the same with -Y aes256-gcm -h sha256 -e ecdh_rsa (uftp's authenticated encryption per
 *   packet, keys by ECDH signed with RSA, uftpd's default key type; -e ecdh_ecdsa is refused by uftpd's
 *   RSA key) and -b MTU-300 (encrypted, uftp aborts with "double free or corruption" at -b 8800).
 *
 * Targets (issues): goodput >= 95% of the link at 0% loss and >= 90% at 1% loss; goodput >= 1.0x uftp
 * (-Y none) and >= 1.0x the best peer in every case; CPU s/GB at each receiver <= uftp-gcm's (vmscatter's
 * worst receiver against the mean of uftp-gcm's); sender-link bytes <= 1.05x payload at 1% loss. Framing alone caps a
 * transport below the link: vmscatter carries 8916 payload bytes per 9014-byte frame (98.9%) at MTU 9000
 * and 1416 per 1514 (93.5%) at MTU 1500, where the 95% target is out of reach by construction, and so
 * is 1.05x sender-link bytes (framing alone is 1.069x).
 *
 * Also measured: the unshaped maximum on this lab (vmscatter at a 20 Gbit/s cap, and udpcast without a
 * bit-rate limit): packets/s on the sender's link and payload MB/s at the slowest receiver.
 *
 * Bounded: every process has a deadline (each run max(60 s, 12x the ideal time)) and is killed after it;
 * the whole run stops starting new runs after --budget-min (default 14) minutes. Needs root, ip, tc, nft
 * (lab), and udpcast and uftp for those tools. Traffic stays inside the lab's namespaces.
 */
import type { ChildProcess } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { maxSymbolSize } from '../src/transport/wire-codec.js';
import { parseSize } from '../src/topology/units.js';
import { createLab, findTool, labAvailable, type Lab, type LabHost } from './harness/lab.js';

export type Tool = 'vmscatter' | 'udpcast' | 'uftp' | 'uftp-gcm';
const ALL_TOOLS: readonly Tool[] = ['vmscatter', 'udpcast', 'uftp', 'uftp-gcm'];
/** The peers vmscatter is compared with. */
const BASELINES: readonly Tool[] = ['udpcast', 'uftp', 'uftp-gcm'];

const OBJECT_BYTES = 4 * 2 ** 20;
const SEED = 1;
const SENDER_PORT = 7430;
const RECEIVERS = 3;
const HOSTS = ['src', 'r1', 'r2', 'r3'] as const;
/** Data has started once the sender's link carried this much. */
const START_THRESHOLD_BYTES = 2 ** 20;
const GB = 1e9;
const UDP_EXIT_WAIT_MS = 200;
/** uftp's header per data packet (its pacing counts block + this), measured: 8852-byte packets at -b 8800. */
const UFTP_HEADER_BYTES = 52;
/** Ethernet + IPv4 + UDP headers: what a UDP payload costs more on the link (tbf counts from the MAC header). */
const WIRE_HEADER_BYTES = 14 + 20 + 8;
const PEER = fileURLToPath(new URL('./harness/transport-peer.js', import.meta.url));

// ---------------------------------------------------------------------------------------------------
// Settings

export type Variant =
  | { tool: 'vmscatter'; label: string; rateFactor: number; unshapedRateBits?: number }
  | {
      tool: 'udpcast';
      label: string;
      maxBitrate: string | undefined;
      fullDuplex: boolean;
      rcvbuf: number | undefined;
    }
  | {
      tool: 'uftp' | 'uftp-gcm';
      label: string;
      wireFraction: number;
      blockBelowMtu: number;
      buffers: boolean;
    };

function vmscatterVariant(rateFactor: number): Variant {
  return { tool: 'vmscatter', label: `--rate ${rateFactor} x link`, rateFactor };
}

function udpcastVariant(maxBitrate: string | undefined, fullDuplex: boolean, rcvbuf?: number): Variant {
  const parts = [
    maxBitrate === undefined ? 'no --max-bitrate' : `--max-bitrate ${maxBitrate}`,
    ...(fullDuplex ? ['--full-duplex'] : []),
    ...(rcvbuf === undefined ? [] : [`--rcvbuf ${rcvbuf}`]),
  ];
  return { tool: 'udpcast', label: parts.join(' '), maxBitrate, fullDuplex, rcvbuf };
}

function uftpVariant(
  tool: 'uftp' | 'uftp-gcm',
  wireFraction: number,
  blockBelowMtu: number,
  buffers: boolean,
): Variant {
  const label = `${tool === 'uftp' ? '-Y none' : '-Y aes256-gcm'}, -R ${wireFraction} x link, -b MTU-${blockBelowMtu}${buffers ? ', -B 4 MiB, uftpd -c 20 MiB' : ''}`;
  return { tool, label, wireFraction, blockBelowMtu, buffers };
}

/** Candidate settings per tool, best first: the default run tries the first two, --tune all of them. */
export function candidates(tool: Tool): Variant[] {
  switch (tool) {
    case 'vmscatter':
      return [0.97, 1.0, 0.95, 0.985].map(vmscatterVariant);
    case 'udpcast':
      return [
        udpcastVariant(undefined, false, 4 * 2 ** 20),
        udpcastVariant('950m', false, 4 * 2 ** 20),
        udpcastVariant(undefined, false),
        udpcastVariant('950m', false),
        udpcastVariant('900m', false),
        udpcastVariant('980m', false),
        udpcastVariant('950m', true),
      ];
    case 'uftp':
    case 'uftp-gcm': {
      // Encrypted, uftp needs more room per packet: -b 8800 makes it abort ("double free or
      // corruption") at MTU 9000, 8700 works.
      const below = tool === 'uftp' ? 200 : 300;
      return [
        uftpVariant(tool, 0.97, below, true),
        uftpVariant(tool, 0.97, below, false),
        uftpVariant(tool, 0.95, below, true),
        uftpVariant(tool, 0.99, below, true),
        uftpVariant(tool, 0.95, below, false),
        uftpVariant(tool, 0.99, below, false),
      ];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Results

/** CPU seconds of one process: user (its own code) and system (the kernel, on its behalf). */
export interface CpuTime {
  user: number;
  system: number;
}

export interface RunResult {
  tool: Tool;
  variant: string;
  mtu: number;
  lossPercent: number;
  shaped: boolean;
  verified: boolean;
  error?: string;
  /** Sender start to first payload on its link. */
  setupSeconds: number | undefined;
  /** First payload on the sender's link to the slowest receiver having everything. */
  dataSeconds: number | undefined;
  /** Per receiver, seconds from first payload to done (undefined: not done). */
  receiverSeconds: (number | undefined)[];
  goodputBitsPerSecond: number | undefined;
  wallGoodputBitsPerSecond: number | undefined;
  senderLinkBytes: number;
  senderLinkPackets: number;
  cpuSenderSeconds: number | undefined;
  cpuReceiverSeconds: (number | undefined)[];
  /** The same split into user and system time. */
  cpuSender: CpuTime | undefined;
  cpuReceivers: (CpuTime | undefined)[];
  /** CPU seconds the whole machine spent during the run (all processes, softirq included). */
  machineCpuSeconds: number;
  /** Share of the machine busy just before the run (other people's work). */
  backgroundBusy: number;
  details: Record<string, unknown>;
}

export interface CaseResult {
  lossPercent: number;
  tool: Tool;
  best: RunResult | undefined;
  runs: RunResult[];
}

export interface TargetCheck {
  mtu: number;
  lossPercent: number;
  target: string;
  measured: string;
  pass: boolean | undefined;
}

export interface MtuReport {
  mtu: number;
  framingCeiling: number;
  unshaped: RunResult[];
  cases: CaseResult[];
  targets: TargetCheck[];
}

export interface TransportReport {
  sizeBytes: number;
  rateBitsPerSecond: number;
  tools: Tool[];
  losses: number[];
  repeat: number;
  tuned: boolean;
  cpus: number;
  loadAverage: number[];
  startedAt: string;
  seconds: number;
  skipped: string[];
  mtus: MtuReport[];
  /** CPU s/GB this machine spends making the seeded payload (vmscatter's sender does it once, each receiver again to verify, plus a compare). */
  payloadSynthesisCpuSecondsPerGB: number;
  payloadCompareCpuSecondsPerGB: number;
}

// ---------------------------------------------------------------------------------------------------
// Small helpers

const now = (): number => performance.now();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

/** Bits per second from '1gbit', '1Gbit', '800Mbit/s', '100mbps'. */
export function parseLinkRate(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit|bit\/s|bps)$/i.exec(text.trim());
  if (match === null) return undefined;
  const factor = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 }[(match[2] ?? '').toLowerCase()];
  return factor === undefined ? undefined : Math.round(Number(match[1]) * factor);
}

/** Object i of the seeded payload, exactly as bench/harness/transport-peer.ts makes it. */
export function payloadObject(seed: number, index: number, length: number): Uint8Array {
  const key = createHash('sha256').update(`vmscatter transport payload ${seed}`).digest();
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(index, 0);
  return new Uint8Array(createCipheriv('aes-256-ctr', key, iv).update(Buffer.alloc(length)));
}

/** Writes the payload stream to a file and returns its SHA-256 (hex). */
function writePayload(path: string, total: number): string {
  const hash = createHash('sha256');
  const fd = openSync(path, 'w');
  try {
    for (let done = 0, index = 0; done < total; done += OBJECT_BYTES, index++) {
      const bytes = payloadObject(SEED, index, Math.min(OBJECT_BYTES, total - done));
      hash.update(bytes);
      writeSync(fd, bytes);
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

async function sha256File(path: string): Promise<string | undefined> {
  if (!existsSync(path)) return undefined;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 2 ** 20 }))
    hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function fileSize(path: string): number | undefined {
  try {
    return statSync(path).size;
  } catch {
    return undefined;
  }
}

/** Busy and total CPU ticks of the whole machine (/proc/stat). */
function machineTicks(): { busy: number; total: number } {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '')
    .trim()
    .split(/\s+/)
    .slice(1, 9)
    .map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux
/** Above this share of the machine busy before a run, wait a little for it to calm down. */
const QUIET_BUSY = 0.15;

async function backgroundBusy(ms: number): Promise<number> {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  return b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0;
}

function tail(text: string, chars = 1500): string {
  const marker = text.lastIndexOf('\n@@cpu');
  const t = (marker < 0 ? text : text.slice(0, marker)).trim();
  return t.length > chars ? `…${t.slice(-chars)}` : t;
}

/** Children of a process, recursively (Linux /proc/<pid>/task/<tid>/children). */
function descendants(pid: number): number[] {
  const found: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return found;
  }
  for (const task of tasks) {
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8');
    } catch {
      continue;
    }
    for (const child of text.trim().split(/\s+/).filter(Boolean).map(Number)) {
      found.push(child, ...descendants(child));
    }
  }
  return found;
}

function signalPids(pids: readonly number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // gone already
    }
  }
}

/** The children's user and system seconds that bash's `times` printed after our marker. */
function parseTimes(stderr: string): CpuTime | undefined {
  const at = stderr.lastIndexOf('@@cpu');
  if (at < 0) return undefined;
  const lines = [...stderr.slice(at).matchAll(/(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s/g)];
  const children = lines[1];
  if (children === undefined) return undefined;
  const seconds = (m: string | undefined, s: string | undefined): number => Number(m) * 60 + Number(s);
  return { user: seconds(children[1], children[2]), system: seconds(children[3], children[4]) };
}

const cpuTotal = (t: CpuTime | undefined): number | undefined =>
  t === undefined ? undefined : t.user + t.system;

const CPU_WRAPPER = '"$@"; rc=$?; printf "\\n@@cpu\\n" >&2; times >&2; exit $rc';

// ---------------------------------------------------------------------------------------------------
// Processes

interface Tracked {
  readonly child: ChildProcess;
  readonly pid: number;
  stdout: string;
  stderr: string;
  /** When `done` first matched (performance.now()). */
  doneAt: number | undefined;
  exitAt: number | undefined;
  code: number | null | undefined;
  readonly exited: Promise<void>;
  /** Resolves on the done pattern or on exit. */
  readonly settled: Promise<void>;
}

const OUTPUT_LIMIT = 1024 * 1024;

function track(child: ChildProcess, done?: { stream: 'stdout' | 'stderr'; pattern: RegExp }): Tracked {
  let settle: () => void = () => {};
  const settled = new Promise<void>((resolve) => (settle = resolve));
  const t: Tracked = {
    child,
    pid: child.pid ?? -1,
    stdout: '',
    stderr: '',
    doneAt: undefined,
    exitAt: undefined,
    code: undefined,
    exited: new Promise<void>((resolve) => {
      child.once('close', (code) => {
        t.exitAt = now();
        t.code = code;
        settle();
        resolve();
      });
      child.once('error', (error) => {
        t.stderr += `\n${error.message}`;
        t.exitAt = now();
        t.code = null;
        settle();
        resolve();
      });
    }),
    settled,
  };
  const check = (stream: 'stdout' | 'stderr'): void => {
    if (done === undefined || t.doneAt !== undefined || done.stream !== stream) return;
    if (done.pattern.test(t[stream])) {
      t.doneAt = now();
      settle();
    }
  };
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    t.stdout = (t.stdout + chunk).slice(-OUTPUT_LIMIT);
    check('stdout');
  });
  child.stderr?.on('data', (chunk: string) => {
    t.stderr = (t.stderr + chunk).slice(-OUTPUT_LIMIT);
    check('stderr');
  });
  return t;
}

/** Waits for all promises or until the deadline (performance.now() ms); true when all settled. */
async function allBy(promises: readonly Promise<unknown>[], deadline: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, deadline - now()));
  });
  try {
    return await Promise.race([Promise.all(promises).then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves when every receiver settled, or a grace period after the sender exited (a failed sender ends the run). */
async function receiversOrSenderGone(
  rx: readonly Tracked[],
  tx: Tracked,
  deadline: number,
  graceMs: number,
): Promise<void> {
  const senderGone = tx.exited.then(() =>
    allBy(
      rx.map((r) => r.settled),
      Math.min(deadline, now() + graceMs),
    ),
  );
  await allBy([Promise.race([Promise.all(rx.map((r) => r.settled)), senderGone])], deadline);
}

/** Kills a tracked process and everything it started, then waits (briefly) for it to be reaped. */
async function stop(t: Tracked, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (t.exitAt !== undefined) return;
  signalPids([...descendants(t.pid), t.pid], signal);
  await allBy([t.exited], now() + 3000);
  if (t.exitAt === undefined) signalPids([...descendants(t.pid), t.pid], 'SIGKILL');
}

// ---------------------------------------------------------------------------------------------------
// Looking into a host's namespace from here: /proc/<pid>/net/* of a process parked in it

interface Host {
  readonly lab: LabHost;
  /** A `sleep` in the host's namespace: /proc/<keeper>/net/ shows the namespace's view. */
  readonly keeper: number;
}

async function parkKeeper(lab: Lab, host: LabHost): Promise<Host> {
  const child = lab.spawn(host, 'sleep', ['7200'], { stdio: 'ignore' });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`cannot start a process in ${host.name}`);
  const ours = readlinkSync('/proc/self/ns/net');
  const deadline = now() + 10_000;
  for (;;) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) !== ours) return { lab: host, keeper: pid };
    } catch {
      // not there yet
    }
    if (now() > deadline) throw new Error(`the keeper in ${host.name} never entered its namespace`);
    await sleep(5);
  }
}

/** e0's counters inside the host's namespace. */
function e0Counters(host: Host): { txBytes: number; txPackets: number; rxBytes: number } {
  const text = readFileSync(`/proc/${host.keeper}/net/dev`, 'utf8');
  const line = text.split('\n').find((l) => l.trim().startsWith(`${host.lab.interface}:`));
  const f = (line ?? '').split(':')[1]?.trim().split(/\s+/).map(Number) ?? [];
  return { rxBytes: f[0] ?? 0, txBytes: f[8] ?? 0, txPackets: f[9] ?? 0 };
}

/** Whether a multicast group is joined on e0 in the host's namespace. */
function groupJoined(host: Host, group: string): boolean {
  const hex = group
    .split('.')
    .reverse()
    .map((o) => Number(o).toString(16).toUpperCase().padStart(2, '0'))
    .join('');
  return readFileSync(`/proc/${host.keeper}/net/igmp`, 'utf8').includes(hex);
}

/** Whether some UDP socket is bound to the port in the host's namespace. */
function udpBound(host: Host, port: number): boolean {
  const suffix = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync(`/proc/${host.keeper}/net/udp`, 'utf8')
    .split('\n')
    .some((line) => line.trim().split(/\s+/)[1]?.endsWith(suffix) === true);
}

async function until(
  what: string,
  check: () => boolean,
  timeoutMs: number,
  failed?: () => string | undefined,
): Promise<void> {
  const deadline = now() + timeoutMs;
  while (!check()) {
    const why = failed?.();
    if (why !== undefined) throw new Error(`${what}: ${why}`);
    if (now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(5);
  }
}

/** Samples the sender's e0 every millisecond; notes when data started and keeps a coarse profile. */
function startSampler(
  host: Host,
  rateBits: number | undefined,
): {
  stop(): void;
  startAt(): number | undefined;
  profile(from: number, to: number, stepMs: number): number[];
} {
  const base = e0Counters(host).txBytes;
  let crossedAt: number | undefined;
  const points: [number, number][] = [[now(), base]];
  const timer = setInterval(() => {
    let tx = 0;
    try {
      tx = e0Counters(host).txBytes;
    } catch {
      return;
    }
    const t = now();
    if (crossedAt === undefined && tx - base >= START_THRESHOLD_BYTES) crossedAt = t;
    if (t - points[points.length - 1]![0] >= 10) points.push([t, tx]);
  }, 1);
  /** Bytes sent by time t (linear between samples). */
  const at = (t: number): number => {
    let lo = 0;
    let hi = points.length - 1;
    if (t <= points[0]![0]) return points[0]![1];
    if (t >= points[hi]![0]) return points[hi]![1];
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (points[mid]![0] <= t) lo = mid;
      else hi = mid;
    }
    const [t0, b0] = points[lo]!;
    const [t1, b1] = points[hi]!;
    return b0 + ((b1 - b0) * (t - t0)) / Math.max(1e-9, t1 - t0);
  };
  return {
    stop: () => clearInterval(timer),
    // Data started about (1 MiB at the link rate) before the counter passed the threshold.
    startAt: () =>
      crossedAt === undefined
        ? undefined
        : crossedAt - (rateBits === undefined ? 0 : ((START_THRESHOLD_BYTES * 8) / rateBits) * 1000),
    /** Mbit/s on the sender's link in steps of stepMs from `from` to `to`. */
    profile: (from, to, stepMs) => {
      const rates: number[] = [];
      for (let t = from; t < to; t += stepMs) {
        const end = Math.min(to, t + stepMs);
        rates.push(Math.round(((at(end) - at(t)) * 8) / ((end - t) / 1000) / 1e6));
      }
      return rates;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// One run

interface Context {
  lab: Lab;
  hosts: Host[];
  mtu: number;
  sizeBytes: number;
  rateBits: number;
  shaped: boolean;
  lossPercent: number;
  workDir: string;
  payloadPath: string;
  payloadSha: string;
  runIndex: number;
  quietWaitMs: number;
}

interface ToolOutcome {
  setupStart: number;
  /** Per receiver: when it had everything (performance.now()), or undefined. */
  doneAt: (number | undefined)[];
  verified: boolean;
  error?: string;
  cpuSender: CpuTime | undefined;
  cpuReceivers: (CpuTime | undefined)[];
  details: Record<string, unknown>;
}

function runDeadlineMs(ctx: Context): number {
  const ideal = ((ctx.sizeBytes * 8) / ctx.rateBits) * 1000;
  return Math.max(60_000, 12 * ideal);
}

/** Waits (up to quietWaitMs) for other work on the machine to calm down; returns the busy share seen last. */
async function awaitQuiet(quietWaitMs: number): Promise<number> {
  const deadline = now() + quietWaitMs;
  let busy = await backgroundBusy(500);
  while (busy > QUIET_BUSY && now() < deadline) busy = await backgroundBusy(1000);
  return busy;
}

async function runOne(ctx: Context, variant: Variant): Promise<RunResult> {
  const sender = ctx.hosts[0]!;
  const background = await awaitQuiet(ctx.quietWaitMs);
  const before = await ctx.lab.counters(sender.lab);
  const ticksBefore = machineTicks();
  const sampler = startSampler(sender, ctx.shaped ? ctx.rateBits : undefined);
  let outcome: ToolOutcome;
  try {
    if (variant.tool === 'vmscatter') outcome = await runVmscatter(ctx, variant);
    else if (variant.tool === 'udpcast') outcome = await runUdpcast(ctx, variant);
    else outcome = await runUftp(ctx, variant);
  } catch (error) {
    outcome = {
      setupStart: now(),
      doneAt: [],
      verified: false,
      error: (error as Error).message,
      cpuSender: undefined,
      cpuReceivers: [],
      details: {},
    };
  } finally {
    sampler.stop();
  }
  const ticksAfter = machineTicks();
  const after = await ctx.lab.counters(sender.lab);
  const start = sampler.startAt();
  const done = outcome.doneAt;
  const allDone = done.length === RECEIVERS && done.every((t) => t !== undefined);
  const last = allDone ? Math.max(...(done as number[])) : undefined;
  const dataSeconds = start !== undefined && last !== undefined ? (last - start) / 1000 : undefined;
  const bits = ctx.sizeBytes * 8;
  const result: RunResult = {
    tool: variant.tool,
    variant: variant.label,
    mtu: ctx.mtu,
    lossPercent: ctx.lossPercent,
    shaped: ctx.shaped,
    verified: outcome.verified && allDone,
    setupSeconds: start === undefined ? undefined : (start - outcome.setupStart) / 1000,
    dataSeconds,
    receiverSeconds: done.map((t) =>
      t === undefined || start === undefined ? undefined : (t - start) / 1000,
    ),
    goodputBitsPerSecond: dataSeconds === undefined || dataSeconds <= 0 ? undefined : bits / dataSeconds,
    wallGoodputBitsPerSecond: last === undefined ? undefined : bits / ((last - outcome.setupStart) / 1000),
    senderLinkBytes: after.txBytes - before.txBytes,
    senderLinkPackets: after.txPackets - before.txPackets,
    cpuSenderSeconds: cpuTotal(outcome.cpuSender),
    cpuReceiverSeconds: outcome.cpuReceivers.map(cpuTotal),
    cpuSender: outcome.cpuSender,
    cpuReceivers: outcome.cpuReceivers,
    machineCpuSeconds: (ticksAfter.busy - ticksBefore.busy) / TICKS_PER_SECOND,
    backgroundBusy: background,
    details: {
      ...outcome.details,
      senderLinkMbitPer100ms:
        start !== undefined && last !== undefined ? sampler.profile(start, last, 100) : undefined,
    },
  };
  if (outcome.error !== undefined) result.error = outcome.error;
  return result;
}

function peerRate(bits: number): string {
  return `${Math.round(bits / 1000)}kbit`;
}

async function runVmscatter(ctx: Context, v: Extract<Variant, { tool: 'vmscatter' }>): Promise<ToolOutcome> {
  const [src, ...receivers] = ctx.hosts as [Host, ...Host[]];
  const deadlineMs = runDeadlineMs(ctx);
  const groupAddress = `239.255.77.${1 + (ctx.runIndex % 250)}`;
  const group = `${groupAddress}:${7500 + (ctx.runIndex % 400)}`;
  const env = { ...process.env, VMS_SESSION_KEY: randomBytes(32).toString('hex') };
  const rateBits = v.unshapedRateBits ?? Math.round(ctx.rateBits * v.rateFactor);
  const common = [
    '--group',
    group,
    '--size',
    `${ctx.sizeBytes}`,
    '--object',
    `${OBJECT_BYTES}`,
    '--mtu',
    `${ctx.mtu}`,
    '--seed',
    `${SEED}`,
    '--timeout-ms',
    `${deadlineMs + 10_000}`,
  ];
  const rx = receivers.map((host, i) =>
    track(
      ctx.lab.spawn(
        host.lab,
        process.execPath,
        [
          PEER,
          'receive',
          ...common,
          '--iface',
          host.lab.address,
          '--id',
          `${i + 1}`,
          '--sender',
          `${src.lab.address}:${SENDER_PORT}`,
        ],
        { env, stdio: ['ignore', 'pipe', 'pipe'] },
      ),
      // The moment its session completed (transport-peer.ts).
      { stream: 'stderr', pattern: /"event":"received","state":"complete"/ },
    ),
  );
  let tx: Tracked | undefined;
  try {
    for (const [i, host] of receivers.entries()) {
      await until(
        `vmscatter receiver ${i + 1} joining ${groupAddress}`,
        () => groupJoined(host, groupAddress),
        20_000,
        () => (rx[i]!.exitAt !== undefined ? `exited: ${tail(rx[i]!.stderr)}` : undefined),
      );
    }
    const setupStart = now();
    tx = track(
      ctx.lab.spawn(
        src.lab,
        process.execPath,
        [
          PEER,
          'send',
          ...common,
          '--iface',
          src.lab.address,
          '--port',
          `${SENDER_PORT}`,
          '--receivers',
          `${RECEIVERS}`,
          '--rate',
          peerRate(rateBits),
        ],
        { env, stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    const deadline = now() + deadlineMs;
    // A receiver gives up 15 s after the sender goes silent: wait that long once the sender is gone.
    await receiversOrSenderGone(rx, tx, deadline, 17_000);
    await allBy([tx.exited, ...rx.map((r) => r.exited)], Math.min(deadline, now() + 20_000));
    const parse = (t: Tracked): Record<string, unknown> | undefined => {
      try {
        return JSON.parse(t.stdout.trim().split('\n').pop() ?? '') as Record<string, unknown>;
      } catch {
        return undefined;
      }
    };
    const senderReport = parse(tx);
    const receiverReports = rx.map(parse);
    const verified = rx.every((r, i) => r.code === 0 && receiverReports[i]?.exact === true);
    const problems = [
      ...(tx.code === 0 ? [] : [`sender exit ${String(tx.code)}: ${tail(tx.stderr, 600)}`]),
      ...rx.flatMap((r, i) =>
        r.code === 0
          ? []
          : [`receiver ${i + 1} exit ${String(r.code)}: ${tail(r.stdout, 400)} ${tail(r.stderr, 400)}`],
      ),
    ];
    return {
      setupStart,
      doneAt: rx.map((r, i) => (receiverReports[i]?.exact === true ? r.doneAt : undefined)),
      verified,
      ...(problems.length > 0 ? { error: problems.join(' | ') } : {}),
      cpuSender: peerCpu(senderReport),
      cpuReceivers: receiverReports.map(peerCpu),
      details: {
        peerRate: peerRate(rateBits),
        sender: senderReport ?? { stdout: tail(tx.stdout), stderr: tail(tx.stderr) },
        ...(senderReport !== undefined && tx.stderr.trim() !== ''
          ? { senderStderr: tail(tx.stderr, 4000) }
          : {}),
        receivers: receiverReports.map(
          (r, i) => r ?? { stdout: tail(rx[i]!.stdout), stderr: tail(rx[i]!.stderr) },
        ),
      },
    };
  } finally {
    await Promise.all([...rx, ...(tx === undefined ? [] : [tx])].map((t) => stop(t)));
  }
}

/** A transport-peer report's CPU (the transport's own; the harness's is apart, see transport-peer.ts). */
function peerCpu(report: Record<string, unknown> | undefined): CpuTime | undefined {
  const user = report?.cpuUserSeconds;
  const system = report?.cpuSystemSeconds;
  return typeof user === 'number' && typeof system === 'number' ? { user, system } : undefined;
}

async function runUdpcast(ctx: Context, v: Extract<Variant, { tool: 'udpcast' }>): Promise<ToolOutcome> {
  const [src, ...receivers] = ctx.hosts as [Host, ...Host[]];
  const bash = needTool('bash');
  const deadlineMs = runDeadlineMs(ctx);
  const portbase = 9000 + 2 * (ctx.runIndex % 200);
  const files = receivers.map((_, i) => join(ctx.workDir, `udpcast-r${i + 1}.bin`));
  const rx = receivers.map((host, i) =>
    track(
      ctx.lab.spawn(
        host.lab,
        bash,
        [
          '-c',
          CPU_WRAPPER,
          'cpu',
          needTool('udp-receiver'),
          '--interface',
          host.lab.interface,
          '--nokbd',
          '--file',
          files[i]!,
          '--portbase',
          `${portbase}`,
          '--start-timeout',
          '30',
          '--receive-timeout',
          '15',
          '--exit-wait',
          `${UDP_EXIT_WAIT_MS}`,
          ...(v.rcvbuf === undefined ? [] : ['--rcvbuf', `${v.rcvbuf}`]),
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    ),
  );
  let tx: Tracked | undefined;
  try {
    for (const [i, host] of receivers.entries()) {
      await until(
        `udp-receiver ${i + 1} listening`,
        () => udpBound(host, portbase),
        20_000,
        () => (rx[i]!.exitAt !== undefined ? `exited: ${tail(rx[i]!.stderr)}` : undefined),
      );
    }
    const setupStart = now();
    tx = track(
      ctx.lab.spawn(
        src.lab,
        bash,
        [
          '-c',
          CPU_WRAPPER,
          'cpu',
          needTool('udp-sender'),
          '--interface',
          src.lab.interface,
          '--nokbd',
          '--min-receivers',
          `${RECEIVERS}`,
          '--start-timeout',
          '30',
          '--portbase',
          `${portbase}`,
          '--file',
          ctx.payloadPath,
          ...(v.maxBitrate === undefined ? [] : ['--max-bitrate', v.maxBitrate]),
          ...(v.fullDuplex ? ['--full-duplex'] : []),
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    const deadline = now() + deadlineMs;
    await allBy([tx.exited], deadline);
    // udp-sender exits once every receiver acknowledged the end (or was dropped).
    await allBy(
      rx.map((r) => r.exited),
      Math.min(deadline, now() + 5_000),
    );
    const doneAt = rx.map((r) =>
      r.code === 0 && r.exitAt !== undefined ? r.exitAt - UDP_EXIT_WAIT_MS : undefined,
    );
    const hashes = await verifyFiles(ctx, files);
    const verified = hashes.every((h) => h === ctx.payloadSha);
    const retransmits = /re-xmits=0*(\d+)\s*\(\s*([\d.]+)%\)[^\n\r]*\s*Transfer complete/.exec(tx.stderr);
    const problems = [
      ...(tx.code === 0 ? [] : [`udp-sender exit ${String(tx.code)}: ${tail(tx.stderr, 600)}`]),
      ...rx.flatMap((r, i) =>
        r.code === 0 ? [] : [`udp-receiver ${i + 1} exit ${String(r.code)}: ${tail(r.stderr, 400)}`],
      ),
      ...hashMismatches(hashes, ctx.payloadSha),
    ];
    return {
      setupStart,
      doneAt,
      verified,
      ...(problems.length > 0 ? { error: problems.join(' | ') } : {}),
      cpuSender: parseTimes(tx.stderr),
      cpuReceivers: rx.map((r) => parseTimes(r.stderr)),
      details: {
        retransmittedBlocks: retransmits === null ? undefined : Number(retransmits[1]),
        retransmittedPercent: retransmits === null ? undefined : Number(retransmits[2]),
      },
    };
  } finally {
    await Promise.all([...rx, ...(tx === undefined ? [] : [tx])].map((t) => stop(t)));
    for (const f of files) rmSync(f, { force: true });
  }
}

async function runUftp(
  ctx: Context,
  v: Extract<Variant, { tool: 'uftp' | 'uftp-gcm' }>,
): Promise<ToolOutcome> {
  const [src, ...receivers] = ctx.hosts as [Host, ...Host[]];
  const bash = needTool('bash');
  const deadlineMs = runDeadlineMs(ctx);
  const port = 1044 + (ctx.runIndex % 200);
  const publicGroup = `230.4.4.${1 + (ctx.runIndex % 250)}`;
  const privateGroup = `230.5.5.${1 + (ctx.runIndex % 250)}`;
  const block = ctx.mtu - v.blockBelowMtu;
  // uftp's -R is in Kbps of 1024-byte KB, counting block + header per packet; the link carries
  // Ethernet/IP/UDP headers on top.
  const packetBytes = block + UFTP_HEADER_BYTES;
  const uftpBytesPerSecond =
    (ctx.rateBits / 8) * v.wireFraction * (packetBytes / (packetBytes + WIRE_HEADER_BYTES));
  const rateKbps = Math.floor(uftpBytesPerSecond / 128);
  const dirs = receivers.map((_, i) => join(ctx.workDir, `uftp-r${i + 1}`));
  for (const d of dirs) mkdirSync(d, { recursive: true });
  const files = dirs.map((d) => join(d, 'payload.bin'));
  const buffers = v.buffers ? ['-B', `${4 * 2 ** 20}`] : [];
  const rx = receivers.map((host, i) =>
    track(
      ctx.lab.spawn(
        host.lab,
        bash,
        [
          '-c',
          CPU_WRAPPER,
          'cpu',
          needTool('uftpd'),
          '-d',
          '-I',
          host.lab.interface,
          '-D',
          dirs[i]!,
          '-F',
          '@LOG',
          '-q',
          '-x',
          '1',
          '-p',
          `${port}`,
          '-M',
          publicGroup,
          ...buffers,
          ...(v.buffers ? ['-c', `${20 * 2 ** 20}`] : []),
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
      { stream: 'stderr', pattern: /RESULT;[^\n]*;(copied|copy|overwrite)/ },
    ),
  );
  let tx: Tracked | undefined;
  try {
    for (const [i, host] of receivers.entries()) {
      await until(
        `uftpd ${i + 1} joining ${publicGroup}`,
        () => groupJoined(host, publicGroup),
        20_000,
        () => (rx[i]!.exitAt !== undefined ? `exited: ${tail(rx[i]!.stderr)}` : undefined),
      );
    }
    const clientIds = receivers.map(
      (h) =>
        `0x${h.lab.address
          .split('.')
          .map((o) => Number(o).toString(16).toUpperCase().padStart(2, '0'))
          .join('')}`,
    );
    const setupStart = now();
    tx = track(
      ctx.lab.spawn(
        src.lab,
        bash,
        [
          '-c',
          CPU_WRAPPER,
          'cpu',
          needTool('uftp'),
          '-I',
          src.lab.interface,
          // uftp's own encryption: AES-256-GCM per packet, keys from an ECDH exchange signed with RSA (uftpd's default key type; its keys made per run).
          ...(v.tool === 'uftp' ? ['-Y', 'none'] : ['-Y', 'aes256-gcm', '-h', 'sha256', '-e', 'ecdh_rsa']),
          '-p',
          `${port}`,
          '-M',
          publicGroup,
          '-P',
          privateGroup,
          '-H',
          clientIds.join(','),
          '-R',
          `${rateKbps}`,
          '-b',
          `${block}`,
          ...buffers,
          '-x',
          '1',
          '-T',
          '-D',
          'payload.bin',
          ctx.payloadPath,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    const deadline = now() + deadlineMs;
    await receiversOrSenderGone(rx, tx, deadline, 3_000);
    await allBy([tx.exited], Math.min(deadline, now() + 20_000));
    // uftpd is a daemon: stop it (the uftpd under the bash wrapper, so bash still reports its CPU).
    await Promise.all(
      rx.map(async (r) => {
        signalPids(descendants(r.pid), 'SIGTERM');
        if (!(await allBy([r.exited], now() + 5000))) await stop(r);
      }),
    );
    const doneAt = rx.map((r) => r.doneAt);
    const hashes = await verifyFiles(ctx, files);
    const verified = hashes.every((h) => h === ctx.payloadSha);
    const problems = [
      ...(tx.code === 0 ? [] : [`uftp exit ${String(tx.code)}: ${tail(tx.stderr, 600)}`]),
      ...rx.flatMap((r, i) =>
        r.doneAt !== undefined ? [] : [`uftpd ${i + 1} reported no result: ${tail(r.stderr, 400)}`],
      ),
      ...hashMismatches(hashes, ctx.payloadSha),
    ];
    return {
      setupStart,
      doneAt,
      verified,
      ...(problems.length > 0 ? { error: problems.join(' | ') } : {}),
      cpuSender: parseTimes(tx.stderr),
      cpuReceivers: rx.map((r) => parseTimes(r.stderr)),
      details: { rateKbps, block, passes: (tx.stderr.match(/Starting pass/g) ?? []).length || undefined },
    };
  } finally {
    await Promise.all([...rx, ...(tx === undefined ? [] : [tx])].map((t) => stop(t)));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** One problem line per receiver whose file's SHA-256 is not the payload's. */
function hashMismatches(hashes: readonly (string | undefined)[], expected: string): string[] {
  return hashes.flatMap((h, i) =>
    h === expected ? [] : [`receiver ${i + 1}: SHA-256 ${h ?? 'no file'} differs`],
  );
}

async function verifyFiles(ctx: Context, files: readonly string[]): Promise<(string | undefined)[]> {
  const hashes: (string | undefined)[] = [];
  for (const f of files) {
    hashes.push(fileSize(f) === ctx.sizeBytes ? await sha256File(f) : undefined);
  }
  return hashes;
}

function needTool(name: string): string {
  const path = findTool(name);
  if (path === undefined) throw new Error(`'${name}' not found (Debian: udpcast, uftp)`);
  return path;
}

// ---------------------------------------------------------------------------------------------------
// Scoring and printing

function pickBest(runs: readonly RunResult[]): RunResult | undefined {
  const good = runs.filter((r) => r.verified && r.goodputBitsPerSecond !== undefined);
  if (good.length === 0) return runs[0];
  return good.reduce((a, b) => (b.goodputBitsPerSecond! > a.goodputBitsPerSecond! ? b : a));
}

/** Per variant the median of its verified runs (a failed run only when none verified), then the fastest variant. */
function bestOfVariants(runs: readonly RunResult[]): RunResult | undefined {
  const byVariant = new Map<string, RunResult[]>();
  for (const r of runs) byVariant.set(r.variant, [...(byVariant.get(r.variant) ?? []), r]);
  const medians: RunResult[] = [];
  for (const list of byVariant.values()) {
    const verified = list.filter((r) => r.verified).sort((a, b) => score(a) - score(b));
    medians.push(verified.length > 0 ? verified[Math.floor((verified.length - 1) / 2)]! : list[0]!);
  }
  return pickBest(medians);
}

function score(r: RunResult): number {
  return r.verified ? (r.goodputBitsPerSecond ?? 0) : 0;
}

function baselineBest(cases: readonly CaseResult[], loss: number): RunResult | undefined {
  const bases = cases
    .filter((c) => c.lossPercent === loss && c.tool !== 'vmscatter')
    .map((c) => c.best)
    .filter((r): r is RunResult => r !== undefined && r.verified);
  return bases.length === 0 ? undefined : bases.reduce((a, b) => (score(b) > score(a) ? b : a));
}

/** A verified run's figure for a tool in a case, or undefined. */
function caseBest(cases: readonly CaseResult[], loss: number, tool: Tool): RunResult | undefined {
  const best = cases.find((c) => c.lossPercent === loss && c.tool === tool)?.best;
  return best?.verified === true ? best : undefined;
}

/** CPU seconds per GB of payload. */
const perGB = (seconds: number | undefined, sizeBytes: number): number | undefined =>
  seconds === undefined ? undefined : seconds / (sizeBytes / GB);

function maxKnown(values: readonly (number | undefined)[]): number | undefined {
  const known = values.filter((v): v is number => v !== undefined);
  return known.length === 0 ? undefined : Math.max(...known);
}

function checkTargets(report: MtuReport, rateBits: number, sizeBytes: number): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const losses = [...new Set(report.cases.map((c) => c.lossPercent))];
  for (const loss of losses) {
    const ours = report.cases.find((c) => c.lossPercent === loss && c.tool === 'vmscatter')?.best;
    if (ours === undefined) continue;
    const check = (target: string, measured: string, pass: boolean | undefined): void => {
      checks.push({ mtu: report.mtu, lossPercent: loss, target, measured, pass });
    };
    const goodput = ours.verified ? ours.goodputBitsPerSecond : undefined;
    const share = goodput === undefined ? undefined : goodput / rateBits;
    const need = loss === 0 ? 0.95 : 0.9;
    check(
      `goodput >= ${need * 100}% of link`,
      share === undefined ? 'not verified' : `${(share * 100).toFixed(1)}%`,
      share === undefined ? false : share >= need,
    );
    const uftp = caseBest(report.cases, loss, 'uftp');
    if (uftp !== undefined) {
      const ratio = goodput === undefined ? 0 : goodput / score(uftp);
      check('goodput >= 1.0x uftp (-Y none)', `${ratio.toFixed(2)}x`, ratio >= 1.0);
    }
    const base = baselineBest(report.cases, loss);
    if (base !== undefined) {
      const ratio = goodput === undefined ? 0 : goodput / score(base);
      check(`goodput >= 1.0x the best peer (${base.tool})`, `${ratio.toFixed(2)}x`, ratio >= 1.0);
    }
    const gcm = caseBest(report.cases, loss, 'uftp-gcm');
    if (gcm !== undefined) {
      const ourWorst = ours.verified ? maxKnown(ours.cpuReceiverSeconds) : undefined;
      const theirs = mean(gcm.cpuReceiverSeconds);
      check(
        "CPU s/GB at each receiver <= uftp-gcm's (mean of its receivers)",
        ourWorst === undefined || theirs === undefined
          ? 'not measured'
          : `${fmt(perGB(ourWorst, sizeBytes), 2)} (worst) vs ${fmt(perGB(theirs, sizeBytes), 2)}`,
        ourWorst === undefined || theirs === undefined ? false : ourWorst <= theirs,
      );
    }
    if (loss > 0) {
      const overhead = ours.senderLinkBytes / sizeBytes;
      check(
        'sender-link bytes <= 1.05x payload',
        ours.verified ? `${overhead.toFixed(3)}x` : 'not verified',
        ours.verified && overhead <= 1.05,
      );
    }
  }
  return checks;
}

const fmt = (value: number | undefined, digits = 1): string =>
  value === undefined || !Number.isFinite(value) ? '-' : value.toFixed(digits);
const mean = (values: readonly (number | undefined)[]): number | undefined => {
  const known = values.filter((v): v is number => v !== undefined);
  return known.length === 0 ? undefined : known.reduce((a, b) => a + b, 0) / known.length;
};

function table(rows: readonly string[][]): string {
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => (r[col] ?? '').length)));
  return rows
    .map((r) =>
      r.map((cell, col) => (col < 2 ? cell.padEnd(widths[col]!) : cell.padStart(widths[col]!))).join('  '),
    )
    .join('\n');
}

/** "total (user+system)" in s/GB. */
function cpuCell(t: CpuTime | undefined, sizeBytes: number): string {
  if (t === undefined) return '-';
  const g = (x: number): string => fmt(perGB(x, sizeBytes), 2);
  return `${g(t.user + t.system)} (${g(t.user)}+${g(t.system)})`;
}

export function printReport(report: TransportReport): void {
  const size = report.sizeBytes;
  const lines: string[] = [];
  lines.push(
    `transport: 1 sender -> ${RECEIVERS} receivers, ${(size / 2 ** 20).toFixed(0)} MiB, links ${(report.rateBitsPerSecond / 1e6).toFixed(0)} Mbit/s each way, ${report.cpus} CPUs, load ${report.loadAverage.map((l) => l.toFixed(2)).join(' ')} at start, ${report.seconds.toFixed(0)} s`,
  );
  for (const m of report.mtus) {
    lines.push(
      '',
      `MTU ${m.mtu} (vmscatter framing ceiling ${(m.framingCeiling * 100).toFixed(1)}% of the link)`,
    );
    const rows: string[][] = [
      [
        'loss',
        'tool',
        'goodput Mbit/s',
        '% link',
        'vs uftp',
        'vs best',
        'data s',
        'setup s',
        'link B/payload',
        'CPU s/GB sender (usr+sys)',
        'CPU s/GB each receiver',
        'rcv usr+sys',
        'bg busy',
        'verified',
      ],
    ];
    for (const c of m.cases) {
      const r = c.best;
      if (r === undefined) continue;
      const base = baselineBest(m.cases, c.lossPercent);
      const uftp = caseBest(m.cases, c.lossPercent, 'uftp');
      const g = r.verified ? r.goodputBitsPerSecond : undefined;
      const rcvUser = mean(r.cpuReceivers.map((t) => t?.user));
      const rcvSystem = mean(r.cpuReceivers.map((t) => t?.system));
      rows.push([
        `${c.lossPercent}%`,
        c.tool,
        fmt(g === undefined ? undefined : g / 1e6, 0),
        fmt(g === undefined ? undefined : (g / report.rateBitsPerSecond) * 100),
        uftp === undefined || g === undefined ? '-' : `${(g / score(uftp)).toFixed(2)}x`,
        base === undefined || g === undefined ? '-' : `${(g / score(base)).toFixed(2)}x`,
        fmt(r.dataSeconds, 2),
        fmt(r.setupSeconds, 2),
        fmt(r.senderLinkBytes / size, 3),
        cpuCell(r.cpuSender, size),
        r.cpuReceiverSeconds.map((x) => fmt(perGB(x, size), 2)).join('/') || '-',
        rcvUser === undefined || rcvSystem === undefined
          ? '-'
          : `${fmt(perGB(rcvUser, size), 2)}+${fmt(perGB(rcvSystem, size), 2)}`,
        `${(r.backgroundBusy * 100).toFixed(0)}%`,
        r.verified ? 'yes' : 'NO',
      ]);
    }
    lines.push(table(rows));
    lines.push('settings kept:');
    for (const c of m.cases) {
      if (c.best === undefined) continue;
      const tried =
        c.runs.length > 1
          ? ` (best of ${c.runs.length} runs: ${[...new Set(c.runs.map((r) => r.variant))].join('; ')})`
          : '';
      lines.push(`  ${c.lossPercent}% ${c.tool}: ${c.best.variant}${tried}`);
      for (const r of c.runs)
        if (r.error !== undefined) lines.push(`    ! ${r.variant}: ${r.error.slice(0, 600)}`);
    }
    if (m.unshaped.length > 0) {
      lines.push('unshaped maximum (no tbf, 0% loss):');
      for (const r of m.unshaped) {
        const pps = r.dataSeconds === undefined ? undefined : r.senderLinkPackets / r.dataSeconds;
        const mbs = r.dataSeconds === undefined ? undefined : size / r.dataSeconds / 1e6;
        lines.push(
          `  ${r.tool} (${r.variant}): ${fmt(pps === undefined ? undefined : pps / 1000)} kpackets/s on the sender's link, ${fmt(mbs)} MB/s payload at the slowest receiver (${fmt(r.goodputBitsPerSecond === undefined ? undefined : r.goodputBitsPerSecond / 1e6, 0)} Mbit/s), link bytes/payload ${fmt(r.senderLinkBytes / size, 3)}, CPU s/GB sender ${cpuCell(r.cpuSender, size)} receivers ${r.cpuReceiverSeconds.map((x) => fmt(perGB(x, size), 2)).join('/')}, verified ${r.verified ? 'yes' : 'NO'}${r.error === undefined ? '' : ` (${r.error.slice(0, 300)})`}`,
        );
      }
    }
    if (m.targets.length > 0) {
      lines.push('targets:');
      for (const t of m.targets) {
        lines.push(
          `  ${t.pass === true ? 'PASS' : 'MISS'}  ${t.lossPercent}% loss: ${t.target}: ${t.measured}`,
        );
      }
    }
  }
  lines.push(
    '',
    `CPU: user+system seconds per GB of payload of each process; vmscatter's are the transport's own (its test harness makes the payload before the session and checks it after: ${report.payloadSynthesisCpuSecondsPerGB.toFixed(2)} s/GB to make here, reported apart as harnessCpuSeconds in --json), uftp's and udpcast's include reading or writing their files on tmpfs.`,
    'vmscatter seals every packet with AES-256-GCM; uftp runs as -Y none and as uftp-gcm (-Y aes256-gcm); udpcast has no encryption.',
  );
  if (report.skipped.length > 0) lines.push('', `skipped (time budget): ${report.skipped.join(', ')}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

function summaryRun(r: RunResult, sizeBytes: number) {
  const round = (x: number | undefined, digits = 3): number | null =>
    x === undefined || !Number.isFinite(x) ? null : Number(x.toFixed(digits));
  return {
    tool: r.tool,
    variant: r.variant,
    mtu: r.mtu,
    lossPercent: r.lossPercent,
    verified: r.verified,
    goodputBitsPerSecond: r.verified ? round(r.goodputBitsPerSecond, 0) : null,
    linkBytesPerPayload: round(r.senderLinkBytes / sizeBytes),
    linkPackets: r.senderLinkPackets,
    cpuSecondsPerGB: {
      sender: round(perGB(r.cpuSenderSeconds, sizeBytes)),
      senderUser: round(perGB(r.cpuSender?.user, sizeBytes)),
      senderSystem: round(perGB(r.cpuSender?.system, sizeBytes)),
      receivers: r.cpuReceiverSeconds.map((x) => round(perGB(x, sizeBytes))),
      receiversUser: r.cpuReceivers.map((t) => round(perGB(t?.user, sizeBytes))),
      receiversSystem: r.cpuReceivers.map((t) => round(perGB(t?.system, sizeBytes))),
    },
    dataSeconds: round(r.dataSeconds),
    setupSeconds: round(r.setupSeconds),
    backgroundBusy: round(r.backgroundBusy, 2),
  };
}

/**
 * docs/bench/transport.json: per tool, MTU and loss the goodput, link bytes / payload and CPU s/GB at
 * each end, and vmscatter's ratios to each peer measured in the same run.
 */
export function summaryOf(report: TransportReport, argv: readonly string[]) {
  const size = report.sizeBytes;
  // Where files went is this machine's business: the command keeps only what shapes the run.
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const flag = arg.split('=')[0]!;
    if (['--out', '--summary', '--tmp'].includes(flag)) {
      if (!arg.includes('=')) i++;
      continue;
    }
    kept.push(arg);
  }
  const ratio = (a: number | undefined, b: number | undefined): number | null =>
    a === undefined || b === undefined || b === 0 ? null : Number((a / b).toFixed(3));
  return {
    bench: 'transport',
    date: report.startedAt,
    command: `npm run bench:transport${kept.length ? ` -- ${kept.join(' ')}` : ''}`,
    config: {
      sizeBytes: size,
      rateBitsPerSecond: report.rateBitsPerSecond,
      receivers: RECEIVERS,
      mtus: report.mtus.map((m) => m.mtu),
      losses: report.losses,
      tools: report.tools,
      repeat: report.repeat,
      tuned: report.tuned,
      cpus: report.cpus,
      loadAverage: report.loadAverage.map((l) => Number(l.toFixed(2))),
      seconds: Math.round(report.seconds),
      skipped: report.skipped,
      cpuNote:
        "user+system seconds per GB of payload; vmscatter's exclude its test harness (payload made before, each object compared as it completes, timed apart)",
    },
    results: report.mtus.flatMap((m) =>
      m.cases.flatMap((c) => {
        if (c.best === undefined) return [];
        const entry = summaryRun(c.best, size);
        if (c.tool !== 'vmscatter') return [entry];
        const ours = c.best.verified ? c.best : undefined;
        const ratiosToPeers = Object.fromEntries(
          BASELINES.flatMap((peer) => {
            const theirs = caseBest(m.cases, c.lossPercent, peer);
            if (theirs === undefined) return [];
            return [
              [
                peer,
                {
                  goodput: ratio(ours?.goodputBitsPerSecond, theirs.goodputBitsPerSecond),
                  linkBytes: ratio(ours?.senderLinkBytes, theirs.senderLinkBytes),
                  cpuSender: ratio(ours?.cpuSenderSeconds, theirs.cpuSenderSeconds),
                  cpuReceiverWorst: ratio(
                    maxKnown(ours?.cpuReceiverSeconds ?? []),
                    maxKnown(theirs.cpuReceiverSeconds),
                  ),
                },
              ],
            ];
          }),
        );
        return [{ ...entry, ratiosToPeers }];
      }),
    ),
    unshaped: report.mtus.flatMap((m) =>
      m.unshaped.map((r) => ({
        ...summaryRun(r, size),
        kpacketsPerSecond:
          r.dataSeconds === undefined
            ? null
            : Number((r.senderLinkPackets / r.dataSeconds / 1000).toFixed(1)),
      })),
    ),
    targets: report.mtus.flatMap((m) => m.targets),
  };
}

// ---------------------------------------------------------------------------------------------------
// Main

interface Options {
  sizeBytes: number;
  rateBits: number;
  mtus: number[];
  losses: number[];
  tools: Tool[];
  repeat: number;
  json: boolean;
  tune: boolean;
  quick: boolean;
  out: string | undefined;
  summary: string;
  tmp: string | undefined;
  unshaped: boolean;
  budgetMs: number;
  quietWaitMs: number;
}

function parseOptions(argv: readonly string[]): Options {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      size: { type: 'string' },
      rate: { type: 'string', default: '1gbit' },
      mtus: { type: 'string' },
      losses: { type: 'string', default: '0,1' },
      tools: { type: 'string', default: ALL_TOOLS.join(',') },
      repeat: { type: 'string', default: '1' },
      json: { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      tune: { type: 'boolean', default: false },
      out: { type: 'string' },
      summary: {
        type: 'string',
        default: join(dirname(fileURLToPath(import.meta.url)), '../../docs/bench/transport.json'),
      },
      tmp: { type: 'string' },
      'skip-unshaped': { type: 'boolean', default: false },
      'budget-min': { type: 'string', default: '14' },
      'quiet-wait-s': { type: 'string', default: '10' },
    },
  });
  const fail = (message: string): never => {
    throw new Error(message);
  };
  const quick = values.quick === true;
  const size = parseSize(values.size ?? (quick ? '64MiB' : '512MiB'));
  if (typeof size === 'string' || size <= 0) fail(`--size: ${String(size)}`);
  const rateBits =
    parseLinkRate(values.rate!) ?? fail(`--rate: expected a rate such as 1gbit, got '${values.rate}'`);
  const numbers = (text: string, what: string): number[] =>
    text.split(',').map((s) => {
      const n = Number(s.trim());
      return s.trim() !== '' && Number.isFinite(n) && n >= 0 ? n : fail(`${what}: '${s}' is not a number`);
    });
  let mtus = numbers(values.mtus ?? '9000,1500', '--mtus');
  if (quick && values.mtus === undefined) mtus = mtus.slice(0, 1);
  const losses = numbers(values.losses!, '--losses');
  if (losses.some((l) => l > 100)) fail('--losses: percentages from 0 to 100');
  const tools = values.tools!.split(',').map((t) => t.trim()) as Tool[];
  for (const t of tools)
    if (!ALL_TOOLS.includes(t)) fail(`--tools: unknown tool '${t}' (${ALL_TOOLS.join(', ')})`);
  const repeat = Number(values.repeat);
  if (!Number.isInteger(repeat) || repeat < 1) fail('--repeat: a whole number >= 1');
  return {
    sizeBytes: size as number,
    rateBits,
    mtus,
    losses,
    tools,
    repeat,
    json: values.json === true,
    tune: values.tune === true,
    quick,
    out: values.out,
    summary: values.summary!,
    tmp: values.tmp,
    unshaped: values['skip-unshaped'] !== true,
    budgetMs: Number(values['budget-min']) * 60_000,
    quietWaitMs: Number(values['quiet-wait-s']) * 1000,
  };
}

function variantsFor(tool: Tool, options: Options): Variant[] {
  const all = candidates(tool);
  if (options.tune) return all;
  return all.slice(0, options.quick ? 1 : 2);
}

function pickWorkDir(options: Options, sizeBytes: number): string {
  const need = sizeBytes * (RECEIVERS + 1) + 256 * 2 ** 20;
  let base = options.tmp;
  if (base === undefined) {
    base = tmpdir();
    try {
      const fs = statfsSync('/dev/shm');
      if (fs.bavail * fs.bsize > need) base = '/dev/shm';
    } catch {
      // no /dev/shm: the temp dir it is
    }
  }
  return mkdtempSync(join(base, 'vmscatter-bench-transport-'));
}

export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<TransportReport> {
  const options = parseOptions(argv);
  const available = labAvailable();
  if (!available.ok) throw new Error(`the network lab is needed: ${available.why}`);
  for (const tool of options.tools) {
    for (const name of tool === 'udpcast'
      ? ['udp-sender', 'udp-receiver']
      : tool === 'uftp' || tool === 'uftp-gcm'
        ? ['uftp', 'uftpd']
        : []) {
      needTool(name);
    }
  }
  needTool('bash');
  const started = now();
  const report: TransportReport = {
    sizeBytes: options.sizeBytes,
    rateBitsPerSecond: options.rateBits,
    tools: options.tools,
    losses: options.losses,
    repeat: options.repeat,
    tuned: options.tune,
    cpus: cpus().length,
    loadAverage: loadavg(),
    startedAt: new Date().toISOString(),
    seconds: 0,
    skipped: [],
    mtus: [],
    payloadSynthesisCpuSecondsPerGB: 0,
    payloadCompareCpuSecondsPerGB: 0,
  };
  const payloadCost = calibratePayloadCost();
  report.payloadSynthesisCpuSecondsPerGB = payloadCost.synthesis;
  report.payloadCompareCpuSecondsPerGB = payloadCost.compare;
  const workDir = pickWorkDir(options, options.sizeBytes);
  const cleanup = (): void => rmSync(workDir, { recursive: true, force: true });
  process.once('exit', cleanup);
  const onSignal = (signal: NodeJS.Signals): void => {
    cleanup();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(s, onSignal);
  let runIndex = 0;
  try {
    const payloadPath = join(workDir, 'payload.bin');
    let payloadSha = '';
    if (options.tools.some((t) => t !== 'vmscatter')) {
      log(`writing the ${options.sizeBytes} byte payload to ${workDir} ...`);
      payloadSha = writePayload(payloadPath, options.sizeBytes);
    }
    const overBudget = (): boolean => now() - started > options.budgetMs;
    for (const mtu of options.mtus) {
      const lab = await createLab({ hosts: [...HOSTS], mtu });
      const mtuReport: MtuReport = {
        mtu,
        framingCeiling: maxSymbolSize(mtu) / (mtu + 14),
        unshaped: [],
        cases: [],
        targets: [],
      };
      report.mtus.push(mtuReport);
      try {
        const hosts: Host[] = [];
        for (const h of lab.hosts) hosts.push(await parkKeeper(lab, h));
        const base: Omit<Context, 'shaped' | 'lossPercent' | 'runIndex'> = {
          lab,
          hosts,
          mtu,
          sizeBytes: options.sizeBytes,
          rateBits: options.rateBits,
          workDir,
          payloadPath,
          payloadSha,
          quietWaitMs: options.quietWaitMs,
        };
        if (options.unshaped) {
          const unshapedVariants: Variant[] = [];
          if (options.tools.includes('vmscatter')) {
            unshapedVariants.push({
              tool: 'vmscatter',
              label: '--rate 20Gbit (cap only)',
              rateFactor: 1,
              unshapedRateBits: 20e9,
            });
          }
          if (options.tools.includes('udpcast')) unshapedVariants.push(udpcastVariant(undefined, false));
          for (const v of unshapedVariants) {
            if (overBudget()) {
              report.skipped.push(`MTU ${mtu} unshaped ${v.tool}`);
              continue;
            }
            log(`MTU ${mtu}, unshaped: ${v.tool} ${v.label} ...`);
            const r = await runOne(
              { ...base, shaped: false, lossPercent: 0, runIndex: runIndex++, rateBits: 20e9 },
              v,
            );
            logRun(r, options.sizeBytes);
            mtuReport.unshaped.push(r);
          }
        }
        await lab.shape('src', { rate: options.rateBits, direction: 'out' });
        for (const name of HOSTS.slice(1)) await lab.shape(name, { rate: options.rateBits, direction: 'in' });
        for (const loss of options.losses) {
          for (const name of HOSTS.slice(1)) await lab.dropShare(name, loss, 'in');
          for (const tool of options.tools) {
            const runs: RunResult[] = [];
            for (const v of variantsFor(tool, options)) {
              // One extra try when every planned run of a setting failed: a single unlucky failure
              // (a lost handshake at 1% loss) should not stand for the tool; the failure stays listed.
              for (let rep = 0; rep < options.repeat + 1; rep++) {
                if (rep === options.repeat && runs.some((r) => r.variant === v.label && r.verified)) break;
                if (overBudget()) {
                  report.skipped.push(`MTU ${mtu} ${loss}% ${tool} ${v.label}`);
                  break;
                }
                const retry = rep === options.repeat ? ' (again: it failed)' : '';
                log(
                  `MTU ${mtu}, ${loss}% loss: ${tool} ${v.label}${options.repeat > 1 && !retry ? ` #${rep + 1}` : ''}${retry} ...`,
                );
                const r = await runOne({ ...base, shaped: true, lossPercent: loss, runIndex: runIndex++ }, v);
                logRun(r, options.sizeBytes);
                runs.push(r);
              }
            }
            mtuReport.cases.push({ lossPercent: loss, tool, best: bestOfVariants(runs), runs });
          }
        }
        mtuReport.targets = options.tools.includes('vmscatter')
          ? checkTargets(mtuReport, options.rateBits, options.sizeBytes)
          : [];
      } finally {
        await lab.destroy();
      }
    }
  } finally {
    cleanup();
    process.removeListener('exit', cleanup);
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.removeListener(s, onSignal);
  }
  report.seconds = (now() - started) / 1000;
  if (options.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else printReport(report);
  if (options.out !== undefined) {
    mkdirSync(options.out, { recursive: true });
    const file = join(options.out, `transport-${report.startedAt.replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    log(`wrote ${file}`);
  }
  // The summary the README's table comes from (a quick run is a smoke test, not a figure to publish).
  if (!options.quick) {
    mkdirSync(dirname(options.summary), { recursive: true });
    writeFileSync(options.summary, `${JSON.stringify(summaryOf(report, argv), null, 2)}\n`);
    log(`wrote ${options.summary}`);
  }
  return report;
}

/** CPU seconds per GB to make the seeded payload, and to compare it (what vmscatter's peers add to the transport). */
function calibratePayloadCost(): { synthesis: number; compare: number } {
  const count = 16;
  const perGB = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1e6 / ((count * OBJECT_BYTES) / GB);
  const a = process.cpuUsage();
  const made = Array.from({ length: count }, (_, i) => payloadObject(SEED, i, OBJECT_BYTES));
  const synthesis = perGB(process.cpuUsage(a));
  const again = Array.from({ length: count }, (_, i) => payloadObject(SEED, i, OBJECT_BYTES));
  const b = process.cpuUsage();
  let differ = 0;
  for (let i = 0; i < count; i++)
    if (Buffer.compare(Buffer.from(made[i]!), Buffer.from(again[i]!)) !== 0) differ++;
  const compare = perGB(process.cpuUsage(b));
  if (differ !== 0) throw new Error('the payload is not deterministic');
  return { synthesis, compare };
}

function logRun(r: RunResult, sizeBytes: number): void {
  const g = r.goodputBitsPerSecond;
  log(
    `  -> ${r.verified ? 'verified' : 'NOT verified'}, goodput ${fmt(g === undefined ? undefined : g / 1e6, 0)} Mbit/s, data ${fmt(r.dataSeconds, 2)} s, setup ${fmt(r.setupSeconds, 2)} s, link bytes/payload ${fmt(r.senderLinkBytes / sizeBytes, 3)}, CPU snd ${fmt(r.cpuSenderSeconds, 2)} s rcv ${r.cpuReceiverSeconds.map((c) => fmt(c, 2)).join('/')} s, bg ${(r.backgroundBusy * 100).toFixed(0)}%${r.error === undefined ? '' : `\n     ${r.error.slice(0, 800)}`}`,
  );
  const profile = r.details.senderLinkMbitPer100ms;
  if (Array.isArray(profile))
    log(
      `     sender link Mbit/s per 100 ms: ${profile.slice(0, 60).join(' ')}${profile.length > 60 ? ' …' : ''}`,
    );
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    process.stderr.write(`bench/transport: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  });
}
