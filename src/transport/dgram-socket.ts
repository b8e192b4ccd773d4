import dgram from 'node:dgram';
import { VmscatterError } from '../errors.js';
import { splitAddress, type DatagramSocket } from './datagram.js';

/**
 * The DatagramSocket contract on node:dgram (IPv4).
 *
 * Buffers: a multicast receiver must absorb bursts while the event loop is busy decoding, so the
 * kernel receive buffer is asked for generously; the kernel silently caps the request at
 * net.core.rmem_max, so what was granted is read back and reported (bufferReport) for the caller to
 * warn about. Multicast loopback is on only where it must be: when the interface is loopback itself
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
  readonly receiveBufferBytes?: number;
  readonly sendBufferBytes?: number;
}

export interface BufferReport {
  readonly requestedReceive: number;
  readonly grantedReceive: number;
  readonly requestedSend: number;
  readonly grantedSend: number;
  /** True when the kernel granted less than asked (raise net.core.rmem_max / wmem_max). */
  readonly capped: boolean;
}

export class DgramSocket implements DatagramSocket {
  private handler: ((bytes: Uint8Array, from: string) => void) | undefined;
  private readonly joined = new Set<string>();
  /** Parsed destinations: a session sends to one group and one sender address, thousands of times. */
  private readonly targets = new Map<string, { host: string; port: number }>();
  private closed = false;
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
  }

  static async open(options: DgramSocketOptions = {}): Promise<DgramSocket> {
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
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
    const requestedReceive = options.receiveBufferBytes ?? 16 * 2 ** 20;
    const requestedSend = options.sendBufferBytes ?? 4 * 2 ** 20;
    socket.setRecvBufferSize(requestedReceive);
    socket.setSendBufferSize(requestedSend);
    // Linux reports twice the usable size it granted (bookkeeping overhead), so halve it to compare.
    const grantedReceive = socket.getRecvBufferSize() / 2;
    const grantedSend = socket.getSendBufferSize() / 2;
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
    });
  }

  send(bytes: Uint8Array, to: string): void {
    if (this.closed) return;
    let target = this.targets.get(to);
    if (!target) {
      target = splitAddress(to);
      this.targets.set(to, target);
    }
    // No per-datagram callback: at tens of thousands of datagrams a second its allocation shows in
    // profiles; a failed send surfaces as an 'error' event, counted in sendErrors.
    this.socket.send(bytes, target.port, target.host);
  }

  joinGroup(group: string): void {
    const { host } = splitAddress(group);
    if (this.joined.has(host)) return;
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
    await new Promise<void>((resolve) => this.socket.close(() => resolve()));
  }
}
