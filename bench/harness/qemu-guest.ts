import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync } from 'node:fs';
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Prng } from '../../src/memory/prng.js';
import { connectQmp, type QmpClient } from '../../src/qemu/qmp.js';

/**
 * Real QEMU guests for tests and benchmarks: a Debian kernel (downloaded once into a cache), a busybox
 * initramfs whose workload makes guests share most of their memory but not all of it, boot under TCG
 * (nested KVM hangs on these machines) and RAM snapshots through QMP.
 */

/** Something in the guest harness failed: the message says what and how to fix it where we know. */
export class GuestError extends Error {}

/** Printed on the serial console once the workload is in memory. */
export const GUEST_READY_MARKER = 'VMSCATTER-GUEST-READY';
/** Printed with a counter every second after ready: a migrated guest's counter goes on at its target. */
export const GUEST_TICK_MARKER = 'VMSCATTER-TICK';

/**
 * The value of the last whole console line `MARKER VALUE`, or undefined. Only lines the guest finished
 * count: a console read while the guest writes ends in half a line ("VMSCATTER-SUM d9"), whose value
 * is not the guest's.
 */
export function lastMarked(serial: string, marker: string): string | undefined {
  return [...serial.matchAll(new RegExp(`${marker} (\\w+)\\r?\\n`, 'g'))].at(-1)?.[1];
}

/** The last tick a guest's console shows (0 before the first). */
export function lastTick(serial: string): number {
  return Number(lastMarked(serial, GUEST_TICK_MARKER) ?? 0);
}

/** How many ticks a guest's console shows. */
export function tickCount(serial: string): number {
  return [...serial.matchAll(new RegExp(`${GUEST_TICK_MARKER} \\d+\\r?\\n`, 'g'))].length;
}
/** Printed with the md5 of the guest's private data every 5 ticks. */
export const GUEST_SUM_MARKER = 'VMSCATTER-SUM';
/** Printed by the self-check when data the guest wrote reads back different: its memory was lost. */
export const GUEST_CHECK_FAIL_MARKER = 'VMSCATTER-CHECK-FAIL';
/** Printed by the self-check after each pass over its files in which every file read back intact. */
export const GUEST_CHECK_OK_MARKER = 'VMSCATTER-CHECK-OK';
/**
 * What a guest kernel prints when its own memory is corrupt (an oops, a bad page, a broken list). A
 * soft lockup is left out: on an overloaded host a vCPU can stall for seconds with nothing lost.
 */
export const GUEST_KERNEL_FAULT =
  /Oops|BUG: (?!soft lockup)|Kernel panic|general protection|Bad page|list_add corruption|segfault/;
/** Kept across test runs: the kernel package is ~70 MB, its unpacked subset ~45 MB. */
export const DEFAULT_GUEST_CACHE = join(tmpdir(), 'vmscatter-guest-cache');
const MiB = 2 ** 20;
const KERNEL_META_PACKAGE = 'linux-image-amd64';

/** Runs a command to completion and resolves with its stdout; rejects with its stderr's tail. */
function run(command: string, args: readonly string[], cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    child.once('error', (error: NodeJS.ErrnoException) =>
      reject(new GuestError(`${command}: cannot run (${error.code ?? error.message})`)),
    );
    child.once('close', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new GuestError(`${command} ${args.join(' ')} exited with ${code}: ${stderr.trim()}`));
    });
  });
}

/** The versioned package the metapackage depends on, e.g. linux-image-6.1.0-56-amd64 (or -unsigned). */
async function kernelPackage(): Promise<string | undefined> {
  const stdout = await run('apt-cache', ['depends', KERNEL_META_PACKAGE]).catch(() => '');
  return /Depends:\s*(linux-image-\S+-amd64(?:-unsigned)?)\s*$/m.exec(stdout)?.[1];
}

/** The kernel of a completed cache entry, if there is one. */
function cachedKernel(entry: string): string | undefined {
  const boot = join(entry, 'boot');
  const kernel = existsSync(boot) ? readdirSync(boot).find((name) => name.startsWith('vmlinuz-')) : undefined;
  return kernel === undefined ? undefined : join(boot, kernel);
}

/**
 * Returns the path of a Debian amd64 kernel (vmlinuz), fetching it once into `cacheDir`: the versioned
 * package behind linux-image-amd64, fetched with `apt-get download` and unpacked without installing.
 * Only boot/ and the filesystem modules are kept (the modules are realistic shared guest data, see
 * guestModuleFiles). A kernel already in the cache is used as is, so images stay comparable across runs;
 * remove the cache to pick up a newer one. Concurrent callers each unpack into their own temporary
 * directory and rename it into place; the first rename wins.
 */
export async function ensureGuestKernel(cacheDir = DEFAULT_GUEST_CACHE): Promise<string> {
  mkdirSync(cacheDir, { recursive: true });
  const entries = readdirSync(cacheDir).filter((name) => name.startsWith('linux-image-'));
  for (const entry of entries.sort().reverse()) {
    const kernel = cachedKernel(join(cacheDir, entry));
    if (kernel) return kernel;
  }
  let pkg = await kernelPackage();
  if (!pkg && process.getuid?.() === 0) {
    await run('apt-get', ['update', '-qq']); // a fresh container has no package lists yet
    pkg = await kernelPackage();
  }
  if (!pkg) {
    throw new GuestError(
      `no kernel package: \`apt-cache depends ${KERNEL_META_PACKAGE}\` names no linux-image-<version>-amd64 ` +
        `(run apt-get update as root; Debian or Ubuntu with apt is needed)`,
    );
  }
  const staging = mkdtempSync(join(cacheDir, '.download-'));
  try {
    chmodSync(staging, 0o755);
    await run('apt-get', ['download', pkg], staging);
    const deb = readdirSync(staging).find((name) => name.endsWith('.deb'));
    if (!deb) throw new GuestError(`apt-get download ${pkg} left no .deb in ${staging}`);
    const unpacked = join(staging, pkg);
    mkdirSync(unpacked);
    await unpackDeb(join(staging, deb), unpacked, ['./boot/vmlinuz-*', './lib/modules/*/kernel/fs/*']);
    if (!cachedKernel(unpacked)) throw new GuestError(`${pkg} holds no boot/vmlinuz-*`);
    try {
      renameSync(unpacked, join(cacheDir, pkg));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error; // else another run got there first
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return cachedKernel(join(cacheDir, pkg))!;
}

/** `dpkg-deb --fsys-tarfile deb | tar -x patterns`: the parts we keep, without unpacking 400 MB of modules. */
function unpackDeb(deb: string, into: string, patterns: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const dpkg = spawn('dpkg-deb', ['--fsys-tarfile', deb], { stdio: ['ignore', 'pipe', 'pipe'] });
    const tar = spawn('tar', ['-x', '-C', into, '--wildcards', ...patterns], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    dpkg.stdout.pipe(tar.stdin);
    let stderr = '';
    for (const child of [dpkg, tar]) {
      child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
      child.once('error', (error) => reject(new GuestError(`unpacking ${deb}: ${error.message}`)));
    }
    let dpkgCode: number | null = null;
    dpkg.once('close', (code) => (dpkgCode = code));
    tar.once('close', (code) => {
      if (code === 0 && dpkgCode !== null && dpkgCode !== 0) {
        reject(new GuestError(`dpkg-deb --fsys-tarfile ${deb} exited with ${dpkgCode}: ${stderr.trim()}`));
      } else if (code === 0) resolve();
      else reject(new GuestError(`unpacking ${deb}: tar exited with ${code}: ${stderr.trim()}`));
    });
  });
}

/** The kernel modules unpacked beside a kernel from ensureGuestKernel (sorted, so the same on every run). */
export function guestModuleFiles(kernel: string): string[] {
  const files: string[] = [];
  const walk = (dir: string) => {
    const entries = readdirSync(dir, { withFileTypes: true });
    for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (entry.isDirectory()) walk(join(dir, entry.name));
      else if (entry.name.endsWith('.ko')) files.push(join(dir, entry.name));
    }
  };
  const modules = join(dirname(dirname(kernel)), 'lib', 'modules');
  if (existsSync(modules)) walk(modules);
  return files;
}

export interface InitramfsOptions {
  /** Seeds this guest's private data: guests built with different seeds differ there. */
  readonly seed: number;
  /** MiB of workload files in the image (default 16); the guest also copies them into tmpfs. */
  readonly workloadMiB?: number;
  /** Share of the workload private to this guest (default 0.25); the rest is the same in every guest. */
  readonly privateShare?: number;
  /** Files for the common part (e.g. guestModuleFiles); default: generated text-like data. */
  readonly sharedFiles?: readonly string[];
  /** KiB the guest rewrites each second once ready, so a live migration has dirty pages (default 256). */
  readonly dirtyKiBPerSecond?: number;
  /** MiB of the file the rewritten pages rotate over (default: 16 seconds' worth, at least 4 MiB). */
  readonly dirtyRingMiB?: number;
  /**
   * Re-read the common files every second once ready, as a guest serving from its page cache does
   * (reads dirty nothing, but the shared data stays in use). Default false.
   */
  readonly rereadCommon?: boolean;
  /** A statically linked busybox (default: the first `busybox` on PATH). */
  readonly busybox?: string;
  /**
   * Self-checking writers, one per vCPU: each keeps rewriting `files` files of `fileMiB` MiB from
   * /dev/urandom in tmpfs and, before rewriting one, checks it against the md5 taken when it was
   * written, printing GUEST_CHECK_FAIL_MARKER on a mismatch and GUEST_CHECK_OK_MARKER after each clean
   * pass. A page lost by a migration shows up as a failed check (or, in kernel memory, as an oops).
   */
  readonly selfCheck?: { readonly writers: number; readonly files: number; readonly fileMiB: number };
}

/** Seeded bytes that look like memory: half random (compressed or encrypted data), half text records. */
function seededData(seed: number, bytes: number): Uint8Array {
  const prng = new Prng(seed);
  const out = new Uint8Array(bytes);
  const half = Math.floor(bytes / 2 / 4) * 4;
  const words = new Uint32Array(out.buffer, 0, half / 4);
  for (let i = 0; i < words.length; i++) words[i] = prng.nextU32();
  const encoder = new TextEncoder();
  for (let n = 0, at = half; at < bytes; n++) {
    const line = `record ${seed}:${n} user=u${prng.below(5000)} balance=${prng.below(1e6)} flags=${prng.below(16)}\n`;
    at += encoder.encodeInto(line, out.subarray(at)).written;
  }
  return out;
}

function findOnPath(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  throw new GuestError(`${name} not found on PATH (install busybox-static)`);
}

interface CpioEntry {
  readonly name: string;
  readonly mode: number;
  readonly data?: Uint8Array;
  readonly rdev?: readonly [number, number];
}

/** The cpio "newc" format the kernel unpacks: 110-byte ASCII headers, names and data padded to 4 bytes. */
function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad = (length: number) => Buffer.alloc((4 - (length % 4)) % 4);
  const hex = (value: number) => value.toString(16).padStart(8, '0');
  [...entries, { name: 'TRAILER!!!', mode: 0 }].forEach((entry, i) => {
    const data = entry.data ?? new Uint8Array(0);
    const [major, minor] = entry.rdev ?? [0, 0];
    const fields = [i + 1, entry.mode, 0, 0, 1, 0, data.length, 0, 0, major, minor, entry.name.length + 1, 0];
    const header = Buffer.from(`070701${fields.map(hex).join('')}${entry.name}\0`);
    parts.push(header, pad(header.length), Buffer.from(data), pad(data.length));
  });
  return Buffer.concat(parts);
}

const DIR = 0o040755;
const FILE = 0o100644;
const EXEC = 0o100755;
const LINK = 0o120777;
const CHAR = 0o020600;

/** The guest's /init: mount, load the workload into memory, say ready, then keep dirtying pages. */
function initScript(
  seed: number,
  dirtyPages: number,
  ringPages?: number,
  reread = false,
  selfCheck?: InitramfsOptions['selfCheck'],
): string {
  const ring = ringPages ?? Math.max(1024, dirtyPages * 16); // by default over a 4 MiB+ file
  const checker = selfCheck
    ? `mkdir -p /run/check
check() {
  pass=0
  while :; do
    pass=$((pass + 1)); bad=0
    for k in $(seq 1 ${selfCheck.files}); do
      f=/run/check/$1-$k
      if [ -f $f.sum ]; then
        [ "$(md5sum < $f | cut -c1-32)" = "$(cat $f.sum)" ] || { bad=1; echo "${GUEST_CHECK_FAIL_MARKER} $f"; }
      fi
      dd if=/dev/urandom of=$f bs=1048576 count=${selfCheck.fileMiB} 2>/dev/null
      md5sum < $f | cut -c1-32 > $f.sum
    done
    [ $bad -eq 0 ] && echo "${GUEST_CHECK_OK_MARKER} $1 $pass"
  done
}
for w in $(seq 1 ${selfCheck.writers}); do check $w & done
`
    : '';
  return `#!/bin/sh
# vmscatter test guest, seed ${seed} (bench/harness/qemu-guest.ts)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /run
# The image's files stay in rootfs (as a page cache would hold them) and are copied into tmpfs (as an
# application holds its data), so shared and private pages both appear more than once.
read -r started _ < /proc/uptime
mkdir -p /run/work
cp -r /data/common /data/private /run/work/
dd if=/dev/urandom of=/run/work/dirty bs=4096 count=${ring} 2>/dev/null
read -r uptime _ < /proc/uptime
echo "${GUEST_READY_MARKER} seed=${seed} uptime=$uptime workload-started=$started"
${checker}n=0
while :; do
  n=$((n + 1))
  echo "$n" > /run/work/counter
  echo "${GUEST_TICK_MARKER} $n"
  # Every 5 s, a checksum of the private data the guest wrote at boot: the same before and after a move.
  [ $((n % 5)) -eq 1 ] && echo "${GUEST_SUM_MARKER} $(cat /run/work/private/* | md5sum | cut -c1-32)"
  dd if=/dev/urandom of=/run/work/dirty bs=4096 count=${dirtyPages} seek=$(((n * ${dirtyPages}) % ${ring})) conv=notrunc 2>/dev/null
${reread ? '  cat /data/common/* > /dev/null\n' : ''}  sleep 1
done
`;
}

/**
 * Writes a gzip'd cpio initramfs: busybox-static, /init, and the workload under /data: `common/` (the
 * sharedFiles, cut to size, or generated data from a fixed seed: the same in every guest) and
 * `private/` (generated from `seed`). Guests of the same options but different seeds therefore share
 * the kernel, busybox and common data and differ in the private data and what the kernel randomises.
 */
export function buildInitramfs(path: string, options: InitramfsOptions): void {
  const workload = Math.round((options.workloadMiB ?? 16) * MiB);
  const privateBytes = Math.round(workload * (options.privateShare ?? 0.25));
  let commonLeft = workload - privateBytes;
  const dirtyPages = Math.round((options.dirtyKiBPerSecond ?? 256) / 4);
  const ringPages =
    options.dirtyRingMiB === undefined
      ? undefined
      : Math.max(dirtyPages, Math.round((options.dirtyRingMiB * MiB) / 4096));
  const dirs = ['bin', 'dev', 'proc', 'sys', 'run', 'data', 'data/common', 'data/private'];
  const entries: CpioEntry[] = dirs.map((name) => ({ name, mode: DIR }));
  entries.push(
    { name: 'bin/busybox', mode: EXEC, data: readFileSync(options.busybox ?? findOnPath('busybox')) },
    { name: 'bin/sh', mode: LINK, data: Buffer.from('busybox') },
    { name: 'dev/console', mode: CHAR, rdev: [5, 1] }, // init's stdio before devtmpfs is mounted
    {
      name: 'init',
      mode: EXEC,
      data: Buffer.from(
        initScript(options.seed, dirtyPages, ringPages, options.rereadCommon, options.selfCheck),
      ),
    },
  );
  for (const [i, file] of (options.sharedFiles ?? []).entries()) {
    if (commonLeft <= 0) break;
    const data = readFileSync(file).subarray(0, commonLeft);
    entries.push({ name: `data/common/${i}-${basename(file)}`, mode: FILE, data });
    commonLeft -= data.length;
  }
  if (commonLeft > 0)
    entries.push({ name: 'data/common/generated', mode: FILE, data: seededData(0xc0ffee, commonLeft) });
  entries.push({ name: 'data/private/data', mode: FILE, data: seededData(options.seed, privateBytes) });
  writeFileSync(path, gzipSync(cpioNewc(entries)));
}

export interface BootOptions {
  readonly kernel: string;
  readonly initrd: string;
  readonly memoryMiB: number;
  readonly qmpSocket: string;
  /** Also write the serial console to this file. */
  readonly serialLog?: string;
  readonly extraArgs?: readonly string[];
  /** Start as a migration target (`-incoming <uri>`) and do not wait for the ready marker. */
  readonly incoming?: string;
  /** vCPUs (default 1); more than one runs multi-threaded TCG. */
  readonly cpus?: number;
  /** Kernel command line (default `console=ttyS0 panic=-1 quiet`). */
  readonly append?: string;
  /** Wait this long for the ready marker (default 60 s). */
  readonly readyTimeoutMs?: number;
  /** QEMU binary (default $VMSCATTER_QEMU or qemu-system-x86_64). */
  readonly qemu?: string;
  /**
   * A command QEMU runs under, e.g. `['ip', 'netns', 'exec', ns]` (its network traffic then leaves
   * through that namespace). It must exec QEMU in place, so that `pid` stays QEMU's.
   */
  readonly wrap?: readonly string[];
}

export interface Guest {
  readonly process: ChildProcess;
  readonly pid: number;
  readonly qmp: QmpClient;
  /** Milliseconds from spawning QEMU to the ready marker (to QMP being up with `incoming`). */
  readonly bootMs: number;
  /** The serial console's output so far (its last 64 KiB). */
  serial(): string;
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<void>;
  /** Quits QEMU through QMP; SIGKILL if it has not exited within 5 s. Safe to call twice. */
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Boots a guest under TCG and waits for its ready marker. On any failure QEMU is killed before rejecting. */
export async function bootGuest(options: BootOptions): Promise<Guest> {
  const started = Date.now();
  const qemu = options.qemu ?? process.env.VMSCATTER_QEMU ?? 'qemu-system-x86_64';
  const args = [
    ...['-accel', 'tcg', '-m', String(options.memoryMiB), '-smp', String(options.cpus ?? 1)],
    ...['-nodefaults', '-display', 'none', '-no-reboot', '-serial', 'stdio'],
    ...['-kernel', options.kernel, '-initrd', options.initrd],
    ...['-append', options.append ?? 'console=ttyS0 panic=-1 quiet'],
    ...['-qmp', `unix:${options.qmpSocket},server=on,wait=off`],
    ...(options.incoming ? ['-incoming', options.incoming] : []),
    ...(options.extraArgs ?? []),
  ];
  rmSync(options.qmpSocket, { force: true }); // a stale socket from a killed run would be connected to
  const [command, ...prefix] = [...(options.wrap ?? []), qemu];
  const child = spawn(command!, [...prefix, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => live.forEach((c) => c.kill('SIGKILL')));
  }
  let serial = '';
  let stderr = '';
  const log = options.serialLog ? createWriteStream(options.serialLog) : undefined;
  let onSerial: (() => void) | undefined;
  child.stdout.on('data', (chunk: Buffer) => {
    serial = (serial + chunk.toString('latin1')).slice(-64 * 1024);
    log?.write(chunk);
    onSerial?.();
  });
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  let spawnError: NodeJS.ErrnoException | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('error', (error: NodeJS.ErrnoException) => {
      spawnError = error;
      resolve();
    });
    child.once('close', () => resolve());
  }).then(() => {
    live.delete(child);
    log?.end();
  });
  const died = exited.then((): never => {
    if (spawnError) {
      throw new GuestError(
        `${qemu}: cannot run (${spawnError.code ?? spawnError.message}; install qemu-system-x86)`,
      );
    }
    const why = child.signalCode ?? `status ${child.exitCode}`;
    throw new GuestError(`${qemu} exited (${why}) while booting: ${stderr.trim()} ${serial.slice(-600)}`);
  });
  died.catch(() => undefined);

  let qmp: QmpClient | undefined;
  const connecting = new AbortController();
  const kill = async () => {
    connecting.abort(); // a connect still retrying must not take the QMP slot of the next QEMU here
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await qmp?.close();
    rmSync(options.qmpSocket, { force: true });
  };
  try {
    qmp = await Promise.race([
      connectQmp(options.qmpSocket, { connectTimeoutMs: 15_000, signal: connecting.signal }),
      died,
    ]);
    if (!options.incoming) {
      const timeoutMs = options.readyTimeoutMs ?? 60_000;
      await Promise.race([
        died,
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => {
            reject(
              new GuestError(
                `no ${GUEST_READY_MARKER} within ${timeoutMs} ms; console: ${serial.slice(-600)}`,
              ),
            );
          }, timeoutMs).unref();
          onSerial = () => {
            if (!serial.includes(GUEST_READY_MARKER)) return;
            clearTimeout(timer);
            resolve();
          };
          onSerial();
        }),
      ]);
    }
  } catch (error) {
    await kill();
    throw error;
  }
  const client = qmp;
  const bootMs = Date.now() - started;
  let stopping: Promise<void> | undefined;
  return {
    process: child,
    pid: child.pid!,
    qmp: client,
    bootMs,
    serial: () => serial,
    exited,
    stop: () =>
      (stopping ??= (async () => {
        // QEMU may close the socket before replying to quit; a QEMU that does not quit is killed below.
        if (!client.closed) await client.execute('quit').catch(() => undefined);
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
        await kill();
      })()),
  };
}

/**
 * Saves the guest's RAM (guest-physical 0 .. memoryMiB) to `path`: pauses the guest, `pmemsave`, checks
 * the size, resumes. QEMU writes the file itself, so its directory must be writable by QEMU. Legacy
 * holes below 1 MiB are read through the machine's address space as QEMU maps them.
 */
export async function saveGuestMemory(guest: Guest, path: string, memoryMiB: number): Promise<void> {
  if (memoryMiB > 3072) throw new GuestError(`${memoryMiB} MiB: RAM above 3 GiB is not contiguous from 0`);
  const size = memoryMiB * MiB;
  // Written aside and renamed, so a cached image is never a partial one.
  const partial = `${resolve(path)}.partial-${process.pid}`;
  try {
    await guest.qmp.execute('stop');
    try {
      await guest.qmp.execute('pmemsave', { val: 0, size, filename: partial });
    } finally {
      await guest.qmp.execute('cont');
    }
    const saved = statSync(partial).size;
    if (saved !== size) throw new GuestError(`pmemsave wrote ${saved} bytes to ${partial}, expected ${size}`);
    renameSync(partial, path);
  } catch (error) {
    rmSync(partial, { force: true });
    throw error;
  }
}

/** Quits the QEMU behind a QMP socket, if one answers there (cleanup of destinations a test left). */
export async function quitQemuAt(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const qmp = await connectQmp(path, { connectTimeoutMs: 2000 }).catch(() => undefined);
  await qmp?.execute('quit').catch(() => undefined);
  await qmp?.close().catch(() => undefined);
}
