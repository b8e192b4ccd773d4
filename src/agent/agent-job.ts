import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ControlChannel } from '../control/control-channel.js';
import { VmscatterError } from '../errors.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import type { PageDigester } from '../memory/page-digest.js';
import { realScheduler } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { BlockCodec } from '../transport/fec-codec.js';
import { ReceiverSession } from '../transport/session.js';
import type { AgentOptions } from './agent-options.js';
import { chooseAnnouncement } from '../announce/digest-set.js';
import { heldBitmap } from '../announce/held-confirmation.js';
import { rebuildImage } from './image-rebuild.js';
import { JobLiveTargets } from './live-targets.js';
import { decodeManifest } from '../wire/manifest.js';
import { decodeRecords, DecodeScratch, sliceBatch } from '../memory/page-batches.js';
import { ObjectMemory } from '../transport/object-memory.js';
import {
  PROTOCOL_VERSION,
  VM_NAME,
  type FromAgent,
  type ToAgent,
  type VerifiedImage,
} from '../wire/protocol.js';
import { runningDestinations } from './destinations.js';
import { fetchFromPeer } from './site-peers.js';
import { ZstdRuns } from '../memory/batch-zstd.js';
import type { TemplateStore } from '../store/template-store.js';

/**
 * One coordinator's job at an agent: the seeding rounds it joins, the images it rebuilds and
 * verifies, the running VMs it receives, and the fetches from site peers it makes. agent.ts accepts
 * connections and holds what outlives a job (the store, the listening socket).
 */

/** What a job needs of its agent. */
export interface AgentHost {
  readonly store: TemplateStore;
  readonly log: (line: string) => void;
  /** Guest memory the agent's other jobs reserved here (bytes). */
  reservedByOthers(job: AgentJob): number;
  /** Reserves `bytes` for `job` if they fit in `capacity` beside the others' reservations. */
  reserve(job: AgentJob, bytes: number, capacity: number): boolean;
  /** Whether other jobs run here (the store is compacted only when none does). */
  othersRunning(job: AgentJob): boolean;
}

/**
 * False-positive rate of the held-pages announcement: a false positive costs one page fetched over the
 * control channel at rebuild time, so one in a million is plenty and keeps the announcement small.
 */
const ANNOUNCEMENT_FALSE_POSITIVES = 1e-6;
const RECEIVER_GIVE_UP_MS = 30_000;
/** Records stored between two turns of the event loop (about a millisecond of work). */
const STORE_SLICE_RECORDS = 64;

interface PendingVm {
  readonly entries: Int32Array;
  readonly digests: Uint8Array;
  /** How many VMs of the job hold each digest (u16 LE): the template weight. */
  readonly weights: Uint8Array;
  readonly sha256: string;
}

/** One coordinator's job at this agent. */
export class AgentJob {
  id = '(not started)';
  private readonly sessions = new Map<number, AbortController>();
  /**
   * Every multicast session this job was told of: the groups' sessions run side by side, on groups
   * that may share a port, so each session's socket also receives the others' datagrams.
   */
  private readonly knownSessions = new Set<number>();
  /** Aborted when the job ends: a rebuild still under way (they overlap seeding) stops. */
  private readonly ended = new AbortController();
  private readonly pending = new Map<string, PendingVm>();
  private readonly live: JobLiveTargets;
  private finished = false;
  /**
   * The pages rounds delivered, stored one batch after another (all sessions in one queue), and how
   * many batches wait in it: a running VM's stream may refer to them as soon as every round is out,
   * so it waits for this queue (storesSettled) before it is written into its destination.
   */
  private storing: Promise<void> = Promise.resolve();
  private batchesToStore = 0;
  /** Memory for the objects rounds deliver, given back once each is stored. */
  private readonly objectMemory = new ObjectMemory();
  /** What storeRecords decodes and digests into, reused batch after batch (it is synchronous). */
  private readonly decodeScratch = new DecodeScratch();
  private checkScratch = new Uint8Array(0);

  constructor(
    private readonly agent: AgentHost,
    private readonly options: AgentOptions,
    private readonly digester: PageDigester,
    private readonly channel: ControlChannel,
  ) {
    this.live = new JobLiveTargets({
      id: () => this.id,
      options,
      digester,
      store: agent.store,
      storesSettled: () => (this.batchesToStore > 0 ? this.storing : undefined),
      log: (line) => agent.log(line),
      reply: (message) => this.reply(message),
    });
  }

  private reply(message: FromAgent): void {
    this.channel.send(message);
  }

  /** What each kind of message does (the live kinds all go to the VM's live target). */
  private readonly handlers: {
    readonly [K in ToAgent['t']]: (message: Extract<ToAgent, { t: K }>) => Promise<void> | void;
  } = {
    job: (m) => this.start(m.version, m.job),
    reserve: (m) => {
      const ok = this.agent.reserve(this, m.bytes, m.capacity);
      const reserved = this.agent.reservedByOthers(this);
      if (!ok)
        this.agent.log(
          `job ${this.id}: ${m.bytes} bytes of guest memory do not fit beside ${reserved} reserved by other jobs`,
        );
      this.reply({ t: 'reserved', ok, reserved });
    },
    'confirm-held': (m) =>
      this.reply({ t: 'held-confirmed', held: heldBitmap(m.digests, (d) => this.agent.store.holds(d)) }),
    seed: (m) => this.seed(m),
    vm: (m) => this.receiveVm(m),
    pages: (m) => {
      this.storeRecords(m.records);
    },
    rebuild: (m) => this.rebuild(m.vm),
    'fetch-from': (m) => this.fetchFrom(m),
    fetch: () => {
      throw new VmscatterError('VMS_PROTOCOL', "'fetch' is for peer connections, not a job's");
    },
    'live-incoming': (m) => this.live.handle(m),
    'live-attach': (m) => this.live.handle(m),
    'live-stream': (m) => this.live.handle(m),
    'live-end': (m) => this.live.handle(m),
    'live-repair': (m) => this.live.handle(m),
    'live-resume': (m) => this.live.handle(m),
    'live-abort': (m) => this.live.handle(m),
    end: () => this.end(),
  };

  async handle(message: ToAgent): Promise<void> {
    await (this.handlers[message.t] as (message: ToAgent) => Promise<void> | void)(message);
  }

  /** The job is over: the template store is compacted (only now: what was announced must stay). */
  private end(): void {
    this.finished = true;
    this.ended.abort();
    // Another job under way may refer to what it was told is held here: only the last one compacts.
    const dropped = this.agent.othersRunning(this) ? 0 : this.agent.store.compact();
    this.agent.store.flush();
    this.agent.log(
      `job ${this.id}: done; template store holds ${this.agent.store.size} pages` +
        (dropped > 0 ? ` (${dropped} least shared dropped)` : ''),
    );
    this.channel.close();
  }

  /** The coordinator went away, or the agent stops: nothing unverified survives, and we say so. */
  abandon(why: string): void {
    if (this.finished) return;
    this.finished = true;
    this.ended.abort();
    for (const controller of this.sessions.values()) controller.abort(new Error(why));
    this.live.abandon();
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

  private async start(version: number, job: string): Promise<void> {
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
      running: await runningDestinations(join(this.options.dir, 'run')),
      reserved: this.agent.reservedByOthers(this),
      codecs: ZstdRuns.available() ? ['zstd'] : [],
    });
  }

  private async seed(message: Extract<ToAgent, { t: 'seed' }>): Promise<void> {
    if (message.key.length === 0 && !this.options.insecurePlaintext) {
      this.agent.log(`job ${this.id}: refused an unencrypted multicast round (no --insecure-plaintext here)`);
      return this.reply({
        t: 'error',
        message: 'refuses unencrypted multicast: start the agent with --insecure-plaintext to accept it',
      });
    }
    if (message.key.length === 0)
      this.agent.log(
        `job ${this.id}: WARNING: multicast session ${message.session} arrives UNENCRYPTED (--insecure-plaintext)`,
      );
    const socket = await (this.options.openSocket ?? DgramSocket.open)({
      port: Number(message.group.slice(message.group.lastIndexOf(':') + 1)),
      multicastInterface: this.options.multicastInterface,
    });
    const controller = new AbortController();
    this.sessions.set(message.session, controller);
    this.knownSessions.add(message.session);
    let stored = 0;
    let rejected = 0;
    /** Ids of the session's objects stored; the leading run of them is what the reply reports. */
    const storedObjects = new Set<number>();
    let failure: unknown;
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
      (objectId, bytes) => {
        // Stored in slices between which the event loop drains the socket: done in one go, a batch's
        // decompression, hashing and writing would hold the loop for tens of milliseconds while the
        // kernel's receive buffer overflows and the sender has to repair what it dropped.
        this.batchesToStore++;
        this.storing = this.storing.then(async () => {
          try {
            if (failure) return;
            const counts = await this.storeRecordsInSlices(bytes);
            stored += counts.stored;
            rejected += counts.rejected;
            storedObjects.add(objectId);
          } catch (error) {
            // A full disk: stop receiving (the sender drops us) and fail the job with the reason.
            failure = error;
            controller.abort(error);
          } finally {
            this.batchesToStore--;
            this.objectMemory.give(bytes); // stored (or never to be): its memory serves the next
          }
        });
      },
      Math.random,
      this.knownSessions,
      this.objectMemory,
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
    await this.storing;
    if (failure) throw failure;
    if (rejected > 0) this.agent.log(`job ${this.id}: ${rejected} page(s) failed their digest check`);
    const drops = session.drops.snapshot();
    const dropped = session.drops.total;
    if (dropped > 0)
      this.agent.log(
        `job ${this.id}: multicast session ${message.session}: dropped ${dropped} datagram(s): ` +
          Object.entries(drops)
            .filter(([, n]) => n > 0)
            .map(([why, n]) => `${n} ${why}`)
            .join(', '),
      );
    let objects = 0;
    while (storedObjects.has(objects)) objects++;
    if (!this.finished)
      this.reply({ t: 'seeded', session: message.session, state, stored, rejected, objects, dropped });
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
    const { digests, pages, count, rejected: undecodable } = decodeRecords(bytes, this.decodeScratch);
    if (this.checkScratch.length < count * DIGEST_BYTES)
      this.checkScratch = new Uint8Array(count * DIGEST_BYTES);
    const checks = this.checkScratch;
    this.digester.digestMany(pages, 0, count, checks, 0);
    // The pages whose digest matches move up over those that do not, in place.
    let valid = 0;
    for (let i = 0; i < count; i++) {
      if (!sameDigest(checks, digests, i * DIGEST_BYTES)) continue;
      if (valid !== i) {
        digests.copyWithin(valid * DIGEST_BYTES, i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
        pages.copyWithin(valid * PAGE_SIZE, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
      }
      valid++;
    }
    // Weight 1 until the VM's manifest tells how widely each page is held.
    const stored = this.agent.store.offerMany(
      digests.subarray(0, valid * DIGEST_BYTES),
      pages.subarray(0, valid * PAGE_SIZE),
      1,
    );
    return { stored, rejected: undecodable + count - valid };
  }

  private async receiveVm(message: Extract<ToAgent, { t: 'vm' }>): Promise<void> {
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

  private async rebuild(vm: string): Promise<void> {
    const pending = this.pending.get(vm);
    if (!pending) throw new VmscatterError('VMS_PROTOCOL', `rebuild of VM ${vm}, which was never sent`);
    this.pending.delete(vm);
    const weights = new DataView(pending.weights.buffer, pending.weights.byteOffset, pending.weights.length);
    this.agent.store.reweighMany(pending.digests, (i) =>
      2 * i + 1 < pending.weights.length ? weights.getUint16(2 * i, true) : 0,
    );
    const path = join(imagesDir(this.options.dir), `${vm}.raw`);
    rmSync(`${path}.sha256`, { force: true });
    try {
      const result = await rebuildImage({
        path,
        entries: pending.entries,
        pageFor: (i) =>
          this.agent.store.get(pending.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)),
        readMany: (indices, count, into, found) => {
          const digests = new Uint8Array(count * DIGEST_BYTES);
          for (let k = 0; k < count; k++)
            digests.set(
              pending.digests.subarray(indices[k]! * DIGEST_BYTES, (indices[k]! + 1) * DIGEST_BYTES),
              k * DIGEST_BYTES,
            );
          this.agent.store.readMany(digests, count, into, found);
        },
        expectedSha256: pending.sha256,
        signal: this.ended.signal,
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

export function imagesDir(dir: string): string {
  return join(dir, 'images');
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

/** Whether the 16-byte digests at `offset` of `a` and `b` are equal. */
function sameDigest(a: Uint8Array, b: Uint8Array, offset: number): boolean {
  for (let i = offset; i < offset + DIGEST_BYTES; i++) if (a[i] !== b[i]) return false;
  return true;
}
