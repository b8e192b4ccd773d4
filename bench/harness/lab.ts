/**
 * A multi-host network lab on one machine, for tests and benchmarks.
 *
 * Each host is a network namespace whose only interface, `e0`, is one end of a veth pair. The other
 * ends (`p0`, `p1`, …) are ports of a Linux bridge `br0` that lives in a namespace of its own, the
 * switch. Nothing is created in the root namespace, so the root's firewall, its bridge-netfilter
 * setting and its IPv6 autoconfiguration never see lab traffic, and lab traffic has no way out.
 *
 * The bridge runs with multicast snooping off, so it floods every multicast frame to every port like a
 * plain switch: group delivery does not depend on IGMP reports and queriers (with snooping on and no
 * querier, memberships expire after about four minutes and the bridge starts dropping a group's
 * traffic mid-run).
 *
 * Every name carries this module's prefix and the creating pid (`vmslab-<pid base 36>-<id>-h0`), so
 * `sweepStaleLabs()` can remove the leftovers of a process that died without cleaning up. Live labs
 * are destroyed synchronously on process exit, SIGINT, SIGTERM and SIGHUP.
 *
 * Needs Linux, root, and the `ip`, `tc` and `nft` tools (Debian: iproute2, nftables).
 */
import { execFile, spawn as spawnProcess, spawnSync } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { CleanupRegistry, kill, pidAlive, sleepSync } from './cleanup-registry.js';

/** Every namespace this module creates starts with this. */
export const LAB_PREFIX = 'vmslab';

/** `vmslab-<pid in base 36>-<4-character lab id>-<sw | h<index>>` */
const NAME_PATTERN = /^vmslab-([0-9a-z]{1,8})-([0-9a-z]{4})-(sw|h\d{1,4})$/;

/** The host-side interface in every host namespace. */
export const HOST_INTERFACE = 'e0';
const BRIDGE = 'br0';
const MAX_HOSTS = 1000;
const COMMAND_TIMEOUT_MS = 20_000;
const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
const DEFAULT_KILL_GRACE_MS = 2_000;
/** On exit and on signals there is no event loop to wait on: a short, blocking grace. */
const SYNC_KILL_GRACE_MS = 500;
/** Directories searched after PATH: the tools live in sbin, which a non-login PATH may lack. */
const SBIN_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];

export type Direction = 'in' | 'out';

export interface LabOptions {
  /** A host count (hosts are named h0, h1, …) or the host names. */
  hosts: number | readonly string[];
  /** An IPv4 subnet such as 10.77.5.0/24; host i gets the (i + 1)th address. Default: a random 10.77.X.0/24. */
  subnet?: string;
  /** MTU on both veth ends and the bridge (default: the kernel's 1500). */
  mtu?: number;
  /** Aborting cancels a creation in progress (cleaning up) or destroys the created lab. */
  signal?: AbortSignal;
  /** Remove stale labs of dead processes before creating this one (default true). */
  sweep?: boolean;
  /** Time between SIGTERM and SIGKILL for tracked processes in destroy() (default 2000 ms). */
  killGraceMs?: number;
}

export interface LabHost {
  readonly index: number;
  readonly name: string;
  /** The host's network namespace (`ip netns exec <namespace> …`). */
  readonly namespace: string;
  /** The host's IPv4 address on `e0`. */
  readonly address: string;
  /** The host-side interface, always `e0`. */
  readonly interface: string;
  /** The bridge-side veth, in the lab's switch namespace. */
  readonly veth: string;
}

/** A host by index, by name, or the host object itself. */
export type HostRef = number | string | LabHost;

export interface ShapeOptions {
  /** Bits per second as a number, or a rate such as '1gbit', '200mbit', '800Mbit/s'. */
  rate: string | number;
  /** Token bucket size: bytes as a number, or a tc size such as '256k' (default: 4 ms at the rate, at least 64 KiB). */
  burst?: string | number;
  /** Longest a packet may wait in the queue: milliseconds, or a tc time such as '50ms' (default 50 ms). */
  latency?: string | number;
  /** 'out' shapes what the host sends, 'in' what it receives, 'both' each separately (default 'out'). */
  direction?: Direction | 'both';
}

export interface ExecOptions {
  /** Killed (SIGKILL) and rejected after this long (default 30 s). */
  timeoutMs?: number;
  /** Written to the command's stdin, which is then closed. */
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  /** Exit code, or null when a signal ended the process. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Byte and packet counters from the host's point of view (read on the bridge-side veth). */
export interface LinkCounters {
  txBytes: number;
  rxBytes: number;
  txPackets: number;
  rxPackets: number;
}

export interface Lab {
  readonly id: string;
  readonly hosts: readonly LabHost[];
  /** The subnet in CIDR form, e.g. 10.77.5.0/24. */
  readonly subnet: string;
  readonly broadcast: string;
  readonly mtu: number;
  /** The namespace that holds the bridge and the bridge-side veths. */
  readonly switchNamespace: string;
  readonly bridge: string;
  readonly destroyed: boolean;
  host(ref: HostRef): LabHost;
  /** Token-bucket shaping (tc tbf) on the host's egress (e0) and/or its ingress (the bridge-side veth's egress). */
  shape(host: HostRef, options: ShapeOptions): Promise<void>;
  /** Removes shaping in one or both directions (default both). */
  unshape(host: HostRef, direction?: Direction | 'both'): Promise<void>;
  /**
   * Drops a random share (0–100, to 0.01) of the IP packets the host receives ('in': an nftables table
   * in the host namespace, prerouting) or sends ('out': an nftables netdev table on the host's switch
   * port, so the sender sees no error, as with loss on a wire). ARP is never dropped. 0 removes it.
   */
  dropShare(host: HostRef, percent: number, direction: Direction): Promise<void>;
  /** Removes the loss rules of both directions. */
  clearLoss(host: HostRef): Promise<void>;
  /**
   * Drops every multicast packet (224.0.0.0/4) the host would receive (an nftables table in its
   * namespace, prerouting), as a firewall on its path would; unicast still passes. false removes it.
   */
  denyMulticast(host: HostRef, deny: boolean): Promise<void>;
  /** Starts a command in the host's namespace (`ip netns exec`); tracked and killed by destroy(). Stdio defaults to pipes. */
  spawn(host: HostRef, command: string, args?: readonly string[], options?: SpawnOptions): ChildProcess;
  /** Runs a command in the host's namespace to completion; rejects only on timeout or a failure to start. */
  exec(host: HostRef, command: string, args?: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  counters(host: HostRef): Promise<LinkCounters>;
  /** Bytes the host has sent since the lab was created (including packets dropped by dropShare 'out'). */
  txBytes(host: HostRef): Promise<number>;
  /** Bytes delivered towards the host since the lab was created. */
  rxBytes(host: HostRef): Promise<number>;
  /** Kills tracked processes (SIGTERM, then SIGKILL after the grace), then everything left in the lab's namespaces, and deletes them. Idempotent. */
  destroy(): Promise<void>;
  /** The same, blocking (a short grace); used on process exit and signals. */
  destroySync(): void;
}

// ---------------------------------------------------------------------------------------------------
// Tools and preconditions

const toolCache = new Map<string, string | undefined>();

/** Absolute path of an executable on PATH or in the sbin directories, or undefined. */
export function findTool(name: string): string | undefined {
  if (toolCache.has(name)) return toolCache.get(name);
  let found: string | undefined;
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter((d) => d !== ''), ...SBIN_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      found = candidate;
      break;
    } catch {
      // not here
    }
  }
  toolCache.set(name, found);
  return found;
}

function tool(name: 'ip' | 'tc' | 'nft'): string {
  const path = findTool(name);
  if (path === undefined) throw new Error(`network lab: '${name}' not found`);
  return path;
}

const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;

/** Whether this process can build a lab here, and if not, why (precisely enough to act on). */
export function labAvailable(): { ok: true } | { ok: false; why: string } {
  if (process.platform !== 'linux') {
    return { ok: false, why: `the network lab needs Linux network namespaces; this is ${process.platform}` };
  }
  if (process.getuid?.() !== 0) {
    return {
      ok: false,
      why: `the network lab needs root (namespaces, veth, bridge, tc, nftables); running as uid ${String(process.getuid?.())}`,
    };
  }
  const capabilities = effectiveCapabilities();
  if (capabilities !== undefined) {
    for (const [bit, name] of [
      [CAP_NET_ADMIN, 'CAP_NET_ADMIN'],
      [CAP_SYS_ADMIN, 'CAP_SYS_ADMIN'],
    ] as const) {
      if (((capabilities >> bit) & 1n) === 0n) {
        return {
          ok: false,
          why: `root without ${name} (an unprivileged container?): cannot create namespaces`,
        };
      }
    }
  }
  const missing = [
    ['ip', 'iproute2'],
    ['tc', 'iproute2'],
    ['nft', 'nftables'],
  ].filter(([name]) => findTool(name ?? '') === undefined);
  if (missing.length > 0) {
    const names = missing.map(([name]) => `'${name}'`).join(', ');
    const packages = [...new Set(missing.map(([, pkg]) => pkg))].join(' ');
    return {
      ok: false,
      why: `${names} not found on PATH or in sbin (Debian: apt-get install -y ${packages})`,
    };
  }
  return { ok: true };
}

function effectiveCapabilities(): bigint | undefined {
  try {
    const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return match?.[1] === undefined ? undefined : BigInt(`0x${match[1]}`);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------
// Running commands

interface RunResult {
  stdout: string;
  stderr: string;
  code: number | null;
}

interface RunOptions {
  input?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Throw on a non-zero exit (default true). */
  check?: boolean;
}

function describe(command: string, args: readonly string[]): string {
  return [command, ...args].join(' ');
}

function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      command,
      args,
      {
        encoding: 'utf8',
        timeout: options.timeoutMs ?? COMMAND_TIMEOUT_MS,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
      (error, stdout, stderr) => {
        if (error !== null && typeof error.code !== 'number') {
          // Did not start, timed out, or was aborted.
          if (options.signal?.aborted === true) reject(options.signal.reason);
          else reject(new Error(`${describe(command, args)}: ${error.message}${tail(stderr)}`));
          return;
        }
        const code = error === null ? 0 : (error.code as number);
        if (code !== 0 && options.check !== false) {
          const input = options.input === undefined ? '' : `\ninput:\n${options.input}`;
          reject(new Error(`${describe(command, args)} failed (exit ${code})${tail(stderr)}${input}`));
          return;
        }
        resolve({ stdout, stderr, code });
      },
    );
    child.stdin?.on('error', () => {}); // a command that exits early closes its stdin
    child.stdin?.end(options.input ?? '');
  });
}

function runSync(command: string, args: readonly string[], input?: string): RunResult {
  const result = spawnSync(command, args, {
    encoding: 'utf8',
    input: input ?? '',
    timeout: COMMAND_TIMEOUT_MS,
    killSignal: 'SIGKILL',
  });
  return { stdout: result.stdout ?? '', stderr: result.stderr ?? '', code: result.status };
}

function tail(text: string): string {
  const trimmed = text.trim();
  if (trimmed === '') return '';
  return `: ${trimmed.length > 2000 ? `…${trimmed.slice(-2000)}` : trimmed}`;
}

/** Resolves true when the promise settles first, false after the timeout. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------
// Watching a process

export interface ProcessWatch {
  readonly child: ChildProcess;
  /** Everything the process wrote to stdout so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the first match of the pattern on stdout; rejects on exit or timeout. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Resolves when the process has exited and its output is read; on timeout kills it (SIGKILL) and rejects. */
  exit(timeoutMs?: number): Promise<ExecResult>;
}

const OUTPUT_LIMIT = 16 * 1024 * 1024;

/** Collects a piped child's output from now on; call it right after spawning. */
export function watchProcess(
  child: ChildProcess,
  label = describe(child.spawnfile, child.spawnargs.slice(1)),
): ProcessWatch {
  let out = '';
  let err = '';
  let result: ExecResult | undefined;
  let failure: Error | undefined;
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const listener of [...listeners]) listener();
  };
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    out = (out + chunk).slice(-OUTPUT_LIMIT);
    notify();
  });
  child.stderr?.on('data', (chunk: string) => {
    err = (err + chunk).slice(-OUTPUT_LIMIT);
  });
  child.once('error', (error) => {
    failure = new Error(`${label}: ${error.message}`);
    notify();
  });
  child.once('close', (code, signal) => {
    result = { stdout: out, stderr: err, code, signal };
    notify();
  });

  const wait = <T>(check: () => T | undefined, timeoutMs: number, onTimeout: () => Error): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const finish = (): void => {
        listeners.delete(listener);
        clearTimeout(timer);
      };
      const listener = (): void => {
        let value: T | undefined;
        try {
          value = check();
        } catch (error) {
          finish();
          reject(error as Error);
          return;
        }
        if (value !== undefined) {
          finish();
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(onTimeout());
      }, timeoutMs);
      listeners.add(listener);
      listener();
    });

  return {
    child,
    stdout: () => out,
    stderr: () => err,
    waitFor: (pattern, timeoutMs = 10_000) =>
      wait(
        () => {
          const match = new RegExp(pattern.source, pattern.flags.replace('g', '')).exec(out);
          if (match !== null) return match;
          if (failure !== undefined) throw failure;
          if (result !== undefined) {
            throw new Error(
              `${label} exited (code ${String(result.code)}, signal ${String(result.signal)}) before printing ${String(pattern)}${tail(err)}`,
            );
          }
          return undefined;
        },
        timeoutMs,
        () => new Error(`${label}: no ${String(pattern)} on stdout within ${timeoutMs} ms${tail(err)}`),
      ),
    exit: (timeoutMs = DEFAULT_EXEC_TIMEOUT_MS) =>
      wait(
        () => {
          if (failure !== undefined) throw failure;
          return result;
        },
        timeoutMs,
        () => {
          child.kill('SIGKILL');
          return new Error(`${label}: still running after ${timeoutMs} ms; killed${tail(err)}`);
        },
      ),
  };
}

function isRunning(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** True when the pid is gone or a zombie (a zombie holds no namespace). */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function stopChildren(children: readonly ChildProcess[], graceMs: number): Promise<void> {
  const alive = children.filter(isRunning);
  if (alive.length === 0) return;
  const exited = Promise.all(
    alive.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (!isRunning(child)) resolve();
          else child.once('exit', () => resolve());
        }),
    ),
  );
  for (const child of alive) child.kill('SIGTERM');
  if (await within(exited, graceMs)) return;
  for (const child of alive) if (isRunning(child)) child.kill('SIGKILL');
  await within(exited, 2_000);
}

function stopChildrenSync(children: readonly ChildProcess[], graceMs: number): void {
  const pids = children.filter(isRunning).map((child) => child.pid as number);
  for (const pid of pids) kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (pids.some((pid) => !processGone(pid)) && Date.now() < deadline) sleepSync(10);
  for (const pid of pids) if (!processGone(pid)) kill(pid, 'SIGKILL');
}

// ---------------------------------------------------------------------------------------------------
// Namespaces

function listNamespaces(): string[] {
  const result = runSync(tool('ip'), ['netns', 'list']);
  return result.stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[0] ?? '')
    .filter((name) => name !== '');
}

/**
 * Kills every process left in the namespaces and deletes them; their interfaces (veths, bridge) go
 * with them. Blocking. Returns the names that could not be removed.
 */
function removeNamespacesSync(names: readonly string[]): string[] {
  const ip = tool('ip');
  const present = new Set(listNamespaces());
  const targets = names.filter((name) => present.has(name));
  if (targets.length === 0) return [];
  const deadline = Date.now() + 3_000;
  for (;;) {
    const pids = targets.flatMap((ns) =>
      runSync(ip, ['netns', 'pids', ns])
        .stdout.split('\n')
        .map((line) => Number.parseInt(line, 10))
        .filter((pid) => Number.isInteger(pid) && pid > 0 && pid !== process.pid),
    );
    if (pids.length === 0 || Date.now() > deadline) break;
    for (const pid of pids) kill(pid, 'SIGKILL');
    sleepSync(20);
  }
  runSync(ip, ['-force', '-batch', '-'], targets.map((ns) => `netns delete ${ns}\n`).join(''));
  const left = new Set(listNamespaces());
  return targets.filter((name) => left.has(name));
}

/**
 * Removes the namespaces (and with them the veths, bridges and processes) of labs whose creating
 * process is dead. Returns the namespace names removed. A no-op where the lab is unavailable.
 */
export function sweepStaleLabs(): string[] {
  if (!labAvailable().ok) return [];
  const stale = listNamespaces().filter((name) => {
    const match = NAME_PATTERN.exec(name);
    if (match?.[1] === undefined) return false;
    const pid = Number.parseInt(match[1], 36);
    return pid !== process.pid && !pidAlive(pid);
  });
  const left = removeNamespacesSync(stale);
  return stale.filter((name) => !left.includes(name));
}

// ---------------------------------------------------------------------------------------------------
// Cleanup on exit and signals

const registry = new CleanupRegistry<LabImpl>();

// ---------------------------------------------------------------------------------------------------
// Parsing

interface Subnet {
  cidr: string;
  base: number;
  prefix: number;
  broadcast: number;
}

function ipToString(value: number): string {
  return [24, 16, 8, 0].map((shift) => (value >>> shift) & 255).join('.');
}

function parseSubnet(text: string, hostCount: number): Subnet {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text.trim());
  const octets = match?.slice(1, 5).map(Number) ?? [];
  const prefix = Number(match?.[5]);
  if (match === null || octets.some((o) => o > 255) || prefix < 8 || prefix > 30) {
    throw new Error(`network lab: subnet '${text}' is not an IPv4 CIDR such as 10.77.5.0/24 (prefix 8–30)`);
  }
  const address = octets.reduce((acc, o) => acc * 256 + o, 0);
  const size = 2 ** (32 - prefix);
  const base = address - (address % size);
  if (hostCount + 2 > size) {
    throw new Error(`network lab: subnet ${text} has room for ${size - 2} hosts, not ${hostCount}`);
  }
  return { cidr: `${ipToString(base)}/${prefix}`, base, prefix, broadcast: base + size - 1 };
}

function hostNames(hosts: number | readonly string[]): string[] {
  if (typeof hosts === 'number') {
    if (!Number.isInteger(hosts) || hosts < 1 || hosts > MAX_HOSTS) {
      throw new Error(`network lab: hosts must be a whole number from 1 to ${MAX_HOSTS}, got ${hosts}`);
    }
    return Array.from({ length: hosts }, (_, i) => `h${i}`);
  }
  if (hosts.length < 1 || hosts.length > MAX_HOSTS) {
    throw new Error(`network lab: 1 to ${MAX_HOSTS} hosts, got ${hosts.length}`);
  }
  const seen = new Set<string>();
  for (const name of hosts) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name)) {
      throw new Error(`network lab: host name '${name}' must be letters, digits, '_', '.', '-' (at most 63)`);
    }
    if (seen.has(name)) throw new Error(`network lab: host name '${name}' appears twice`);
    seen.add(name);
  }
  return [...hosts];
}

const RATE_PREFIXES: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 };

/** Bits per second from a number or '1gbit', '200mbit', '800Mbit/s', '100Mbps'. */
function parseRateBits(rate: string | number): number {
  if (typeof rate === 'number') {
    if (Number.isFinite(rate) && rate >= 8) return Math.round(rate);
  } else {
    const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit|bit\/s|bps)$/i.exec(rate.trim());
    const factor = RATE_PREFIXES[(match?.[2] ?? '').toLowerCase()];
    if (match !== null && factor !== undefined) {
      const bits = Math.round(Number(match[1]) * factor);
      if (bits >= 8) return bits;
    }
  }
  throw new Error(`network lab: rate ${JSON.stringify(rate)} is not a rate such as '1gbit' or '200mbit'`);
}

function sizeArgument(size: string | number, what: string): string {
  if (typeof size === 'number' && Number.isInteger(size) && size > 0) return `${size}b`;
  if (typeof size === 'string' && /^\d+(?:\.\d+)?(?:b|k|kb|m|mb|g|gb|kbit|mbit|gbit)?$/i.test(size.trim())) {
    return size.trim();
  }
  throw new Error(`network lab: ${what} ${JSON.stringify(size)} is not a size such as 262144 or '256k'`);
}

function timeArgument(time: string | number): string {
  if (typeof time === 'number' && Number.isFinite(time) && time > 0) return `${time}ms`;
  if (typeof time === 'string' && /^\d+(?:\.\d+)?(?:s|ms|us)$/.test(time.trim())) return time.trim();
  throw new Error(`network lab: latency ${JSON.stringify(time)} is not a time such as 50 or '50ms'`);
}

/** 4 ms worth of tokens, at least 64 KiB so a full GSO packet fits the bucket. */
function defaultBurst(rateBits: number): string {
  return `${Math.max(64 * 1024, Math.ceil((rateBits / 8) * 0.004))}b`;
}

// ---------------------------------------------------------------------------------------------------
// The lab

type State = 'building' | 'live' | 'destroyed';

class LabImpl implements Lab {
  readonly id: string;
  readonly hosts: readonly LabHost[];
  readonly subnet: string;
  readonly broadcast: string;
  readonly mtu: number;
  readonly switchNamespace: string;
  readonly bridge = BRIDGE;
  private state: State = 'building';
  private readonly children = new Set<ChildProcess>();
  private destroying: Promise<void> | undefined;
  private detachSignal: (() => void) | undefined;
  private readonly prefixLength: number;

  constructor(
    names: readonly string[],
    subnet: Subnet,
    mtu: number | undefined,
    private readonly killGraceMs: number,
  ) {
    this.id = `${process.pid.toString(36)}-${randomInt(36 ** 4)
      .toString(36)
      .padStart(4, '0')}`;
    const stem = `${LAB_PREFIX}-${this.id}`;
    this.switchNamespace = `${stem}-sw`;
    this.subnet = subnet.cidr;
    this.prefixLength = subnet.prefix;
    this.broadcast = ipToString(subnet.broadcast);
    this.mtu = mtu ?? 1500;
    this.hosts = names.map((name, index) =>
      Object.freeze({
        index,
        name,
        namespace: `${stem}-h${index}`,
        address: ipToString(subnet.base + 1 + index),
        interface: HOST_INTERFACE,
        veth: `p${index}`,
      }),
    );
  }

  get destroyed(): boolean {
    return this.state === 'destroyed';
  }

  private namespaces(): string[] {
    return [...this.hosts.map((h) => h.namespace), this.switchNamespace];
  }

  async build(signal: AbortSignal | undefined, explicitMtu: boolean): Promise<void> {
    const ip = tool('ip');
    const step = (): void => signal?.throwIfAborted();
    step();
    await run(ip, ['-batch', '-'], {
      input: this.namespaces()
        .map((ns) => `netns add ${ns}\n`)
        .join(''),
      signal,
    });
    step();
    // No IPv6: no autoconfiguration, neighbour discovery or MLD chatter on the links, so the byte
    // counters hold what the programs under test sent. Best effort: IPv4 works either way.
    if (existsSync('/proc/sys/net/ipv6')) {
      const sysctl = findTool('sysctl');
      if (sysctl !== undefined) {
        await Promise.all(
          this.namespaces().map((ns) =>
            run(
              ip,
              [
                'netns',
                'exec',
                ns,
                sysctl,
                '-q',
                '-w',
                'net.ipv6.conf.all.disable_ipv6=1',
                'net.ipv6.conf.default.disable_ipv6=1',
              ],
              { check: false, signal },
            ),
          ),
        );
      }
    }
    step();
    const mtu = explicitMtu ? ` mtu ${this.mtu}` : '';
    const switchLines = [
      'link set lo up',
      `link add ${BRIDGE} type bridge mcast_snooping 0 stp_state 0`,
      ...this.hosts.flatMap((h) => [
        `link add ${h.veth}${mtu} type veth peer name ${HOST_INTERFACE}${mtu} netns ${h.namespace}`,
        `link set ${h.veth} master ${BRIDGE}`,
        `link set ${h.veth} up`,
      ]),
      `link set ${BRIDGE}${mtu} up`,
    ];
    await run(ip, ['-n', this.switchNamespace, '-batch', '-'], {
      input: switchLines.join('\n') + '\n',
      signal,
    });
    step();
    await Promise.all(
      this.hosts.map((h) =>
        run(ip, ['-n', h.namespace, '-batch', '-'], {
          input: [
            'link set lo up',
            `link set ${HOST_INTERFACE} up`,
            `addr add ${h.address}/${this.prefixLength} brd + dev ${HOST_INTERFACE}`,
            `route add 224.0.0.0/4 dev ${HOST_INTERFACE}`,
            '',
          ].join('\n'),
          signal,
        }),
      ),
    );
    step();
    this.state = 'live';
    if (signal !== undefined) {
      const onAbort = (): void => {
        this.destroy().catch(() => {});
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.detachSignal = () => signal.removeEventListener('abort', onAbort);
    }
  }

  host(ref: HostRef): LabHost {
    const host =
      typeof ref === 'number'
        ? this.hosts[ref]
        : typeof ref === 'string'
          ? this.hosts.find((h) => h.name === ref)
          : this.hosts.find((h) => h.namespace === ref.namespace);
    if (host === undefined) {
      const shown = typeof ref === 'object' ? ref.name : String(ref);
      throw new Error(`network lab: no host ${shown} (hosts: ${this.hosts.map((h) => h.name).join(', ')})`);
    }
    return host;
  }

  private assertLive(): void {
    if (this.state !== 'live' || this.destroying !== undefined) {
      throw new Error(
        `network lab ${this.id} is ${this.destroying !== undefined ? 'destroyed' : this.state}`,
      );
    }
  }

  async shape(ref: HostRef, options: ShapeOptions): Promise<void> {
    this.assertLive();
    const host = this.host(ref);
    const rateBits = parseRateBits(options.rate);
    const tbf = [
      'tbf',
      'rate',
      `${rateBits}bit`,
      'burst',
      options.burst === undefined ? defaultBurst(rateBits) : sizeArgument(options.burst, 'burst'),
      'latency',
      timeArgument(options.latency ?? 50),
    ];
    const direction = options.direction ?? 'out';
    for (const [ns, dev] of this.shapingPoints(host, direction)) {
      await run(tool('tc'), ['-n', ns, 'qdisc', 'replace', 'dev', dev, 'root', ...tbf]);
    }
  }

  async unshape(ref: HostRef, direction: Direction | 'both' = 'both'): Promise<void> {
    this.assertLive();
    const host = this.host(ref);
    for (const [ns, dev] of this.shapingPoints(host, direction)) {
      // Fails harmlessly when the device has no root qdisc of its own.
      await run(tool('tc'), ['-n', ns, 'qdisc', 'del', 'dev', dev, 'root'], { check: false });
    }
  }

  private shapingPoints(host: LabHost, direction: Direction | 'both'): [string, string][] {
    const points: [string, string][] = [];
    if (direction === 'out' || direction === 'both') points.push([host.namespace, HOST_INTERFACE]);
    if (direction === 'in' || direction === 'both') points.push([this.switchNamespace, host.veth]);
    if (points.length === 0)
      throw new Error(`network lab: direction must be 'in', 'out' or 'both', got ${direction}`);
    return points;
  }

  async dropShare(ref: HostRef, percent: number, direction: Direction): Promise<void> {
    this.assertLive();
    const host = this.host(ref);
    if (!Number.isFinite(percent) || percent < 0 || percent > 100) {
      throw new Error(`network lab: drop share must be a percentage from 0 to 100, got ${percent}`);
    }
    const threshold = Math.round(percent * 100); // out of 10 000
    if (direction === 'in') {
      const table = 'inet vmslab_loss';
      const chain =
        'type filter hook prerouting priority -300; policy accept;\n' +
        `    numgen random mod 10000 < ${threshold} drop`;
      await this.nft(
        host.namespace,
        replaceTable(table, threshold > 0 ? { name: 'in', body: chain } : undefined),
      );
    } else if (direction === 'out') {
      // Dropped on the host's switch port, after the host sent it: the sender sees no error, as with
      // loss on a wire (a drop in the host's own output hook would fail its send with EPERM).
      const table = `netdev vmslab_loss_${host.veth}`;
      const chain =
        `type filter hook ingress device "${host.veth}" priority -500; policy accept;\n` +
        `    meta protocol { ip, ip6 } numgen random mod 10000 < ${threshold} drop`;
      await this.nft(
        this.switchNamespace,
        replaceTable(table, threshold > 0 ? { name: 'out', body: chain } : undefined),
      );
    } else {
      throw new Error(`network lab: direction must be 'in' or 'out', got ${String(direction)}`);
    }
  }

  async clearLoss(ref: HostRef): Promise<void> {
    this.assertLive();
    const host = this.host(ref);
    await this.nft(host.namespace, replaceTable('inet vmslab_loss', undefined));
    await this.nft(this.switchNamespace, replaceTable(`netdev vmslab_loss_${host.veth}`, undefined));
  }

  async denyMulticast(ref: HostRef, deny: boolean): Promise<void> {
    this.assertLive();
    const host = this.host(ref);
    const chain = 'type filter hook prerouting priority -300; policy accept;\n    ip daddr 224.0.0.0/4 drop';
    await this.nft(
      host.namespace,
      replaceTable('inet vmslab_multicast', deny ? { name: 'in', body: chain } : undefined),
    );
  }

  private async nft(namespace: string, script: string): Promise<void> {
    await run(tool('ip'), ['netns', 'exec', namespace, tool('nft'), '-f', '-'], { input: script });
  }

  spawn(
    ref: HostRef,
    command: string,
    args: readonly string[] = [],
    options: SpawnOptions = {},
  ): ChildProcess {
    this.assertLive();
    const host = this.host(ref);
    const resolved = command.includes('/') ? command : (findTool(command) ?? command);
    const child = spawnProcess(tool('ip'), ['netns', 'exec', host.namespace, resolved, ...args], {
      stdio: 'pipe',
      ...options,
    });
    this.children.add(child);
    const forget = (): void => {
      this.children.delete(child);
    };
    child.once('exit', forget);
    child.once('error', forget);
    return child;
  }

  async exec(
    ref: HostRef,
    command: string,
    args: readonly string[] = [],
    options: ExecOptions = {},
  ): Promise<ExecResult> {
    const host = this.host(ref);
    const child = this.spawn(host, command, args, {
      stdio: 'pipe',
      ...(options.env === undefined ? {} : { env: options.env }),
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    });
    const watch = watchProcess(child, `${host.name}: ${describe(command, args)}`);
    child.stdin?.on('error', () => {});
    child.stdin?.end(options.input ?? '');
    return watch.exit(options.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS);
  }

  async counters(ref: HostRef): Promise<LinkCounters> {
    this.assertLive();
    const host = this.host(ref);
    const { stdout } = await run(tool('ip'), [
      '-j',
      '-s',
      '-n',
      this.switchNamespace,
      'link',
      'show',
      'dev',
      host.veth,
    ]);
    const parsed = JSON.parse(stdout) as {
      stats64?: { rx?: { bytes?: number; packets?: number }; tx?: { bytes?: number; packets?: number } };
    }[];
    const stats = parsed[0]?.stats64;
    const rx = stats?.rx;
    const tx = stats?.tx;
    if (rx?.bytes === undefined || tx?.bytes === undefined) {
      throw new Error(`network lab: no counters for ${host.veth} in ${this.switchNamespace}: ${stdout}`);
    }
    // The bridge-side veth receives what the host sends and transmits what the host receives.
    return { txBytes: rx.bytes, rxBytes: tx.bytes, txPackets: rx.packets ?? 0, rxPackets: tx.packets ?? 0 };
  }

  async txBytes(ref: HostRef): Promise<number> {
    return (await this.counters(ref)).txBytes;
  }

  async rxBytes(ref: HostRef): Promise<number> {
    return (await this.counters(ref)).rxBytes;
  }

  destroy(): Promise<void> {
    if (this.state === 'destroyed') return Promise.resolve();
    this.destroying ??= this.teardown().catch((error: unknown) => {
      this.destroying = undefined;
      throw error;
    });
    return this.destroying;
  }

  private async teardown(): Promise<void> {
    this.detachSignal?.();
    await stopChildren([...this.children], this.killGraceMs);
    // A signal handler may have finished the job while we waited.
    if (this.state === 'destroyed') return;
    this.finish(removeNamespacesSync(this.namespaces()));
  }

  destroySync(): void {
    if (this.state === 'destroyed') return;
    this.detachSignal?.();
    stopChildrenSync([...this.children], Math.min(this.killGraceMs, SYNC_KILL_GRACE_MS));
    this.finish(removeNamespacesSync(this.namespaces()));
  }

  private finish(left: readonly string[]): void {
    if (left.length > 0) {
      throw new Error(`network lab ${this.id}: could not delete namespaces ${left.join(', ')}`);
    }
    this.state = 'destroyed';
    this.children.clear();
    registry.unregister(this);
  }
}

/** An nft script that replaces a table atomically (declare, delete, recreate), or just deletes it. */
function replaceTable(table: string, chain: { name: string; body: string } | undefined): string {
  const lines = [`table ${table}`, `delete table ${table}`];
  if (chain !== undefined) {
    lines.push(`table ${table} {`, `  chain ${chain.name} {`, `    ${chain.body}`, '  }', '}');
  }
  return lines.join('\n') + '\n';
}

/** Creates a lab: one namespace per host on a bridge of its own. See the module comment. */
export async function createLab(options: LabOptions): Promise<Lab> {
  const availability = labAvailable();
  if (!availability.ok) throw new Error(`network lab unavailable: ${availability.why}`);
  options.signal?.throwIfAborted();
  const names = hostNames(options.hosts);
  if (
    options.mtu !== undefined &&
    (!Number.isInteger(options.mtu) || options.mtu < 68 || options.mtu > 65535)
  ) {
    throw new Error(`network lab: mtu must be a whole number from 68 to 65535, got ${options.mtu}`);
  }
  const subnet = parseSubnet(options.subnet ?? `10.77.${randomInt(1, 255)}.0/24`, names.length);
  const killGraceMs = options.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
  if (options.sweep !== false) sweepStaleLabs();
  const lab = new LabImpl(names, subnet, options.mtu, killGraceMs);
  registry.register(lab); // from here on, exit and signals remove whatever exists
  try {
    await lab.build(options.signal, options.mtu !== undefined);
  } catch (error) {
    try {
      lab.destroySync();
    } catch {
      // the build error matters more; the exit handler retries
    }
    throw error;
  }
  return lab;
}
