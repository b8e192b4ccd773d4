import { randomBytes, randomInt } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { connectControl } from '../control/control-channel.js';
import { VmscatterError } from '../errors.js';
import { scanTopology } from '../memory/scan.js';
import { DIGEST_BYTES, ZERO_PAGE_ID } from '../memory/page.js';
import { deriveDigestKey } from '../memory/page-digest.js';
import { buildScatterPlan, type ScatterPlan } from '../plan/scatter-plan.js';
import type { Host, Topology } from '../topology/model.js';
import { realScheduler } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { BlockCodec } from '../transport/fec-codec.js';
import { SenderSession } from '../transport/session.js';
import {
  HEADER_BYTES,
  IPV4_HEADER_BYTES,
  maxSymbolSize,
  SYMBOL_FIXED_BYTES,
  TAG_BYTES,
} from '../transport/wire-codec.js';
import { AgentLink, AgentLostError } from './agent-link.js';
import { readAnnouncement, type HeldDigests } from './held-digests.js';
import { imageSha256 } from './image-rebuild.js';
import { planJobWork, type JobWork, type SendRound } from './job-work.js';
import { encodeManifest, ZERO_ENTRY } from './manifest.js';
import { encodeBatch } from './page-batches.js';
import { SourcePages } from './source-pages.js';
import { PROTOCOL_VERSION } from './protocol.js';

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
  /** Skip VMs whose target already holds a verified image with the source's digest. */
  readonly resume: boolean;
  /** Send multicast payload in clear (the operator's explicit choice; never the default). */
  readonly insecurePlaintext: boolean;
  /** Pages in one multicast round (bounds the source's memory and what a lost agent loses). */
  readonly roundPages?: number;
  readonly onProgress?: (event: ScatterProgress) => void;
}

export interface ScatterProgress {
  readonly phase: 'connect' | 'scan' | 'plan' | 'seed' | 'rebuild';
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
  readonly lost?: string;
}

export interface ScatterReport {
  readonly ok: boolean;
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
  };
  readonly pages: {
    readonly total: number;
    readonly zero: number;
    readonly held: number;
    readonly multicast: number;
    readonly unicast: number;
  };
  readonly seconds: Readonly<Record<'connect' | 'scan' | 'plan' | 'seed' | 'rebuild' | 'total', number>>;
}

const BATCH_PAGES = 1024;
/** IP and UDP headers, our header, a symbol's fixed fields and the AEAD tag: per datagram on the wire. */
const DATAGRAM_OVERHEAD_BYTES = IPV4_HEADER_BYTES + 8 + HEADER_BYTES + SYMBOL_FIXED_BYTES + TAG_BYTES;
const DEFAULT_ROUND_PAGES = 16_384;
const CONTROL_OPTIONS = { heartbeatMs: 2000, idleTimeoutMs: 30_000 };
const SEEDED_TIMEOUT_MS = 60_000;
const REBUILD_TIMEOUT_MS = 10 * 60_000;
/** Largest control message of pages sent to fill a gap (well under the channel's frame limit). */
const UNICAST_CHUNK_PAGES = 1024;

export async function runScatter(options: ScatterOptions): Promise<ScatterReport> {
  const { topology } = options;
  const started = performance.now();
  const seconds = { connect: 0, scan: 0, plan: 0, seed: 0, rebuild: 0, total: 0 };
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
    const held: (HeldDigests | undefined)[] = readies.map((r) => readAnnouncement(r.held));

    t = performance.now();
    progress({ phase: 'scan', done: 0, total: 1, unit: 'pages' });
    const imagePaths = topology.vms.map((vm) => {
      if (vm.source.kind !== 'image') throw new Error(`VM ${vm.name} has no image (materialise it first)`);
      return vm.source.path;
    });
    const scan = await scanTopology(topology, {
      key: deriveDigestKey(options.secret),
      onProgress: (done, total) => progress({ phase: 'scan', done, total, unit: 'pages' }),
    });
    const sha256 = imagePaths.map((path) => imageSha256(path));
    seconds.scan = (performance.now() - t) / 1000;

    t = performance.now();
    progress({ phase: 'plan', done: 0, total: 1, unit: 'vms' });
    // With --resume, a VM verified at a live target stays there: nothing of it moves again.
    const verifiedAt = new Map<string, string>();
    readies.forEach((ready, i) => {
      for (const v of ready.verified) verifiedAt.set(`${v.vm}\n${v.sha256}`, liveTargets[i]!.name);
    });
    const doneAt = topology.vms.map((vm, v) =>
      options.resume ? verifiedAt.get(`${vm.name}\n${sha256[v]}`) : undefined,
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
      done,
      roundPages: options.roundPages ?? DEFAULT_ROUND_PAGES,
    });
    seconds.plan = (performance.now() - t) / 1000;

    const pages = new SourcePages(scan.vms, scan.table, imagePaths);
    try {
      t = performance.now();
      const seeded = await seedRounds(work, plan, links, pages, source, options, progress);
      seconds.seed = (performance.now() - t) / 1000;

      t = performance.now();
      const outcome = await rebuildAll(work, plan, links, pages, scan.vms, sha256, progress);
      seconds.rebuild = (performance.now() - t) / 1000;
      seconds.total = (performance.now() - started) / 1000;

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
          ...(links[i]!.lost ? { lost: links[i]!.lost } : {}),
        })),
        ...connected.failures.map((failure, i) => ({
          name: connected.failedHosts[i]!,
          vms: [],
          heldPages: 0,
          multicastPages: 0,
          unicastPages: 0,
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
        source: { ...seeded, unicastBytes: outcome.unicastBytes },
        pages: {
          total: totalPages,
          zero,
          held: targets.reduce((n, x) => n + x.heldPages, 0),
          multicast: seeded.uniquePagesSent,
          unicast: outcome.unicastPages.reduce((a, b) => a + b, 0),
        },
        seconds,
      };
    } finally {
      pages.close();
    }
  } finally {
    for (const link of links) link.close();
  }
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

/** Multicasts every round; returns what crossed the source's link. */
async function seedRounds(
  work: JobWork,
  plan: ScatterPlan,
  links: readonly AgentLink[],
  pages: SourcePages,
  source: Host,
  options: ScatterOptions,
  progress: (event: ScatterProgress) => void,
) {
  const totalPages = work.rounds.reduce((n, r) => n + r.ids.length, 0);
  let sentPages = 0;
  let payloadBytes = 0;
  let wireBytes = 0;
  const socket = await DgramSocket.open({
    bindAddress: source.address,
    ...(isIPv4(source.address) ? { multicastInterface: source.address } : {}),
  });
  const symbolSize = maxSymbolSize(options.mtu);
  const rate = Math.min(...[source, ...links.map((l) => l.host)].map((h) => h.linkBitsPerSecond)) / 8;
  try {
    for (const round of work.rounds) {
      const receivers = round.receivers.filter((t) => !links[t]!.lost);
      if (receivers.length > 0) {
        const result = await seedRound(round, receivers, plan, links, pages, socket, options, {
          symbolSize,
          rate,
        });
        payloadBytes += result.payloadBytes;
        wireBytes += result.wireBytes;
      }
      sentPages += round.ids.length;
      progress({ phase: 'seed', done: sentPages, total: totalPages, unit: 'pages' });
    }
  } finally {
    await socket.close();
  }
  return {
    multicastPayloadBytes: payloadBytes,
    multicastWireBytes: wireBytes,
    rounds: work.rounds.length,
    uniquePagesSent: sentPages,
  };
}

async function seedRound(
  round: SendRound,
  receivers: readonly number[],
  plan: ScatterPlan,
  links: readonly AgentLink[],
  pages: SourcePages,
  socket: DgramSocket,
  options: ScatterOptions,
  link: { symbolSize: number; rate: number },
): Promise<{ payloadBytes: number; wireBytes: number }> {
  const group = plan.groups[round.group]!;
  const session = randomInt(1, 2 ** 32 - 1);
  const key = options.insecurePlaintext ? new Uint8Array(0) : new Uint8Array(randomBytes(32));
  const objects: { bytes: Uint8Array }[] = [];
  for (let i = 0; i < round.ids.length; i += BATCH_PAGES) {
    const ids = round.ids.subarray(i, i + BATCH_PAGES);
    objects.push({
      bytes: encodeBatch(
        ids,
        (id) => pages.digestOf(id),
        (id) => pages.read(id),
      ),
    });
  }
  const maxObjectBytes = objects.reduce((n, o) => Math.max(n, o.bytes.length), 0);
  const identity = {
    session,
    key: options.insecurePlaintext ? ('insecure-plaintext' as const) : key,
    group: `${group.address}:${group.port}`,
  };
  receivers.forEach((t, i) =>
    links[t]!.send({
      t: 'seed',
      session,
      key,
      group: identity.group,
      sender: socket.address,
      receiver: i + 1,
      maxObjectBytes,
    }),
  );
  const sender = new SenderSession(
    socket,
    realScheduler,
    identity,
    objects,
    receivers.map((_, i) => i + 1),
    {
      symbolSize: link.symbolSize,
      blockSymbols: 64,
      parity: new BlockCodec(),
      rateCapBytesPerSecond: link.rate,
      joinTimeoutMs: 10_000,
    },
  );
  const result = await sender.run();
  // An agent the session dropped will get what it lacks over the control channel at rebuild time.
  await Promise.all(
    receivers.map((t) =>
      links[t]!.next('seeded', (m) => m.session === session, SEEDED_TIMEOUT_MS).catch((error: unknown) => {
        if (!(error instanceof AgentLostError)) throw error;
      }),
    ),
  );
  const packets = result.stats.dataPackets + result.stats.parityPackets + result.stats.repairPackets;
  const payloadBytes = objects.reduce((n, o) => n + o.bytes.length, 0);
  return { payloadBytes, wireBytes: result.stats.payloadBytes + packets * DATAGRAM_OVERHEAD_BYTES };
}

/** Sends every pending VM's manifest to its target and collects the verdicts; targets in parallel. */
async function rebuildAll(
  work: JobWork,
  plan: ScatterPlan,
  links: readonly AgentLink[],
  pages: SourcePages,
  vms: readonly { name: string; pages: Uint32Array }[],
  sha256: readonly string[],
  progress: (event: ScatterProgress) => void,
) {
  const { assignment, index } = plan.detail;
  const names = vms.map((vm) => vm.name);
  const verified = new Set<number>();
  const errors = new Map<number, string>();
  const unicastPages = new Array<number>(links.length).fill(0);
  let unicastBytes = 0;
  let finished = 0;
  await Promise.all(
    links.map(async (link) => {
      for (const v of work.pendingVms.filter((v) => assignment[v] === link.target)) {
        const vm = names[v]!;
        try {
          const { digests, ids, entries } = vmDictionary(vms[v]!.pages, pages);
          const weights = new Uint16Array(ids.length);
          ids.forEach((id, i) => (weights[i] = Math.min(0xffff, index.holderCount[id]!)));
          link.send({
            t: 'vm',
            vm,
            pages: entries.length,
            sha256: sha256[v]!,
            digests,
            weights: new Uint8Array(weights.buffer),
            manifest: encodeManifest(entries),
          });
          const reply = await link.next(['missing', 'rebuilt'], (m) => m.vm === vm, REBUILD_TIMEOUT_MS);
          let verdict = reply;
          if (reply.t === 'missing') {
            const wanted = new Uint32Array(
              reply.indices.buffer.slice(
                reply.indices.byteOffset,
                reply.indices.byteOffset + (reply.indices.length & ~3),
              ),
            );
            for (let i = 0; i < wanted.length; i += UNICAST_CHUNK_PAGES) {
              const chunk = Uint32Array.from(wanted.subarray(i, i + UNICAST_CHUNK_PAGES), (k) => ids[k] ?? 0);
              const records = encodeBatch(
                chunk.filter((id) => id > 0),
                (id) => pages.digestOf(id),
                (id) => pages.read(id),
              );
              link.send({ t: 'pages', records });
              unicastBytes += records.length;
              await link.drain();
            }
            unicastPages[link.target]! += wanted.length;
            link.send({ t: 'rebuild', vm });
            verdict = await link.next('rebuilt', (m) => m.vm === vm, REBUILD_TIMEOUT_MS);
          }
          if (verdict.t === 'rebuilt' && verdict.ok && verdict.sha256 === sha256[v]) verified.add(v);
          else errors.set(v, verdict.t === 'rebuilt' ? verdict.error : 'no verdict');
        } catch (error) {
          if (!(error instanceof AgentLostError)) throw error;
          errors.set(v, error.message);
        }
        progress({ phase: 'rebuild', done: ++finished, total: work.pendingVms.length, unit: 'vms' });
      }
    }),
  );
  return { verified, errors, unicastPages, unicastBytes };
}

/** A VM's distinct non-zero digests in first-use order, and its pages as indices into them. */
function vmDictionary(vmPages: Uint32Array, pages: SourcePages) {
  const local = new Map<number, number>();
  const ids: number[] = [];
  const entries = new Int32Array(vmPages.length);
  vmPages.forEach((id, p) => {
    if (id === ZERO_PAGE_ID) {
      entries[p] = ZERO_ENTRY;
      return;
    }
    let k = local.get(id);
    if (k === undefined) {
      k = ids.length;
      local.set(id, k);
      ids.push(id);
    }
    entries[p] = k;
  });
  const digests = new Uint8Array(ids.length * DIGEST_BYTES);
  ids.forEach((id, i) => digests.set(pages.digestOf(id), i * DIGEST_BYTES));
  return { digests, ids, entries };
}
