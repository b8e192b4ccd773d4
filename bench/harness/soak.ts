import { spawn } from 'node:child_process';
import { CLI_NODE_OPTIONS } from '../../src/cli/node-options.js';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  bootGuest,
  buildInitramfs,
  ensureGuestKernel,
  GUEST_CHECK_FAIL_MARKER,
  GUEST_CHECK_OK_MARKER,
  GUEST_KERNEL_FAULT,
  lastTick,
  quitQemuAt,
  type Guest,
} from './qemu-guest.js';

/**
 * Live scatters in a row of one self-checking guest (q35, 2 vCPUs under multi-threaded TCG, one
 * writer per vCPU rewriting and checking its files), each move from where the last one left it, on
 * loopback with `vmscatter scatter`. After each move the guest must be alive where the report says
 * it is: at its target, its ticks going on and its own data check passing there; or, after a
 * rollback, at its source, the same. A guest dead or failing its check where it runs is the failure
 * this tool must never have.
 */
export interface SoakOptions {
  readonly runs: number;
  readonly dir: string;
  /** The compiled CLI (dist/src/cli/main.js). */
  readonly cli: string;
  readonly memoryMiB?: number;
  /** Ports from here on (4 per run). */
  readonly basePort: number;
  readonly log?: (line: string) => void;
}

export type SoakOutcome =
  /** Verified at the target and alive there with its check passing. */
  | 'alive'
  /** Not moved (rolled back), alive at its source. */
  | 'stayed'
  /** Dead or failing its own check where the report says it runs. */
  | 'lost';

export interface SoakRun {
  readonly run: number;
  readonly outcome: SoakOutcome;
  /** Memory checks that failed and were retried within the run (QEMU lost pages; caught). */
  readonly rollbacks: readonly string[];
  /** MiB of the destination's RAM the memory check found different and repaired (QEMU lost pages). */
  readonly repairedMiB?: number;
  readonly seconds: number;
  readonly downtimeMs?: number;
  readonly cause?: string;
}

export interface SoakSummary {
  readonly runs: number;
  readonly alive: number;
  readonly stayed: number;
  readonly lost: number;
  /**
   * Memory-check catches: migrations in which QEMU's own migration lost pages, caught before the guest
   * ran (repaired, or rolled back and retried).
   */
  readonly qemuLostPagesCaught: number;
  /** Of those, the ones repaired in place, and the MiB they rewrote. */
  readonly repaired: number;
  readonly repairedMiB: number;
  readonly details: readonly SoakRun[];
}

const CHECK = { writers: 2, files: 4, fileMiB: 4 } as const;

/**
 * Waits until `read()` (a console) shows the guest alive and checking: ticks past `afterTick + 3` and
 * a clean pass of every writer; undefined then, or the reason it is not.
 */
async function aliveAndChecking(read: () => string, afterTick: number): Promise<string | undefined> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const text = read();
    const fault = GUEST_KERNEL_FAULT.exec(text);
    if (fault) return `guest kernel: ${text.slice(fault.index, fault.index + 160).replace(/\s+/g, ' ')}`;
    if (text.includes(GUEST_CHECK_FAIL_MARKER)) return 'its own data check failed';
    const oks = new Set(
      [...text.matchAll(new RegExp(`${GUEST_CHECK_OK_MARKER} (\\d+)`, 'g'))].map((m) => m[1]),
    );
    if (lastTick(text) > afterTick + 3 && oks.size >= CHECK.writers) return undefined;
    if (Date.now() > deadline) return `no ticks or clean checks within 120 s (tick ${lastTick(text)})`;
    await new Promise((r) => setTimeout(r, 500));
  }
}

function runCli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // As the command runs itself (its first line gives node these options).
    const child = spawn(process.execPath, [...CLI_NODE_OPTIONS, ...args]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 600_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** What both soaks start from: the kernel, the self-checking initramfs, the machine. */
async function soakGuest(options: SoakOptions) {
  const initrd = join(options.dir, 'initrd.gz');
  buildInitramfs(initrd, { seed: 5, workloadMiB: 8, selfCheck: CHECK });
  return {
    kernel: await ensureGuestKernel(),
    initrd,
    memoryMiB: options.memoryMiB ?? 256,
    machine: ['-machine', 'q35', '-smp', '2'],
    log: options.log ?? (() => undefined),
  };
}

function summarize(details: SoakRun[]): SoakSummary {
  return {
    runs: details.length,
    alive: details.filter((d) => d.outcome === 'alive').length,
    stayed: details.filter((d) => d.outcome === 'stayed').length,
    lost: details.filter((d) => d.outcome === 'lost').length,
    qemuLostPagesCaught: details.reduce((n, d) => n + d.rollbacks.length + (d.repairedMiB ? 1 : 0), 0),
    repaired: details.filter((d) => (d.repairedMiB ?? 0) > 0).length,
    repairedMiB: details.reduce((n, d) => n + (d.repairedMiB ?? 0), 0),
    details,
  };
}

export async function soakLiveScatters(options: SoakOptions): Promise<SoakSummary> {
  const { dir } = options;
  const { kernel, initrd, memoryMiB, machine, log } = await soakGuest(options);
  const sources: Guest[] = [];
  // A fresh guest at the source: at the start, and after a guest was lost (so every run counts).
  const freshSource = async () => {
    const n = sources.length;
    const vmsQmp = join(dir, `src-${n}-vms.qmp`);
    const guest = await bootGuest({
      kernel,
      initrd,
      memoryMiB,
      qmpSocket: join(dir, `src-${n}.qmp`),
      extraArgs: [...machine, '-qmp', `unix:${vmsQmp},server=on,wait=off`],
    });
    sources.push(guest);
    const healthy = await aliveAndChecking(() => guest.serial(), 0);
    if (healthy) throw new Error(`the soak guest is not healthy before any move: ${healthy}`);
    return { qmp: vmsQmp, serial: () => guest.serial() };
  };
  const details: SoakRun[] = [];
  const destinations: string[] = [];
  try {
    // Where the guest runs now: its QMP socket for vmscatter and how to read its console.
    let at = await freshSource();
    for (let run = 1; run <= options.runs; run++) {
      const work = join(dir, `run-${run}`);
      mkdirSync(work, { recursive: true });
      const serialPath = join(work, 'target.serial');
      const command = [
        'qemu-system-x86_64',
        ...['-accel', 'tcg', '-m', String(memoryMiB), ...machine, '-nodefaults', '-display', 'none'],
        ...['-no-reboot', '-serial', `file:${serialPath}`, '-kernel', kernel, '-initrd', initrd],
        ...['-append', 'console=ttyS0 panic=-1 quiet'],
      ];
      const port = options.basePort + run * 4;
      const topology = join(work, 'topology.yaml');
      writeFileSync(
        topology,
        [
          `multicast: { base: 239.255.${100 + (port % 100)}.0, size: 4, port: ${port + 3} }`,
          'hosts:',
          `  - { name: src, address: 127.0.0.1, port: ${port}, role: source, link: 1Gbit }`,
          `  - { name: t1, address: 127.0.0.1, port: ${port + 1}, role: target, memory: 4GiB, link: 1Gbit }`,
          'vms:',
          '  - name: g1',
          `    memory: ${memoryMiB}MiB`,
          `    source: { qemu: { qmp: ${at.qmp}, command: ${JSON.stringify(command)} } }`,
        ].join('\n'),
      );
      const tickBefore = lastTick(at.serial());
      const started = Date.now();
      const result = await runCli([
        options.cli,
        'scatter',
        '--topology',
        topology,
        '--work-dir',
        work,
        '--json',
      ]);
      let report: {
        vms?: {
          verified?: boolean;
          error?: string;
          live?: { rollbacks?: string[]; downtimeMs?: number; memoryCheck?: { repairedMiB?: number } | null };
        }[];
      };
      try {
        report = JSON.parse(result.stdout);
      } catch {
        report = {};
      }
      const vm = report.vms?.[0];
      const rollbacks = vm?.live?.rollbacks ?? [];
      const seconds = (Date.now() - started) / 1000;
      let outcome: SoakOutcome;
      let cause: string | undefined;
      if (vm?.verified) {
        const qmp = join(work, 'agents', 't1', 'run', 'g1.qmp');
        destinations.push(qmp);
        const read = () => (existsSync(serialPath) ? readFileSync(serialPath, 'latin1') : '');
        cause = await aliveAndChecking(read, 0);
        outcome = cause ? 'lost' : 'alive';
        at = { qmp, serial: read };
      } else {
        // Not moved: the guest must run on, checking, at its source.
        const why = await aliveAndChecking(at.serial, tickBefore);
        outcome = why ? 'lost' : 'stayed';
        cause = why ?? vm?.error ?? `exit ${result.code}: ${result.stderr.slice(-300)}`;
      }
      const entry: SoakRun = {
        run,
        outcome,
        rollbacks,
        ...(vm?.live?.memoryCheck?.repairedMiB ? { repairedMiB: vm.live.memoryCheck.repairedMiB } : {}),
        seconds,
        ...(vm?.live?.downtimeMs !== undefined && vm.verified ? { downtimeMs: vm.live.downtimeMs } : {}),
        ...(cause ? { cause } : {}),
      };
      details.push(entry);
      log(JSON.stringify(entry));
      if (outcome === 'lost') {
        await quitQemuAt(at.qmp).catch(() => undefined);
        at = await freshSource();
      }
    }
  } finally {
    for (const guest of sources) await guest.stop().catch(() => undefined);
    for (const qmp of destinations) await quitQemuAt(qmp).catch(() => undefined);
  }
  return summarize(details);
}

/**
 * The baseline: QEMU's own migration (`migrate` into a destination started with `-incoming`, no
 * vmscatter, no memory check) of the same self-checking guest, `runs` times in a row. Guests it leaves
 * dead or failing their check are what QEMU itself loses, which vmscatter's memory check must catch.
 */
export async function soakQemuMigrations(options: SoakOptions): Promise<SoakSummary> {
  const { dir } = options;
  const { kernel, initrd, memoryMiB, machine, log } = await soakGuest(options);
  const args = { kernel, initrd, memoryMiB, extraArgs: machine };
  const healthy = async (guest: Guest) => {
    const why = await aliveAndChecking(() => guest.serial(), 0);
    if (why) throw new Error(`the soak guest is not healthy before any move: ${why}`);
    return guest;
  };
  let current = await healthy(await bootGuest({ ...args, qmpSocket: join(dir, 'qemu-0.qmp') }));
  const details: SoakRun[] = [];
  try {
    for (let run = 1; run <= options.runs; run++) {
      const incoming = join(dir, `qemu-${run}.in`);
      const next = await bootGuest({
        ...args,
        qmpSocket: join(dir, `qemu-${run}.qmp`),
        incoming: `unix:${incoming}`,
      });
      const started = Date.now();
      await current.qmp.execute('migrate', { uri: `unix:${incoming}` });
      let status = 'active';
      let downtimeMs: number | undefined;
      while (['setup', 'active', 'device', 'pre-switchover'].includes(status)) {
        await new Promise((r) => setTimeout(r, 100));
        const info = (await current.qmp.execute('query-migrate')) as { status?: string; downtime?: number };
        status = info.status ?? 'none';
        downtimeMs = info.downtime;
      }
      const seconds = (Date.now() - started) / 1000;
      let outcome: SoakOutcome;
      let cause: string | undefined;
      if (status === 'completed') {
        await current.stop();
        current = next;
        cause = await aliveAndChecking(() => next.serial(), 0);
        outcome = cause ? 'lost' : 'alive';
      } else {
        await next.stop();
        cause = `migration ${status}`;
        outcome = 'stayed';
      }
      const entry: SoakRun = {
        run,
        outcome,
        rollbacks: [],
        seconds,
        ...(downtimeMs !== undefined ? { downtimeMs } : {}),
        ...(cause ? { cause } : {}),
      };
      details.push(entry);
      log(JSON.stringify(entry));
      if (outcome === 'lost') {
        await current.stop();
        current = await healthy(await bootGuest({ ...args, qmpSocket: join(dir, `qemu-${run}-fresh.qmp`) }));
      }
    }
  } finally {
    await current.stop().catch(() => undefined);
  }
  return summarize(details);
}
