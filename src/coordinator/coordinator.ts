import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { VmscatterError } from '../errors.js';
import { buildScatterPlan } from '../plan/scatter-plan.js';
import type { Host, Topology } from '../topology/model.js';
import type { OpenDatagramSocket } from '../transport/datagram.js';
import { AgentLink } from '../wire/agent-link.js';
import type { FromAgent } from '../wire/protocol.js';
import {
  confirmHeld,
  connectAgents,
  fetchFromPeers,
  liveReferenceCandidates,
  reserveMemory,
  trustedAnnouncement,
} from './job-agents.js';
import { jobReport, plannedReport, type ScatterReport } from './job-report.js';
import { scanJob } from './job-scan.js';
import { planJobWork } from '../plan/job-work.js';
import { DirtyRatesAsReached } from '../live/dirty-rate.js';
import { ensurePrivateDir } from '../store/file-io.js';
import { fullPageCodec, heldForLive, migrateLiveVms } from './live-phase.js';
import type { CompressionMode } from '../memory/page-codec.js';
import { preflightProblems, preflightTargets, PreflightError } from './preflight.js';
import type { ScatterProgress } from './progress.js';
import { rebuildAll } from './rebuild-phase.js';
import { seedRounds } from '../seed/seeding.js';
import { attributeWireBytes } from './wire-attribution.js';

/**
 * `vmscatter scatter`, the coordinator on the source host: connect to every target's agent, scan and
 * plan, send each needed unique page once per multicast round, send each VM's manifest, and collect
 * each agent's verdict on the image it rebuilt. An agent lost mid-job costs only its own VMs: they are
 * reported as not verified (and keep running at the source); `--resume` finishes them later without
 * sending what the agent holds by then.
 */
export type { ScatterReport, TargetReport, VmReport } from './job-report.js';

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
  /** The network multicast goes out on (default: the host's; a MemoryNetwork runs a job in-process). */
  readonly openSocket?: OpenDatagramSocket;
  /** Pages in one multicast round (bounds the source's memory and what a lost agent loses). */
  readonly roundPages?: number;
  /**
   * A round unicast would send to its receivers in less link time than this (ms) goes by unicast,
   * not by a multicast session of its own (seeding.ts, worthASession); 0 multicasts every round.
   */
  readonly unicastBelowMs?: number;
  readonly onProgress?: (event: ScatterProgress) => void;
  readonly onWarning?: (line: string) => void;
  /** Scan, plan and run the pre-flight checks, then stop: nothing moves. */
  readonly dryRun?: boolean;
  /**
   * Ctrl-C: no new VM starts moving; the multicast round on the wire stops at once and no other
   * starts; a live migration in flight rolls back. VMs not verified by then are reported with the
   * signal's reason as their error, and the agents are told the job ended (they drop what is
   * unfinished). An image rebuild under way finishes: its pages are at the target already.
   */
  readonly signal?: AbortSignal;
  /** Running VMs: QEMU's downtime limit (ms), migrations at once, time allowed per GiB. */
  readonly downtimeLimitMs?: number;
  readonly maxParallel?: number;
  readonly timeoutPerGiB?: { readonly seconds: number; readonly action: 'abort' | 'stop-and-copy' };
}

export type { ScatterProgress };

const DEFAULT_ROUND_PAGES = 16_384;
/** Placements tried while other jobs reserve what this one placed. */
const RESERVE_ATTEMPTS = 3;

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
    throw new VmscatterError('VMS_NO_AGENTS', `no agent answered: ${connected.failures.join('; ')}`);

  const links = liveTargets.map((host, i) => new AgentLink(i, host, connected.links.get(host.name)!));
  try {
    const readies = await Promise.all(links.map((link) => link.next('ready', () => true, 30_000)));
    const held = readies.map((r, i) => trustedAnnouncement(r.held, links[i]!.host.name, options.onWarning));
    const { runningAt, movedEarlier } = earlierMoves(topology, readies, liveTargets, options.resume);
    const everyTargetAnswered = liveTargets.length === allTargets.length;

    t = performance.now();
    progress({ phase: 'scan', done: 0, total: 1, unit: 'pages' });
    // Absolute: QEMU is told paths in it (its stream socket, pmemsave files), from a directory of its own.
    const runDir = resolve(options.workDir ?? '.vmscatter', 'run');
    ensurePrivateDir(runDir);
    // Each running VM's dirty rate is measured from the moment the scan reaches it (a second of QEMU's
    // own sampling, over by the time the migrations need it).
    const dirtyRatesAsReached = new DirtyRatesAsReached();
    const scan = await scanJob(topology, {
      secret: options.secret,
      runDir,
      onReached: (v, monitor) => dirtyRatesAsReached.start(v, monitor),
      onProgress: (done, total) => progress({ phase: 'scan', done, total, unit: 'pages' }),
      moved: movedEarlier,
      mayResumeStopped: (v) => everyTargetAnswered && !runningAt.has(topology.vms[v]!.name),
      ...(options.onWarning ? { onWarning: options.onWarning } : {}),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    const { sha256 } = scan;
    seconds.scan = (performance.now() - t) / 1000;

    t = performance.now();
    progress({ phase: 'plan', done: 0, total: 1, unit: 'vms' });
    const doneAt = options.resume
      ? targetsHoldingAlready(topology, readies, liveTargets, sha256, movedEarlier, runningAt)
      : topology.vms.map(() => undefined);
    // Other jobs under way at a target (drains of other hosts) hold the guest memory they placed
    // there: this placement leaves it, and reserves what it places. A reservation refused (another job
    // reserved meanwhile) places again with what the agents hold now.
    const reservedElsewhere = readies.map((r) => r.reserved);
    const planFor = () => {
      const jobTopology: Topology = {
        ...topology,
        hosts: topology.hosts.flatMap((h) => {
          if (h.role === 'source') return [h];
          const t = liveTargets.findIndex((target) => target.name === h.name);
          if (t < 0) return [];
          return [{ ...h, memoryBytes: Math.max(0, h.memoryBytes - reservedElsewhere[t]!) }];
        }),
        vms: topology.vms.map((vm, v) => (doneAt[v] ? { ...vm, fixedTarget: doneAt[v] } : vm)),
      };
      return buildScatterPlan(jobTopology, scan.vms, scan.table.size, {
        maxGroups: Math.min(options.maxGroups, topology.multicast.size),
        seed: options.seed,
      });
    };
    let plan = planFor();
    for (let attempt = 1; ; attempt++) {
      const refused = await reserveMemory(links, topology, plan.detail.assignment, doneAt);
      if (refused.length === 0) break;
      for (const { target, reserved } of refused) reservedElsewhere[target] = reserved;
      if (attempt >= RESERVE_ATTEMPTS)
        throw new VmscatterError(
          'VMS_INFEASIBLE',
          `other jobs kept reserving guest memory at ${refused.map((r) => liveTargets[r.target]!.name).join(', ')}: placed ${attempt} times, none fit; run again once they are done`,
        );
      plan = planFor();
    }
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
      streamed: (v) => scan.qmp.has(v),
    });
    seconds.plan = (performance.now() - t) / 1000;

    const pages = scan.pages;
    try {
      const problems = preflightProblems(
        await preflightTargets(liveTargets, readies, work, scan, plan.detail, topology),
      );
      if (problems.length > 0) throw new PreflightError(problems);
      if (options.dryRun || options.signal?.aborted) {
        for (const link of links) link.send({ t: 'end' });
        const planned = plannedReport(
          job,
          topology,
          liveTargets,
          scan,
          plan.detail,
          done,
          seconds,
          options.dryRun === true,
        );
        const reason = interruption(options.signal);
        if (options.dryRun || reason === undefined) return planned;
        return { ...planned, vms: planned.vms.map((vm) => (vm.verified ? vm : { ...vm, error: reason })) };
      }
      // Agents lost before the job's end; the end closes every channel, so it is read before that.
      let lostAtEnd: readonly (string | undefined)[] | undefined;
      const endJob = async (): Promise<readonly (string | undefined)[]> => {
        if (lostAtEnd) return lostAtEnd;
        lostAtEnd = links.map((link) => link.lost);
        for (const link of links) {
          link.send({ t: 'end' });
          await link.drain().catch(() => undefined);
        }
        return lostAtEnd;
      };
      t = performance.now();
      const livePlanned = work.pendingVms.filter((v) => scan.qmp.has(v));
      // Which announced pages the running VMs' streams may refer to, confirmed while seeding runs.
      const confirming = confirmHeld(
        links,
        liveReferenceCandidates(scan.vms, livePlanned, assignment, held, scan.table),
      );
      confirming.catch(() => undefined); // awaited below; a seeding failure must not leave it unhandled
      const dirtyRates = dirtyRatesAsReached.probe(livePlanned, (v) => scan.qmp.get(v)!);
      // Site peers serve over their own links while the source multicasts over its own.
      const fetching = fetchFromPeers(work.peerFetches, links, pages);
      fetching.catch(() => undefined); // awaited below; a seeding failure must not leave it unhandled
      // A target's images are built as soon as it holds what the rounds and its site peers send it,
      // while the rounds for other targets go on. Once interrupted, no rebuild starts.
      const seededAt = links.map(() => deferred<boolean>());
      // Site peers' pages are waited for, unless the job is interrupted meanwhile (the listener goes
      // with the fetches: one signal may serve many jobs).
      const fetchedOrInterrupted = new Promise<void>((resolve) => {
        const done = () => {
          options.signal?.removeEventListener('abort', done);
          resolve();
        };
        options.signal?.addEventListener('abort', done, { once: true });
        fetching.then(done, done);
      });
      const ready = async (target: number): Promise<boolean> => {
        if (!(await seededAt[target]!.promise) || options.signal?.aborted) return false;
        await fetchedOrInterrupted;
        return !options.signal?.aborted;
      };
      const imageWork = { ...work, pendingVms: work.pendingVms.filter((v) => !scan.qmp.has(v)) };
      const rebuilding = rebuildAll(
        imageWork,
        plan,
        links,
        pages,
        scan.vms,
        sha256,
        (done, total) => progress({ phase: 'rebuild', done, total, unit: 'vms' }),
        ready,
      );
      rebuilding.catch(() => undefined); // awaited below; a seeding failure must not leave it unhandled
      // The running VMs migrate from the moment every round is out, while their targets still store
      // what they received (an agent holds a stream back until it stored it): a stream refers only to
      // pages confirmed held before seeding and to those rounds delivered whole to its target.
      let migrateStarted = 0;
      const delivered = deferred<
        { roundCompleted: readonly (readonly number[])[]; roundChanged: readonly Uint32Array[] } | undefined
      >();
      const migrating = delivered.promise.then(async (rounds) => {
        migrateStarted = performance.now();
        const livePending = options.signal?.aborted || !rounds ? [] : livePlanned;
        return migrateLiveVms({
          pending: livePending,
          topology,
          scan,
          plan,
          links,
          runDir,
          secret: options.secret,
          holds: heldForLive(
            work.rounds,
            rounds ?? { roundCompleted: [], roundChanged: [] },
            await confirming,
            scan.table,
            liveTargets.length,
          ),
          bandwidthBytesPerSecond: source.linkBitsPerSecond / 8,
          codecOf: (target) => fullPageCodec(options.compression ?? 'adaptive', readies[target]!.codecs),
          onVerdict: (done, total) => progress({ phase: 'migrate', done, total, unit: 'vms' }),
          ...(options.downtimeLimitMs === undefined ? {} : { downtimeLimitMs: options.downtimeLimitMs }),
          dirtyRates,
          // By default every running VM at once, sharing the source link.
          ...(options.maxParallel === undefined ? {} : { maxParallel: options.maxParallel }),
          ...(options.timeoutPerGiB === undefined ? {} : { timeoutPerGiB: options.timeoutPerGiB }),
          ...(options.signal === undefined ? {} : { signal: options.signal }),
        });
      });
      migrating.catch(() => undefined); // awaited below, also when seeding fails
      let seeded: Awaited<ReturnType<typeof seedRounds>>;
      try {
        seeded = await seedRounds(work, plan, links, pages, source, {
          mtu: options.mtu,
          compression: options.compression ?? 'adaptive',
          insecurePlaintext: options.insecurePlaintext,
          ...(options.unicastBelowMs === undefined ? {} : { unicastBelowMs: options.unicastBelowMs }),
          onProgress: (done, total) => progress({ phase: 'seed', done, total, unit: 'pages' }),
          onTargetDone: (target, ok) => seededAt[target]!.resolve(ok),
          onDelivered: (roundCompleted, roundChanged) => delivered.resolve({ roundCompleted, roundChanged }),
          ...(options.openSocket ? { openSocket: options.openSocket } : {}),
          ...(options.signal === undefined ? {} : { signal: options.signal }),
        });
      } catch (error) {
        // Migrations under way end first (each verified at its target, or rolled back to its source).
        delivered.resolve(undefined);
        await migrating.catch(() => undefined);
        throw error;
      }
      // Seeding that never said its rounds were out (it stopped, or had none to send): the migrations
      // start now, on what the rounds' confirmations say.
      delivered.resolve(seeded);
      // Interrupted: rebuilds already under way finish (their images verified, or not), none starts,
      // and fetches from peers are not waited for: the job's end makes each agent close its channel,
      // which fails what is still waited for on it.
      if (options.signal?.aborted) {
        await rebuilding;
        await migrating.catch(() => undefined);
        await endJob();
      }
      const fetched = await fetching;
      seconds.seed = (performance.now() - t) / 1000;

      // The rebuild phase: what is left of it once seeding is over.
      t = performance.now();
      const outcome = await rebuilding;
      seconds.rebuild = (performance.now() - t) / 1000;

      // The migrate phase: from its start, which may precede the seeding's confirmations.
      const migrated = await migrating;
      seconds.migrate = (performance.now() - migrateStarted) / 1000;
      for (const [v, result] of migrated) {
        if (result.ok) outcome.verified.add(v);
        else outcome.errors.set(v, result.error ?? 'not migrated');
      }
      seconds.total = (performance.now() - started) / 1000;

      const wire = attributeWireBytes({
        rounds: work.rounds,
        roundWireBytes: seeded.roundWireBytes,
        index,
        done,
        vmCount: topology.vms.length,
      });
      const lost = await endJob();
      return jobReport({
        job,
        topology,
        targets: liveTargets,
        scan,
        detail: plan.detail,
        done,
        work,
        seeded,
        rebuilt: outcome,
        migrated,
        wireBytesOfVm: wire.vmBytes,
        peerPages: fetched,
        lost,
        interrupted: interruption(options.signal),
        unreachable: connected.failures.map((why, i) => ({ name: connected.failedHosts[i]!, why })),
        seconds,
      });
    } finally {
      await scan.close();
    }
  } finally {
    for (const link of links) link.close();
  }
}

/** Why the job was interrupted (the signal's reason, as the VMs' error), if it was. */
function interruption(signal: AbortSignal | undefined): string | undefined {
  if (!signal?.aborted) return undefined;
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason.message : typeof reason === 'string' ? reason : 'interrupted';
}

/**
 * Running VMs an earlier job moved: their destinations run at a target now (its agent says so in its
 * `ready`). Only `--resume` goes on with them (and leaves them there); a plain job stops, naming one.
 */
export function earlierMoves(
  topology: Topology,
  readies: readonly Extract<FromAgent, { t: 'ready' }>[],
  targets: readonly Host[],
  resume: boolean,
): { runningAt: Map<string, string>; movedEarlier: Set<number> } {
  const runningAt = new Map<string, string>();
  readies.forEach((ready, i) => {
    for (const vm of ready.running) runningAt.set(vm, targets[i]!.name);
  });
  const movedEarlier = new Set<number>();
  topology.vms.forEach((vm, v) => {
    const at = vm.source.kind === 'qemu' ? runningAt.get(vm.name) : undefined;
    if (at === undefined) return;
    if (!resume)
      throw new VmscatterError(
        'VMS_LIVE',
        `VM ${vm.name} runs at ${at} already (moved by an earlier job): --resume leaves it there and moves the rest`,
      );
    movedEarlier.add(v);
  });
  return { runningAt, movedEarlier };
}

/**
 * With --resume, where each VM is done already: an image verified at a target with the source's
 * SHA-256, or a running VM that runs at a target. Nothing of it moves again.
 */
export function targetsHoldingAlready(
  topology: Topology,
  readies: readonly Extract<FromAgent, { t: 'ready' }>[],
  targets: readonly Host[],
  sha256: readonly string[],
  movedEarlier: ReadonlySet<number>,
  runningAt: ReadonlyMap<string, string>,
): (string | undefined)[] {
  const verifiedAt = new Map<string, string>();
  readies.forEach((ready, i) => {
    for (const v of ready.verified) verifiedAt.set(`${v.vm}\n${v.sha256}`, targets[i]!.name);
  });
  return topology.vms.map((vm, v) =>
    vm.source.kind === 'image'
      ? verifiedAt.get(`${vm.name}\n${sha256[v]}`)
      : movedEarlier.has(v)
        ? runningAt.get(vm.name)
        : undefined,
  );
}

/** A promise with its resolve at hand. */
function deferred<T>(): { readonly promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}
