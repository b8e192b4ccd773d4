/**
 * The wire codec: packet headers and message bodies as pure functions over bytes (docs/WIRE.md is the
 * byte-level description). Encoders throw RangeError on values the format cannot carry, since those are
 * bugs in the caller; decoders never throw on any input and return a `DecodeFailure` naming what is
 * wrong, because their input comes off the network. Every count is checked against the bytes that are
 * actually there before anything is allocated for it.
 */

import { BinaryReader, BinaryWriter } from './binary.js';
import {
  MessageType,
  WIRE_VERSION,
  type AnnounceMessage,
  type BlockGap,
  type DoneMessage,
  type HeartbeatMessage,
  type Message,
  type NakMessage,
  type PacketHeader,
  type StatusMessage,
  type SymbolMessage,
} from './messages.js';

/** 'VS': a datagram sealed with AES-256-GCM. */
export const MAGIC_SEALED = 0x5653;
/**
 * 'VP': a datagram in the clear. A magic of its own, so that an endpoint in one mode drops every packet
 * of the other instead of misreading it; in sealed mode the magic is also authenticated (it is part of
 * the associated data), so it cannot be switched without the key.
 */
export const MAGIC_PLAINTEXT = 0x5650;

/** magic u16, version u8, type u8, session u32, sender u32, sequence u64. */
export const HEADER_BYTES = 20;
export const HEADER_TYPE_OFFSET = 3;
export const HEADER_SESSION_OFFSET = 4;
/** sender u32 || sequence u64: the last 12 header bytes, which are also the AES-GCM nonce. */
export const HEADER_NONCE_OFFSET = 8;
export const HEADER_SEQUENCE_OFFSET = 12;
/** The AES-GCM tag at the end of a sealed datagram. */
export const TAG_BYTES = 16;
/** objectId u32, objectLength u64, block u32, index u8, blockSymbols u8, payload length u16. */
export const SYMBOL_FIXED_BYTES = 20;

export const IPV4_HEADER_BYTES = 20;
export const IPV6_HEADER_BYTES = 40;
export const UDP_HEADER_BYTES = 8;

/** Reed-Solomon over GF(2^8): a block has at most 255 symbols, source and parity together. */
export const MAX_BLOCK_SYMBOLS = 255;
export const MAX_SYMBOL_INDEX = MAX_BLOCK_SYMBOLS - 1;
/** Symbol payload lengths are u16 (a UDP datagram is smaller anyway). */
export const MAX_SYMBOL_SIZE = 0xffff;
/**
 * Object lengths (and an announce's total) travel as u64 but are bounded to 48 bits (256 TiB, far beyond
 * any guest), which keeps them exact as JavaScript numbers.
 */
export const MAX_OBJECT_LENGTH = 2 ** 48 - 1;
export const MAX_LOSS_PPM = 1_000_000;
export const MAX_U32 = 0xffff_ffff;
export const MAX_SEQUENCE = 2n ** 64n - 1n;

const ANNOUNCE_BYTES = 16; // symbolSize u16, blockSymbols u8, objectCount u32, totalBytes u64, flags u8
/** Announce flag: more objects may follow. */
const ANNOUNCE_MORE = 0x01;
const HEARTBEAT_BYTES = 20; // sentAtMicros u64, objectsSent u32, rate u64
const NAK_FIXED_BYTES = 20; // echoMicros u64, echoDelayMicros u32, lossPpm u32, gap count u32
const BLOCK_GAP_BYTES = 9; // objectId u32, block u32, missing u8
const STATUS_BYTES = 28; // objectsComplete u32, echoMicros u64, echoDelayMicros u32, lossPpm u32, rate u64
const DONE_FIXED_BYTES = 4; // dropped count u32
const DROPPED_ID_BYTES = 4;

export type WireMode = 'sealed' | 'plaintext';

/** A decoded header also says which mode (magic) the datagram was sent in. */
export interface DecodedHeader extends PacketHeader {
  readonly mode: WireMode;
}

export interface DecodeFailure {
  readonly reason: string;
}

/** Header failures carry a code as well, which the packet opener counts its drops by. */
export interface HeaderFailure extends DecodeFailure {
  readonly code: 'short' | 'magic' | 'version' | 'type';
}

export function isDecodeFailure(value: object): value is DecodeFailure {
  return 'reason' in value;
}

export function isMessageType(value: number): value is MessageType {
  return Number.isInteger(value) && MessageType[value] !== undefined;
}

/**
 * The largest symbol payload for which one symbol datagram fits a path MTU, so nothing is ever
 * fragmented (one lost fragment loses the whole datagram, multiplying the loss rate).
 */
export function maxSymbolSize(mtu: number, family: 'ipv4' | 'ipv6' = 'ipv4'): number {
  if (!Number.isInteger(mtu) || mtu > 0xffff) {
    throw new RangeError(`MTU must be an integer up to 65535 bytes, got ${mtu}`);
  }
  const ip = family === 'ipv4' ? IPV4_HEADER_BYTES : IPV6_HEADER_BYTES;
  const size = mtu - ip - UDP_HEADER_BYTES - HEADER_BYTES - SYMBOL_FIXED_BYTES - TAG_BYTES;
  if (size < 1) throw new RangeError(`MTU of ${mtu} bytes leaves no room for a symbol`);
  return Math.min(size, MAX_SYMBOL_SIZE);
}

// ---------------------------------------------------------------------------------------------------
// Header

export function encodeHeader(header: PacketHeader, mode: WireMode = 'sealed'): Uint8Array {
  checkUint('version', header.version, 0xff);
  if (!isMessageType(header.type)) throw new RangeError(`unknown message type ${header.type}`);
  checkUint('session', header.session, MAX_U32);
  checkUint('sender', header.sender, MAX_U32);
  if (header.sequence < 0n || header.sequence > MAX_SEQUENCE) {
    throw new RangeError(`sequence must be in 0..2^64-1, got ${header.sequence}`);
  }
  return new BinaryWriter(HEADER_BYTES)
    .u16(mode === 'sealed' ? MAGIC_SEALED : MAGIC_PLAINTEXT)
    .u8(header.version)
    .u8(header.type)
    .u32(header.session)
    .u32(header.sender)
    .u64big(header.sequence)
    .finish();
}

/** Reads the first HEADER_BYTES of a datagram (what follows is the body, and the tag when sealed). */
export function decodeHeader(bytes: Uint8Array): DecodedHeader | HeaderFailure {
  if (bytes.length < HEADER_BYTES) {
    return { code: 'short', reason: `datagram of ${bytes.length} bytes is shorter than a header` };
  }
  const r = new BinaryReader(bytes);
  const magic = r.u16();
  if (magic !== MAGIC_SEALED && magic !== MAGIC_PLAINTEXT) {
    return { code: 'magic', reason: `bad magic 0x${magic.toString(16).padStart(4, '0')}` };
  }
  const version = r.u8();
  if (version !== WIRE_VERSION) {
    return { code: 'version', reason: `wire version ${version}, expected ${WIRE_VERSION}` };
  }
  const type = r.u8();
  if (!isMessageType(type)) return { code: 'type', reason: `unknown message type ${type}` };
  return {
    mode: magic === MAGIC_SEALED ? 'sealed' : 'plaintext',
    version,
    type,
    session: r.u32(),
    sender: r.u32(),
    sequence: r.u64big(),
  };
}

// ---------------------------------------------------------------------------------------------------
// Message bodies

/** The body of a datagram (what gets sealed); the type travels in the header. */
export function encodeMessage(message: Message): Uint8Array {
  switch (message.type) {
    case MessageType.Announce:
      return encodeAnnounce(message);
    case MessageType.Data:
    case MessageType.Parity:
      return encodeSymbol(message);
    case MessageType.Heartbeat:
      return encodeHeartbeat(message);
    case MessageType.Nak:
      return encodeNak(message);
    case MessageType.Status:
      return encodeStatus(message);
    case MessageType.Complete:
    case MessageType.Join:
    case MessageType.Leave:
      return new Uint8Array(0);
    case MessageType.Done:
      return encodeDone(message);
  }
}

/**
 * Decodes a body of the given type. Never throws; symbol payloads are views of `body`, so the caller
 * must not reuse the datagram buffer while the message is alive.
 */
export function decodeMessage(type: number, body: Uint8Array): Message | DecodeFailure {
  const r = new BinaryReader(body);
  let decoded: Message | DecodeFailure;
  switch (type) {
    case MessageType.Announce:
      decoded = decodeAnnounce(r);
      break;
    case MessageType.Data:
    case MessageType.Parity:
      decoded = decodeSymbol(type, r);
      break;
    case MessageType.Heartbeat:
      decoded = decodeHeartbeat(r);
      break;
    case MessageType.Nak:
      decoded = decodeNak(r);
      break;
    case MessageType.Status:
      decoded = decodeStatus(r);
      break;
    case MessageType.Complete:
      decoded = { type: MessageType.Complete };
      break;
    case MessageType.Join:
      decoded = { type: MessageType.Join };
      break;
    case MessageType.Leave:
      decoded = { type: MessageType.Leave };
      break;
    case MessageType.Done:
      decoded = decodeDone(r);
      break;
    default:
      return fail(`unknown message type ${type}`);
  }
  if (isDecodeFailure(decoded)) return decoded;
  if (r.remaining !== 0) return fail(`${r.remaining} trailing bytes after ${MessageType[type]} body`);
  return decoded;
}

function encodeAnnounce(m: AnnounceMessage): Uint8Array {
  checkRange('symbolSize', m.symbolSize, 1, MAX_SYMBOL_SIZE);
  checkRange('blockSymbols', m.blockSymbols, 1, MAX_BLOCK_SYMBOLS);
  checkUint('objectCount', m.objectCount, MAX_U32);
  checkUint('totalBytes', m.totalBytes, MAX_OBJECT_LENGTH);
  return new BinaryWriter(ANNOUNCE_BYTES)
    .u16(m.symbolSize)
    .u8(m.blockSymbols)
    .u32(m.objectCount)
    .u64(m.totalBytes)
    .u8(m.more === true ? ANNOUNCE_MORE : 0)
    .finish();
}

function decodeAnnounce(r: BinaryReader): AnnounceMessage | DecodeFailure {
  if (r.remaining < ANNOUNCE_BYTES) return short('Announce', ANNOUNCE_BYTES, r);
  const symbolSize = r.u16();
  const blockSymbols = r.u8();
  const objectCount = r.u32();
  const totalBytes = r.u64safe();
  const flags = r.u8();
  if (symbolSize === 0) return fail('Announce symbolSize 0');
  if ((flags & ~ANNOUNCE_MORE) !== 0) return fail(`Announce flags 0x${flags.toString(16)}: unknown bits set`);
  if (blockSymbols === 0) return fail('Announce blockSymbols 0');
  if (totalBytes === undefined || totalBytes > MAX_OBJECT_LENGTH) {
    return fail('Announce totalBytes exceeds 2^48-1');
  }
  return {
    type: MessageType.Announce,
    symbolSize,
    blockSymbols,
    objectCount,
    totalBytes,
    ...((flags & ANNOUNCE_MORE) !== 0 ? { more: true } : {}),
  };
}

function encodeSymbol(m: SymbolMessage): Uint8Array {
  const out = new Uint8Array(SYMBOL_FIXED_BYTES + m.payload.length);
  encodeSymbolFields(m, out, 0);
  out.set(m.payload, SYMBOL_FIXED_BYTES);
  return out;
}

/**
 * Writes the SYMBOL_FIXED_BYTES fields of a Data or Parity body (everything but the payload, which
 * follows them) at out[offset..]: the hot path seals the payload straight from its object after these.
 */
export function encodeSymbolFields(m: SymbolMessage, out: Uint8Array, offset: number): void {
  checkUint('objectId', m.objectId, MAX_U32);
  checkUint('objectLength', m.objectLength, MAX_OBJECT_LENGTH);
  checkUint('block', m.block, MAX_U32);
  checkRange('blockSymbols', m.blockSymbols, 1, MAX_BLOCK_SYMBOLS);
  checkUint('index', m.index, MAX_SYMBOL_INDEX);
  const problem = symbolIndexProblem(m.type, m.index, m.blockSymbols);
  if (problem !== undefined) throw new RangeError(problem);
  const length = m.payload.length;
  if (length > MAX_SYMBOL_SIZE) {
    throw new RangeError(`symbol payload of ${length} bytes exceeds ${MAX_SYMBOL_SIZE}`);
  }
  if (offset + SYMBOL_FIXED_BYTES > out.length) throw new RangeError('symbol fields do not fit');
  const high = Math.floor(m.objectLength / 2 ** 32);
  const low = m.objectLength % 2 ** 32;
  put32(out, offset, m.objectId);
  put32(out, offset + 4, high);
  put32(out, offset + 8, low);
  put32(out, offset + 12, m.block);
  out[offset + 16] = m.index;
  out[offset + 17] = m.blockSymbols;
  out[offset + 18] = length >>> 8;
  out[offset + 19] = length & 0xff;
}

function put32(out: Uint8Array, offset: number, value: number): void {
  out[offset] = value >>> 24;
  out[offset + 1] = (value >>> 16) & 0xff;
  out[offset + 2] = (value >>> 8) & 0xff;
  out[offset + 3] = value & 0xff;
}

function decodeSymbol(
  type: MessageType.Data | MessageType.Parity,
  r: BinaryReader,
): SymbolMessage | DecodeFailure {
  const name = MessageType[type];
  if (r.remaining < SYMBOL_FIXED_BYTES) return short(name, SYMBOL_FIXED_BYTES, r);
  const objectId = r.u32();
  const objectLength = r.u64safe();
  const block = r.u32();
  const index = r.u8();
  const blockSymbols = r.u8();
  const length = r.u16();
  if (objectLength === undefined || objectLength > MAX_OBJECT_LENGTH) {
    return fail(`${name} objectLength exceeds 2^48-1`);
  }
  if (blockSymbols === 0) return fail(`${name} blockSymbols 0`);
  if (index > MAX_SYMBOL_INDEX) return fail(`${name} index ${index} exceeds ${MAX_SYMBOL_INDEX}`);
  const problem = symbolIndexProblem(type, index, blockSymbols);
  if (problem !== undefined) return fail(problem);
  if (length > r.remaining) return fail(`${name} payload of ${length} bytes, only ${r.remaining} left`);
  return { type, objectId, objectLength, block, index, blockSymbols, payload: r.take(length) };
}

/**
 * Data symbols are rows 0..k-1 of the Reed-Solomon code, parity symbols rows k..254, where k is the
 * number of source symbols of this block. `blockSymbols` is the session's k: the last block of an
 * object may hold fewer (k follows from objectLength), so parity rows of that block start below
 * blockSymbols and only k >= 1 bounds them here.
 */
function symbolIndexProblem(type: MessageType, index: number, blockSymbols: number): string | undefined {
  if (type === MessageType.Data && index >= blockSymbols) {
    return `Data index ${index} is not below blockSymbols ${blockSymbols}`;
  }
  if (type === MessageType.Parity && index === 0) return 'Parity index 0 is a source row';
  return undefined;
}

function encodeHeartbeat(m: HeartbeatMessage): Uint8Array {
  checkSafe('sentAtMicros', m.sentAtMicros);
  checkUint('objectsSent', m.objectsSent, MAX_U32);
  checkSafe('rateBytesPerSecond', m.rateBytesPerSecond);
  return new BinaryWriter(HEARTBEAT_BYTES)
    .u64(m.sentAtMicros)
    .u32(m.objectsSent)
    .u64(m.rateBytesPerSecond)
    .finish();
}

function decodeHeartbeat(r: BinaryReader): HeartbeatMessage | DecodeFailure {
  if (r.remaining < HEARTBEAT_BYTES) return short('Heartbeat', HEARTBEAT_BYTES, r);
  const sentAtMicros = r.u64safe();
  const objectsSent = r.u32();
  const rateBytesPerSecond = r.u64safe();
  if (sentAtMicros === undefined) return unsafe('Heartbeat sentAtMicros');
  if (rateBytesPerSecond === undefined) return unsafe('Heartbeat rateBytesPerSecond');
  return { type: MessageType.Heartbeat, sentAtMicros, objectsSent, rateBytesPerSecond };
}

function encodeNak(m: NakMessage): Uint8Array {
  checkSafe('echoMicros', m.echoMicros);
  checkUint('echoDelayMicros', m.echoDelayMicros, MAX_U32);
  checkUint('lossPpm', m.lossPpm, MAX_LOSS_PPM);
  for (const g of m.gaps) {
    checkUint('gap objectId', g.objectId, MAX_U32);
    checkUint('gap block', g.block, MAX_U32);
    checkRange('gap missing', g.missing, 1, MAX_BLOCK_SYMBOLS);
  }
  const w = new BinaryWriter(NAK_FIXED_BYTES + BLOCK_GAP_BYTES * m.gaps.length)
    .u64(m.echoMicros)
    .u32(m.echoDelayMicros)
    .u32(m.lossPpm)
    .u32(m.gaps.length);
  for (const g of m.gaps) w.u32(g.objectId).u32(g.block).u8(g.missing);
  return w.finish();
}

function decodeNak(r: BinaryReader): NakMessage | DecodeFailure {
  if (r.remaining < NAK_FIXED_BYTES) return short('Nak', NAK_FIXED_BYTES, r);
  const echoMicros = r.u64safe();
  const echoDelayMicros = r.u32();
  const lossPpm = r.u32();
  const count = r.u32();
  if (echoMicros === undefined) return unsafe('Nak echoMicros');
  if (lossPpm > MAX_LOSS_PPM) return fail(`Nak lossPpm ${lossPpm} exceeds ${MAX_LOSS_PPM}`);
  if (count * BLOCK_GAP_BYTES > r.remaining) {
    return fail(`Nak claims ${count} gaps, body holds at most ${Math.floor(r.remaining / BLOCK_GAP_BYTES)}`);
  }
  const gaps: BlockGap[] = new Array<BlockGap>(count);
  for (let i = 0; i < count; i++) {
    const objectId = r.u32();
    const block = r.u32();
    const missing = r.u8();
    if (missing === 0) return fail(`Nak gap for object ${objectId} block ${block} misses 0 symbols`);
    gaps[i] = { objectId, block, missing };
  }
  return { type: MessageType.Nak, gaps, echoMicros, echoDelayMicros, lossPpm };
}

function encodeStatus(m: StatusMessage): Uint8Array {
  checkUint('objectsComplete', m.objectsComplete, MAX_U32);
  checkSafe('echoMicros', m.echoMicros);
  checkUint('echoDelayMicros', m.echoDelayMicros, MAX_U32);
  checkUint('lossPpm', m.lossPpm, MAX_LOSS_PPM);
  checkSafe('receiveRate', m.receiveRate);
  return new BinaryWriter(STATUS_BYTES)
    .u32(m.objectsComplete)
    .u64(m.echoMicros)
    .u32(m.echoDelayMicros)
    .u32(m.lossPpm)
    .u64(m.receiveRate)
    .finish();
}

function decodeStatus(r: BinaryReader): StatusMessage | DecodeFailure {
  if (r.remaining < STATUS_BYTES) return short('Status', STATUS_BYTES, r);
  const objectsComplete = r.u32();
  const echoMicros = r.u64safe();
  const echoDelayMicros = r.u32();
  const lossPpm = r.u32();
  const receiveRate = r.u64safe();
  if (echoMicros === undefined) return unsafe('Status echoMicros');
  if (lossPpm > MAX_LOSS_PPM) return fail(`Status lossPpm ${lossPpm} exceeds ${MAX_LOSS_PPM}`);
  if (receiveRate === undefined) return unsafe('Status receiveRate');
  return { type: MessageType.Status, objectsComplete, echoMicros, echoDelayMicros, lossPpm, receiveRate };
}

function encodeDone(m: DoneMessage): Uint8Array {
  for (const id of m.dropped) checkUint('dropped receiver', id, MAX_U32);
  const w = new BinaryWriter(DONE_FIXED_BYTES + DROPPED_ID_BYTES * m.dropped.length).u32(m.dropped.length);
  for (const id of m.dropped) w.u32(id);
  return w.finish();
}

function decodeDone(r: BinaryReader): DoneMessage | DecodeFailure {
  if (r.remaining < DONE_FIXED_BYTES) return short('Done', DONE_FIXED_BYTES, r);
  const count = r.u32();
  if (count * DROPPED_ID_BYTES > r.remaining) {
    return fail(
      `Done claims ${count} receivers, body holds at most ${Math.floor(r.remaining / DROPPED_ID_BYTES)}`,
    );
  }
  const dropped = new Array<number>(count);
  for (let i = 0; i < count; i++) dropped[i] = r.u32();
  return { type: MessageType.Done, dropped };
}

// ---------------------------------------------------------------------------------------------------
// Helpers

function fail(reason: string): DecodeFailure {
  return { reason };
}

function short(name: string, need: number, r: BinaryReader): DecodeFailure {
  return fail(`${name} body of ${r.remaining} bytes is shorter than its ${need} fixed bytes`);
}

function unsafe(field: string): DecodeFailure {
  return fail(`${field} exceeds 2^53-1`);
}

function checkRange(field: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${field} must be an integer in ${min}..${max}, got ${value}`);
  }
}

function checkUint(field: string, value: number, max: number): void {
  checkRange(field, value, 0, max);
}

function checkSafe(field: string, value: number): void {
  checkRange(field, value, 0, Number.MAX_SAFE_INTEGER);
}
