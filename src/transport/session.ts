import type { DatagramSocket, Scheduler } from './datagram.js';
import { MessageType, type Message } from './messages.js';
import { MulticastReceiver, type ReceiverOptions, type ReceiverState } from './multicast-receiver.js';
import { freshObjectMemory, type ObjectMemory } from './object-memory.js';
import {
  MulticastSender,
  type SendObject,
  type SenderOptions,
  type SessionResult,
} from './multicast-sender.js';
import {
  DropCounters,
  MAX_DATAGRAM_BYTES,
  PacketOpener,
  PacketSealer,
  type OpenedPacket,
} from './packet-crypto.js';
import {
  HEADER_BYTES,
  HEADER_SESSION_OFFSET,
  SYMBOL_FIXED_BYTES,
  TAG_BYTES,
  decodeMessage,
  encodeMessage,
  encodeSymbolFields,
  isDecodeFailure,
} from './wire-codec.js';

/**
 * Binds the protocol state machines to a datagram socket, packet crypto and a scheduler. Everything
 * arriving is opened (authenticated, replay-checked) and decoded before the protocol sees it; what
 * fails is dropped and counted, never thrown.
 */

/** Session keying: a 32-byte AES-256-GCM key from the control channel, or explicit plaintext. */
export type SessionKey = Uint8Array | 'insecure-plaintext';

export interface SessionIdentity {
  readonly session: number;
  readonly key: SessionKey;
  /** Multicast group "address:port" the session's data goes to. */
  readonly group: string;
}

function sealerFor(identity: SessionIdentity, sender: number): PacketSealer {
  return identity.key === 'insecure-plaintext'
    ? PacketSealer.insecurePlaintext(identity.session, sender)
    : new PacketSealer(identity.key, identity.session, sender);
}

function openerFor(identity: SessionIdentity, drops: DropCounters): PacketOpener {
  return identity.key === 'insecure-plaintext'
    ? PacketOpener.insecurePlaintext(identity.session, { drops })
    : new PacketOpener(identity.key, identity.session, { drops });
}

/**
 * Opens and decodes a datagram, counting what is dropped; undefined when dropped. The body is
 * decrypted into `scratch`, so a symbol's payload is a view of it: the state machines copy what they
 * keep before the next datagram.
 */
function openMessage(
  opener: PacketOpener,
  bytes: Uint8Array,
  scratch: Uint8Array,
): { opened: OpenedPacket; message: Message } | undefined {
  const opened = opener.open(bytes, scratch);
  if ('drop' in opened) return undefined;
  const message = decodeMessage(opened.header.type, opened.body);
  if (isDecodeFailure(message)) {
    opener.drops.add('malformed');
    return undefined;
  }
  return { opened, message };
}

/** Most buffers held for sends the kernel has not taken yet; past it, each send gets a new one. */
const MAX_SEND_BUFFERS = 1024;

/**
 * Datagram buffers for symbols, reused once the socket says it has taken every datagram sent (so a
 * symbol costs no allocation); new ones while the kernel still holds some.
 */
class SendBuffers {
  private readonly buffers: Uint8Array[] = [];
  private used = 0;

  constructor(private readonly socket: DatagramSocket) {}

  take(length: number): Uint8Array {
    if (this.socket.sendsSettled === undefined) return new Uint8Array(length);
    if (this.socket.sendsSettled()) this.used = 0;
    if (this.used >= MAX_SEND_BUFFERS) return new Uint8Array(length);
    let buffer = this.buffers[this.used];
    if (buffer === undefined || buffer.length !== length) {
      buffer = new Uint8Array(length);
      this.buffers[this.used] = buffer;
    }
    this.used++;
    return buffer;
  }
}

/**
 * Seals and sends one message. A symbol is laid out in a reused buffer and its payload encrypted straight
 * from its object (one pass over the bytes); other messages are small and encoded on their own.
 */
function sendMessage(
  socket: DatagramSocket,
  sealer: PacketSealer,
  buffers: SendBuffers,
  message: Message,
  to: string,
): void {
  if (message.type !== MessageType.Data && message.type !== MessageType.Parity) {
    socket.send(sealer.seal(message.type, encodeMessage(message)), to);
    return;
  }
  const payload = message.payload;
  const tag = sealer.mode === 'sealed' ? TAG_BYTES : 0;
  const out = buffers.take(HEADER_BYTES + SYMBOL_FIXED_BYTES + payload.length + tag);
  encodeSymbolFields(message, out, HEADER_BYTES);
  sealer.sealInto(message.type, out, SYMBOL_FIXED_BYTES, payload, 0, payload.length);
  socket.send(out, to);
}

export interface SenderSessionOptions extends Omit<SenderOptions, 'parity'> {
  readonly parity: SenderOptions['parity'];
}

/** The sending end: multicasts `objects` to `receivers` (ids 1..n) and resolves when all is settled. */
export class SenderSession {
  readonly drops = new DropCounters();
  private readonly machine: MulticastSender;
  private readonly sealer: PacketSealer;
  private readonly opener: PacketOpener;
  private readonly scratch = new Uint8Array(MAX_DATAGRAM_BYTES);
  private cancelTimer: (() => void) | undefined;
  /** Runs the machine now (while running): what changed may end the session or free the wire. */
  private wake: (() => void) | undefined;
  private readonly settledResult: Promise<SessionResult>;
  /** Each resolved once the first pass reached what it waits for, or the session is over. */
  private firstPassWatches: { reached: () => boolean; resolve: () => void }[] = [];
  /** Stopped by run()'s signal: nothing more will be sent, so no watch waits. */
  private stopped = false;
  private settle!: { resolve: (result: SessionResult) => void; reject: (reason: unknown) => void };

  constructor(
    private readonly socket: DatagramSocket,
    private readonly scheduler: Scheduler,
    private readonly identity: SessionIdentity,
    objects: readonly SendObject[],
    receivers: readonly number[],
    options: SenderSessionOptions,
  ) {
    this.sealer = sealerFor(identity, 0);
    this.opener = openerFor(identity, this.drops);
    this.settledResult = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.settledResult.catch(() => undefined); // run() rejects the same way; this one may go unwatched
    const buffers = new SendBuffers(socket);
    this.machine = new MulticastSender(objects, receivers, options, {
      now: () => scheduler.now(),
      send: (message) => sendMessage(this.socket, this.sealer, buffers, message, identity.group),
    });
  }

  get stats() {
    return this.machine.stats;
  }

  /** Which AES-GCM engine seals and opens ('native' or 'node'); undefined in plaintext mode. */
  get aeadEngine(): 'native' | 'node' | undefined {
    return this.sealer.engine;
  }

  /** Whether the session is over (the promise of run() settles a microtask later). */
  get done(): boolean {
    return this.machine.done;
  }

  /** How often congestion control cut the rate, by signal (queueing delay or loss). */
  get rateCuts(): { readonly queue: number; readonly loss: number } {
    return this.machine.rateCuts;
  }

  /** The send rate the congestion control has arrived at (bytes per second). */
  get rateBytesPerSecond(): number {
    return this.machine.rateBytesPerSecond;
  }

  result(): SessionResult {
    return this.machine.result();
  }

  /**
   * The session's outcome, as soon as every receiver completed or was dropped: before run() settles,
   * which waits for the last repeats of the session's Done (the wire is free from here).
   */
  whenSettled(): Promise<SessionResult> {
    return this.settledResult;
  }

  /**
   * Resolves once every object went out once and none will be added (or the session is over): the
   * moment the session that follows it on the wire may send.
   */
  whenFirstPassDone(): Promise<void> {
    return this.whenFirstPass(() => this.machine.firstPassDone);
  }

  /**
   * Resolves once data flows and the first pass has reached object `object` (or the session is
   * over): what was offered before it is out once.
   */
  whenSending(object: number): Promise<void> {
    return this.whenFirstPass(() => this.machine.sendingFrom(object));
  }

  private whenFirstPass(reached: () => boolean): Promise<void> {
    if (this.machine.done || this.stopped || reached()) return Promise.resolve();
    return new Promise((resolve) => {
      this.firstPassWatches.push({ reached, resolve });
      this.wake?.();
    });
  }

  /** Offers more objects (a session made `open`): they follow those before at once. */
  append(objects: readonly SendObject[]): void {
    this.machine.append(objects);
    this.wake?.();
  }

  /** A session made `open` offers no more objects: its receivers complete once they hold them all. */
  close(): void {
    this.machine.close();
    this.wake?.();
  }

  /** Objects offered so far. */
  get objectCount(): number {
    return this.machine.objectCount;
  }

  /** Leading objects receiver `id` has reported complete. */
  objectsCompleteAt(id: number): number {
    return this.machine.objectsCompleteAt(id);
  }

  /** A session made with startHeld starts its data now. */
  releaseData(): void {
    this.machine.releaseData();
    this.wake?.();
  }

  /** Receiver `id` is gone (its agent was lost): the session stops waiting for it. */
  dropReceiver(id: number): void {
    this.machine.dropReceiver(id);
    this.wake?.();
  }

  run(signal?: AbortSignal): Promise<SessionResult> {
    return new Promise((resolve, reject) => {
      const finish = () => {
        this.cancelTimer?.();
        signal?.removeEventListener('abort', abort);
        this.settle.resolve(this.machine.result());
        resolve(this.machine.result());
      };
      const abort = () => {
        // Nothing wakes a stopped session again (a release or an append after the stop would
        // otherwise start its polling anew, with nobody left to end it).
        this.stopped = true;
        this.wake = undefined;
        this.cancelTimer?.();
        const reason = signal?.reason ?? new Error('aborted');
        this.settle.reject(reason);
        for (const watch of this.firstPassWatches.splice(0)) watch.resolve();
        reject(reason);
      };
      if (signal?.aborted) return abort();
      signal?.addEventListener('abort', abort, { once: true });
      this.socket.onDatagram((bytes) => {
        const got = openMessage(this.opener, bytes, this.scratch);
        if (got) this.machine.handle(got.opened.header.sender, got.message);
      });
      const tick = () => {
        const wait = this.machine.poll();
        if (this.machine.settled) this.settle.resolve(this.machine.result());
        if (this.firstPassWatches.length > 0)
          this.firstPassWatches = this.firstPassWatches.filter((watch) => {
            if (wait >= 0 && !watch.reached()) return true;
            watch.resolve();
            return false;
          });
        if (wait < 0) {
          this.wake = undefined;
          return finish();
        }
        this.cancelTimer = this.scheduler.schedule(wait, tick);
      };
      this.wake = () => {
        this.cancelTimer?.();
        this.cancelTimer = this.scheduler.schedule(0, tick);
      };
      tick();
    });
  }
}

/** A receiving end: joins the group, rebuilds objects, hands each over to `onObject`. */
export class ReceiverSession {
  readonly drops = new DropCounters();
  private readonly machine: MulticastReceiver;
  private readonly sealer: PacketSealer;
  private readonly opener: PacketOpener;
  private readonly scratch = new Uint8Array(MAX_DATAGRAM_BYTES);
  private senderAddress: string | undefined;
  private cancelTimer: (() => void) | undefined;

  constructor(
    private readonly socket: DatagramSocket,
    private readonly scheduler: Scheduler,
    private readonly identity: SessionIdentity,
    /** This receiver's id in the session (1..n), as the sender expects it. */
    readonly id: number,
    /** Where the sender listens for NAKs and reports, "host:port". */
    senderAddress: string,
    options: ReceiverOptions,
    onObject: (objectId: number, bytes: Uint8Array) => void,
    random: () => number = Math.random,
    /** Sessions whose datagrams may reach this socket and are not to be counted as drops. */
    private readonly siblingSessions?: ReadonlySet<number>,
    /** Where objects' memory comes from, given back by `onObject`'s caller once used (else fresh). */
    memory?: ObjectMemory,
  ) {
    this.senderAddress = senderAddress;
    this.sealer = sealerFor(identity, id);
    this.opener = openerFor(identity, this.drops);
    this.machine = new MulticastReceiver(
      { allocate: (length) => memory?.take(length) ?? freshObjectMemory(length), ...options },
      {
        now: () => scheduler.now(),
        send: (message) =>
          this.socket.send(this.sealer.seal(message.type, encodeMessage(message)), this.senderAddress!),
        random,
      },
      onObject,
    );
  }

  get stats() {
    return this.machine.stats;
  }

  /**
   * A datagram naming another session its owner was told of (a neighbouring round of the same job on
   * the same port): that session's, not ours and not suspect, so skipped without a drop counted. Its
   * own session's opener judges it there.
   */
  private fromSibling(bytes: Uint8Array): boolean {
    const siblings = this.siblingSessions;
    if (siblings === undefined || siblings.size === 0 || bytes.length < HEADER_BYTES) return false;
    const at = HEADER_SESSION_OFFSET;
    const session =
      ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
    return session !== this.identity.session && siblings.has(session);
  }

  /** Which AES-GCM engine seals and opens ('native' or 'node'); undefined in plaintext mode. */
  get aeadEngine(): 'native' | 'node' | undefined {
    return this.sealer.engine;
  }

  get state(): ReceiverState {
    return this.machine.state;
  }

  run(signal?: AbortSignal): Promise<ReceiverState> {
    this.socket.joinGroup(this.identity.group);
    return new Promise((resolve, reject) => {
      const finish = () => {
        this.cancelTimer?.();
        signal?.removeEventListener('abort', abort);
        resolve(this.machine.state);
      };
      const abort = () => {
        this.cancelTimer?.();
        reject(signal?.reason ?? new Error('aborted'));
      };
      if (signal?.aborted) return abort();
      signal?.addEventListener('abort', abort, { once: true });
      const tick = () => {
        this.cancelTimer?.();
        const wait = this.machine.poll();
        if (wait < 0) return finish();
        this.cancelTimer = this.scheduler.schedule(wait, tick);
      };
      this.socket.onDatagram((bytes) => {
        if (this.fromSibling(bytes)) return;
        const got = openMessage(this.opener, bytes, this.scratch);
        if (!got || got.opened.header.sender !== 0) return;
        this.machine.handle(got.message, Number(got.opened.header.sequence));
        if (this.machine.state !== 'receiving') tick();
      });
      tick();
    });
  }
}
