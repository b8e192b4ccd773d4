import { MessageType, type Message } from './messages.js';
import { layoutObject, sourceSymbol, symbolsInBlock, type ObjectLayout } from './object-layout.js';
import { RateController } from './rate-controller.js';
import { RepairQueue } from './repair-queue.js';

/**
 * The sending side of one multicast session, as a pure state machine: time comes from `io.now()`,
 * datagrams leave through `io.send()`, and the owner calls `poll()` when it returns a wake-up time and
 * `handle()` for each message from a receiver. No sockets, no timers: tests drive it on a virtual clock.
 *
 * Order of work: repairs first (they unblock receivers and free their memory), then new data within the
 * flow-control window, paced by a token bucket at the controller's rate. Repairs are Reed-Solomon parity
 * symbols, as many per block as the neediest receiver reported missing, so one repair packet serves
 * every receiver that lost any one symbol of that block.
 */

export type Destination = 'group' | number;

export interface SenderIo {
  /** Milliseconds, monotonic. */
  now(): number;
  send(message: Message, to: Destination): void;
}

/** Makes parity symbol `parityIndex` (>= k) of a block from its k source symbols. */
export interface ParityEncoder {
  encodeParity(sources: readonly Uint8Array[], parityIndex: number): Uint8Array;
}

export interface SenderOptions {
  readonly symbolSize: number;
  readonly blockSymbols: number;
  readonly parity: ParityEncoder;
  /** Parity symbols sent with every block on the first pass (before anyone asks). */
  readonly proactiveParity?: number;
  readonly rateCapBytesPerSecond: number;
  readonly initialRateBytesPerSecond?: number;
  readonly heartbeatIntervalMs?: number;
  readonly announceIntervalMs?: number;
  /** A receiver not heard from for this long is dropped. */
  readonly receiverTimeoutMs?: number;
  /** Most bytes sent beyond what every receiver has completed (bounds receivers' memory). */
  readonly windowBytes?: number;
  /** A receiver that alone holds the window shut this long is dropped. */
  readonly lagTimeoutMs?: number;
  /**
   * Data waits until every receiver has joined, at most this long (ms); then the session starts with
   * those present (the rest catch up by repair, or time out). Announces go out meanwhile.
   */
  readonly joinTimeoutMs?: number;
  /**
   * No data until releaseData(): the session announces itself and gathers its receivers' joins while
   * another session still has the wire (the join timeout counts from the release).
   */
  readonly startHeld?: boolean;
  /**
   * An open session: objects may be appended (append()) while it sends, until close(). Its receivers
   * learn the count so far from its announces (flagged `more`) and complete only once it is closed.
   */
  readonly open?: boolean;
}

/** An object to deliver; its id on the wire is its index in the session (given, then appended). */
export interface SendObject {
  readonly bytes: Uint8Array;
}

/**
 * Why a receiver left the session: silent too long, too slow, it said so, or its owner said it is
 * gone; 'unheard' when it timed out (or fell behind) without ever answering what the group carries:
 * its join came, but the group's datagrams do not reach it (multicast filtered on its path).
 */
export type DropReason = 'timeout' | 'too slow' | 'left' | 'lost' | 'unheard';

export interface SenderStats {
  dataPackets: number;
  parityPackets: number;
  repairPackets: number;
  controlPackets: number;
  payloadBytes: number;
  naksReceived: number;
  ignoredMessages: number;
}

export interface SessionResult {
  readonly completed: readonly number[];
  readonly dropped: readonly { readonly receiver: number; readonly reason: DropReason }[];
  readonly stats: SenderStats;
}

interface ReceiverState {
  joined: boolean;
  /** It answered something only the group carries (a heartbeat, a symbol): the group reaches it. */
  heard: boolean;
  lastHeardMs: number;
  /** Leading objects complete at the receiver. */
  objectsComplete: number;
  complete: boolean;
  dropped?: DropReason;
  /** Since when this receiver alone has held the window shut, or undefined. */
  blockingSinceMs?: number;
}

const DONE_REPEATS = 3;
/** Sending a late poll may catch up on, in ms at the current rate (the token bucket's depth). */
const BURST_MS = 8;
/** IPv4 + UDP + our header + symbol fields + GCM tag: what a symbol costs on the wire beyond its payload. */
const SYMBOL_OVERHEAD_BYTES = 84;

export class MulticastSender {
  /** Objects offered; `info` is let go once every receiver still in the session has the object. */
  private readonly objects: {
    info: SendObject | undefined;
    objectId: number;
    layout: ObjectLayout;
    endOffset: number;
  }[];
  /** Objects below this are held by every receiver still in the session: their bytes are let go. */
  private forgottenBelow = 0;
  private readonly receivers = new Map<number, ReceiverState>();
  private readonly repairs = new RepairQueue();
  private readonly rate: RateController;
  private readonly options: Required<Omit<SenderOptions, 'initialRateBytesPerSecond' | 'startHeld' | 'open'>>;
  /** Objects may still be appended (an open session not closed yet). */
  private open: boolean;
  private cursor = { object: 0, block: 0, index: 0 };
  private tokens = 0;
  private lastRefillMs: number;
  private lastHeartbeatMs = -Infinity;
  private lastAnnounceMs = -Infinity;
  private doneSent = 0;
  private startedMs: number;
  private dataStarted = false;
  private held: boolean;
  readonly stats: SenderStats = {
    dataPackets: 0,
    parityPackets: 0,
    repairPackets: 0,
    controlPackets: 0,
    payloadBytes: 0,
    naksReceived: 0,
    ignoredMessages: 0,
  };

  constructor(
    objects: readonly SendObject[],
    receivers: readonly number[],
    options: SenderOptions,
    private readonly io: SenderIo,
  ) {
    if (options.blockSymbols < 1 || options.blockSymbols + (options.proactiveParity ?? 0) > 255) {
      throw new RangeError('blockSymbols must be 1..255 with proactive parity included');
    }
    this.options = {
      proactiveParity: 0,
      heartbeatIntervalMs: 10,
      announceIntervalMs: 200,
      receiverTimeoutMs: 3000,
      windowBytes: 64 * 2 ** 20,
      lagTimeoutMs: 2000,
      joinTimeoutMs: 2000,
      ...options,
    };
    this.objects = [];
    this.open = options.open === true;
    this.push(objects);
    const now = io.now();
    this.lastRefillMs = now;
    for (const id of receivers)
      this.receivers.set(id, {
        joined: false,
        heard: false,
        lastHeardMs: now,
        objectsComplete: 0,
        complete: false,
      });
    this.startedMs = now;
    this.held = options.startHeld === true;
    this.rate = new RateController({
      capBytesPerSecond: options.rateCapBytesPerSecond,
      ...(options.initialRateBytesPerSecond === undefined
        ? {}
        : { initialBytesPerSecond: options.initialRateBytesPerSecond }),
    });
  }

  /** Current send rate in bytes per second. */
  get rateBytesPerSecond(): number {
    return this.rate.rate;
  }

  /** How often congestion control cut the rate, by signal. */
  get rateCuts(): { readonly queue: number; readonly loss: number } {
    return { ...this.rate.cuts };
  }

  get done(): boolean {
    return this.doneSent >= DONE_REPEATS;
  }

  /**
   * Every receiver has completed or was dropped: the result is final. The session goes on for a few
   * heartbeats only to repeat its Done to receivers that may have missed it.
   */
  get settled(): boolean {
    return this.doneSent > 0;
  }

  /** Offers more objects (an open session only); announced at the next poll. */
  append(objects: readonly SendObject[]): void {
    if (!this.open) throw new Error('objects appended to a session that is not open');
    this.push(objects);
    this.lastAnnounceMs = -Infinity;
  }

  /** An open session offers no more objects: its receivers may complete (announced at the next poll). */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.lastAnnounceMs = -Infinity;
  }

  /** Every object offered went out once and none will be added: the wire is free for another session. */
  get firstPassDone(): boolean {
    return !this.open && this.cursor.object >= this.objects.length;
  }

  /** Data flows and the first pass has reached object `object`: those before it went out once. */
  sendingFrom(object: number): boolean {
    return this.dataStarted && !this.held && this.cursor.object >= object;
  }

  /** Objects offered so far. */
  get objectCount(): number {
    return this.objects.length;
  }

  /** Leading objects receiver `id` has reported complete (all of them once it completed). */
  objectsCompleteAt(id: number): number {
    const r = this.receivers.get(id);
    return r === undefined ? 0 : r.complete ? this.objects.length : r.objectsComplete;
  }

  private push(objects: readonly SendObject[]): void {
    let offset = this.objects.length > 0 ? this.objects[this.objects.length - 1]!.endOffset : 0;
    for (const info of objects) {
      offset += info.bytes.length;
      const layout = layoutObject(info.bytes.length, this.options.symbolSize, this.options.blockSymbols);
      this.objects.push({ info, objectId: this.objects.length, layout, endOffset: offset });
    }
  }

  /** Lets a session created with startHeld send its data (its join wait starts now). */
  releaseData(): void {
    if (!this.held) return;
    this.held = false;
    this.startedMs = this.io.now();
  }

  result(): SessionResult {
    const completed: number[] = [];
    const dropped: { receiver: number; reason: DropReason }[] = [];
    for (const [id, r] of this.receivers) {
      if (r.dropped) dropped.push({ receiver: id, reason: r.dropped });
      else if (r.complete) completed.push(id);
    }
    return { completed, dropped, stats: { ...this.stats } };
  }

  /** Handles one message from receiver `from`. Unknown receivers and malformed requests are ignored. */
  handle(from: number, message: Message): void {
    const receiver = this.receivers.get(from);
    if (!receiver || receiver.dropped) {
      this.stats.ignoredMessages++;
      return;
    }
    const now = this.io.now();
    receiver.lastHeardMs = now;
    receiver.joined = true;
    // A join is sent unasked; these answer the group's datagrams.
    if (message.type !== MessageType.Join && message.type !== MessageType.Leave) receiver.heard = true;
    switch (message.type) {
      case MessageType.Join:
        return;
      case MessageType.Leave:
        return this.drop(from, receiver, 'left');
      case MessageType.Complete:
        receiver.complete = true;
        receiver.objectsComplete = this.objects.length;
        return this.forgetDelivered();
      case MessageType.Status:
        receiver.objectsComplete = Math.max(
          receiver.objectsComplete,
          Math.min(message.objectsComplete, this.objects.length),
        );
        this.forgetDelivered();
        this.rate.report(
          from,
          rttOf(now, message.echoMicros, message.echoDelayMicros),
          message.lossPpm / 1e6,
        );
        return;
      case MessageType.Nak:
        this.stats.naksReceived++;
        this.rate.report(
          from,
          rttOf(now, message.echoMicros, message.echoDelayMicros),
          message.lossPpm / 1e6,
        );
        for (const gap of message.gaps) this.requestRepair(gap.objectId, gap.block, gap.missing);
        return;
      default:
        this.stats.ignoredMessages++;
    }
  }

  /**
   * Sends what the rate allows now. Returns the milliseconds after which it wants to be polled again
   * (0: at once), or -1 once the session is over.
   */
  poll(): number {
    if (this.done) return -1;
    const now = this.io.now();
    this.rate.tick(now);
    this.expireReceivers(now);
    this.refill(now);
    const announceEvery = this.dataStarted
      ? this.options.announceIntervalMs
      : this.options.heartbeatIntervalMs;
    if (now - this.lastAnnounceMs >= announceEvery) this.announce(now);
    if (now - this.lastHeartbeatMs >= this.options.heartbeatIntervalMs) this.heartbeat(now);
    const packetCost = this.options.symbolSize + SYMBOL_OVERHEAD_BYTES;
    while (this.tokens >= packetCost) {
      if (!this.sendRepair() && !this.sendFirstPass(now)) break;
      this.tokens -= packetCost;
    }
    if (this.finished()) {
      this.io.send(
        { type: MessageType.Done, dropped: this.result().dropped.map((d) => d.receiver) },
        'group',
      );
      this.stats.controlPackets++;
      this.doneSent++;
      return this.done ? -1 : this.options.heartbeatIntervalMs;
    }
    const nextControl = Math.min(
      this.lastHeartbeatMs + this.options.heartbeatIntervalMs,
      this.lastAnnounceMs + announceEvery,
    );
    if (this.hasWork() && this.dataStarted) {
      // At least a microsecond: a wait rounded to nothing would spin without time passing.
      const untilTokens = Math.max(0.001, ((packetCost - this.tokens) / this.rate.rate) * 1000);
      return Math.max(0, Math.min(untilTokens, nextControl - now));
    }
    return Math.max(0, nextControl - now);
  }

  /**
   * Lets go of the bytes of objects every receiver still in the session has: an open session may
   * carry a whole job's pages, and only what some receiver may still ask for is worth keeping.
   */
  private forgetDelivered(): void {
    let below = this.objects.length;
    for (const r of this.receivers.values()) if (!r.dropped) below = Math.min(below, r.objectsComplete);
    // Objects not yet sent once stay, whatever the receivers claim.
    below = Math.min(below, this.cursor.object);
    for (; this.forgottenBelow < below; this.forgottenBelow++)
      this.objects[this.forgottenBelow]!.info = undefined;
  }

  private requestRepair(object: number, block: number, missing: number): void {
    if (!Number.isInteger(object) || object < this.forgottenBelow || object >= this.objects.length) return;
    const { layout } = this.objects[object]!;
    if (!Number.isInteger(block) || block < 0 || block >= layout.blockCount) return;
    // Blocks not yet sent on the first pass need no repair: they are on their way.
    if (object > this.cursor.object || (object === this.cursor.object && block >= this.cursor.block)) return;
    const k = symbolsInBlock(layout, block);
    const holdoffMs = 1.5 * this.rate.slowestRttMs + 2;
    this.repairs.request(
      object,
      block,
      k,
      missing,
      k + this.options.proactiveParity,
      this.io.now(),
      holdoffMs,
    );
  }

  private sendRepair(): boolean {
    const repair = this.repairs.next(this.io.now());
    if (!repair) return false;
    const { info, objectId, layout } = this.objects[repair.object]!;
    // Asked for before every receiver had it, and let go since: nobody needs it any more.
    if (info === undefined) return this.sendRepair();
    this.sendSymbol(objectId, info, layout, repair.block, repair.index, symbolsInBlock(layout, repair.block));
    this.stats.repairPackets++;
    return true;
  }

  private sendFirstPass(now: number): boolean {
    const c = this.cursor;
    if (c.object >= this.objects.length || this.held) return false;
    if (!this.dataStarted) {
      const everyone = [...this.receivers.values()].every((r) => r.joined || r.dropped);
      if (!everyone && now - this.startedMs < this.options.joinTimeoutMs) return false;
      this.dataStarted = true;
    }
    if (!this.windowOpen(now)) return false;
    const { info, layout } = this.objects[c.object]!;
    const k = symbolsInBlock(layout, c.block);
    this.sendSymbol(c.object, info!, layout, c.block, c.index, k);
    if (c.index < k) this.stats.dataPackets++;
    else this.stats.parityPackets++;
    c.index++;
    if (c.index >= k + this.options.proactiveParity) {
      c.index = 0;
      c.block++;
      if (c.block >= layout.blockCount) {
        c.block = 0;
        c.object++;
      }
    }
    return true;
  }

  private sendSymbol(
    objectId: number,
    info: SendObject,
    layout: ObjectLayout,
    block: number,
    index: number,
    k: number,
  ): void {
    const payload =
      index < k
        ? sourceSymbol(info.bytes, layout, block, index)
        : this.options.parity.encodeParity(
            Array.from({ length: k }, (_, i) => sourceSymbol(info.bytes, layout, block, i)),
            index,
          );
    this.io.send(
      {
        type: index < k ? MessageType.Data : MessageType.Parity,
        objectId,
        objectLength: info.bytes.length,
        block,
        index,
        blockSymbols: this.options.blockSymbols,
        payload,
      },
      'group',
    );
    this.stats.payloadBytes += payload.length;
  }

  /** Flow control: the first pass may run at most windowBytes ahead of the slowest active receiver. */
  private windowOpen(now: number): boolean {
    const sentEnd = this.cursor.object > 0 ? this.objects[this.cursor.object - 1]!.endOffset : 0;
    let slowest: ReceiverState | undefined;
    let slowestId = -1;
    for (const [id, r] of this.receivers) {
      if (r.dropped || r.complete) continue;
      if (!slowest || r.objectsComplete < slowest.objectsComplete) [slowest, slowestId] = [r, id];
    }
    if (!slowest) return true;
    const doneEnd = slowest.objectsComplete > 0 ? this.objects[slowest.objectsComplete - 1]!.endOffset : 0;
    if (sentEnd - doneEnd < this.options.windowBytes) {
      slowest.blockingSinceMs = undefined;
      return true;
    }
    slowest.blockingSinceMs ??= now;
    if (now - slowest.blockingSinceMs > this.options.lagTimeoutMs) {
      this.drop(slowestId, slowest, 'too slow');
      return this.windowOpen(now);
    }
    return false;
  }

  private hasWork(): boolean {
    return this.repairs.owed || this.cursor.object < this.objects.length;
  }

  private finished(): boolean {
    if (this.open || this.hasWork()) return false;
    for (const r of this.receivers.values()) if (!r.dropped && !r.complete) return false;
    return true;
  }

  /**
   * Drops receiver `id` at once: its agent's control connection closed, so nothing more will come
   * from it, and waiting out its silence would hold the session for nothing.
   */
  dropReceiver(id: number): void {
    const receiver = this.receivers.get(id);
    if (receiver && !receiver.dropped && !receiver.complete) this.drop(id, receiver, 'lost');
  }

  private expireReceivers(now: number): void {
    for (const [id, r] of this.receivers) {
      if (!r.dropped && !r.complete && now - r.lastHeardMs > this.options.receiverTimeoutMs)
        this.drop(id, r, 'timeout');
    }
  }

  private drop(id: number, receiver: ReceiverState, reason: DropReason): void {
    const unanswered = reason === 'timeout' || reason === 'too slow';
    receiver.dropped = unanswered && !receiver.heard ? 'unheard' : reason;
    this.rate.forget(id);
  }

  private refill(now: number): void {
    const elapsed = Math.max(0, now - this.lastRefillMs);
    this.lastRefillMs = now;
    // The bucket holds BURST_MS of sending: timers fire a millisecond or more late (more on a busy
    // host), and whatever a late poll cannot make up is rate lost for good.
    const depth = Math.max(
      2 * (this.options.symbolSize + SYMBOL_OVERHEAD_BYTES),
      (this.rate.rate * BURST_MS) / 1000,
    );
    this.tokens = Math.min(depth, this.tokens + (this.rate.rate * elapsed) / 1000);
  }

  private announce(now: number): void {
    this.io.send(
      {
        type: MessageType.Announce,
        symbolSize: this.options.symbolSize,
        blockSymbols: this.options.blockSymbols,
        objectCount: this.objects.length,
        totalBytes: this.objects.length > 0 ? this.objects[this.objects.length - 1]!.endOffset : 0,
        ...(this.open ? { more: true } : {}),
      },
      'group',
    );
    this.stats.controlPackets++;
    this.lastAnnounceMs = now;
  }

  private heartbeat(now: number): void {
    this.io.send(
      {
        type: MessageType.Heartbeat,
        sentAtMicros: Math.round(now * 1000),
        objectsSent: this.cursor.object,
        rateBytesPerSecond: Math.round(this.rate.rate),
      },
      'group',
    );
    this.stats.controlPackets++;
    this.lastHeartbeatMs = now;
  }
}

function rttOf(nowMs: number, echoMicros: number, delayMicros: number): number | undefined {
  if (echoMicros <= 0) return undefined;
  const rtt = nowMs - echoMicros / 1000 - delayMicros / 1000;
  return rtt >= 0 ? rtt : undefined;
}
