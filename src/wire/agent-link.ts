import type { ControlChannel } from '../control/control-channel.js';
import type { Host } from '../topology/model.js';
import { parseFromAgent, type FromAgent, type ToAgent } from './protocol.js';

/**
 * The coordinator's side of one agent: typed sends, and waiting for a reply of a given kind. When the
 * agent goes away (connection closed, or it reports an error) every wait fails with the reason, and
 * `lost` keeps it for the report: one agent's loss never stops the others.
 */
export class AgentLostError extends Error {}

type Kind = FromAgent['t'];
type Of<K extends Kind> = Extract<FromAgent, { t: K }>;

interface Waiter {
  readonly kinds: readonly Kind[];
  readonly match: (message: FromAgent) => boolean;
  readonly resolve: (message: FromAgent) => void;
  readonly reject: (error: Error) => void;
}

export class AgentLink {
  /** Why the agent was lost, once it is. */
  lost: string | undefined;
  /** Messages dropped because they were not protocol messages. */
  malformed = 0;
  private readonly queue: FromAgent[] = [];
  private readonly waiters = new Set<Waiter>();
  private readonly lostListeners = new Set<(reason: string) => void>();

  constructor(
    /** Index of the target in the job's target list. */
    readonly target: number,
    readonly host: Host,
    private readonly channel: ControlChannel,
  ) {
    channel.onMessage((value) => {
      const message = parseFromAgent(value);
      if (!message) {
        this.malformed++;
        return;
      }
      if (message.t === 'error') return this.fail(`${host.name}: ${message.message}`);
      for (const waiter of this.waiters) {
        if (waiter.kinds.includes(message.t) && waiter.match(message)) {
          this.waiters.delete(waiter);
          return waiter.resolve(message);
        }
      }
      this.queue.push(message);
    });
    channel.onClose((error) => {
      if (error) this.fail(`${host.name}: agent lost (${error.message})`);
    });
  }

  send(message: ToAgent): void {
    if (!this.lost) this.channel.send(message);
  }

  /** Waits for the backlog of the channel to drain (large sends). */
  drain(): Promise<void> {
    return this.channel.drain();
  }

  /** The next message of `kind` (or one of several kinds) matching `match`, within `timeoutMs`. */
  next<K extends Kind>(
    kind: K | readonly K[],
    match: (message: Of<K>) => boolean,
    timeoutMs: number,
  ): Promise<Of<K>> {
    if (this.lost) return Promise.reject(new AgentLostError(this.lost));
    const kinds: readonly Kind[] = Array.isArray(kind) ? kind : [kind];
    const queued = this.queue.findIndex((m) => kinds.includes(m.t) && match(m as Of<K>));
    if (queued >= 0) return Promise.resolve(this.queue.splice(queued, 1)[0] as Of<K>);
    return new Promise<Of<K>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(
          new AgentLostError(
            `${this.host.name}: no '${kinds.join("' or '")}' reply within ${timeoutMs / 1000} s`,
          ),
        );
      }, timeoutMs);
      const waiter: Waiter = {
        kinds,
        match: (m) => match(m as Of<K>),
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m as Of<K>);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      this.waiters.add(waiter);
    });
  }

  /** Ends the link: whatever still waits for a reply is rejected now, not at its timeout. */
  close(): void {
    for (const waiter of this.waiters) waiter.reject(new AgentLostError(`${this.host.name}: link closed`));
    this.waiters.clear();
    this.channel.close();
  }

  /** Calls `listener` once the agent is lost (at once if it is); returns a function that stops that. */
  onLost(listener: (reason: string) => void): () => void {
    if (this.lost) {
      listener(this.lost);
      return () => undefined;
    }
    this.lostListeners.add(listener);
    return () => this.lostListeners.delete(listener);
  }

  private fail(reason: string): void {
    if (this.lost) return;
    this.lost = reason;
    for (const waiter of this.waiters) waiter.reject(new AgentLostError(reason));
    this.waiters.clear();
    for (const listener of this.lostListeners) listener(reason);
    this.lostListeners.clear();
    this.channel.close();
  }
}
