import type { LiveLink } from './messages.js';

/**
 * Flow control of live streams: the source link's budget, shared by a job's migrations, and each
 * stream's window of messages the destination has not yet taken.
 */

/**
 * The source link's rate, shared by every live migration of a job: each stream message waits until
 * the link has room for its bytes (a token bucket with a small burst). The cap applies to what
 * crosses the wire, not to QEMU's stream, most of which becomes 40-byte references: capping QEMU's
 * own `max-bandwidth` instead held an idle 256 MiB guest's stream of 132 MiB to a quarter of the link
 * although only ~4 MiB of it crossed.
 */
export class WireBudget {
  private nextFree: number;

  constructor(
    private readonly bytesPerSecond: number,
    /** Bytes that may go at once after a quiet spell. */
    private readonly burstBytes = 2 << 20,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.nextFree = now();
  }

  /** Resolves when `bytes` may be sent (at once while the link has been idle). */
  async take(bytes: number): Promise<void> {
    const wait = this.reserve(bytes);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }

  /** Reserves `bytes` of the link and returns how long to wait before sending them (ms). */
  reserve(bytes: number): number {
    const now = this.now();
    const burstMs = (this.burstBytes / this.bytesPerSecond) * 1000;
    // nextFree: when everything reserved so far has left at the link's rate; up to a burst ahead of
    // now goes at once.
    this.nextFree = Math.max(this.nextFree, now) + (bytes / this.bytesPerSecond) * 1000;
    return Math.max(0, this.nextFree - now - burstMs);
  }
}

/**
 * End-to-end flow control of one live stream: the destination acknowledges each message once its
 * QEMU took the bytes (live-ack), and at most `limit` messages may wait for that. So the coordinator
 * reads the source's stream at the rate the destination loads it, and QEMU's convergence logic (dirty
 * rate against bandwidth) sees the real rate.
 *
 * The limit trades pipelining against the backlog the destination may hold when the source stops:
 * with one or two, the coordinator, the agent and the destination QEMU mostly wait for each other (on
 * the 8-guest lab the migrations took 13.5 s at 2, 11.0 s at 8); each message stands for at most
 * MESSAGE_STREAM_BYTES of stream, so 8 bound the agent's buffers at 32 MiB per migrating VM.
 */
export const MESSAGES_IN_FLIGHT = 8;

export class AckWindow {
  private unacknowledged = 0;

  constructor(
    private readonly link: LiveLink,
    private readonly vm: string,
    private readonly timeoutMs: number,
    readonly limit = MESSAGES_IN_FLIGHT,
  ) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`an ack window of ${limit} messages`);
  }

  /** Messages sent and not yet acknowledged. */
  get inFlight(): number {
    return this.unacknowledged;
  }

  /** Counts a message just sent. */
  sent(): void {
    this.unacknowledged++;
  }

  /** Resolves once there is room for another message. */
  room(): Promise<void> {
    return this.acknowledged(this.limit - 1);
  }

  /** Resolves once the destination acknowledged every message sent. */
  all(): Promise<void> {
    return this.acknowledged(0);
  }

  // Counted down before each wait, so two waiters at once never wait for the same ack.
  private async acknowledged(atMost: number): Promise<void> {
    while (this.unacknowledged > atMost) {
      this.unacknowledged--;
      await this.link.next('live-ack', (m) => m.vm === this.vm, this.timeoutMs);
    }
  }
}

/**
 * Switch-overs first: while a VM of the job is stopped at its source for its switch-over (from QEMU's
 * STOP event where the source reports it, else from the stream's end: the last pass, the stream's
 * tail, the memory check, the resume), the job's other streams stop taking QEMU's stream, so the CPU, the
 * agents and the link serve the guest that is down. Their guests run on meanwhile; their QEMUs just
 * wait on a full socket. A stream in its own switch-over never waits (two at once must not wait for
 * each other), and no stream waits longer than `maxPauseMs` per message, so a switch-over that hangs
 * slows the others, never stops them.
 */
export class SwitchoverGate {
  private readonly down = new Set<string>();
  private waiters: (() => void)[] = [];

  constructor(private readonly maxPauseMs = 1000) {}

  /** VM `vm` is stopped at its source for its switch-over; call the returned function once it is over. */
  enter(vm: string): () => void {
    this.down.add(vm);
    return () => {
      this.down.delete(vm);
      if (this.down.size > 0) return;
      for (const wake of this.waiters.splice(0)) wake();
    };
  }

  /** Resolves once no other VM is in its switch-over (at once for a VM in its own), or after maxPauseMs. */
  async clear(vm: string): Promise<void> {
    if (this.down.size === 0 || this.down.has(vm)) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.waiters.push(resolve);
      timer = setTimeout(resolve, this.maxPauseMs);
    });
    clearTimeout(timer);
  }
}
