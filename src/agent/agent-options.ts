import type { OpenDatagramSocket } from '../transport/datagram.js';

/** How an agent runs (`vmscatter agent`'s options), shared by the agent and its jobs. */
export interface AgentOptions {
  /** The host's name in the topology (reported back so a coordinator can tell agents apart). */
  readonly name: string;
  readonly listenAddress: string;
  readonly port: number;
  /** IPv4 address of the interface multicast is joined on. */
  readonly multicastInterface: string;
  readonly dir: string;
  readonly secret: Uint8Array;
  /** Pages the template store keeps between jobs (the most widely held ones). */
  readonly templateCapacityPages?: number;
  /**
   * The emulators a destination may be started with (resolved paths); default: every `qemu-system-*`
   * on PATH. Any other program, and options that take QEMU away from the agent, are refused
   * (qemu/command-policy.ts).
   */
  readonly emulators?: readonly string[];
  /**
   * This host's libvirt URI (its topology entry's `libvirt:`): libvirt domains may arrive, and the
   * agent attaches to the destinations that libvirt starts for them. Absent: none may.
   */
  readonly libvirt?: string;
  /**
   * Accept multicast rounds sent in clear (a coordinator's --insecure-plaintext). Off by default: an
   * empty round key is refused, so no coordinator alone can make guest memory travel unencrypted.
   */
  readonly insecurePlaintext?: boolean;
  readonly log?: (line: string) => void;
  /** The network multicast rounds arrive on (default: the host's, DgramSocket). */
  readonly openSocket?: OpenDatagramSocket;
}
