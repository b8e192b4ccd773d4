import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { listenControl, type ControlChannel, type ControlServer } from '../control/control-channel.js';
import { VmscatterError } from '../errors.js';
import { deriveDigestKey, PageDigester } from '../memory/page-digest.js';
import { AgentJob, imagesDir } from './agent-job.js';
import { sweepStaleDestinations } from './destinations.js';
import type { AgentOptions } from './agent-options.js';
import { ensurePrivateDir } from '../store/file-io.js';
import { parseToAgent, type FromAgent } from '../wire/protocol.js';
import { answerFetch } from './site-peers.js';
import { TemplateStore } from '../store/template-store.js';

export type { AgentOptions };

/** Jobs an agent serves at once: more queue at their coordinators (busy, try again). */
export const MAX_JOBS = 4;

/** 2 GiB of pages by default. */
export const DEFAULT_TEMPLATE_CAPACITY_PAGES = 2 ** 19;

/**
 * `vmscatter agent`: one per target host. It serves up to MAX_JOBS coordinators at a time (two hosts
 * drained onto shared targets), each job holding the guest memory it placed here until it ends,
 * joins the multicast rounds it is told (with the key the coordinator sends it there), checks each
 * arriving page against its digest and stores it, rebuilds each VM image it is given a manifest for and
 * verifies it against the source's SHA-256.
 *
 * State lives in `dir` and survives restarts: `store/` (pages by digest) so a resumed job is not sent
 * what is held, and `images/` with a `.sha256` beside each verified image. An image is only ever named
 * `<vm>.raw` once verified; if the coordinator goes away mid-job, the job's unfinished VMs are dropped
 * and said to be dropped.
 */
export class Agent {
  /** Messages dropped because they were not well-formed protocol messages. */
  malformed = 0;
  private readonly jobs = new Set<AgentJob>();
  /** Guest memory each job under way placed here (bytes). */
  private readonly reservations = new Map<AgentJob, number>();

  private constructor(
    private readonly options: AgentOptions,
    readonly store: TemplateStore,
    private readonly digester: PageDigester,
    private server?: ControlServer,
  ) {}

  static async start(options: AgentOptions): Promise<Agent> {
    // Guest memory lives here (the store, images, destinations' scratch): its owner's only.
    ensurePrivateDir(options.dir);
    ensurePrivateDir(imagesDir(options.dir));
    ensurePrivateDir(join(options.dir, 'run'));
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
      // The error names the peer: "10.0.0.9:51234: closed during the handshake (wrong secret?)".
      (error) => agent.log(`refused a control connection from ${error.message}`),
    );
    return agent;
  }

  get port(): number {
    return this.server!.port;
  }

  get log(): (line: string) => void {
    return this.options.log ?? (() => undefined);
  }

  reservedByOthers(job: AgentJob): number {
    let bytes = 0;
    for (const [other, reserved] of this.reservations) if (other !== job) bytes += reserved;
    return bytes;
  }

  reserve(job: AgentJob, bytes: number, capacity: number): boolean {
    if (!this.jobs.has(job) || this.reservedByOthers(job) + bytes > capacity) return false;
    this.reservations.set(job, bytes);
    return true;
  }

  othersRunning(job: AgentJob): boolean {
    return [...this.jobs].some((other) => other !== job);
  }

  async close(): Promise<void> {
    for (const job of this.jobs) job.abandon('agent stopping');
    await this.server?.close();
    this.store.close();
  }

  /**
   * A connection is a coordinator's job (first message 'job'; up to MAX_JOBS at once) or a peer agent of
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
      // A job can end with a round still on the wire (the coordinator was interrupted): its receivers
      // must not wait on for a sender that stopped, nor keep this process alive. What finished
      // is kept; what did not is dropped, and said to be.
      if (message.t === 'end') job.abandon('ended by the coordinator');
      job.handle(message).catch((error: unknown) => {
        const text = error instanceof VmscatterError ? error.message : String(error);
        this.log(`job ${job.id}: ${text}`);
        channel.send({ t: 'error', message: text } satisfies FromAgent);
      });
    });
  }

  private startJob(channel: ControlChannel): AgentJob | undefined {
    if (this.jobs.size >= MAX_JOBS) {
      const ids = [...this.jobs].map((job) => job.id).join(', ');
      channel.send({ t: 'error', message: `${this.options.name} is busy with ${MAX_JOBS} jobs (${ids})` });
      channel.close();
      return undefined;
    }
    const job = new AgentJob(this, this.options, this.digester, channel);
    this.jobs.add(job);
    channel.onClose((error) => {
      if (error) job.abandon(`coordinator gone (${error.message})`);
      this.jobs.delete(job);
      this.reservations.delete(job);
    });
    return job;
  }
}

/** Images left half-written by a crash are never mistaken for finished ones. */
function sweepPartialImages(dir: string): void {
  for (const name of readdirSync(imagesDir(dir)))
    if (name.endsWith('.partial')) rmSync(join(imagesDir(dir), name), { force: true });
}
