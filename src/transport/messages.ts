/**
 * The messages of the multicast transport, as plain values. The wire codec (wire-codec.ts) turns
 * them into datagram payloads and back; packet-crypto.ts seals those payloads. docs/WIRE.md is the
 * byte-level description.
 *
 * Vocabulary: an *object* is a byte blob with an id (a batch of pages, a manifest). It is cut into
 * *symbols* of `symbolSize` bytes (the last one of an object padded with zeros); symbols are grouped in
 * *blocks* of `k` source symbols, to which Reed-Solomon parity symbols can be added (k + parity <= 255):
 * any k distinct symbols of a block rebuild it.
 */

export const WIRE_VERSION = 2;

export enum MessageType {
  /** Sender -> group: session parameters and the objects on offer. */
  Announce = 1,
  /** Sender -> group: one source symbol. */
  Data = 2,
  /** Sender -> group: one parity symbol (proactive or repair). */
  Parity = 3,
  /** Sender -> group: timestamps for RTT, and how far sending has got (lets receivers detect tail loss). */
  Heartbeat = 4,
  /** Receiver -> sender: missing symbols per block, plus loss and RTT figures for congestion control. */
  Nak = 5,
  /** Receiver -> sender: progress report (also the answer to a heartbeat). */
  Status = 6,
  /** Receiver -> sender: everything received and verified. */
  Complete = 7,
  /** Receiver -> sender: joining / leaving the session. */
  Join = 8,
  Leave = 9,
  /** Sender -> group: the session is over (with the ids of receivers dropped from it). */
  Done = 10,
}

export interface AnnounceMessage {
  readonly type: MessageType.Announce;
  readonly symbolSize: number;
  /** Source symbols per block (1..255). */
  readonly blockSymbols: number;
  /** Objects in the session; their ids are 0..objectCount-1 (the application maps its own ids). */
  readonly objectCount: number;
  /** Sum of the objects' lengths in bytes (up to 2^48). */
  readonly totalBytes: number;
  /**
   * More objects may follow (an open session: its objects are made while it sends): the counts are
   * those offered so far, and no receiver is complete before an announce without it.
   */
  readonly more?: boolean;
}

export interface SymbolMessage {
  readonly type: MessageType.Data | MessageType.Parity;
  /** Object index within the session, 0..objectCount-1. */
  readonly objectId: number;
  /** Length of the object in bytes (up to 2^48): carried by every symbol, so no announce is needed first. */
  readonly objectLength: number;
  readonly block: number;
  /** Index within the block: 0..k-1 for data, k.. for parity (Reed-Solomon row index). */
  readonly index: number;
  /** Source symbols per full block in this session (K); an object's last block may hold fewer, as its length says. */
  readonly blockSymbols: number;
  readonly payload: Uint8Array;
}

export interface HeartbeatMessage {
  readonly type: MessageType.Heartbeat;
  /** Sender's clock in microseconds, echoed by receivers for RTT. */
  readonly sentAtMicros: number;
  /** Objects fully sent at least once (ids below this are done; lets a receiver NAK tail loss). */
  readonly objectsSent: number;
  /** Current send rate in bytes per second. */
  readonly rateBytesPerSecond: number;
}

export interface BlockGap {
  readonly objectId: number;
  readonly block: number;
  /** How many more symbols this receiver needs to rebuild the block. */
  readonly missing: number;
}

export interface NakMessage {
  readonly type: MessageType.Nak;
  readonly gaps: readonly BlockGap[];
  /** Echo of the latest heartbeat's sentAtMicros, and the time it was held before echoing. */
  readonly echoMicros: number;
  readonly echoDelayMicros: number;
  /** Loss event rate seen by the receiver, in parts per million. */
  readonly lossPpm: number;
}

export interface StatusMessage {
  readonly type: MessageType.Status;
  /** Objects fully received (count, in id order of the announce). */
  readonly objectsComplete: number;
  readonly echoMicros: number;
  readonly echoDelayMicros: number;
  readonly lossPpm: number;
  /** Bytes per second this receiver is taking in. */
  readonly receiveRate: number;
}

export interface CompleteMessage {
  readonly type: MessageType.Complete;
}

export interface JoinMessage {
  readonly type: MessageType.Join;
}

export interface LeaveMessage {
  readonly type: MessageType.Leave;
}

export interface DoneMessage {
  readonly type: MessageType.Done;
  /** Receivers dropped from the session (they get the rest another way). */
  readonly dropped: readonly number[];
}

export type Message =
  | AnnounceMessage
  | SymbolMessage
  | HeartbeatMessage
  | NakMessage
  | StatusMessage
  | CompleteMessage
  | JoinMessage
  | LeaveMessage
  | DoneMessage;

/** The clear header every datagram carries; authenticated (as AES-GCM associated data), not encrypted. */
export interface PacketHeader {
  readonly version: number;
  readonly type: MessageType;
  /** Session id: chosen by the coordinator, one key per session. */
  readonly session: number;
  /** Id of the sending endpoint within the session (sender 0, receivers 1..n). */
  readonly sender: number;
  /** Per-sender packet number, strictly increasing: with the sender id it forms the GCM nonce. */
  readonly sequence: bigint;
}
