/**
 * libvirt domains: `vmscatter evacuate` beside `virsh migrate` of the same domains, in the libvirt lab.
 *
 *   npm run bench:libvirt [-- --count 4 --memory 256 --workload 32 --rate 1gbit --json]
 *
 * Lab: hosts src, t1, t2 in network namespaces on one switch, a libvirtd each (bench/harness/
 * libvirt-lab.ts); the source's link shaped to --rate (tc tbf). --count self-checking guests (2 vCPUs,
 * TCG, a busybox initramfs with --workload MiB of data, a quarter of it private to each guest, and
 * 256 KiB/s rewritten) run at src as persistent libvirt domains.
 * - (v) vmscatter: `vmscatter scatter` from src with no VM list (src's libvirt says what runs: the job
 *   `evacuate --host src` runs), an agent at t1 and t2 with empty stores; encryption on, adaptive
 *   compression. Time: the command's wall time (connect, scan, plan, multicast, migrations, checks).
 * - (l) libvirt: the domains moved back to src (not measured), then `virsh migrate --live --p2p
 *   --persistent --undefinesource` of every domain to the target vmscatter gave it, all at once (QEMU's
 *   defaults: uncompressed, libvirt's unlimited bandwidth). Time: until the last virsh returned.
 * Bytes: what src put on its link (the lab's counter on its switch port, headers included). After each
 * method every guest must run at its target, defined there only, with its own data check unchanged.
 * Writes docs/bench/libvirt.json (not with --json, which prints it instead).
 * Needs root, the lab's tools, libvirt and QEMU. The lab and every process are removed at the end.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createLab, watchProcess, type Lab, type ProcessWatch } from './harness/lab.js';
import {
  createLibvirtLab,
  libvirtLabAvailable,
  movedGuestProblem,
  type LibvirtLab,
} from './harness/libvirt-lab.js';
import {
  buildInitramfs,
  ensureGuestKernel,
  GUEST_SUM_MARKER,
  lastMarked,
  lastTick,
} from './harness/qemu-guest.js';
import { CLI_NODE_OPTIONS } from '../src/cli/node-options.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '4' },
    memory: { type: 'string', default: '256' },
    workload: { type: 'string', default: '32' },
    rate: { type: 'string', default: '1gbit' },
    json: { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const memoryMiB = Number(values.memory);
const workloadMiB = Number(values.workload);
const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, '../src/cli/main.js');
const out = join(here, '../../docs/bench/libvirt.json');
const TARGETS = ['t1', 't2'];
const MiB = 2 ** 20;
const log = (line: string) => process.stderr.write(`${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const guests = Array.from({ length: count }, (_, i) => `g${i + 1}`);

async function until<T>(what: string, timeoutMs: number, check: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(250);
  }
}

/** Every guest moved whole to its target (movedGuestProblem); throws naming the first that did not. */
async function checkMoved(
  libvirt: LibvirtLab,
  placement: ReadonlyMap<string, string>,
  before: ReadonlyMap<string, string>,
): Promise<void> {
  for (const [guest, target] of placement) {
    const problem = await movedGuestProblem(libvirt, guest, 'src', target, before.get(guest)!);
    if (problem) throw new Error(problem);
  }
}

/**
 * `virsh migrate` of a guest to `to` by libvirt's defaults (its own TCP connection between the QEMUs),
 * to the target's lab address: the machine's host name, libvirt's default, resolves elsewhere here.
 */
function migrate(guest: string, libvirt: LibvirtLab, to: string): string[] {
  const target = libvirt.host(to);
  // A port of its own per guest: given only an address, libvirt answered some with the host name.
  const port = 49_200 + guests.indexOf(guest);
  return [
    ...['migrate', '--live', '--p2p', '--persistent', '--undefinesource', guest, target.uri],
    ...['--migrateuri', `tcp://${target.labHost.address}:${port}`],
  ];
}

/** What each guest's console at src printed so far. */
function consoles(libvirt: LibvirtLab): Map<string, string> {
  return new Map(guests.map((g) => [g, libvirt.serial('src', g)]));
}

/** What the bench reads of `vmscatter scatter --json`. */
interface ScatterJson {
  readonly seconds: Record<string, number>;
  readonly vms: readonly {
    readonly name: string;
    readonly target: string;
    readonly live?: {
      readonly downtimeMs: number;
      readonly seconds: number;
      readonly sentBytes: number;
      readonly switchoverSteps: Record<string, number> | null;
    };
  }[];
}

interface Measured {
  readonly seconds: number;
  readonly bytes: number;
}

async function measure(lab: Lab, run: () => Promise<void>): Promise<Measured> {
  const bytesBefore = await lab.txBytes('src');
  const started = performance.now();
  await run();
  const seconds = (performance.now() - started) / 1000;
  return { seconds, bytes: (await lab.txBytes('src')) - bytesBefore };
}

async function main(): Promise<void> {
  const available = libvirtLabAvailable();
  if (!available.ok) throw new Error(`the libvirt lab is needed: ${available.why}`);
  const dir = mkdtempSync(join(tmpdir(), 'vms-bench-libvirt-'));
  let lab: Lab | undefined;
  let libvirt: LibvirtLab | undefined;
  const agents: ProcessWatch[] = [];
  try {
    const kernel = await ensureGuestKernel();
    lab = await createLab({ hosts: ['src', ...TARGETS] });
    await lab.shape('src', { rate: values.rate! });
    libvirt = await createLibvirtLab(lab);
    const lv = libvirt;
    log(`booting ${count} guests of ${memoryMiB} MiB at src (libvirt domains)`);
    for (const [i, name] of guests.entries()) {
      const initrd = join(dir, `${name}.initrd.gz`);
      buildInitramfs(initrd, { seed: 101 + i, workloadMiB });
      await lv.defineGuest('src', { name, memoryMiB, vcpus: 2, kernel, initrd });
      await lv.virsh('src', ['start', name]);
    }
    for (const name of guests)
      await until(`${name} ready at src`, 180_000, () => {
        const serial = lv.serial('src', name);
        return lastTick(serial) >= 2 && lastMarked(serial, GUEST_SUM_MARKER) !== undefined ? true : undefined;
      });

    const topology = join(dir, 'topology.yaml');
    const host = (name: string, role: string) =>
      `  - { name: ${name}, address: ${lv.host(name).labHost.address}, port: 7681, ${role}, link: 1Gbit, libvirt: "${lv.host(name).uri}" }`;
    writeFileSync(
      topology,
      [
        'multicast: { base: 239.255.98.0, size: 8, port: 7690 }',
        'hosts:',
        host('src', 'role: source'),
        ...TARGETS.map((t) => host(t, `role: target, memory: ${count * memoryMiB}MiB`)),
      ].join('\n'),
    );
    writeFileSync(join(dir, 'secret'), 'the libvirt bench deployment secret, 32+ bytes', { mode: 0o600 });
    for (const t of TARGETS) {
      const args = ['agent', '--topology', topology, '--host', t, '--dir', join(dir, `agent-${t}`)];
      const agent = watchProcess(
        lv.spawn(
          t,
          process.execPath,
          [...CLI_NODE_OPTIONS, cli, ...args, '--secret-file', join(dir, 'secret')],
          {
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        ),
      );
      agents.push(agent);
      await agent.waitFor(/listening/, 15_000);
    }

    log("(v) vmscatter scatter (no VM list: what src's libvirt runs)");
    let before = consoles(lv);
    let placement = new Map<string, string>();
    let report: ScatterJson | undefined;
    const scatter = await measure(lab, async () => {
      const args = ['scatter', '--topology', topology, '--work-dir', join(dir, 'work')];
      const run = watchProcess(
        lv.spawn(
          'src',
          process.execPath,
          [...CLI_NODE_OPTIONS, cli, ...args, '--secret-file', join(dir, 'secret'), '--json'],
          {
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        ),
      );
      const done = await run.exit(600_000);
      if (done.code !== 0) throw new Error(`scatter exited ${done.code}: ${done.stderr}`);
      report = JSON.parse(done.stdout) as ScatterJson;
      placement = new Map(report.vms.map((vm) => [vm.name, vm.target]));
    });
    await checkMoved(lv, placement, before);
    log(`    ${scatter.seconds.toFixed(1)} s, ${(scatter.bytes / MiB).toFixed(1)} MiB on src's link`);

    log('moving the guests back to src (not measured)');
    await Promise.all(
      [...placement].map(([guest, target]) =>
        lv.virsh(target, migrate(guest, lv, 'src'), {
          timeoutMs: 300_000,
        }),
      ),
    );
    await sleep(3000);
    before = consoles(lv);

    log('(l) virsh migrate, every domain at once, to the same targets');
    const virsh = await measure(lab, async () => {
      await Promise.all(
        [...placement].map(([guest, target]) =>
          lv.virsh('src', migrate(guest, lv, target), {
            timeoutMs: 600_000,
          }),
        ),
      );
    });
    await checkMoved(lv, placement, before);
    // libvirt's own figure for each domain's downtime (stop at the source to run at the target).
    const virshDowntimeMs: Record<string, number | undefined> = {};
    for (const [guest, target] of placement) {
      const info = await lv.virsh(target, ['domjobinfo', guest, '--completed']).catch(() => '');
      const ms = /^Total downtime:\s+(\d+)\s+ms/m.exec(info)?.[1];
      virshDowntimeMs[guest] = ms === undefined ? undefined : Number(ms);
    }
    log(`    ${virsh.seconds.toFixed(1)} s, ${(virsh.bytes / MiB).toFixed(1)} MiB on src's link`);

    const round = (x: number, digits = 3) => Number(x.toFixed(digits));
    const summary = {
      bench: 'libvirt',
      date: new Date().toISOString(),
      command: `npm run bench:libvirt -- ${process.argv.slice(2).join(' ')}`.trim(),
      config: { count, memoryMiB, workloadMiB, rate: values.rate, targets: TARGETS.length },
      placement: Object.fromEntries(placement),
      vmscatter: {
        seconds: round(scatter.seconds, 2),
        bytes: scatter.bytes,
        phases: report?.seconds,
        downtimeMs: Object.fromEntries(report?.vms.map((vm) => [vm.name, vm.live?.downtimeMs]) ?? []),
        migrationSeconds: Object.fromEntries(report?.vms.map((vm) => [vm.name, vm.live?.seconds]) ?? []),
        switchoverSteps: Object.fromEntries(
          report?.vms.map((vm) => [vm.name, vm.live?.switchoverSteps]) ?? [],
        ),
      },
      virshMigrate: { seconds: round(virsh.seconds, 2), bytes: virsh.bytes, downtimeMs: virshDowntimeMs },
      ratios: {
        seconds: round(scatter.seconds / virsh.seconds),
        bytes: round(scatter.bytes / virsh.bytes),
      },
    };
    console.log(
      `libvirt domains: ${count} x ${memoryMiB} MiB, src -> ${TARGETS.join(', ')}, src link ${values.rate}`,
    );
    console.log('method                      time      src link bytes');
    console.log(
      `(v) vmscatter scatter    ${scatter.seconds.toFixed(1).padStart(6)} s   ${(scatter.bytes / MiB).toFixed(1).padStart(8)} MiB`,
    );
    console.log(
      `(l) virsh migrate        ${virsh.seconds.toFixed(1).padStart(6)} s   ${(virsh.bytes / MiB).toFixed(1).padStart(8)} MiB`,
    );
    console.log(`(v)/(l): time ${summary.ratios.seconds}x, bytes ${summary.ratios.bytes}x`);
    if (values.json) console.log(JSON.stringify(summary, null, 2));
    else {
      writeFileSync(out, `${JSON.stringify(summary, null, 2)}\n`);
      console.log(`wrote ${out}`);
    }
  } finally {
    for (const agent of agents) agent.child.kill('SIGTERM');
    await libvirt?.destroy();
    await lab?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
