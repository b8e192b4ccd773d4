import { lookup as dnsLookup } from 'node:dns';
import dgram from 'node:dgram';
import { isIPv4 } from 'node:net';
import { VmscatterError } from '../errors.js';
import { native } from '../native/native.js';
import { splitAddress, type DatagramSocket } from './datagram.js';

/**
 * The DatagramSocket contract on node:dgram (IPv4).
 *
 * Buffers: a multicast receiver must absorb bursts while the event loop is busy decoding, so the
 * kernel receive buffer is asked for generously; the kernel silently caps the request at
 * net.core.rmem_max (wmem_max for sending). Where it did and the process may go past the limits
 * (CAP_NET_ADMIN: SO_RCVBUFFORCE / SO_SNDBUFFORCE, through the native addon), it does; what was granted
 * is read back and reported (bufferReport) for the caller to warn about.
 *
 * Sending: an IPv4 address is handed to the socket without node:dns (whose lookup answers a literal a
 * tick later, so every datagram waited for the next tick), so a datagram goes to the kernel within
 * send(); sendsSettled() says when the kernel has taken every datagram sent, and the caller may reuse
 * its buffers. Multicast loopback is on only where it must be: when the interface is loopback itself
 * (every host of the embedded default topology is 127.0.0.1) or a test asks for it; elsewhere a sender
 * never receives its own datagrams.
 */
export interface DgramSocketOptions {
  /** Address to bind (default 0.0.0.0: multicast receivers must bind the wildcard or the group). */
  readonly bindAddress?: string;
  /** Port to bind; 0 for an ephemeral one (senders). Receivers bind the group's port. */
  readonly port?: number;
  /** IPv4 address of the interface multicast is sent from and joined on. */
  readonly multicastInterface?: string;
  /** Multicast TTL (default 1: the segment only). */
  readonly ttl?: number;
  /** Receive our own multicast (default: only on loopback). */
  readonly loopback?: boolean;
  /** Receive buffer asked for (default 32 MiB). */
  readonly receiveBufferBytes?: number;
  /** Send buffer asked for (default 8 MiB). */
  readonly sendBufferBytes?: number;
}

export const DEFAULT_RECEIVE_BUFFER_BYTES = 32 * 2 ** 20;
export const DEFAULT_SEND_BUFFER_BYTES = 8 * 2 ** 20;

export interface BufferReport {
  readonly requestedReceive: number;
  readonly grantedReceive: number;
  readonly requestedSend: number;
  readonly grantedSend: number;
  /** True when the kernel granted less than asked (raise net.core.rmem_max / wmem_max). */
  readonly capped: boolean;
  /** True when the limits were passed with SO_RCVBUFFORCE / SO_SNDBUFFORCE (CAP_NET_ADMIN). */
  readonly forced: boolean;
}

/**
 * An IPv4 literal answers at once, in the caller's tick (node:dns answers it on the next one); names
 * still go through node:dns.
 */
function literalLookup(
  hostname: string,
  options: unknown,
  callback: (error: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  if (isIPv4(hostname)) return callback(null, hostname, 4);
  dnsLookup(hostname, options as number, callback);
}

interface UdpHandle {
  fd?: unknown;
  recvStop?: unknown;
}

/** node:dgram's libuv handle (kept under a private symbol), if it can be had. */
function udpHandle(socket: dgram.Socket): UdpHandle | undefined {
  const key = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  const state = key === undefined ? undefined : (socket as unknown as Record<symbol, unknown>)[key];
  return (state as { handle?: UdpHandle } | undefined)?.handle;
}

/** The socket's file descriptor, if it can be had. */
function socketFd(socket: dgram.Socket): number | undefined {
  const fd = udpHandle(socket)?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

/** Datagrams read per recvmmsg call, and the room for each (the largest UDP payload fits). */
const RECEIVE_SLOTS = 32;
const RECEIVE_SLOT_BYTES = 65_536;
/**
 * While datagrams keep coming, read them every millisecond rather than waking per datagram: at 1 Gbit/s
 * of jumbo frames that is a batch of about 14 instead of one (the socket buffer holds far more).
 */
const RECEIVE_COALESCE_MS = 1;

/**
 * Batched reading through the addon (see native/transport.c): node:dgram's own reading is stopped and a
 * duplicate of the descriptor read with recvmmsg into fixed slots, each datagram handed on as a view of
 * its slot. Undefined where the addon or node:dgram's handle is not there (then node:dgram reads).
 */
function batchedReceiver(
  socket: dgram.Socket,
  deliver: (bytes: Uint8Array, from: string) => void,
): (() => Promise<void>) | undefined {
  const addon = native;
  const handle = udpHandle(socket);
  const fd = socketFd(socket);
  if (addon === undefined || typeof addon.udpReceiveStart !== 'function' || fd === undefined)
    return undefined;
  if (handle === undefined || typeof handle.recvStop !== 'function') return undefined;
  const buffer = new Uint8Array(RECEIVE_SLOTS * RECEIVE_SLOT_BYTES);
  const meta = new Uint32Array(RECEIVE_SLOTS * 3);
  let lastHost = -1;
  let lastPort = -1;
  let lastFrom = '';
  const onBatch = (count: number): void => {
    for (let i = 0; i < count; i++) {
      const length = meta[3 * i]!;
      if (length === 0) continue;
      const host = meta[3 * i + 1]!;
      const port = meta[3 * i + 2]!;
      if (host !== lastHost || port !== lastPort) {
        lastHost = host;
        lastPort = port;
        lastFrom = `${host >>> 24}.${(host >>> 16) & 0xff}.${(host >>> 8) & 0xff}.${host & 0xff}:${port}`;
      }
      const start = i * RECEIVE_SLOT_BYTES;
      deliver(buffer.subarray(start, start + length), lastFrom);
    }
  };
  (handle.recvStop as () => number).call(handle);
  let reader: object;
  try {
    reader = addon.udpReceiveStart(fd, buffer, RECEIVE_SLOT_BYTES, meta, onBatch, RECEIVE_COALESCE_MS);
  } catch {
    const restart = (handle as { recvStart?: unknown }).recvStart;
    if (typeof restart === 'function') (restart as () => number).call(handle);
    return undefined;
  }
  // Resolves once the duplicate descriptor is closed: until then the socket still holds its port.
  return () => new Promise<void>((resolve) => addon.udpReceiveStop(reader, resolve));
}

/**
 * Sets a kernel buffer to `bytes` and returns what was granted (Linux reports twice the usable size,
 * its bookkeeping overhead, so that is halved); past the system's limit with the FORCE option when the
 * process may.
 */
function sizeBuffer(socket: dgram.Socket, which: 0 | 1, bytes: number): { granted: number; forced: boolean } {
  const get = (): number => (which === 0 ? socket.getRecvBufferSize() : socket.getSendBufferSize()) / 2;
  try {
    if (which === 0) socket.setRecvBufferSize(bytes);
    else socket.setSendBufferSize(bytes);
  } catch {
    // refused outright: keep what there is
  }
  let granted = get();
  if (granted >= bytes || typeof native?.forceSocketBuffer !== 'function') return { granted, forced: false };
  const fd = socketFd(socket);
  if (fd === undefined || native.forceSocketBuffer(fd, which, bytes) !== 0) return { granted, forced: false };
  granted = get();
  return { granted, forced: true };
}

export class DgramSocket implements DatagramSocket {
  private handler: ((bytes: Uint8Array, from: string) => void) | undefined;
  private readonly joined = new Set<string>();
  /** Parsed destinations: a session sends to one group and one sender address, thousands of times. */
  private readonly targets = new Map<string, { host: string; port: number; literal: boolean }>();
  /** Sends to a name, waiting for node:dns: their buffers are not the kernel's yet. */
  private resolving = 0;
  private closed = false;
  /** Stops the addon's batched reading, when it reads for this socket. */
  private stopBatched: (() => Promise<void>) | undefined;
  /** Datagrams the kernel refused to send (counted, not thrown: UDP may drop and the protocol repairs). */
  sendErrors = 0;

  private constructor(
    private readonly socket: dgram.Socket,
    readonly address: string,
    private readonly multicastInterface: string | undefined,
    readonly bufferReport: BufferReport,
  ) {
    socket.on('message', (message, rinfo) => {
      // A plain Uint8Array view, as the contract promises (no copy).
      const bytes = new Uint8Array(message.buffer, message.byteOffset, message.length);
      this.handler?.(bytes, `${rinfo.address}:${rinfo.port}`);
    });
    // A socket error after bind (e.g. ICMP unreachable surfaced on Linux) must not crash an agent.
    socket.on('error', () => this.sendErrors++);
    this.stopBatched = batchedReceiver(socket, (bytes, from) => this.handler?.(bytes, from));
  }

  /** Whether datagrams are read in batches through the addon (else one at a time by node:dgram). */
  get batchedReceive(): boolean {
    return this.stopBatched !== undefined;
  }

  static async open(options: DgramSocketOptions = {}): Promise<DgramSocket> {
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true, lookup: literalLookup });
    const bindAddress = options.bindAddress ?? '0.0.0.0';
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      socket.once('error', onError);
      socket.bind(options.port ?? 0, bindAddress, () => {
        socket.off('error', onError);
        resolve();
      });
    }).catch((error: NodeJS.ErrnoException) => {
      socket.close();
      throw new VmscatterError(
        'VMS_SOCKET',
        `cannot bind UDP ${bindAddress}:${options.port ?? 0}: ${error.code ?? error.message}`,
      );
    });
    const requestedReceive = options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER_BYTES;
    const requestedSend = options.sendBufferBytes ?? DEFAULT_SEND_BUFFER_BYTES;
    const receive = sizeBuffer(socket, 0, requestedReceive);
    const send = sizeBuffer(socket, 1, requestedSend);
    const grantedReceive = receive.granted;
    const grantedSend = send.granted;
    const iface = options.multicastInterface;
    if (iface !== undefined) socket.setMulticastInterface(iface);
    socket.setMulticastTTL(options.ttl ?? 1);
    socket.setMulticastLoopback(options.loopback ?? iface?.startsWith('127.') ?? false);
    const local = socket.address();
    const host = local.address === '0.0.0.0' ? (iface ?? '0.0.0.0') : local.address;
    return new DgramSocket(socket, `${host}:${local.port}`, iface, {
      requestedReceive,
      grantedReceive,
      requestedSend,
      grantedSend,
      capped: grantedReceive < requestedReceive || grantedSend < requestedSend,
      forced: receive.forced || send.forced,
    });
  }

  send(bytes: Uint8Array, to: string): void {
    if (this.closed) return;
    let target = this.targets.get(to);
    if (!target) {
      const { host, port } = splitAddress(to);
      target = { host, port, literal: isIPv4(host) };
      this.targets.set(to, target);
    }
    if (!target.literal) {
      // Sent once node:dns has answered, a tick or more later: counted until then.
      this.resolving++;
      this.socket.send(bytes, target.port, target.host, (error) => {
        this.resolving--;
        if (error) this.sendErrors++;
      });
      return;
    }
    // No per-datagram callback: at tens of thousands of datagrams a second its allocation shows in
    // profiles; a failed send surfaces as an 'error' event, counted in sendErrors.
    this.socket.send(bytes, target.port, target.host);
  }

  /** True when the kernel has taken every datagram sent so far: their buffers may be reused. */
  sendsSettled(): boolean {
    return this.closed || (this.resolving === 0 && this.socket.getSendQueueCount() === 0);
  }

  joinGroup(group: string): void {
    const { host } = splitAddress(group);
    if (this.joined.has(host)) return;
    // Only the groups this socket joined: Linux otherwise also hands it every other group joined on
    // this port by any socket of the host (another round's, another job's, another agent's on the
    // same machine), each datagram then read and dropped here for nothing. Where the addon is
    // missing, those still arrive and are dropped as another session's.
    if (this.joined.size === 0) {
      const fd = socketFd(this.socket);
      if (fd !== undefined && typeof native?.onlyJoinedGroups === 'function') native.onlyJoinedGroups(fd);
    }
    this.socket.addMembership(host, this.multicastInterface);
    this.joined.add(host);
  }

  leaveGroup(group: string): void {
    const { host } = splitAddress(group);
    if (!this.joined.delete(host)) return;
    this.socket.dropMembership(host, this.multicastInterface);
  }

  onDatagram(handler: (bytes: Uint8Array, from: string) => void): void {
    this.handler = handler;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([
      this.stopBatched?.(),
      new Promise<void>((resolve) => this.socket.close(() => resolve())),
    ]);
  }
}
