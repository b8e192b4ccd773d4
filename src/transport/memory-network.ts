import type { DatagramSocket, OpenDatagramSocket, Scheduler } from './datagram.js';
import { copyBytes } from '../copy-bytes.js';

/**
 * An in-memory datagram network for tests: unicast and multicast between sockets, with per-datagram
 * loss, duplication and reordering drawn from a seeded random source, and delivery on a scheduler (a
 * VirtualClock makes it deterministic). Loss is drawn per receiver, as on a real switch.
 */
export interface NetworkConditions {
  /** Share of datagrams dropped, per receiver (0..1). */
  readonly loss?: number;
  /** Share of datagrams delivered twice (0..1). */
  readonly duplicate?: number;
  /** Share of datagrams held back by up to `reorderMs` (0..1). */
  readonly reorder?: number;
  readonly reorderMs?: number;
  /** One-way delay (ms). */
  readonly delayMs?: number;
}

export interface NetworkCounters {
  sent: number;
  delivered: number;
  dropped: number;
  sentBytes: number;
}

export class MemoryNetwork {
  private readonly sockets = new Map<string, MemorySocket>();
  private nextPort = 40_000;
  private readonly groups = new Map<string, Set<MemorySocket>>();
  /** Conditions per receiving address (overrides the network's own). */
  private readonly perReceiver = new Map<string, NetworkConditions>();
  /** Hosts multicast does not reach (denyMulticast). */
  private readonly deaf = new Set<string>();
  readonly counters: NetworkCounters = { sent: 0, delivered: 0, dropped: 0, sentBytes: 0 };
  /** Bytes each address sent. */
  readonly sentBytesBy = new Map<string, number>();

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: () => number,
    private conditions: NetworkConditions = {},
  ) {}

  /**
   * Opens sockets of host `host` on this network, each at an address of its own (`host:port`, the port
   * unique on the network): what a job's coordinator or agent is given to run in one process.
   */
  opener(host: string): OpenDatagramSocket {
    return (request) => Promise.resolve(this.socket(`${request.bindAddress ?? host}:${this.nextPort++}`));
  }

  socket(address: string): DatagramSocket {
    if (this.sockets.has(address)) throw new Error(`address ${address} in use`);
    const socket = new MemorySocket(address, this);
    this.sockets.set(address, socket);
    return socket;
  }

  /**
   * Multicast no longer reaches host `host`'s sockets (as where it is filtered on the path); unicast
   * still does. Each datagram it misses is counted as dropped.
   */
  denyMulticast(host: string): void {
    this.deaf.add(host);
  }

  setConditions(conditions: NetworkConditions, receiver?: string): void {
    if (receiver === undefined) this.conditions = conditions;
    else this.perReceiver.set(receiver, conditions);
  }

  /** @internal */
  transmit(from: MemorySocket, bytes: Uint8Array, to: string): void {
    this.counters.sent++;
    this.counters.sentBytes += bytes.length;
    this.sentBytesBy.set(from.address, (this.sentBytesBy.get(from.address) ?? 0) + bytes.length);
    const copy = copyBytes(bytes); // the sender may reuse its buffer
    const group = this.groups.get(to);
    const receivers = group
      ? [...group].filter((s) => s !== from)
      : [this.sockets.get(to)].filter((s) => !!s);
    for (const receiver of receivers) {
      if (group && this.deaf.has(receiver!.address.slice(0, receiver!.address.lastIndexOf(':')))) {
        this.counters.dropped++;
        continue;
      }
      this.deliver(receiver!, copy, from.address);
    }
  }

  /** @internal */
  join(socket: MemorySocket, group: string): void {
    let members = this.groups.get(group);
    if (!members) this.groups.set(group, (members = new Set()));
    members.add(socket);
  }

  /** @internal */
  leave(socket: MemorySocket, group?: string): void {
    for (const [name, members] of this.groups)
      if (group === undefined || name === group) members.delete(socket);
  }

  /** @internal */
  remove(socket: MemorySocket): void {
    this.leave(socket);
    this.sockets.delete(socket.address);
  }

  private deliver(receiver: MemorySocket, bytes: Uint8Array, from: string): void {
    const c = this.perReceiver.get(receiver.address) ?? this.conditions;
    if (this.random() < (c.loss ?? 0)) {
      this.counters.dropped++;
      return;
    }
    const copies = this.random() < (c.duplicate ?? 0) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const late = this.random() < (c.reorder ?? 0) ? this.random() * (c.reorderMs ?? 1) : 0;
      this.scheduler.schedule((c.delayMs ?? 0.05) + late, () => {
        this.counters.delivered++;
        receiver.receive(bytes, from);
      });
    }
  }
}

class MemorySocket implements DatagramSocket {
  private handler: ((bytes: Uint8Array, from: string) => void) | undefined;
  private closed = false;

  constructor(
    readonly address: string,
    private readonly network: MemoryNetwork,
  ) {}

  send(bytes: Uint8Array, to: string): void {
    if (!this.closed) this.network.transmit(this, bytes, to);
  }

  /** The network copies what it is sent: a sent buffer is free at once. */
  sendsSettled(): boolean {
    return true;
  }

  joinGroup(group: string): void {
    this.network.join(this, group);
  }

  leaveGroup(group: string): void {
    this.network.leave(this, group);
  }

  onDatagram(handler: (bytes: Uint8Array, from: string) => void): void {
    this.handler = handler;
  }

  receive(bytes: Uint8Array, from: string): void {
    if (!this.closed) this.handler?.(bytes, from);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.network.remove(this);
  }
}
