/**
 * Sealing and opening of datagrams: AES-256-GCM with a per-session key that arrives over the control
 * channel, the clear header as associated data, and a per-sender anti-replay window (docs/WIRE.md).
 *
 * Datagram = header (20) || ciphertext || tag (16). The nonce is the header's sender u32 || sequence u64,
 * i.e. header bytes 8..20: unique as long as sender ids are unique within a session (the coordinator
 * assigns them) and a sender never reuses a sequence, which PacketSealer guarantees by construction.
 */

import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';
import { VmscatterError } from '../errors.js';
import { native } from '../native/native.js';
import { MessageType, WIRE_VERSION } from './messages.js';
import {
  HEADER_BYTES,
  HEADER_NONCE_OFFSET,
  HEADER_SEQUENCE_OFFSET,
  HEADER_TYPE_OFFSET,
  MAX_SEQUENCE,
  MAX_U32,
  TAG_BYTES,
  decodeHeader,
  encodeHeader,
  isDecodeFailure,
  isMessageType,
  type DecodedHeader,
  type WireMode,
} from './wire-codec.js';

export const KEY_BYTES = 32;
const CIPHER = 'aes-256-gcm';

/** The largest UDP payload over IPv4; a bigger datagram cannot be sent at all. */
export const MAX_DATAGRAM_BYTES = 65_507;

export const DEFAULT_REPLAY_WINDOW = 1024;
export const MAX_REPLAY_WINDOW = 65_536;
export const DEFAULT_MAX_SENDERS = 4096;

/**
 * Why a datagram was dropped. 'stale': older than the replay window (or sequence 0, never sent);
 * 'replay': inside the window and seen before; 'senders': authentic, but from a new sender while the
 * opener already tracks its maximum; 'mode': sealed vs plaintext mismatch. 'malformed' is never set by
 * the opener: it is for the caller that decodes the body, when an authentic body does not decode (a
 * bug or version skew at the sender, worth a counter of its own).
 */
export const DROP_REASONS = [
  'short',
  'magic',
  'version',
  'type',
  'mode',
  'session',
  'stale',
  'replay',
  'auth',
  'senders',
  'malformed',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** The 64-bit sequence space of a sender is used up: the session must be rekeyed (a new session). */
export class SequenceExhaustedError extends VmscatterError {
  constructor(session: number, sender: number) {
    super('VMS_SEQUENCE_EXHAUSTED', `session ${session} sender ${sender}: packet sequence numbers exhausted`);
  }
}

/**
 * A key instance no caller can hold: the only way into plaintext mode is the awkwardly named factory
 * methods, never an empty or forgotten key.
 */
const INSECURE_PLAINTEXT = new Uint8Array(0);

/**
 * AES-256-GCM over a datagram laid out as header (20, the associated data; the nonce is its bytes
 * 8..20) || body || tag (16). Two engines, the same bytes: the addon's (native/transport.c: OpenSSL
 * contexts keyed once, per packet only the nonce set, nothing allocated) and Node's crypto API (a
 * Cipheriv per packet), for builds without the addon.
 */
export interface Aead {
  readonly engine: 'native' | 'node';
  /**
   * Encrypts datagram[20..20+plainLength) in place, then source[sourceOffset..+sourceLength) into the
   * datagram right after it, and writes the tag after that; returns the datagram's length.
   */
  seal(
    datagram: Uint8Array,
    plainLength: number,
    source: Uint8Array | null,
    sourceOffset: number,
    sourceLength: number,
  ): number;
  /**
   * Opens datagram[0..length): decrypts its body into out[outOffset..] (out may be the datagram, in
   * place) and returns whether the tag is right; when it is not, nothing of the body is left in out.
   */
  open(datagram: Uint8Array, length: number, out: Uint8Array, outOffset: number): boolean;
}

function checkKey(key: Uint8Array): void {
  if (key.length !== KEY_BYTES) {
    throw new RangeError(`packet key must be ${KEY_BYTES} bytes, got ${key.length}`);
  }
}

/** Whether the loaded addon has the AEAD (an addon built before it had none). */
export const nativeAeadAvailable = typeof native?.aeadKey === 'function';

/** The addon's AEAD; throws where the addon is not built. */
export function nativeAead(key: Uint8Array): Aead {
  checkKey(key);
  const addon = native;
  if (addon === undefined || !nativeAeadAvailable)
    throw new Error('the native addon has no AEAD (npm ci builds it)');
  const state = addon.aeadKey(key);
  return {
    engine: 'native',
    seal: (datagram, plainLength, source, sourceOffset, sourceLength) =>
      addon.aeadSeal(state, datagram, plainLength, source, sourceOffset, sourceLength),
    open: (datagram, length, out, outOffset) => addon.aeadOpen(state, datagram, length, out, outOffset),
  };
}

/** Node's crypto API: a Cipheriv per packet (Node takes the nonce only at creation). */
export function nodeAead(key: Uint8Array): Aead {
  checkKey(key);
  // A KeyObject is imported once, not per packet.
  const secret: KeyObject = createSecretKey(key);
  return {
    engine: 'node',
    seal(datagram, plainLength, source, sourceOffset, sourceLength) {
      const header = datagram.subarray(0, HEADER_BYTES);
      const cipher = createCipheriv(CIPHER, secret, header.subarray(HEADER_NONCE_OFFSET), {
        authTagLength: TAG_BYTES,
      });
      cipher.setAAD(header);
      const plainEnd = HEADER_BYTES + plainLength;
      if (plainLength > 0)
        datagram.set(cipher.update(datagram.subarray(HEADER_BYTES, plainEnd)), HEADER_BYTES);
      if (sourceLength > 0) {
        datagram.set(cipher.update(source!.subarray(sourceOffset, sourceOffset + sourceLength)), plainEnd);
      }
      cipher.final(); // GCM is a stream mode: nothing is held back
      const end = plainEnd + sourceLength;
      datagram.set(cipher.getAuthTag(), end);
      return end + TAG_BYTES;
    },
    open(datagram, length, out, outOffset) {
      const bodyEnd = length - TAG_BYTES;
      const decipher = createDecipheriv(
        CIPHER,
        secret,
        datagram.subarray(HEADER_NONCE_OFFSET, HEADER_BYTES),
        {
          authTagLength: TAG_BYTES,
        },
      );
      decipher.setAAD(datagram.subarray(0, HEADER_BYTES));
      decipher.setAuthTag(datagram.subarray(bodyEnd, length));
      const plain = decipher.update(datagram.subarray(HEADER_BYTES, bodyEnd));
      try {
        decipher.final();
      } catch {
        return false;
      }
      out.set(plain, outOffset);
      return true;
    },
  };
}

/** The fastest engine here: the addon's where it is built, else Node's. */
export function createAead(key: Uint8Array): Aead {
  return nativeAeadAvailable ? nativeAead(key) : nodeAead(key);
}

function modeKey(key: Uint8Array): Aead | undefined {
  if (key === INSECURE_PLAINTEXT) return undefined;
  return createAead(key);
}

function checkId(field: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
    throw new RangeError(`${field} must be an integer in 0..${MAX_U32}, got ${value}`);
  }
}

export interface SealerOptions {
  /**
   * The first sequence to use (default 1). Only for resuming a sender under the same key, and then
   * above every sequence it ever used: a repeated sequence repeats a GCM nonce, which leaks the XOR
   * of two plaintexts and lets anyone forge tags.
   */
  readonly firstSequence?: bigint;
}

export class PacketSealer {
  readonly session: number;
  readonly sender: number;
  readonly mode: WireMode;
  private readonly key: Aead | undefined;
  /** The header with sequence 0, copied into each datagram: only type and sequence vary per packet. */
  private readonly template: Uint8Array;
  /**
   * The next sequence as two u32 halves: per packet this is two number writes instead of BigInt
   * arithmetic. `high` reaching 2^32 means the sequence space is used up.
   */
  private high: number;
  private low: number;

  constructor(key: Uint8Array, session: number, sender: number, options: SealerOptions = {}) {
    checkId('session', session);
    checkId('sender', sender);
    const first = options.firstSequence ?? 1n;
    if (first < 1n || first > MAX_SEQUENCE) throw new RangeError(`firstSequence must be in 1..2^64-1`);
    this.key = modeKey(key);
    this.mode = this.key === undefined ? 'plaintext' : 'sealed';
    this.session = session;
    this.sender = sender;
    this.high = Number(first >> 32n);
    this.low = Number(first & 0xffff_ffffn);
    this.template = encodeHeader(
      { version: WIRE_VERSION, type: MessageType.Join, session, sender, sequence: 0n },
      this.mode,
    );
  }

  /**
   * Sends guest memory IN THE CLEAR, for operators who accept that (an isolated migration network).
   * Header, sequence and replay window still apply; there is no confidentiality and no integrity, and
   * the wire says so (magic 'VP'), so that sealed endpoints drop these packets.
   */
  static insecurePlaintext(session: number, sender: number, options: SealerOptions = {}): PacketSealer {
    return new PacketSealer(INSECURE_PLAINTEXT, session, sender, options);
  }

  /** The sequence the next datagram will carry (2^64 once exhausted). */
  get nextSequence(): bigint {
    return (BigInt(this.high) << 32n) | BigInt(this.low);
  }

  /** Which AES-GCM engine seals (undefined in plaintext mode). */
  get engine(): Aead['engine'] | undefined {
    return this.key?.engine;
  }

  /** A new datagram holding `body` sealed (for control messages; symbols go through sealInto). */
  seal(type: MessageType, body: Uint8Array): Uint8Array {
    if (!isMessageType(type)) throw new RangeError(`unknown message type ${type}`);
    const length = HEADER_BYTES + body.length + (this.key === undefined ? 0 : TAG_BYTES);
    if (length > MAX_DATAGRAM_BYTES) {
      throw new RangeError(`datagram of ${length} bytes exceeds the UDP limit of ${MAX_DATAGRAM_BYTES}`);
    }
    const datagram = new Uint8Array(length);
    this.sealInto(type, datagram, 0, body, 0, body.length);
    return datagram;
  }

  /**
   * Seals into `out`, which the caller reuses from packet to packet: out[20..20+plainLength) holds the
   * first part of the body already (written by the caller, encrypted in place), source[sourceOffset..
   * +sourceLength) is the rest (encrypted straight from there, e.g. a symbol from its object). Writes the
   * header and the tag; returns the datagram's length (out[0..length) is the datagram).
   */
  sealInto(
    type: MessageType,
    out: Uint8Array,
    plainLength: number,
    source: Uint8Array | null,
    sourceOffset: number,
    sourceLength: number,
  ): number {
    if (!isMessageType(type)) throw new RangeError(`unknown message type ${type}`);
    const tagBytes = this.key === undefined ? 0 : TAG_BYTES;
    const length = HEADER_BYTES + plainLength + sourceLength + tagBytes;
    if (length > MAX_DATAGRAM_BYTES) {
      throw new RangeError(`datagram of ${length} bytes exceeds the UDP limit of ${MAX_DATAGRAM_BYTES}`);
    }
    if (length > out.length) throw new RangeError(`datagram of ${length} bytes does not fit ${out.length}`);
    if (this.high > MAX_U32) throw new SequenceExhaustedError(this.session, this.sender);

    out.set(this.template);
    out[HEADER_TYPE_OFFSET] = type;
    writeU32(out, HEADER_SEQUENCE_OFFSET, this.high);
    writeU32(out, HEADER_SEQUENCE_OFFSET + 4, this.low);
    // Consumed before encrypting: whatever happens below, this sequence (nonce) is never used again.
    if (this.low === MAX_U32) {
      this.low = 0;
      this.high += 1;
    } else {
      this.low += 1;
    }

    if (this.key === undefined) {
      if (sourceLength > 0) {
        out.set(source!.subarray(sourceOffset, sourceOffset + sourceLength), HEADER_BYTES + plainLength);
      }
      return length;
    }
    return this.key.seal(out, plainLength, source, sourceOffset, sourceLength);
  }
}

function writeU32(target: Uint8Array, offset: number, value: number): void {
  target[offset] = value >>> 24;
  target[offset + 1] = value >>> 16;
  target[offset + 2] = value >>> 8;
  target[offset + 3] = value;
}

/** Drop counts by reason, for an agent's report; one instance may be shared by several openers. */
export class DropCounters {
  private readonly counts = new Map<DropReason, number>();

  add(reason: DropReason): void {
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
  }

  get(reason: DropReason): number {
    return this.counts.get(reason) ?? 0;
  }

  get total(): number {
    let total = 0;
    for (const count of this.counts.values()) total += count;
    return total;
  }

  /** Every reason, zeros included, so reports have a stable shape. */
  snapshot(): Record<DropReason, number> {
    const out = {} as Record<DropReason, number>;
    for (const reason of DROP_REASONS) out[reason] = this.get(reason);
    return out;
  }
}

/**
 * Anti-replay window of one sender, as in RFC 6479 (IPsec): a ring of bit words a little larger than
 * the window, so that advancing clears whole words and never shifts. Sequences within `size` below the
 * highest accepted one are accepted once each, in any order; older ones are refused as stale.
 */
export class ReplayWindow {
  readonly size: number;
  private readonly sizeBig: bigint;
  private readonly ringBits: bigint;
  private readonly bits: Uint32Array;
  /** log2 of the ring's bit count; the ring is a power of two so positions are the low bits. */
  private readonly ringLog2: number;
  private readonly wordMask: number;
  /** Highest accepted sequence; 0 before the first (sequences start at 1). */
  private top = 0n;

  constructor(size = DEFAULT_REPLAY_WINDOW) {
    if (!Number.isInteger(size) || size < 32 || size > MAX_REPLAY_WINDOW || size % 32 !== 0) {
      throw new RangeError(`replay window must be a multiple of 32 in 32..${MAX_REPLAY_WINDOW}, got ${size}`);
    }
    this.size = size;
    // One word more than the window, rounded up to a power of two.
    let words = 1;
    while (words < size / 32 + 1) words *= 2;
    this.sizeBig = BigInt(size);
    this.ringBits = BigInt(words * 32);
    this.bits = new Uint32Array(words);
    this.wordMask = words - 1;
    this.ringLog2 = Math.log2(words * 32);
  }

  /** Whether `sequence` may be accepted; changes nothing (the caller authenticates first). */
  check(sequence: bigint): 'stale' | 'replay' | undefined {
    if (sequence === 0n) return 'stale';
    if (sequence > this.top) return undefined;
    if (this.top - sequence >= this.sizeBig) return 'stale';
    const position = this.position(sequence);
    return (this.bits[position >>> 5]! & (1 << (position & 31))) === 0 ? undefined : 'replay';
  }

  /** Records an authenticated `sequence` that check() accepted. */
  accept(sequence: bigint): void {
    if (sequence > this.top) {
      if (sequence - this.top >= this.ringBits) {
        this.bits.fill(0);
      } else {
        const from = this.position(this.top) >>> 5;
        const steps = Number((sequence >> 5n) - (this.top >> 5n));
        for (let i = 1; i <= steps; i++) this.bits[(from + i) & this.wordMask] = 0;
      }
      this.top = sequence;
    }
    const position = this.position(sequence);
    this.bits[position >>> 5]! |= 1 << (position & 31);
  }

  private position(sequence: bigint): number {
    return Number(BigInt.asUintN(this.ringLog2, sequence));
  }
}

export interface OpenerOptions {
  /** Sequences accepted out of order behind the newest (a multiple of 32; default 1024). */
  readonly replayWindow?: number;
  /** Senders tracked at most (about 300 bytes each with the default window); default 4096. */
  readonly maxSenders?: number;
  readonly drops?: DropCounters;
}

export interface OpenedPacket {
  readonly header: DecodedHeader;
  /** The message body; in plaintext mode a view of the datagram. */
  readonly body: Uint8Array;
}

export interface DroppedPacket {
  readonly drop: DropReason;
}

export class PacketOpener {
  readonly session: number;
  readonly mode: WireMode;
  readonly drops: DropCounters;
  private readonly key: Aead | undefined;
  private readonly windowSize: number;
  private readonly maxSenders: number;
  /**
   * Never pruned: forgetting a sender would let its old datagrams be replayed. State ends with the
   * session (and its key).
   */
  private readonly windows = new Map<number, ReplayWindow>();

  constructor(key: Uint8Array, session: number, options: OpenerOptions = {}) {
    checkId('session', session);
    this.windowSize = options.replayWindow ?? DEFAULT_REPLAY_WINDOW;
    new ReplayWindow(this.windowSize); // validates the size now rather than at the first packet
    this.maxSenders = options.maxSenders ?? DEFAULT_MAX_SENDERS;
    if (!Number.isInteger(this.maxSenders) || this.maxSenders < 1) {
      throw new RangeError(`maxSenders must be a positive integer, got ${this.maxSenders}`);
    }
    this.key = modeKey(key);
    this.mode = this.key === undefined ? 'plaintext' : 'sealed';
    this.session = session;
    this.drops = options.drops ?? new DropCounters();
  }

  /** Opens datagrams of PacketSealer.insecurePlaintext only (see there), and drops sealed ones. */
  static insecurePlaintext(session: number, options: OpenerOptions = {}): PacketOpener {
    return new PacketOpener(INSECURE_PLAINTEXT, session, options);
  }

  get senderCount(): number {
    return this.windows.size;
  }

  /** Which AES-GCM engine opens (undefined in plaintext mode). */
  get engine(): Aead['engine'] | undefined {
    return this.key?.engine;
  }

  /**
   * Never throws. Cheap checks come first (header, session, replay window), so junk and replays cost
   * no decryption; the window and the sender table change only after authentication, so forged
   * datagrams can neither advance a window nor fill the table.
   *
   * The body is decrypted into `into` when given (from its start; a buffer the caller reuses from
   * packet to packet, at least as long as the body: the body returned is then a view of it, valid until
   * the next open into it), else into a new array. The datagram itself is never changed.
   */
  open(datagram: Uint8Array, into?: Uint8Array): OpenedPacket | DroppedPacket {
    const header = decodeHeader(datagram);
    if (isDecodeFailure(header)) return this.dropped(header.code);
    if (header.mode !== this.mode) return this.dropped('mode');
    if (header.session !== this.session) return this.dropped('session');
    const bodyEnd = datagram.length - (this.key === undefined ? 0 : TAG_BYTES);
    if (bodyEnd < HEADER_BYTES) return this.dropped('short');
    const known = this.windows.get(header.sender);
    const seen =
      known === undefined ? (header.sequence === 0n ? 'stale' : undefined) : known.check(header.sequence);
    if (seen !== undefined) return this.dropped(seen);

    let body: Uint8Array;
    if (this.key === undefined) {
      body = datagram.subarray(HEADER_BYTES);
    } else {
      const length = bodyEnd - HEADER_BYTES;
      const out = into !== undefined && into.length >= length ? into : new Uint8Array(length);
      if (!this.key.open(datagram, datagram.length, out, 0)) return this.dropped('auth');
      body = out.length === length ? out : out.subarray(0, length);
    }

    let window = known;
    if (window === undefined) {
      if (this.windows.size >= this.maxSenders) return this.dropped('senders');
      window = new ReplayWindow(this.windowSize);
      this.windows.set(header.sender, window);
    }
    window.accept(header.sequence);
    return { header, body };
  }

  private dropped(reason: DropReason): DroppedPacket {
    this.drops.add(reason);
    return { drop: reason };
  }
}
