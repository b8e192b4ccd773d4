import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { listenControl, type ControlChannel, type ControlServer } from '../control/control-channel.js';
import { VmscatterError } from '../errors.js';
import { connectQmp } from '../qemu/qmp.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import { deriveDigestKey, PageDigester } from '../memory/page-digest.js';
import { realScheduler } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { BlockCodec } from '../transport/fec-codec.js';
import { ReceiverSession } from '../transport/session.js';
import { chooseAnnouncement } from './digest-set.js';
import { rebuildImage } from './image-rebuild.js';
import { decodeManifest } from './manifest.js';
import { decodeBatch, sliceBatch } from './page-batches.js';
import { LiveTarget } from './live-target.js';
import { answerFetch, fetchFromPeer } from './site-peers.js';
import { TemplateStore } from './template-store.js';
import {
  parseToAgent,
  PROTOCOL_VERSION,
  type FromAgent,
  type ToAgent,
  type VerifiedImage,
} from './protocol.js';

/**
 * `vmscatter agent`: one per target host. It answers one coordinator at a time on the control channel,
 * joins the multicast rounds it is told (with the key the coordinator sends it there), checks each
 * arriving page against its digest and stores it, rebuilds each VM image it is given a manifest for and
 * verifies it against the source's SHA-256.
 *
 * State lives in `dir` and survives restarts: `store/` (pages by digest) so a resumed job is not sent
 * what is held, and `images/` with a `.sha256` beside each verified image. An image is only ever named
 * `<vm>.raw` once verified; if the coordinator goes away mid-job, the job's unfinished VMs are dropped
 * and said to be dropped.
 */
export interface AgentOptions {
  /** The host's name in the topology (reported back so a coordinator can tell agents apart). */
  readonly name: string;
  readonly listenAddress: string;
  readonly port: number;
  /** IPv4 address of the interface multicast is joined on. */
  readonly multicastInterface: string;
  readonly dir: string;
  readonly secret: Uint8Array;
  /** Pages the template store keeps between jobs (the most widely held ones). */
  readonly templateCapacityPages?: number;
  readonly log?: (line: string) => void;
}

/** 2 GiB of pages by default. */
export const DEFAULT_TEMPLATE_CAPACITY_PAGES = 2 ** 19;
/**
 * False-positive rate of the held-pages announcement: a false positive costs one page fetched over the
 * control channel at rebuild time, so one in a million is plenty and keeps the announcement small.
 */
const ANNOUNCEMENT_FALSE_POSITIVES = 1e-6;

const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const RECEIVER_GIVE_UP_MS = 30_000;
/** Records stored between two turns of the event loop (about a millisecond of work). */
const STORE_SLICE_RECORDS = 64;

export class Agent {
  /** Messages dropped because they were not well-formed protocol messages. */
  malformed = 0;
  private job: AgentJob | undefined;

  private constructor(
    private readonly options: AgentOptions,
    readonly store: TemplateStore,
    private readonly digester: PageDigester,
    private server?: ControlServer,
  ) {}

  static async start(options: AgentOptions): Promise<Agent> {
    mkdirSync(imagesDir(options.dir), { recursive: true });
    mkdirSync(join(options.dir, 'run'), { recursive: true });
    await sweepStaleDestinations(join(options.dir, 'run'), options.log);
    sweepPartialImages(options.dir);
    const store = TemplateStore.open(join(options.dir, 'store'), {
      capacityPages: options.templateCapacityPages ?? DEFAULT_TEMPLATE_CAPACITY_PAGES,
    });
    const agent = new Agent(options, store, new PageDigester(deriveDigestKey(options.secret)));
    agent.server = await listenControl(
      options.listenAddress,
      options.port,
      { secret: options.secret },
      (channel) => agent.accept(channel),
    );
    return agent;
  }

  get port(): number {
    return this.server!.port;
  }

  get log(): (line: string) => void {
    return this.options.log ?? (() => undefined);
  }

  async close(): Promise<void> {
    this.job?.abandon('agent stopping');
    await this.server?.close();
    this.store.close();
  }

  /**
   * A connection is a coordinator's job (first message 'job'; one job at a time) or a peer agent of
   * the site fetching pages (first message 'fetch'; served whatever the job state).
   */
  private accept(channel: ControlChannel): void {
    let role: AgentJob | 'peer' | undefined;
    channel.onMessage((value) => {
      const message = parseToAgent(value);
      if (!message) {
        this.malformed++;
        return;
      }
      if (role === undefined) {
        if (message.t === 'fetch') role = 'peer';
        else if (message.t === 'job') role = this.startJob(channel);
        else {
          this.malformed++;
          return;
        }
        if (role === undefined) return;
      }
      if (role === 'peer') {
        if (message.t !== 'fetch') this.malformed++;
        else channel.send({ t: 'pages', records: answerFetch(message.digests, (d) => this.store.get(d)) });
        return;
      }
      const job = role;
      job.handle(message).catch((error: unknown) => {
        const text = error instanceof VmscatterError ? error.message : String(error);
        this.log(`job ${job.id}: ${text}`);
        channel.send({ t: 'error', message: text } satisfies FromAgent);
      });
    });
  }

  private startJob(channel: ControlChannel): AgentJob | undefined {
    if (this.job) {
      channel.send({ t: 'error', message: `${this.options.name} is busy with job ${this.job.id}` });
      channel.close();
      return undefined;
    }
    const job = new AgentJob(this, this.options, this.digester, channel);
    this.job = job;
    channel.onClose((error) => {
      if (error) job.abandon(`coordinator gone (${error.message})`);
      if (this.job === job) this.job = undefined;
    });
    return job;
  }
}

interface PendingVm {
  readonly entries: Int32Array;
  readonly digests: Uint8Array;
  /** How many VMs of the job hold each digest (u16 LE): the template weight. */
  readonly weights: Uint8Array;
  readonly sha256: string;
}

/** One coordinator's job at this agent. */
class AgentJob {
  id = '(not started)';
  private readonly sessions = new Map<number, AbortController>();
  private readonly pending = new Map<string, PendingVm>();
  private readonly liveTargets = new Map<string, LiveTarget>();
  /** Why a live VM's stream failed at this end, reported when the coordinator asks for the verdict. */
  private readonly liveFailures = new Map<string, string>();
  private readonly check = new Uint8Array(DIGEST_BYTES);
  private finished = false;

  constructor(
    private readonly agent: Agent,
    private readonly options: AgentOptions,
    private readonly digester: PageDigester,
    private readonly channel: ControlChannel,
  ) {}

  private reply(message: FromAgent): void {
    this.channel.send(message);
  }

  async handle(message: ToAgent): Promise<void> {
    switch (message.t) {
      case 'job':
        return this.start(message.version, message.job);
      case 'seed':
        return this.seed(message);
      case 'vm':
        return this.receiveVm(message);
      case 'pages':
        this.storeRecords(message.records);
        return;
      case 'rebuild':
        return this.rebuild(message.vm);
      case 'fetch-from':
        return this.fetchFrom(message);
      case 'fetch':
        throw new VmscatterError('VMS_PROTOCOL', "'fetch' is for peer connections, not a job's");
      case 'live-incoming':
      case 'live-stream':
      case 'live-end':
      case 'live-resume':
      case 'live-abort':
        return this.live(message);
      case 'end': {
        this.finished = true;
        // Only between jobs: what was announced as held must stay until the job is over.
        const dropped = this.agent.store.compact();
        this.agent.store.flush();
        this.agent.log(
          `job ${this.id}: done; template store holds ${this.agent.store.size} pages` +
            (dropped > 0 ? ` (${dropped} least shared dropped)` : ''),
        );
        this.channel.close();
        return;
      }
    }
  }

  /** The coordinator went away, or the agent stops: nothing unverified survives, and we say so. */
  abandon(why: string): void {
    if (this.finished) return;
    this.finished = true;
    for (const controller of this.sessions.values()) controller.abort(new Error(why));
    // A destination not yet resumed is killed: its VM runs on at the source.
    for (const target of this.liveTargets.values()) void target.abort();
    this.liveTargets.clear();
    const dropped = [...this.pending.keys()];
    this.pending.clear();
    this.agent.store.flush();
    this.agent.log(
      `job ${this.id}: ${why}; ` +
        (dropped.length > 0
          ? `discarded ${dropped.length} incomplete VM image(s): ${dropped.join(', ')}`
          : 'no incomplete VM images'),
    );
  }

  private start(version: number, job: string): void {
    if (version !== PROTOCOL_VERSION)
      throw new VmscatterError(
        'VMS_PROTOCOL',
        `coordinator speaks protocol ${version}, this agent ${PROTOCOL_VERSION}: upgrade one of them`,
      );
    this.id = job;
    const store = this.agent.store;
    this.agent.log(`job ${job}: started; ${store.size} pages held`);
    this.reply({
      t: 'ready',
      job,
      host: this.options.name,
      held: chooseAnnouncement(store.packedDigests(), ANNOUNCEMENT_FALSE_POSITIVES).bytes,
      heldCount: store.size,
      verified: verifiedImages(this.options.dir),
      freeBytes: freeBytes(this.options.dir),
      qemuVersion: qemuVersion(),
    });
  }

  private async seed(message: Extract<ToAgent, { t: 'seed' }>): Promise<void> {
    const socket = await DgramSocket.open({
      port: Number(message.group.slice(message.group.lastIndexOf(':') + 1)),
      multicastInterface: this.options.multicastInterface,
    });
    const controller = new AbortController();
    this.sessions.set(message.session, controller);
    let stored = 0;
    let rejected = 0;
    let failure: unknown;
    let storing = Promise.resolve();
    const session = new ReceiverSession(
      socket,
      realScheduler,
      {
        session: message.session,
        key: message.key.length === 0 ? 'insecure-plaintext' : new Uint8Array(message.key),
        group: message.group,
      },
      message.receiver,
      message.sender,
      {
        decoder: new BlockCodec(),
        senderTimeoutMs: RECEIVER_GIVE_UP_MS,
        maxObjectBytes: message.maxObjectBytes,
      },
      (_id, bytes) => {
        // Stored in slices between which the event loop drains the socket: done in one go, a batch's
        // decompression, hashing and writing would hold the loop for tens of milliseconds while the
        // kernel's receive buffer overflows and the sender has to repair what it dropped.
        storing = storing.then(async () => {
          if (failure) return;
          try {
            const counts = await this.storeRecordsInSlices(bytes);
            stored += counts.stored;
            rejected += counts.rejected;
          } catch (error) {
            // A full disk: stop receiving (the sender drops us) and fail the job with the reason.
            failure = error;
            controller.abort(error);
          }
        });
      },
    );
    let state: 'complete' | 'failed' = 'failed';
    try {
      state = (await session.run(controller.signal)) === 'complete' ? 'complete' : 'failed';
    } catch {
      state = 'failed';
    } finally {
      this.sessions.delete(message.session);
      await socket.close();
    }
    await storing;
    if (failure) throw failure;
    if (rejected > 0) this.agent.log(`job ${this.id}: ${rejected} page(s) failed their digest check`);
    if (!this.finished) this.reply({ t: 'seeded', session: message.session, state, stored, rejected });
  }

  private async live(message: Extract<ToAgent, { t: `live-${string}` }>): Promise<void> {
    const { vm } = message;
    if (!VM_NAME.test(vm)) throw new VmscatterError('VMS_PROTOCOL', `bad VM name '${vm}'`);
    const target = this.liveTargets.get(vm);
    switch (message.t) {
      case 'live-incoming': {
        this.liveFailures.delete(vm);
        const started = await LiveTarget.start({
          vm,
          command: message.command,
          dir: join(this.options.dir, 'run'),
          pageOf: (digest) => this.agent.store.get(digest),
        });
        this.liveTargets.set(vm, started);
        this.agent.log(`job ${this.id}: ${vm}: destination QEMU waiting for the stream`);
        return this.reply({ t: 'live-ready', vm });
      }
      case 'live-stream':
        if (!target || this.liveFailures.has(vm)) return;
        try {
          target.write(message.records);
        } catch (error) {
          this.liveFailures.set(vm, (error as Error).message);
          await target.abort();
        }
        return;
      case 'live-end': {
        const why =
          this.liveFailures.get(vm) ??
          (target ? await target.finish(message.sha256) : 'no destination was started');
        if (why && target) await target.abort();
        if (why) this.liveTargets.delete(vm);
        this.agent.log(`job ${this.id}: ${vm}: ${why ? `not verified: ${why}` : 'stream verified'}`);
        return this.reply({ t: 'live-verified', vm, ok: !why, error: why ?? '' });
      }
      case 'live-resume':
        if (!target) throw new VmscatterError('VMS_PROTOCOL', `resume of ${vm}, which is not waiting here`);
        await target.resume();
        this.liveTargets.delete(vm);
        this.agent.log(`job ${this.id}: ${vm}: running here`);
        return this.reply({ t: 'live-resumed', vm });
      case 'live-abort':
        this.liveTargets.delete(vm);
        if (target) await target.abort();
        this.agent.log(`job ${this.id}: ${vm}: rolled back (it runs on at the source)`);
        return;
    }
  }

  private async fetchFrom(message: Extract<ToAgent, { t: 'fetch-from' }>): Promise<void> {
    let stored = 0;
    try {
      await fetchFromPeer(message.peer, message.digests, this.options.secret, (records) => {
        this.storeRecords(records);
      });
    } catch (error) {
      this.agent.log(`job ${this.id}: fetch from ${message.peer} ended early: ${(error as Error).message}`);
    }
    const asked = message.digests.length / DIGEST_BYTES;
    let failed = 0;
    for (let i = 0; i < asked; i++)
      if (!this.agent.store.holds(message.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)))
        failed++;
    stored = asked - failed;
    this.agent.log(`job ${this.id}: fetched ${stored} of ${asked} pages from site peer ${message.peer}`);
    if (!this.finished) this.reply({ t: 'fetched', id: message.id, stored, failed });
  }

  /** storeRecords, a slice of records at a time, yielding to the event loop between slices. */
  private async storeRecordsInSlices(bytes: Uint8Array): Promise<{ stored: number; rejected: number }> {
    let stored = 0;
    let rejected = 0;
    for (const slice of sliceBatch(bytes, STORE_SLICE_RECORDS)) {
      await new Promise((resolve) => setImmediate(resolve));
      const counts = this.storeRecords(slice);
      stored += counts.stored;
      rejected += counts.rejected;
    }
    return { stored, rejected };
  }

  /** Stores a batch's pages that match their digests; a page that does not is dropped and counted. */
  private storeRecords(bytes: Uint8Array): { stored: number; rejected: number } {
    let rejected = 0;
    const valid: { digest: Uint8Array; page: Uint8Array }[] = [];
    for (const record of decodeBatch(bytes)) {
      if (!record.page) {
        rejected++;
        continue;
      }
      this.digester.digestInto(record.page, 0, this.check, 0);
      if (Buffer.compare(this.check, record.digest) !== 0) rejected++;
      else valid.push({ digest: record.digest, page: record.page });
    }
    const digests = new Uint8Array(valid.length * DIGEST_BYTES);
    const pages = new Uint8Array(valid.length * PAGE_SIZE);
    valid.forEach((v, i) => {
      digests.set(v.digest, i * DIGEST_BYTES);
      pages.set(v.page, i * PAGE_SIZE);
    });
    // Weight 1 until the VM's manifest tells how widely each page is held.
    const stored = this.agent.store.offerMany(digests, pages, 1);
    return { stored, rejected };
  }

  private receiveVm(message: Extract<ToAgent, { t: 'vm' }>): void {
    if (!VM_NAME.test(message.vm)) throw new VmscatterError('VMS_PROTOCOL', `bad VM name '${message.vm}'`);
    if (message.digests.length % DIGEST_BYTES !== 0)
      throw new VmscatterError('VMS_PROTOCOL', `VM ${message.vm}: digest list is not whole digests`);
    const unique = message.digests.length / DIGEST_BYTES;
    const entries = decodeManifest(message.manifest, message.pages, unique);
    this.pending.set(message.vm, {
      entries,
      digests: message.digests,
      weights: message.weights,
      sha256: message.sha256,
    });
    const missing: number[] = [];
    for (let i = 0; i < unique; i++)
      if (!this.agent.store.holds(message.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)))
        missing.push(i);
    if (missing.length === 0) return this.rebuild(message.vm);
    const indices = new Uint8Array(Uint32Array.from(missing).buffer);
    this.reply({ t: 'missing', vm: message.vm, indices });
  }

  private rebuild(vm: string): void {
    const pending = this.pending.get(vm);
    if (!pending) throw new VmscatterError('VMS_PROTOCOL', `rebuild of VM ${vm}, which was never sent`);
    this.pending.delete(vm);
    const weights = new DataView(pending.weights.buffer, pending.weights.byteOffset, pending.weights.length);
    for (let i = 0; i * DIGEST_BYTES < pending.digests.length && 2 * i + 1 < pending.weights.length; i++) {
      const weight = weights.getUint16(2 * i, true);
      if (weight > 0)
        this.agent.store.reweigh(pending.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), weight);
    }
    const path = join(imagesDir(this.options.dir), `${vm}.raw`);
    rmSync(`${path}.sha256`, { force: true });
    try {
      const result = rebuildImage({
        path,
        entries: pending.entries,
        pageFor: (i) =>
          this.agent.store.get(pending.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)),
        expectedSha256: pending.sha256,
      });
      writeFileSync(`${path}.sha256`, `${result.sha256}\n`);
      this.agent.log(`job ${this.id}: ${vm} rebuilt and verified (${path})`);
      this.reply({ t: 'rebuilt', vm, ok: true, sha256: result.sha256, error: '' });
    } catch (error) {
      if (!(error instanceof VmscatterError)) throw error;
      this.agent.log(`job ${this.id}: ${vm} failed: ${error.message}`);
      this.reply({ t: 'rebuilt', vm, ok: false, sha256: '', error: error.message });
    }
  }
}

function imagesDir(dir: string): string {
  return join(dir, 'images');
}

/** Images left half-written by a crash are never mistaken for finished ones. */
function sweepPartialImages(dir: string): void {
  for (const name of readdirSync(imagesDir(dir)))
    if (name.endsWith('.partial')) rmSync(join(imagesDir(dir), name), { force: true });
}

/**
 * Destination QEMUs an earlier run of this agent started and never resumed (it died mid-migration):
 * their VMs run on at their sources, so they are quit. One that runs (resumed) is a VM living here and
 * is left alone.
 */
async function sweepStaleDestinations(runDir: string, log?: (line: string) => void): Promise<void> {
  for (const name of readdirSync(runDir)) {
    if (!name.endsWith('.qmp')) continue;
    const path = join(runDir, name);
    const qmp = await connectQmp(path, { connectTimeoutMs: 1000 }).catch(() => undefined);
    if (!qmp) {
      rmSync(path, { force: true }); // nobody listens: a leftover socket file
      continue;
    }
    const status = ((await qmp.execute('query-status').catch(() => ({}))) as { status?: string }).status;
    if (status !== 'running') {
      log?.(
        `quitting destination QEMU ${name.slice(0, -4)} left ${status ?? 'unanswering'} by an earlier run`,
      );
      await qmp.execute('quit').catch(() => undefined);
    }
    await qmp.close().catch(() => undefined);
  }
}

function freeBytes(dir: string): number {
  try {
    const stats = statfsSync(dir);
    return stats.bavail * stats.bsize;
  } catch {
    return 0;
  }
}

/** The version of the QEMU on this host ('' when there is none): destinations start from it. */
function qemuVersion(): string {
  const result = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8', timeout: 5000 });
  return /version (\d+\.\d+(?:\.\d+)?)/.exec(result.stdout ?? '')?.[1] ?? '';
}

/** Images verified by an earlier job (a `.sha256` beside the image), for `scatter --resume`. */
function verifiedImages(dir: string): VerifiedImage[] {
  const out: VerifiedImage[] = [];
  for (const name of readdirSync(imagesDir(dir))) {
    if (!name.endsWith('.raw.sha256')) continue;
    const sha256 = readFileSync(join(imagesDir(dir), name), 'utf8').trim();
    out.push({ vm: name.slice(0, -'.raw.sha256'.length), sha256 });
  }
  return out;
}
