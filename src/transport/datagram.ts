/**
 * The datagram contract every multicast transport below the protocol implements: the real one on
 * node:dgram (dgram-socket.ts) and the in-memory one for tests (memory-network.ts). One compliance suite
 * (test/unit/datagram-compliance.test.ts) runs against both.
 *
 * Addresses are "host:port" strings; a group is a multicast "address:port". Sending never blocks and
 * never throws for a network condition: UDP may drop, and the protocol above repairs.
 */
export interface DatagramSocket {
  /** This endpoint's unicast address, "host:port". */
  readonly address: string;
  send(bytes: Uint8Array, to: string): void;
  /**
   * True when every datagram handed to send() so far has been taken (copied) by the network below, so
   * the caller may write into the buffers it sent. Sockets without it: never reuse a sent buffer.
   */
  sendsSettled?(): boolean;
  joinGroup(group: string): void;
  leaveGroup(group: string): void;
  /** Sets the one handler for arriving datagrams (bytes are only valid during the call). */
  onDatagram(handler: (bytes: Uint8Array, from: string) => void): void;
  close(): Promise<void>;
}

/** Where and how a datagram socket is opened (dgram-socket.ts's options, as far as callers need them). */
export interface DatagramSocketRequest {
  /** Local address to bind (default: any). */
  readonly bindAddress?: string;
  /** Local port (default: any free one); a receiver binds its group's port. */
  readonly port?: number;
  /** IPv4 address of the interface multicast is sent and joined on. */
  readonly multicastInterface?: string;
}

/**
 * Opens a datagram socket: the network a job runs on, passed in (DgramSocket.open for the real one;
 * MemoryNetwork.opener for a whole job in one process).
 */
export type OpenDatagramSocket = (request: DatagramSocketRequest) => Promise<DatagramSocket>;

/** Time and timers, injected so protocol sessions run on a virtual clock in tests. */
export interface Scheduler {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Calls fn after ms (0: as soon as possible); returns a cancel function. */
  schedule(ms: number, fn: () => void): () => void;
}

/** Real time: performance.now, setImmediate for "now", unref'ed setTimeout otherwise. */
export const realScheduler: Scheduler = {
  now: () => performance.now(),
  schedule(ms, fn) {
    if (ms <= 0) {
      const handle = setImmediate(fn);
      return () => clearImmediate(handle);
    }
    const handle = setTimeout(fn, ms);
    return () => clearTimeout(handle);
  },
};

export function splitAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(':');
  const host = address.slice(0, at).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(at + 1));
  if (at <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`not a host:port address: '${address}'`);
  }
  return { host, port };
}
