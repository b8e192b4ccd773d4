import { MessageType, type BlockGap, type Message, type SymbolMessage } from './messages.js';
import { layoutObject, sourceSymbol, symbolsInBlock, type ObjectLayout } from './object-layout.js';
import { copyBytes } from '../copy-bytes.js';

/**
 * The receiving side of one multicast session, as a pure state machine (time and sending injected,
 * like the sender). It rebuilds objects from any k symbols of each block, asks for what it lacks with
 * NAKs after a random backoff (so receivers that lost the same packet do not all ask at once, and
 * repairs triggered by one serve all), answers heartbeats with its progress, and reports completion.
 *
 * Memory: a block keeps copies of parity symbols only until it is rebuilt; data symbols go straight
 * into the object's buffer; a delivered object is handed over and forgotten. The sender's window bounds
 * how many objects are in progress at once.
 */

/** Rebuilds the k source symbols of a block from any k distinct symbols (index -> symbol bytes). */
export interface ErasureDecoder {
  decode(k: number, symbols: ReadonlyMap<number, Uint8Array>, symbolSize: number): Uint8Array[];
}

export interface ReceiverIo {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Sends to the session's sender. */
  send(message: Message): void;
  /** Uniform in [0, 1), for NAK backoff. */
  random(): number;
}

export interface ReceiverOptions {
  readonly decoder: ErasureDecoder;
  /** Most random delay before a NAK (ms). */
  readonly nakBackoffMs?: number;
  /** Least time between two NAKs (ms): repairs for the last one need a round trip to arrive. */
  readonly nakIntervalMs?: number;
  /** Most block gaps in one NAK (keeps it one datagram). */
  readonly maxGapsPerNak?: number;
  /** The session is given up when the sender is silent this long (ms). */
  readonly senderTimeoutMs?: number;
  /** Largest object accepted (bytes): a forged length must not make us allocate without bound. */
  readonly maxObjectBytes?: number;
  /** Memory for an object of `length` bytes, zeroed (default: a new Uint8Array). */
  readonly allocate?: (length: number) => Uint8Array;
}

export type ReceiverState = 'receiving' | 'complete' | 'failed';

interface BlockState {
  readonly have: Uint8Array;
  count: number;
  readonly parity: Map<number, Uint8Array>;
  done: boolean;
}

interface ObjectState {
  readonly layout: ObjectLayout;
  bytes: Uint8Array | undefined;
  readonly blocks: (BlockState | undefined)[];
  blocksDone: number;
  complete: boolean;
}

export interface ReceiverStats {
  symbols: number;
  duplicates: number;
  decodedBlocks: number;
  naksSent: number;
  rejected: number;
}

const LOSS_WINDOW_PACKETS = 256;

export class MulticastReceiver {
  private readonly options: Required<Omit<ReceiverOptions, 'decoder' | 'allocate'>> & {
    decoder: ErasureDecoder;
    allocate?: (length: number) => Uint8Array;
  };
  private readonly objects = new Map<number, ObjectState>();
  private symbolSize = 0;
  /** Objects in the session, once an announce says no more follow (-1 until then: any id is taken). */
  private objectCount = -1;
  private objectsSent = 0;
  /** Leading objects complete. */
  private leading = 0;
  private frontier = { object: -1, block: -1 };
  private stateValue: ReceiverState = 'receiving';
  private lastHeardMs: number;
  private nakDueMs: number | undefined;
  private nextNakMs = 0;
  private joined = false;
  private echo = { micros: 0, atMs: 0 };
  private loss = { windowStart: -1, received: 0, highest: -1, share: 0 };
  private receivedBytes = 0;
  private readonly startedMs: number;
  readonly stats: ReceiverStats = { symbols: 0, duplicates: 0, decodedBlocks: 0, naksSent: 0, rejected: 0 };

  constructor(
    options: ReceiverOptions,
    private readonly io: ReceiverIo,
    private readonly onObject: (objectId: number, bytes: Uint8Array) => void,
  ) {
    this.options = {
      nakBackoffMs: 2,
      nakIntervalMs: 15,
      maxGapsPerNak: 64,
      senderTimeoutMs: 5000,
      maxObjectBytes: 256 * 2 ** 20,
      ...options,
    };
    this.startedMs = this.lastHeardMs = io.now();
  }

  get state(): ReceiverState {
    return this.stateValue;
  }

  /** Handles one message from the sender; `sequence` is its packet number (for the loss estimate). */
  handle(message: Message, sequence?: number): void {
    if (this.stateValue === 'failed') return;
    const now = this.io.now();
    this.lastHeardMs = now;
    if (sequence !== undefined) this.countPacket(sequence);
    switch (message.type) {
      case MessageType.Announce:
        // An open session's count grows until its last announce (without `more`) fixes it; one of
        // its earlier announces arriving late changes nothing then.
        if (this.symbolSize === 0 || this.symbolSize === message.symbolSize) {
          this.symbolSize = message.symbolSize;
          if (message.more !== true) this.objectCount = message.objectCount;
        }
        // Until data flows, every announce is answered, so a lost join does not stall the start.
        if (this.stats.symbols === 0) this.io.send({ type: MessageType.Join });
        return this.checkComplete();
      case MessageType.Data:
      case MessageType.Parity:
        return this.receiveSymbol(message);
      case MessageType.Heartbeat:
        this.objectsSent = Math.max(this.objectsSent, message.objectsSent);
        this.echo = { micros: message.sentAtMicros, atMs: now };
        return this.report(now);
      case MessageType.Done:
        if (this.stateValue !== 'complete') this.stateValue = 'failed';
        else this.io.send({ type: MessageType.Complete });
        return;
      default:
        this.stats.rejected++;
    }
  }

  /** Sends NAKs and joins when due. Returns ms until it wants to be polled again, or -1 when over. */
  poll(): number {
    if (this.stateValue === 'failed') return -1;
    const now = this.io.now();
    if (!this.joined) {
      this.io.send({ type: MessageType.Join });
      this.joined = true;
    }
    if (this.stateValue === 'complete') return -1;
    // At the time-out itself, not after it: a wake-up due then would otherwise come back at once.
    if (now - this.lastHeardMs >= this.options.senderTimeoutMs) {
      this.stateValue = 'failed';
      return -1;
    }
    const wakeForTimeout = this.lastHeardMs + this.options.senderTimeoutMs - now;
    if (now < this.nextNakMs) return Math.min(this.nextNakMs - now, wakeForTimeout);
    const gaps = this.gaps();
    if (gaps.length === 0) {
      this.nakDueMs = undefined;
      return Math.min(this.options.nakIntervalMs, wakeForTimeout);
    }
    this.nakDueMs ??= now + this.io.random() * this.options.nakBackoffMs;
    if (now < this.nakDueMs) return this.nakDueMs - now;
    this.io.send({
      type: MessageType.Nak,
      gaps,
      echoMicros: this.echo.micros,
      echoDelayMicros: this.echo.micros > 0 ? Math.round((now - this.echo.atMs) * 1000) : 0,
      lossPpm: Math.round(this.loss.share * 1e6),
    });
    this.stats.naksSent++;
    this.nakDueMs = undefined;
    this.nextNakMs = now + this.options.nakIntervalMs;
    return this.options.nakIntervalMs;
  }

  private receiveSymbol(m: SymbolMessage): void {
    if (this.stateValue === 'complete' || !this.validSymbol(m)) return;
    this.stats.symbols++;
    if (this.symbolSize === 0) this.symbolSize = m.payload.length;
    let object = this.objects.get(m.objectId);
    if (!object) {
      if (m.objectId < this.leading) return; // delivered already
      const layout = layoutObject(m.objectLength, this.symbolSize, m.blockSymbols);
      const bytes = this.options.allocate?.(m.objectLength) ?? new Uint8Array(m.objectLength);
      object = { layout, bytes, blocks: [], blocksDone: 0, complete: false };
      this.objects.set(m.objectId, object);
    }
    if (object.complete || object.layout.length !== m.objectLength) return this.duplicate();
    if (m.block >= object.layout.blockCount || m.blockSymbols !== object.layout.blockSymbols) {
      this.stats.rejected++;
      return;
    }
    const k = symbolsInBlock(object.layout, m.block);
    this.advanceFrontier(m.objectId, m.block);
    let block = object.blocks[m.block];
    if (!block) {
      block = { have: new Uint8Array(255), count: 0, parity: new Map(), done: false };
      object.blocks[m.block] = block;
    }
    if (block.done || block.have[m.index] === 1) return this.duplicate();
    block.have[m.index] = 1;
    block.count++;
    this.receivedBytes += m.payload.length;
    if (m.index < k) this.writeSource(object, m.block, m.index, m.payload);
    else block.parity.set(m.index, copyBytes(m.payload));
    if (block.count >= k) this.finishBlock(m.objectId, object, m.block, block, k);
  }

  private validSymbol(m: SymbolMessage): boolean {
    const ok =
      m.payload.length > 0 &&
      (this.symbolSize === 0 || m.payload.length === this.symbolSize) &&
      m.objectLength <= this.options.maxObjectBytes &&
      m.objectId >= 0 &&
      (this.objectCount < 0 || m.objectId < this.objectCount) &&
      m.index < 255 &&
      m.blockSymbols >= 1;
    if (!ok) this.stats.rejected++;
    return ok;
  }

  private writeSource(object: ObjectState, block: number, index: number, payload: Uint8Array): void {
    const { layout } = object;
    const start = (block * layout.blockSymbols + index) * layout.symbolSize;
    const length = Math.min(layout.symbolSize, layout.length - start);
    if (length > 0) object.bytes!.set(payload.subarray(0, length), start);
  }

  private finishBlock(objectId: number, object: ObjectState, b: number, block: BlockState, k: number): void {
    let missingSource = false;
    for (let i = 0; i < k; i++) if (block.have[i] !== 1) missingSource = true;
    if (missingSource) {
      const symbols = new Map<number, Uint8Array>();
      for (let i = 0; i < k; i++)
        if (block.have[i] === 1) symbols.set(i, sourceSymbol(object.bytes!, object.layout, b, i));
      for (const [index, payload] of block.parity) {
        if (symbols.size >= k) break;
        symbols.set(index, payload);
      }
      const sources = this.options.decoder.decode(k, symbols, object.layout.symbolSize);
      for (let i = 0; i < k; i++) if (block.have[i] !== 1) this.writeSource(object, b, i, sources[i]!);
      this.stats.decodedBlocks++;
    }
    block.done = true;
    block.parity.clear();
    object.blocksDone++;
    if (object.blocksDone === object.layout.blockCount) {
      object.complete = true;
      const bytes = object.bytes!;
      object.bytes = undefined;
      object.blocks.length = 0;
      this.onObject(objectId, bytes);
      while (this.objects.get(this.leading)?.complete) this.objects.delete(this.leading++);
      this.checkComplete();
    }
  }

  private checkComplete(): void {
    if (this.stateValue === 'receiving' && this.objectCount >= 0 && this.leading >= this.objectCount) {
      this.stateValue = 'complete';
      this.io.send({ type: MessageType.Complete });
    }
  }

  /** Blocks this receiver knows it lacks: behind the newest symbol seen, or in objects fully sent. */
  private gaps(): BlockGap[] {
    const gaps: BlockGap[] = [];
    const limit = this.options.maxGapsPerNak;
    const lastObject = Math.max(this.frontier.object, this.objectsSent - 1);
    for (let o = this.leading; o <= lastObject && gaps.length < limit; o++) {
      const object = this.objects.get(o);
      if (!object) {
        // Nothing of it arrived, so its length is unknown: ask for its first block in full.
        gaps.push({ objectId: o, block: 0, missing: 255 });
        continue;
      }
      if (object.complete) continue;
      const sentWhole = o < this.objectsSent || o < this.frontier.object;
      const lastBlock = sentWhole ? object.layout.blockCount - 1 : this.frontier.block - 1;
      for (let b = 0; b <= lastBlock && gaps.length < limit; b++) {
        const block = object.blocks[b];
        if (block?.done) continue;
        gaps.push({ objectId: o, block: b, missing: symbolsInBlock(object.layout, b) - (block?.count ?? 0) });
      }
    }
    return gaps;
  }

  private advanceFrontier(object: number, block: number): void {
    const f = this.frontier;
    if (object > f.object || (object === f.object && block > f.block)) this.frontier = { object, block };
  }

  private report(now: number): void {
    if (this.stateValue === 'complete') {
      this.io.send({ type: MessageType.Complete });
      return;
    }
    const seconds = Math.max(0.001, (now - this.startedMs) / 1000);
    this.io.send({
      type: MessageType.Status,
      objectsComplete: this.leading,
      echoMicros: this.echo.micros,
      echoDelayMicros: 0,
      lossPpm: Math.round(this.loss.share * 1e6),
      receiveRate: Math.round(this.receivedBytes / seconds),
    });
  }

  /** Loss share over windows of sender packet numbers (gaps in the sequence are lost packets). */
  private countPacket(sequence: number): void {
    const l = this.loss;
    if (l.windowStart < 0) l.windowStart = sequence;
    l.received++;
    l.highest = Math.max(l.highest, sequence);
    const expected = l.highest - l.windowStart + 1;
    if (expected >= LOSS_WINDOW_PACKETS) {
      const share = Math.max(0, 1 - l.received / expected);
      l.share = l.share === 0 ? share : 0.5 * l.share + 0.5 * share;
      l.windowStart = l.highest + 1;
      l.received = 0;
    }
  }

  private duplicate(): void {
    this.stats.duplicates++;
  }
}
