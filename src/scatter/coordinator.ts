import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { connectControl } from '../control/control-channel.js';
import { VmscatterError } from '../errors.js';
import { DIGEST_BYTES, PAGE_SIZE, ZERO_PAGE_ID } from '../memory/page.js';
import { buildScatterPlan } from '../plan/scatter-plan.js';
import type { Host, Topology } from '../topology/model.js';
import { AgentLink, AgentLostError } from './agent-link.js';
import { decodeAnnouncement, type HeldDigests } from './digest-set.js';
import { planJobWork, type JobWork, type PeerFetch } from './job-work.js';
import { preflightProblems, PreflightError, type PreflightTarget } from './preflight.js';
import { attributeWireBytes } from './wire-attribution.js';
import type { SourcePages } from './source-pages.js';
import { scanJob, type JobScan } from './job-scan.js';
import { heldForLive, liveSummary, migrateLiveVms } from './live-phase.js';
import type { CompressionMode } from './page-codec.js';
import { PROTOCOL_VERSION } from './protocol.js';
import { rebuildAll } from './rebuild-phase.js';
import { seedRounds, type CompressionDecision } from './seeding.js';

/**
 * `vmscatter scatter`, the coordinator on the source host: connect to every target's agent, scan and
 * plan, send each needed unique page once per multicast round, send each VM's manifest, and collect
 * each agent's verdict on the image it rebuilt. An agent lost mid-job costs only its own VMs: they are
 * reported as not verified (and keep running at the source); `--resume` finishes them later without
 * sending what the agent holds by then.
 */
export interface ScatterOptions {
  readonly topology: Topology;
  readonly secret: Uint8Array;
  readonly maxGroups: number;
  readonly seed: number;
  /** Path MTU of the multicast network (symbols are sized so no datagram fragments). */
  readonly mtu: number;
  /** Local working directory (sockets of running VMs' streams, their scanned pages). */
  readonly workDir?: string;
  /** Skip VMs whose target already holds a verified image with the source's digest. */
  readonly resume: boolean;
  /** Page compression: adaptive (default) decides from the codec's measured rate and the link's. */
  readonly compression?: CompressionMode;
  /** Send multicast payload in clear (the operator's explicit choice; never the default). */
  readonly insecurePlaintext: boolean;
  /** Pages in one multicast round (bounds the source's memory and what a lost agent loses). */
  readonly roundPages?: number;
  readonly onProgress?: (event: ScatterProgress) => void;
  readonly onWarning?: (line: string) => void;
  /** Scan, plan and run the pre-flight checks, then stop: nothing moves. */
  readonly dryRun?: boolean;
  /** Ctrl-C: no new VM starts moving; a live migration in flight rolls back. */
  readonly signal?: AbortSignal;
  /** Running VMs: QEMU's downtime limit (ms), migrations at once, time allowed per GiB. */
  readonly downtimeLimitMs?: number;
  readonly maxParallel?: number;
  readonly timeoutPerGiB?: { readonly seconds: number; readonly action: 'abort' | 'stop-and-copy' };
}

export interface ScatterProgress {
  readonly phase: 'connect' | 'scan' | 'plan' | 'seed' | 'rebuild' | 'migrate';
  readonly done: number;
  readonly total: number;
  /** What done/total count. */
  readonly unit: 'targets' | 'pages' | 'bytes' | 'vms';
}

export interface VmReport {
  readonly name: string;
  readonly target: string;
  readonly pages: number;
  readonly zeroPages: number;
  readonly sha256: string;
  /** Its share of the bytes on the source's link (the pages it needed, split among their holders). */
  readonly wireBytes: number;
  /** A running VM's migration: downtime, and its stream's pages by how they travelled. */
  readonly live?: ReturnType<typeof liveSummary>;
  readonly verified: boolean;
  /** Verified by an earlier job and left alone (`--resume`). */
  readonly alreadyVerified: boolean;
  readonly error?: string;
}

export interface TargetReport {
  readonly name: string;
  readonly vms: readonly string[];
  /** Pages its VMs needed that it already held (sent to it by nobody). */
  readonly heldPages: number;
  /** Pages it needed that went out by multicast. */
  readonly multicastPages: number;
  /** Pages it lacked at rebuild time and got over the control channel. */
  readonly unicastPages: number;
  /** Pages it fetched from an agent of its site that held them. */
  readonly peerPages: number;
  /** Bytes the source sent it: every multicast round it received, and pages by unicast. */
  readonly wireBytes: number;
  readonly lost?: string;
}

export interface ScatterReport {
  readonly ok: boolean;
  /** A dry run (or a job interrupted before anything moved): the plan, nothing moved. */
  readonly planned?: { readonly dryRun: boolean };
  readonly job: string;
  readonly vms: readonly VmReport[];
  readonly targets: readonly TargetReport[];
  readonly source: {
    /** Bytes of multicast payload (batches, before packet headers) and on the wire (all datagrams). */
    readonly multicastPayloadBytes: number;
    readonly multicastWireBytes: number;
    readonly unicastBytes: number;
    readonly rounds: number;
    readonly uniquePagesSent: number;
    readonly packets: { readonly data: number; readonly parity: number; readonly repair: number };
  };
  readonly compression: CompressionDecision;
  /** Pages by how they travelled: zero (never), held already, multicast (raw, uniform, compressed), unicast. */
  readonly pages: {
    readonly total: number;
    readonly zero: number;
    readonly held: number;
    readonly multicast: number;
    readonly unicast: number;
    readonly peer: number;
    readonly raw: number;
    readonly uniform: number;
    readonly compressed: number;
  };
  readonly seconds: Readonly<
    Record<'connect' | 'scan' | 'plan' | 'seed' | 'rebuild' | 'migrate' | 'total', number>
  >;
}

const DEFAULT_ROUND_PAGES = 16_384;
const CONTROL_OPTIONS = { heartbeatMs: 2000, idleTimeoutMs: 30_000 };
const MAX_ANNOUNCEMENT_FALSE_POSITIVES = 1e-3;
const PEER_FETCH_TIMEOUT_MS = 10 * 60_000;

export async function runScatter(options: ScatterOptions): Promise<ScatterReport> {
  const { topology } = options;
  const started = performance.now();
  const seconds = { connect: 0, scan: 0, plan: 0, seed: 0, rebuild: 0, migrate: 0, total: 0 };
  const progress = options.onProgress ?? (() => undefined);
  const source = topology.hosts.find((h) => h.role === 'source')!;
  const job = `job-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;

  let t = performance.now();
  const allTargets = topology.hosts.filter((h) => h.role === 'target');
  const connected = await connectAgents(allTargets, options.secret, job, progress);
  seconds.connect = (performance.now() - t) / 1000;
  const liveTargets = allTargets.filter((h) => connected.links.has(h.name));
  if (liveTargets.length === 0)
    throw new VmscatterError('VMS_NO_AGENTS', `no agent answered: ${connected.failures.join('; ')}`, 4);

  const links = liveTargets.map((host, i) => new AgentLink(i, host, connected.links.get(host.name)!));
  try {
    const readies = await Promise.all(links.map((link) => link.next('ready', () => true, 30_000)));
    const held = readies.map((r, i) => trustedAnnouncement(r.held, links[i]!.host.name, options.onWarning));

    t = performance.now();
    progress({ phase: 'scan', done: 0, total: 1, unit: 'pages' });
    const runDir = join(options.workDir ?? '.vmscatter', 'run');
    mkdirSync(runDir, { recursive: true });
    const scan = await scanJob(topology, {
      secret: options.secret,
      runDir,
      onProgress: (done, total) => progress({ phase: 'scan', done, total, unit: 'pages' }),
    });
    const { sha256 } = scan;
    seconds.scan = (performance.now() - t) / 1000;

    t = performance.now();
    progress({ phase: 'plan', done: 0, total: 1, unit: 'vms' });
    // With --resume, a VM verified at a live target stays there: nothing of it moves again.
    const verifiedAt = new Map<string, string>();
    readies.forEach((ready, i) => {
      for (const v of ready.verified) verifiedAt.set(`${v.vm}\n${v.sha256}`, liveTargets[i]!.name);
    });
    const doneAt = topology.vms.map((vm, v) =>
      options.resume && vm.source.kind === 'image' ? verifiedAt.get(`${vm.name}\n${sha256[v]}`) : undefined,
    );
    const jobTopology: Topology = {
      ...topology,
      hosts: topology.hosts.filter((h) => h.role === 'source' || connected.links.has(h.name)),
      vms: topology.vms.map((vm, v) => (doneAt[v] ? { ...vm, fixedTarget: doneAt[v] } : vm)),
    };
    const plan = buildScatterPlan(jobTopology, scan.vms, scan.table.size, {
      maxGroups: Math.min(options.maxGroups, topology.multicast.size),
      seed: options.seed,
    });
    const { index, schedule, assignment } = plan.detail;
    const done = doneAt.map((target) => target !== undefined);
    const work = planJobWork({
      vms: scan.vms,
      index,
      schedule,
      assignment,
      targetCount: liveTargets.length,
      held: (target, id) => held[target]?.mayHold(scan.table.digestOf(id)) ?? false,
      peerHolding: (target, id) => {
        const site = liveTargets[target]!.site;
        const digest = scan.table.digestOf(id);
        const peer = liveTargets.findIndex(
          (h, u) => u !== target && h.site === site && held[u]?.mayHold(digest) === true,
        );
        return peer < 0 ? undefined : peer;
      },
      done,
      roundPages: options.roundPages ?? DEFAULT_ROUND_PAGES,
    });
    seconds.plan = (performance.now() - t) / 1000;

    const pages = scan.pages;
    try {
      const problems = preflightProblems(
        await preflightTargets(liveTargets, readies, work, scan, assignment, topology),
      );
      if (problems.length > 0) throw new PreflightError(problems);
      if (options.dryRun || options.signal?.aborted) {
        for (const link of links) link.send({ t: 'end' });
        return plannedReport(
          job,
          topology,
          liveTargets,
          scan,
          assignment,
          done,
          seconds,
          options.dryRun === true,
        );
      }
      t = performance.now();
      // Site peers serve over their own links while the source multicasts over its own.
      const [seeded, fetched] = await Promise.all([
        seedRounds(work, plan, links, pages, source, {
          mtu: options.mtu,
          compression: options.compression ?? 'adaptive',
          insecurePlaintext: options.insecurePlaintext,
          onProgress: (done, total) => progress({ phase: 'seed', done, total, unit: 'pages' }),
        }),
        fetchFromPeers(work.peerFetches, links, pages),
      ]);
      seconds.seed = (performance.now() - t) / 1000;

      t = performance.now();
      const imageWork = { ...work, pendingVms: work.pendingVms.filter((v) => !scan.qmp.has(v)) };
      const outcome = await rebuildAll(imageWork, plan, links, pages, scan.vms, sha256, (done, total) =>
        progress({ phase: 'rebuild', done, total, unit: 'vms' }),
      );
      seconds.rebuild = (performance.now() - t) / 1000;

      t = performance.now();
      const migrated = await migrateLiveVms({
        pending: work.pendingVms.filter((v) => scan.qmp.has(v)),
        topology,
        scan,
        plan,
        links,
        runDir,
        secret: options.secret,
        holds: heldForLive(work.rounds, seeded.roundCompleted, held, scan.table, liveTargets.length),
        bandwidthBytesPerSecond: source.linkBitsPerSecond / 8,
        onVerdict: (done, total) => progress({ phase: 'migrate', done, total, unit: 'vms' }),
        ...(options.downtimeLimitMs === undefined ? {} : { downtimeLimitMs: options.downtimeLimitMs }),
        ...(options.maxParallel === undefined ? {} : { maxParallel: options.maxParallel }),
        ...(options.timeoutPerGiB === undefined ? {} : { timeoutPerGiB: options.timeoutPerGiB }),
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      });
      seconds.migrate = (performance.now() - t) / 1000;
      for (const [v, result] of migrated) {
        if (result.ok) outcome.verified.add(v);
        else outcome.errors.set(v, result.error ?? 'not migrated');
      }
      seconds.total = (performance.now() - started) / 1000;

      const wire = attributeWireBytes({
        rounds: work.rounds,
        roundWireBytes: seeded.roundWireBytes,
        roundReceivers: seeded.roundReceivers,
        index,
        done,
        vmCount: topology.vms.length,
        targetCount: liveTargets.length,
        unicastBytes: outcome.unicastBytesByTarget,
      });
      for (const link of links) {
        link.send({ t: 'end' });
        await link.drain().catch(() => undefined);
      }
      const vms: VmReport[] = topology.vms.map((vm, v) => {
        const failure = outcome.errors.get(v) ?? (done[v] ? undefined : links[assignment[v]!]!.lost);
        const verified = done[v] || outcome.verified.has(v);
        return {
          name: vm.name,
          target: liveTargets[assignment[v]!]!.name,
          pages: scan.vms[v]!.pages.length,
          zeroPages: scan.vms[v]!.pages.reduce((n, id) => n + (id === ZERO_PAGE_ID ? 1 : 0), 0),
          sha256: sha256[v]!,
          wireBytes: Math.round(
            wire.vmBytes[v]! + (outcome.unicastBytesByVm.get(v) ?? 0) + (migrated.get(v)?.sentBytes ?? 0),
          ),
          ...(migrated.has(v) ? { live: liveSummary(migrated.get(v)!) } : {}),
          verified,
          alreadyVerified: done[v]!,
          ...(verified ? {} : { error: failure ?? 'not verified' }),
        };
      });
      const targets: TargetReport[] = [
        ...liveTargets.map((host, i) => ({
          name: host.name,
          vms: vms.filter((vm) => vm.target === host.name).map((vm) => vm.name),
          heldPages: work.heldPages[i]!,
          multicastPages: work.neededPages[i]!,
          unicastPages: outcome.unicastPages[i]!,
          peerPages: fetched[i]!,
          wireBytes: Math.round(wire.targetBytes[i]!),
          ...(links[i]!.lost ? { lost: links[i]!.lost } : {}),
        })),
        ...connected.failures.map((failure, i) => ({
          name: connected.failedHosts[i]!,
          vms: [],
          heldPages: 0,
          multicastPages: 0,
          unicastPages: 0,
          peerPages: 0,
          wireBytes: 0,
          lost: failure,
        })),
      ];
      const totalPages = scan.vms.reduce((n, vm) => n + vm.pages.length, 0);
      const zero = vms.reduce((n, vm) => n + vm.zeroPages, 0);
      return {
        ok: vms.every((vm) => vm.verified),
        job,
        vms,
        targets,
        source: {
          multicastPayloadBytes: seeded.multicastPayloadBytes,
          multicastWireBytes: seeded.multicastWireBytes,
          unicastBytes: outcome.unicastBytes,
          rounds: seeded.rounds,
          uniquePagesSent: seeded.uniquePagesSent,
          packets: seeded.packets,
        },
        compression: seeded.compression,
        pages: {
          total: totalPages,
          zero,
          held: targets.reduce((n, x) => n + x.heldPages, 0),
          multicast: seeded.uniquePagesSent,
          ...seeded.encodings,
          unicast: outcome.unicastPages.reduce((a, b) => a + b, 0),
          peer: fetched.reduce((a, b) => a + b, 0),
        },
        seconds,
      };
    } finally {
      await scan.close();
    }
  } finally {
    for (const link of links) link.close();
  }
}

/** What each target will need (disk, QEMU) for the pre-flight checks. */
async function preflightTargets(
  targets: readonly Host[],
  readies: readonly { freeBytes: number; qemuVersion: string }[],
  work: JobWork,
  scan: JobScan,
  assignment: Int32Array,
  topology: Topology,
): Promise<PreflightTarget[]> {
  const versions = new Map<number, string>();
  for (const [v, qmp] of scan.qmp) {
    const info = (await qmp.execute('query-version').catch(() => ({}))) as {
      qemu?: { major: number; minor: number; micro: number };
    };
    if (info.qemu) versions.set(v, `${info.qemu.major}.${info.qemu.minor}.${info.qemu.micro}`);
  }
  return targets.map((host, t) => {
    const placed = work.pendingVms.filter((v) => assignment[v] === t);
    const imageBytes = placed
      .filter((v) => topology.vms[v]!.source.kind === 'image')
      .reduce((n, v) => n + scan.vms[v]!.pages.filter((id) => id !== ZERO_PAGE_ID).length * PAGE_SIZE, 0);
    return {
      name: host.name,
      freeBytes: readies[t]!.freeBytes,
      neededBytes: (work.neededPages[t]! + work.peerPages[t]!) * PAGE_SIZE + imageBytes,
      qemuVersion: readies[t]!.qemuVersion,
      incomingQemuVersions: placed.flatMap((v) => (versions.has(v) ? [versions.get(v)!] : [])),
    };
  });
}

/** The report of a job that moved nothing: where each VM would go. */
function plannedReport(
  job: string,
  topology: Topology,
  targets: readonly Host[],
  scan: JobScan,
  assignment: Int32Array,
  done: readonly boolean[],
  seconds: ScatterReport['seconds'],
  dryRun: boolean,
): ScatterReport {
  const vms = topology.vms.map((vm, v) => ({
    name: vm.name,
    target: targets[assignment[v]!]!.name,
    pages: scan.vms[v]!.pages.length,
    zeroPages: scan.vms[v]!.pages.reduce((n, id) => n + (id === ZERO_PAGE_ID ? 1 : 0), 0),
    sha256: scan.sha256[v]!,
    wireBytes: 0,
    verified: done[v]!,
    alreadyVerified: done[v]!,
    ...(done[v] ? {} : { error: dryRun ? 'dry run: not moved' : 'interrupted before it moved' }),
  }));
  return {
    ok: vms.every((vm) => vm.verified),
    planned: { dryRun },
    job,
    vms,
    targets: targets.map((host) => ({
      name: host.name,
      vms: vms.filter((vm) => vm.target === host.name).map((vm) => vm.name),
      heldPages: 0,
      multicastPages: 0,
      unicastPages: 0,
      peerPages: 0,
      wireBytes: 0,
    })),
    source: {
      multicastPayloadBytes: 0,
      multicastWireBytes: 0,
      unicastBytes: 0,
      rounds: 0,
      uniquePagesSent: 0,
      packets: { data: 0, parity: 0, repair: 0 },
    },
    compression: {
      mode: 'off',
      on: false,
      linkBitsPerSecond: 0,
      roundsCompressed: 0,
      roundBitsPerSecond: [],
    },
    pages: {
      total: 0,
      zero: 0,
      held: 0,
      multicast: 0,
      raw: 0,
      uniform: 0,
      compressed: 0,
      unicast: 0,
      peer: 0,
    },
    seconds,
  };
}

/** Has each target fetch from its site peers what they announced; returns pages stored per target. */
async function fetchFromPeers(
  fetches: readonly PeerFetch[],
  links: readonly AgentLink[],
  pages: SourcePages,
): Promise<number[]> {
  const stored = new Array<number>(links.length).fill(0);
  await Promise.all(
    fetches.map(async ({ target, peer, ids }, id) => {
      const digests = new Uint8Array(ids.length * DIGEST_BYTES);
      ids.forEach((digestId, i) => digests.set(pages.digestOf(digestId), i * DIGEST_BYTES));
      const peerHost = links[peer]!.host;
      links[target]!.send({ t: 'fetch-from', id, peer: `${peerHost.address}:${peerHost.port}`, digests });
      try {
        const reply = await links[target]!.next('fetched', (m) => m.id === id, PEER_FETCH_TIMEOUT_MS);
        stored[target]! += reply.stored;
      } catch (error) {
        if (!(error instanceof AgentLostError)) throw error;
      }
    }),
  );
  return stored;
}

/**
 * What an agent says it holds, if believable: an announcement that claims too much (a Bloom filter
 * whose bits are mostly set) would make the source skip pages wholesale, so it is ignored, and said.
 */
function trustedAnnouncement(
  bytes: Uint8Array,
  host: string,
  warn: ((line: string) => void) | undefined,
): HeldDigests | undefined {
  const held = decodeAnnouncement(bytes);
  if (held && held.falsePositiveRate <= MAX_ANNOUNCEMENT_FALSE_POSITIVES) return held;
  warn?.(
    `${host}: ignoring its announcement of held pages (${held ? 'too many false positives' : 'malformed'})`,
  );
  return undefined;
}

async function connectAgents(
  targets: readonly Host[],
  secret: Uint8Array,
  job: string,
  progress: (event: ScatterProgress) => void,
) {
  const links = new Map<string, Awaited<ReturnType<typeof connectControl>>>();
  const failures: string[] = [];
  const failedHosts: string[] = [];
  let done = 0;
  await Promise.all(
    targets.map(async (host) => {
      try {
        const channel = await connectControl(host.address, host.port, { secret, ...CONTROL_OPTIONS });
        channel.send({ t: 'job', version: PROTOCOL_VERSION, job, host: host.name });
        links.set(host.name, channel);
      } catch (error) {
        failures.push(`${host.name}: ${(error as Error).message}`);
        failedHosts.push(host.name);
      }
      progress({ phase: 'connect', done: ++done, total: targets.length, unit: 'targets' });
    }),
  );
  return { links, failures, failedHosts };
}
