import type { LiveLink } from './messages.js';

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
