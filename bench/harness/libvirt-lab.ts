/**
 * Several libvirt hosts on one machine, for tests and benchmarks: one `libvirtd` per host of a network
 * lab (lab.ts), each with a state of its own, so that `virsh migrate` between two of them is a real
 * migration between two libvirt installations.
 *
 * A daemon keeps its state under fixed paths (/run/libvirt, /var/lib/libvirt, /var/log/libvirt,
 * /var/cache/libvirt, /etc/libvirt), so two daemons on one machine need two views of those paths. Each
 * daemon is started as `ip netns exec <host> unshare --mount --propagation private sh -c …`: the host's
 * network namespace, then a mount namespace of its own in which the script bind-mounts the host's
 * directories (under one temporary directory, mode 0700) over the five paths and execs libvirtd. The
 * QEMUs it starts inherit both namespaces (`namespaces = []` keeps libvirt from giving each guest a
 * mount namespace of its own), so a guest's sockets, logs and serial files land in its host's
 * directories. The mount namespace is the daemon's, made by unshare rather than left to
 * `ip netns exec` (which also makes one, as a side effect): so it is private, nothing mounted in it
 * propagates out, and it ends with its last process, taking its mounts along. Nothing is ever mounted
 * in the root mount namespace, so there is nothing to unmount; only the mount points are created if
 * missing (empty directories where the libvirt packages would put them).
 *
 * Nothing else has to enter that mount namespace:
 * - virsh talks TCP (`qemu+tcp://<address>/system`) from a lab host's network namespace; the daemons
 *   listen without authentication, which is safe only because nothing outside the lab reaches them.
 * - A unix socket is found by its inode, not by the name it was bound under, so a process in any
 *   namespace reaches a socket a guest made at /run/libvirt/x.sock as `<runDir>/x.sock`, and a
 *   socket it creates there is /run/libvirt/x.sock to the daemon and its QEMUs. `hostPath()` does
 *   the translation. (`spawn()` runs a command in both of a host's namespaces, for a program that has
 *   to see the paths under their usual names.)
 *
 * Processes are found by the mount table: every process whose mount namespace holds a bind mount of
 * this lab's directory is the daemon, one of its QEMUs or something entered with `spawn()`; destroy()
 * kills them all and removes the directory. The directory carries the creating pid
 * (`vmslibvirt-<pid base 36>-XXXXXX`), so the leftovers of a process killed outright are swept by the
 * next creation, as lab.ts sweeps its namespaces.
 *
 * Debian's packages create the `libvirt-qemu` user only with libvirt-daemon-system (which also brings
 * the system services); the QEMU driver refuses to start without it even when qemu.conf says root.
 * Where it is missing, the daemon's namespace gets copies of /etc/passwd and /etc/group with it added,
 * so the machine's own files stay untouched.
 *
 * Needs what lab.ts needs, and libvirtd, virsh (Debian: libvirt-daemon, libvirt-daemon-driver-qemu,
 * libvirt-clients), unshare, nsenter and mount (util-linux, mount), qemu-system-x86_64.
 */
import { spawnSync } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, posix } from 'node:path';
import {
  findTool,
  labAvailable,
  watchProcess,
  type ExecResult,
  type HostRef,
  type Lab,
  type LabHost,
  type ProcessWatch,
} from './lab.js';
import { CleanupRegistry, kill, pidAlive, sleepSync } from './cleanup-registry.js';
import { GUEST_KERNEL_FAULT, GUEST_SUM_MARKER, lastMarked, lastTick } from './qemu-guest.js';

/** Every lab directory this module creates is named `<prefix>-<pid base 36>-XXXXXX`. */
export const LIBVIRT_LAB_PREFIX = 'vmslibvirt';
const DIR_PATTERN = new RegExp(`^${LIBVIRT_LAB_PREFIX}-([0-9a-z]{1,8})-[A-Za-z0-9]{6}$`);

/** The paths a daemon keeps its state under, and the name of each one's directory in a host's. */
const PRIVATE_PATHS = [
  { dir: 'run', path: '/run/libvirt' },
  { dir: 'lib', path: '/var/lib/libvirt' },
  { dir: 'log', path: '/var/log/libvirt' },
  { dir: 'cache', path: '/var/cache/libvirt' },
  { dir: 'etc', path: '/etc/libvirt' },
] as const;

/** The user Debian's QEMU driver looks up at start (its compiled-in default). */
const QEMU_USER = 'libvirt-qemu';
/** Debian's usual id for it; the next free one is taken if something else has it. */
const QEMU_USER_ID = 64055;
/** Probing QEMU's capabilities comes first and takes several seconds under TCG; more under load. */
const DEFAULT_START_TIMEOUT_MS = 120_000;
const VIRSH_TIMEOUT_MS = 60_000;
const POLL_MS = 250;
/** Time between SIGTERM and SIGKILL for a daemon (it shuts down in well under a second when idle). */
const DAEMON_GRACE_MS = 5_000;
const PACKAGES = 'libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients';

export class LibvirtLabError extends Error {}

export interface LibvirtLabOptions {
  /** The lab hosts that get a daemon (default: every host of the lab). */
  hosts?: readonly HostRef[];
  /** How long each daemon may take to answer (default 120 s). */
  startTimeoutMs?: number;
  /** Remove the directories (and processes) of libvirt labs whose creator is dead first (default true). */
  sweep?: boolean;
}

export interface LibvirtHost {
  readonly name: string;
  readonly labHost: LabHost;
  /** `qemu+tcp://<address>/system`: reachable from every lab host's namespace, not from the root's. */
  readonly uri: string;
  /** The daemon's pid. */
  readonly pid: number;
  /** The daemon's mount namespace (`nsenter --mount=<this>`), where the private paths have their usual names. */
  readonly mountNamespace: string;
  /** This host's directory, holding the five below and the domain XML files defineGuest wrote. */
  readonly dir: string;
  /** What the daemon and its QEMUs see as /run/libvirt: create or connect to their unix sockets here. */
  readonly runDir: string;
  /** Seen inside as /var/lib/libvirt. */
  readonly libDir: string;
  /** Seen inside as /var/log/libvirt (libvirtd.log, qemu/<guest>.log, qemu/<guest>-serial.log). */
  readonly logDir: string;
  /** Seen inside as /var/cache/libvirt. */
  readonly cacheDir: string;
  /** Seen inside as /etc/libvirt (libvirtd.conf, qemu.conf, qemu/<guest>.xml of defined guests). */
  readonly configDir: string;
}

/** A host by index or name, its lab host, or the libvirt host itself. */
export type LibvirtHostRef = HostRef | LibvirtHost;

export interface GuestDefinition {
  /** Letters, digits, '_', '.', '-' (the serial file is named after it). */
  readonly name: string;
  readonly memoryMiB: number;
  readonly vcpus: number;
  /** Absolute paths; every host sees the machine's files, so a migrated guest finds them too. */
  readonly kernel: string;
  readonly initrd: string;
  /** Kernel command line (default `console=ttyS0 panic=-1 quiet`). */
  readonly append?: string;
}

export interface DefinedGuest {
  readonly name: string;
  readonly host: string;
  readonly xml: string;
  /** The serial console's file as the guest's QEMU opens it (the same path on every host). */
  readonly serialPath: string;
}

export interface VirshOptions {
  /** Killed and rejected after this long (default 60 s). */
  timeoutMs?: number;
}

export interface LibvirtLab {
  readonly lab: Lab;
  /** The directory holding every host's. */
  readonly dir: string;
  readonly hosts: readonly LibvirtHost[];
  readonly destroyed: boolean;
  host(ref: LibvirtHostRef): LibvirtHost;
  /** The real file behind a path under one of the host's private directories, e.g. /run/libvirt/x.sock. */
  hostPath(ref: LibvirtHostRef, path: string): string;
  /** `virsh -c <uri> …` in the host's network namespace; resolves with stdout, rejects on a non-zero exit. */
  virsh(ref: LibvirtHostRef, args: readonly string[], options?: VirshOptions): Promise<string>;
  /** The same, resolving with the whole result whatever the exit code (for commands meant to fail). */
  virshResult(ref: LibvirtHostRef, args: readonly string[], options?: VirshOptions): Promise<ExecResult>;
  /** Defines (does not start) a persistent guest: TCG, direct kernel boot, the serial console to a file, no disk, no network. */
  defineGuest(ref: LibvirtHostRef, guest: GuestDefinition): Promise<DefinedGuest>;
  /** What a guest's serial console wrote on this host so far ('' before it started there). */
  serial(ref: LibvirtHostRef, name: string): string;
  /** The tail of the host daemon's log file (warnings and errors). */
  daemonLog(ref: LibvirtHostRef): string;
  /** Starts a command in the host's network and mount namespaces; tracked by the lab and killed by destroy(). */
  spawn(ref: LibvirtHostRef, command: string, args?: readonly string[], options?: SpawnOptions): ChildProcess;
  /**
   * Destroys every running guest, stops the daemons, kills whatever is left in their mount namespaces
   * (QEMUs, spawned commands) and removes the directory. Idempotent. Call it before the lab's destroy().
   */
  destroy(): Promise<void>;
  /** The same, blocking and without asking the daemons (SIGKILL); used on process exit and signals. */
  destroySync(): void;
}

// ---------------------------------------------------------------------------------------------------
// Preconditions

const TOOLS = [
  ['libvirtd', 'libvirt-daemon'],
  ['virsh', 'libvirt-clients'],
  ['unshare', 'util-linux'],
  ['nsenter', 'util-linux'],
  ['mount', 'mount'],
  ['sh', 'dash'],
  ['qemu-system-x86_64', 'qemu-system-x86'],
] as const;

/** Whether this process can run libvirt lab hosts here, and if not, why (precisely enough to act on). */
export function libvirtLabAvailable(): { ok: true } | { ok: false; why: string } {
  const lab = labAvailable();
  if (!lab.ok) return lab;
  const missing = TOOLS.filter(([name]) => findTool(name) === undefined);
  if (missing.length > 0) {
    const names = missing.map(([name]) => `'${name}'`).join(', ');
    const packages = [...new Set(missing.map(([, pkg]) => pkg))].join(' ');
    return {
      ok: false,
      why: `${names} not found on PATH or in sbin (Debian: apt-get install -y --no-install-recommends ${packages})`,
    };
  }
  return { ok: true };
}

function tool(name: (typeof TOOLS)[number][0]): string {
  const path = findTool(name);
  if (path === undefined) throw new LibvirtLabError(`libvirt lab: '${name}' not found`);
  return path;
}

// ---------------------------------------------------------------------------------------------------
// Files a host's daemon reads

/** The daemon's own settings: TCP without authentication, sockets and log in its private paths. */
const LIBVIRTD_CONF = `# A libvirt lab host's daemon (bench/harness/libvirt-lab.ts), not a deployment's.
listen_tls = 0
listen_tcp = 1
# No authentication: only the lab's own network namespaces reach this daemon.
auth_tcp = "none"
unix_sock_dir = "/run/libvirt"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`;

/**
 * The QEMU driver's: guests run as root with no security labels, per-guest mount namespace or cgroups
 * (the daemon already lives in namespaces of its own, and a lab has no confinement to prove); libvirt
 * changes the owner of no file (the kernel and initrd are shared with everything else on the machine);
 * QEMU writes its log itself, so there is no virtlogd to run and stop.
 */
const QEMU_CONF = `# A libvirt lab host's QEMU driver (bench/harness/libvirt-lab.ts), not a deployment's.
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
`;

/** The script the daemon's mount namespace starts with: $1 the host's directory, $2 libvirtd, $3 mount. */
const DAEMON_SCRIPT = [
  'set -e',
  ...PRIVATE_PATHS.map(({ dir, path }) => `mkdir -p ${path} && "$3" --bind "$1/${dir}" ${path}`),
  'if [ -f "$1/passwd" ]; then "$3" --bind "$1/passwd" /etc/passwd; "$3" --bind "$1/group" /etc/group; fi',
  'exec "$2" --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid',
].join('\n');

/** Creates a host's directories (0700) and configuration; the passwd overlay only where it is needed. */
function prepareHostDir(dir: string): void {
  mkdirSync(dir, { mode: 0o700 });
  for (const { dir: sub } of PRIVATE_PATHS) mkdirSync(join(dir, sub), { mode: 0o700 });
  // QEMU opens its log and the serial file here before anything else would create the directory.
  mkdirSync(join(dir, 'log', 'qemu'), { mode: 0o700 });
  mkdirSync(join(dir, 'domains'), { mode: 0o700 });
  writeFileSync(join(dir, 'etc', 'libvirtd.conf'), LIBVIRTD_CONF);
  writeFileSync(join(dir, 'etc', 'qemu.conf'), QEMU_CONF);
  const overlay = accountOverlay();
  if (overlay !== undefined) {
    writeFileSync(join(dir, 'passwd'), overlay.passwd);
    writeFileSync(join(dir, 'group'), overlay.group);
  }
}

/** /etc/passwd and /etc/group with the QEMU driver's user and group added, or undefined if they exist. */
function accountOverlay(): { passwd: string; group: string } | undefined {
  if (spawnSync('id', ['-u', QEMU_USER]).status === 0) return undefined;
  const passwd = readFileSync('/etc/passwd', 'utf8');
  const group = readFileSync('/etc/group', 'utf8');
  const taken = new Set(
    [...passwd.split('\n'), ...group.split('\n')].map((line) => Number(line.split(':')[2])),
  );
  let id = QEMU_USER_ID;
  while (taken.has(id)) id++;
  const line = (text: string) => (text === '' || text.endsWith('\n') ? text : `${text}\n`);
  return {
    passwd: `${line(passwd)}${QEMU_USER}:x:${id}:${id}:libvirt lab:/var/lib/libvirt:/usr/sbin/nologin\n`,
    group: /^libvirt-qemu:/m.test(group) ? group : `${line(group)}${QEMU_USER}:x:${id}:\n`,
  };
}

function escapeXml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c] ?? c,
  );
}

function serialPath(name: string): string {
  return `/var/log/libvirt/qemu/${name}-serial.log`;
}

/**
 * A guest of the kind qemu-guest.ts boots by hand: TCG, direct kernel boot, the console on the first
 * serial port, written to a file. No disk and no network device, so a migration moves memory and
 * device state only; no balloon and no USB controller, fewer devices to move.
 */
function domainXml(guest: GuestDefinition, emulator: string): string {
  const e = escapeXml;
  return `<domain type='qemu'>
  <name>${e(guest.name)}</name>
  <memory unit='MiB'>${guest.memoryMiB}</memory>
  <vcpu>${guest.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${e(guest.kernel)}</kernel>
    <initrd>${e(guest.initrd)}</initrd>
    <cmdline>${e(guest.append ?? 'console=ttyS0 panic=-1 quiet')}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>${e(emulator)}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='${e(serialPath(guest.name))}' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

function checkGuest(guest: GuestDefinition): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(guest.name)) {
    throw new LibvirtLabError(
      `libvirt lab: guest name '${guest.name}' must be letters, digits, '_', '.', '-'`,
    );
  }
  for (const [what, value] of [
    ['memoryMiB', guest.memoryMiB],
    ['vcpus', guest.vcpus],
  ] as const) {
    if (!Number.isInteger(value) || value < 1) {
      throw new LibvirtLabError(`libvirt lab: ${what} must be a positive whole number, got ${value}`);
    }
  }
  for (const path of [guest.kernel, guest.initrd]) {
    if (!posix.isAbsolute(path)) throw new LibvirtLabError(`libvirt lab: ${path} is not an absolute path`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Processes

function tailOf(text: string, chars = 2000): string {
  const trimmed = text.trim();
  return trimmed.length > chars ? `…${trimmed.slice(-chars)}` : trimmed;
}

function readOr(path: string, fallback = ''): string {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return fallback;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Pids of the processes whose mount namespace has a mount from a directory named `stem` (one lab's
 * directory): its daemons, their QEMUs, anything entered into their namespaces. A mount table is read
 * once per namespace. The match is on the directory's name, since the table shows a bind mount's
 * source relative to the filesystem it is on, not as an absolute path.
 */
function processesMounting(stem: string): number[] {
  const needle = `/${stem}/`;
  const verdicts = new Map<string, boolean>();
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) continue;
    let namespace: string;
    try {
      namespace = readlinkSync(`/proc/${pid}/ns/mnt`);
    } catch {
      continue; // gone, or a kernel thread
    }
    let ours = verdicts.get(namespace);
    if (ours === undefined) {
      const table = readOr(`/proc/${pid}/mountinfo`);
      ours = table.split('\n').some((line) => line.split(' ')[3]?.includes(needle) ?? false);
      // An empty table means the process exited between the two reads: decide on the next one.
      if (table !== '') verdicts.set(namespace, ours);
    }
    if (ours) pids.push(pid);
  }
  return pids;
}

/** SIGKILL to every process of the lab directory `stem` until none is left (or 5 s have passed). */
function killMountingSync(stem: string): number[] {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const pids = processesMounting(stem);
    if (pids.length === 0 || Date.now() > deadline) return pids;
    for (const pid of pids) kill(pid, 'SIGKILL');
    sleepSync(50);
  }
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

async function stopDaemon(child: ChildProcess): Promise<void> {
  if (!running(child)) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), DAEMON_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------------------
// The lab

interface Daemon {
  readonly host: LibvirtHost;
  readonly watch: ProcessWatch;
}

class LibvirtLabImpl implements LibvirtLab {
  readonly dir: string;
  readonly stem: string;
  private daemons: Daemon[] = [];
  /** Every daemon process spawned, ready or not: a failed start must kill them too. */
  private readonly starting: ChildProcess[] = [];
  private state: 'building' | 'live' | 'destroyed' = 'building';
  private destroying: Promise<void> | undefined;

  constructor(readonly lab: Lab) {
    this.dir = mkdtempSync(join(tmpdir(), `${LIBVIRT_LAB_PREFIX}-${process.pid.toString(36)}-`));
    this.stem = basename(this.dir);
  }

  get hosts(): readonly LibvirtHost[] {
    return this.daemons.map((d) => d.host);
  }

  get destroyed(): boolean {
    return this.state === 'destroyed';
  }

  /**
   * Starts every daemon at once (each probes QEMU first, which is most of the wait) and waits for all;
   * the first failure stops the others' waiting, and the caller removes what was started.
   */
  async build(hosts: readonly LabHost[], timeoutMs: number): Promise<void> {
    const stop = new AbortController();
    const starting = hosts.map((labHost) =>
      this.startDaemon(labHost, timeoutMs, stop.signal).catch((error: unknown) => {
        stop.abort(error);
        throw error;
      }),
    );
    const settled = await Promise.allSettled(starting);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed !== undefined) throw stop.signal.reason ?? failed.reason;
    this.daemons = settled.map((s) => (s as PromiseFulfilledResult<Daemon>).value);
    this.state = 'live';
  }

  private async startDaemon(labHost: LabHost, timeoutMs: number, signal: AbortSignal): Promise<Daemon> {
    const dir = join(this.dir, labHost.name);
    prepareHostDir(dir);
    // $0 names the script in sh's messages; $1-$3 are DAEMON_SCRIPT's arguments.
    const script = [tool('sh'), '-c', DAEMON_SCRIPT, 'libvirt-lab', dir, tool('libvirtd'), tool('mount')];
    const child = this.lab.spawn(
      labHost,
      tool('unshare'),
      ['--mount', '--propagation', 'private', '--', ...script],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.starting.push(child);
    const watch = watchProcess(child, `libvirtd at ${labHost.name}`);
    const uri = `qemu+tcp://${labHost.address}/system`;
    await this.waitAnswering(labHost, uri, watch, timeoutMs, signal);
    // `ip netns exec`, unshare and sh each exec the next, so the child is the daemon itself.
    const pid = child.pid ?? 0;
    const command = readOr(`/proc/${pid}/comm`).trim();
    if (command !== 'libvirtd') {
      throw new LibvirtLabError(`libvirt lab: pid ${pid} at ${labHost.name} is '${command}', not libvirtd`);
    }
    const host: LibvirtHost = {
      name: labHost.name,
      labHost,
      uri,
      pid,
      mountNamespace: `/proc/${pid}/ns/mnt`,
      dir,
      runDir: join(dir, 'run'),
      libDir: join(dir, 'lib'),
      logDir: join(dir, 'log'),
      cacheDir: join(dir, 'cache'),
      configDir: join(dir, 'etc'),
    };
    return { host, watch };
  }

  /** Polls `virsh version` until the daemon answers; rejects when it exits, on timeout or on abort. */
  private async waitAnswering(
    labHost: LabHost,
    uri: string,
    watch: ProcessWatch,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const log = () => tailOf(readOr(join(this.dir, labHost.name, 'log', 'libvirtd.log')));
    for (;;) {
      signal.throwIfAborted();
      if (!running(watch.child)) {
        throw new LibvirtLabError(
          `libvirtd at ${labHost.name} exited (${String(watch.child.exitCode ?? watch.child.signalCode)}) ` +
            `before answering: ${tailOf(watch.stderr())} ${log()} (Debian: apt-get install -y ` +
            `--no-install-recommends ${PACKAGES})`,
        );
      }
      const left = deadline - Date.now();
      const answer = await this.lab
        .exec(labHost, tool('virsh'), ['-c', uri, 'version'], { timeoutMs: Math.max(left, 1_000) })
        .catch((error: Error) => ({ code: null, stderr: error.message }));
      if (answer.code === 0) return;
      if (Date.now() >= deadline) {
        throw new LibvirtLabError(
          `libvirtd at ${labHost.name} did not answer within ${timeoutMs} ms: ${tailOf(answer.stderr)} ${log()}`,
        );
      }
      await sleep(POLL_MS);
    }
  }

  host(ref: LibvirtHostRef): LibvirtHost {
    const labHost = this.lab.host(typeof ref === 'object' && 'labHost' in ref ? ref.labHost : ref);
    const daemon = this.daemons.find((d) => d.host.labHost.namespace === labHost.namespace);
    if (daemon === undefined) {
      const names = this.daemons.map((d) => d.host.name).join(', ');
      throw new LibvirtLabError(`libvirt lab: no daemon at ${labHost.name} (daemons at: ${names})`);
    }
    return daemon.host;
  }

  hostPath(ref: LibvirtHostRef, path: string): string {
    const host = this.host(ref);
    const normal = posix.normalize(path);
    for (const { dir, path: inside } of PRIVATE_PATHS) {
      if (normal === inside || normal.startsWith(`${inside}/`)) {
        return join(host.dir, dir, normal.slice(inside.length));
      }
    }
    throw new LibvirtLabError(
      `libvirt lab: ${path} is not under ${PRIVATE_PATHS.map((p) => p.path).join(', ')}`,
    );
  }

  async virshResult(
    ref: LibvirtHostRef,
    args: readonly string[],
    options: VirshOptions = {},
  ): Promise<ExecResult> {
    this.assertLive();
    const host = this.host(ref);
    return this.lab.exec(host.labHost, tool('virsh'), ['-c', host.uri, ...args], {
      timeoutMs: options.timeoutMs ?? VIRSH_TIMEOUT_MS,
    });
  }

  async virsh(ref: LibvirtHostRef, args: readonly string[], options: VirshOptions = {}): Promise<string> {
    const result = await this.virshResult(ref, args, options);
    if (result.code !== 0) {
      throw new LibvirtLabError(
        `virsh ${args.join(' ')} at ${this.host(ref).name} failed (exit ${String(result.code)}): ${tailOf(result.stderr)}`,
      );
    }
    return result.stdout;
  }

  async defineGuest(ref: LibvirtHostRef, guest: GuestDefinition): Promise<DefinedGuest> {
    checkGuest(guest);
    const host = this.host(ref);
    const emulator = process.env.VMSCATTER_QEMU ?? tool('qemu-system-x86_64');
    const xml = domainXml(guest, emulator);
    const file = join(host.dir, 'domains', `${guest.name}.xml`);
    writeFileSync(file, xml);
    await this.virsh(host, ['define', file]);
    return { name: guest.name, host: host.name, xml, serialPath: serialPath(guest.name) };
  }

  serial(ref: LibvirtHostRef, name: string): string {
    return readOr(this.hostPath(ref, serialPath(name)));
  }

  daemonLog(ref: LibvirtHostRef): string {
    return tailOf(readOr(this.hostPath(ref, '/var/log/libvirt/libvirtd.log')), 4000);
  }

  spawn(
    ref: LibvirtHostRef,
    command: string,
    args: readonly string[] = [],
    options: SpawnOptions = {},
  ): ChildProcess {
    this.assertLive();
    const host = this.host(ref);
    const resolved = command.includes('/') ? command : (findTool(command) ?? command);
    return this.lab.spawn(
      host.labHost,
      tool('nsenter'),
      [`--mount=${host.mountNamespace}`, '--', resolved, ...args],
      options,
    );
  }

  private assertLive(): void {
    if (this.state !== 'live' || this.destroying !== undefined) {
      throw new LibvirtLabError(`libvirt lab ${this.stem} is ${this.destroying ? 'destroyed' : this.state}`);
    }
  }

  destroy(): Promise<void> {
    if (this.state === 'destroyed') return Promise.resolve();
    this.destroying ??= this.teardown();
    return this.destroying;
  }

  private async teardown(): Promise<void> {
    await Promise.all(this.daemons.map((daemon) => this.stopHost(daemon)));
    this.finish();
  }

  /** Asks the daemon to destroy its running guests (so its state is consistent), then stops it. */
  private async stopHost(daemon: Daemon): Promise<void> {
    const child = daemon.watch.child;
    if (running(child) && !this.lab.destroyed) {
      const virsh = (args: string[]) =>
        this.lab.exec(daemon.host.labHost, tool('virsh'), ['-c', daemon.host.uri, ...args], {
          timeoutMs: 15_000,
        });
      const listed = await virsh(['list', '--name']).catch(() => undefined);
      const names = listed?.code === 0 ? listed.stdout.split('\n').filter((n) => n.trim() !== '') : [];
      await Promise.all(names.map((name) => virsh(['destroy', name.trim()]).catch(() => undefined)));
    }
    await stopDaemon(child);
  }

  destroySync(): void {
    if (this.state === 'destroyed') return;
    for (const child of this.starting) if (running(child)) child.kill('SIGKILL');
    this.finish();
  }

  /** Kills whatever the daemons left (QEMUs, spawned commands) and removes the directory. */
  private finish(): void {
    const left = killMountingSync(this.stem);
    rmSync(this.dir, { recursive: true, force: true });
    this.state = 'destroyed';
    registry.unregister(this);
    if (left.length > 0) {
      throw new LibvirtLabError(`libvirt lab ${this.stem}: processes ${left.join(', ')} would not die`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Stale labs, and cleanup on exit and signals

/**
 * Removes the directories of libvirt labs whose creating process is dead, killing any daemon or QEMU
 * still using them first. Returns the directories removed.
 */
/**
 * What is wrong with a guest of qemu-guest.ts having moved from `from` to `to`, or undefined when
 * nothing is: it runs at `to`, defined there (persistent) and gone from `from`, and its console at `to`
 * ticks past `before` (what its console at `from` showed before the move) with the same data checksum
 * and no kernel fault, within `timeoutMs`.
 */
export async function movedGuestProblem(
  libvirt: LibvirtLab,
  guest: string,
  from: LibvirtHostRef,
  to: LibvirtHostRef,
  before: string,
  timeoutMs = 60_000,
): Promise<string | undefined> {
  const at = libvirt.host(to).name;
  const state = (await libvirt.virsh(to, ['domstate', guest]).catch(() => 'absent')).trim();
  if (state !== 'running') return `${guest} is '${state}' at ${at}`;
  if (!/^Persistent:\s+yes$/m.test(await libvirt.virsh(to, ['dominfo', guest])))
    return `${guest} is not defined (persistent) at ${at}`;
  const left = await libvirt.virsh(from, ['list', '--all', '--name']);
  if (left.split('\n').some((name) => name.trim() === guest))
    return `${guest} is still defined at ${libvirt.host(from).name}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const serial = libvirt.serial(to, guest);
    if (lastTick(serial) > lastTick(before) && lastMarked(serial, GUEST_SUM_MARKER) !== undefined) {
      if (lastMarked(serial, GUEST_SUM_MARKER) !== lastMarked(before, GUEST_SUM_MARKER))
        return `${guest}: its data check changed at ${at}`;
      return GUEST_KERNEL_FAULT.test(serial) ? `${guest}: a kernel fault at ${at}` : undefined;
    }
    if (Date.now() > deadline)
      return `${guest} did not tick at ${at} past ${lastTick(before)} within ${timeoutMs / 1000} s`;
    await new Promise((r) => setTimeout(r, 250));
  }
}

export function sweepStaleLibvirtLabs(): string[] {
  const parent = tmpdir();
  const removed: string[] = [];
  for (const name of readdirSync(parent)) {
    const match = DIR_PATTERN.exec(name);
    if (match?.[1] === undefined) continue;
    const pid = Number.parseInt(match[1], 36);
    if (pid === process.pid || pidAlive(pid)) continue;
    if (killMountingSync(name).length > 0) continue;
    rmSync(join(parent, name), { recursive: true, force: true });
    removed.push(join(parent, name));
  }
  return removed;
}

const registry = new CleanupRegistry<LibvirtLabImpl>();

/**
 * Starts one libvirtd per named host of a live network lab (see the module comment) and waits until
 * each answers. On failure everything started is removed before rejecting. Destroy the result before
 * the network lab.
 */
export async function createLibvirtLab(lab: Lab, options: LibvirtLabOptions = {}): Promise<LibvirtLab> {
  const availability = libvirtLabAvailable();
  if (!availability.ok) throw new LibvirtLabError(`libvirt lab unavailable: ${availability.why}`);
  const hosts = (options.hosts ?? lab.hosts).map((ref) => lab.host(ref));
  if (new Set(hosts.map((h) => h.name)).size !== hosts.length) {
    throw new LibvirtLabError(`libvirt lab: a host is named twice in ${hosts.map((h) => h.name).join(', ')}`);
  }
  if (options.sweep !== false) sweepStaleLibvirtLabs();
  const libvirt = new LibvirtLabImpl(lab);
  registry.register(libvirt); // from here on, exit and signals remove whatever exists
  try {
    await libvirt.build(hosts, options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
  } catch (error) {
    try {
      libvirt.destroySync();
    } catch {
      // the start's error matters more
    }
    throw error;
  }
  return libvirt;
}
