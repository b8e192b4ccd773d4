import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import type { PageDigester } from '../memory/page-digest.js';
import { LiveTarget, type HeldPages } from '../live/target.js';
import { HeldBack } from './held-back.js';
import { attachLibvirtDestination } from '../live/destination-libvirt.js';
import type { LiveToAgent } from '../live/messages.js';
import { defaultEmulators, refuseCommand } from '../qemu/command-policy.js';
import type { TemplateStore } from '../store/template-store.js';
import { VM_NAME, type FromAgent } from '../wire/protocol.js';
import type { AgentOptions } from './agent-options.js';
import { DOMAIN_NAME } from '../topology/validate.js';

/**
 * The target side of a job's live migrations, one VM each: its destination (one this agent starts from
 * the VM's command line, or the one a libvirt starts for a domain), the stream written into it, the
 * verdict with the memory digests, a repair, the resume or the rollback (live/target.ts does the work
 * for one VM). A failure here fails that VM only, never the job.
 */
export interface LiveJob {
  id(): string;
  readonly options: AgentOptions;
  readonly digester: PageDigester;
  readonly store: TemplateStore;
  /**
   * Settles once the pages rounds delivered so far are stored; undefined when none wait. A stream may
   * refer to them from the moment every round is out (the coordinator does not wait for 'seeded').
   */
  storesSettled(): Promise<void> | undefined;
  log(line: string): void;
  reply(message: FromAgent): void;
}

export class JobLiveTargets {
  private readonly targets = new Map<string, LiveTarget>();
  /** libvirt domains whose destination is being waited for (live-attach), so a rollback stops the wait. */
  private readonly attaching = new Map<string, AbortController>();
  /** Why a live VM's stream failed at this end, reported when the coordinator asks for the verdict. */
  private readonly failures = new Map<string, string>();
  /** A VM's stream messages held back until delivered pages are stored, in order. */
  private readonly heldBack = new HeldBack();

  constructor(private readonly job: LiveJob) {}

  async handle(message: LiveToAgent): Promise<void> {
    const { vm } = message;
    if (!VM_NAME.test(vm)) throw new VmscatterError('VMS_PROTOCOL', `bad VM name '${vm}'`);
    if (message.t === 'live-stream') return this.stream(vm, message.records);
    // What follows a stream comes after it: its held-back messages are written first.
    await this.heldBack.drained(vm);
    const target = this.targets.get(vm);
    switch (message.t) {
      case 'live-incoming': {
        this.failures.delete(vm);
        const refused = refuseCommand(message.command, {
          emulators: this.job.options.emulators ?? defaultEmulators(),
          ownDir: join(this.job.options.dir, 'run'),
        });
        if (refused) {
          this.job.log(`job ${this.job.id()}: ${vm}: refused to start its destination: ${refused}`);
          return this.job.reply({ t: 'live-refused', vm, error: refused });
        }
        const started = await LiveTarget.start({
          vm,
          command: message.command,
          dir: join(this.job.options.dir, 'run'),
          held: this.heldPages(),
          digester: this.job.digester,
        });
        this.targets.set(vm, started);
        this.job.log(`job ${this.job.id()}: ${vm}: destination QEMU waiting for the stream`);
        return this.job.reply({ t: 'live-ready', vm });
      }
      case 'live-attach': {
        this.failures.delete(vm);
        const refuse = (error: string) => {
          this.job.log(`job ${this.job.id()}: ${vm}: not attached to domain ${message.domain}: ${error}`);
          this.job.reply({ t: 'live-refused', vm, error });
        };
        // Only a host configured with a libvirt takes libvirt domains, and only through our sockets.
        const uri = this.job.options.libvirt;
        if (uri === undefined) return refuse('this host has no libvirt (no libvirt: in its topology entry)');
        if (!DOMAIN_NAME.test(message.domain)) return refuse(`'${message.domain}' is not a domain name`);
        const attaching = new AbortController();
        this.attaching.set(vm, attaching);
        try {
          const { destination, socket } = await attachLibvirtDestination({
            uri,
            domain: message.domain,
            socket: message.socket,
            ram: message.ram,
            signal: attaching.signal,
          });
          const held = this.heldPages();
          const scratch = join(this.job.options.dir, 'run', 'ram');
          this.targets.set(vm, new LiveTarget(vm, destination, socket, held, this.job.digester, scratch));
        } catch (error) {
          return refuse((error as Error).message);
        } finally {
          this.attaching.delete(vm);
        }
        this.job.log(`job ${this.job.id()}: ${vm}: attached to libvirt's destination of ${message.domain}`);
        return this.job.reply({ t: 'live-ready', vm });
      }
      case 'live-end': {
        // A destination that went away while loading (killed by a rollback, or crashed) fails this VM
        // only: the error is its verdict, not the job's.
        const failed = this.failures.get(vm);
        const outcome =
          failed !== undefined
            ? { why: failed }
            : target
              ? await target
                  .finish(message.sha256, message.memorySeed)
                  .catch((error: unknown) => ({ why: `destination QEMU: ${(error as Error).message}` }))
              : { why: 'no destination was started' };
        const why = 'why' in outcome ? outcome.why : undefined;
        if (why && target) await target.abort();
        if (why) this.targets.delete(vm);
        this.job.log(
          `job ${this.job.id()}: ${vm}: ${why ? `not verified: ${why}` : 'stream verified, memory read'}`,
        );
        const memory = 'memory' in outcome ? outcome.memory : new Uint8Array(0);
        return this.job.reply({ t: 'live-verified', vm, ok: !why, error: why ?? '', memory });
      }
      case 'live-repair': {
        if (!target) throw new VmscatterError('VMS_PROTOCOL', `repair of ${vm}, which is not waiting here`);
        const repaired = await target
          .repair(message.chunks)
          .then((digests) => ({ ok: true, error: '', digests }))
          .catch((error: unknown) => ({
            ok: false,
            error: (error as Error).message,
            digests: new Uint8Array(0),
          }));
        this.job.log(
          `job ${this.job.id()}: ${vm}: ${repaired.ok ? `repaired ${repaired.digests.length / 32} MiB of memory` : `not repaired: ${repaired.error}`}`,
        );
        return this.job.reply({ t: 'live-repaired', vm, ...repaired });
      }
      case 'live-resume':
        if (!target) throw new VmscatterError('VMS_PROTOCOL', `resume of ${vm}, which is not waiting here`);
        await target.resume();
        this.targets.delete(vm);
        this.job.log(`job ${this.job.id()}: ${vm}: running here`);
        return this.job.reply({ t: 'live-resumed', vm });
      case 'live-abort':
        this.attaching.get(vm)?.abort();
        this.targets.delete(vm);
        if (target) await target.abort();
        this.job.log(`job ${this.job.id()}: ${vm}: rolled back (it runs on at the source)`);
        return;
    }
  }

  /**
   * A message of a VM's stream, written into its destination, or held back (with those after it)
   * until the pages rounds delivered are stored, since it may refer to them.
   */
  private stream(vm: string, records: Extract<LiveToAgent, { t: 'live-stream' }>['records']): void {
    this.heldBack.run(vm, this.job.storesSettled(), () => this.write(vm, records));
  }

  private write(vm: string, records: Extract<LiveToAgent, { t: 'live-stream' }>['records']): void {
    // Acknowledged once the destination took the bytes (at once when it failed: the stream then runs
    // to its end, where live-end reports the failure), so the coordinator reads QEMU's stream no
    // faster than the destination loads it, and QEMU's own convergence logic sees the real rate:
    // otherwise the destination would still be loading a backlog with the guest stopped.
    const ack = () => this.job.reply({ t: 'live-ack', vm });
    const target = this.targets.get(vm);
    if (!target || this.failures.has(vm)) return ack();
    try {
      target.write(records);
      void target.taken().then(ack);
    } catch (error) {
      this.failures.set(vm, (error as Error).message);
      ack();
      void target.abort().catch(() => undefined);
    }
  }

  /** Where a live stream's referenced pages are read: the agent's store. */
  private heldPages(): HeldPages {
    return {
      pageOf: (digest, into) => this.job.store.get(digest, into),
      readMany: (digests, count, into, found) => this.job.store.readMany(digests, count, into, found),
    };
  }

  /** The job ends unfinished: a destination not yet resumed is killed (its VM runs on at the source). */
  abandon(): void {
    for (const attaching of this.attaching.values()) attaching.abort();
    for (const target of this.targets.values()) void target.abort();
    this.targets.clear();
  }
}
