/**
 * The validated topology and job: what `loadTopology` returns. Units are normalised here (bytes,
 * bits per second) so nothing downstream parses a unit again.
 */

export type HostRole = 'source' | 'target';

export interface Host {
  readonly name: string;
  /** IPv4 or IPv6 address the host's agent listens on (control channel). */
  readonly address: string;
  /** TCP port of the host's agent control channel. */
  readonly port: number;
  readonly role: HostRole;
  /** Guest memory this host can take, in bytes (targets; 0 for a source that takes none). */
  readonly memoryBytes: number;
  /** Most VMs this host may take (targets). Infinity when unset. */
  readonly maxVms: number;
  /** Link rate of the host's network attachment, in bits per second. */
  readonly linkBitsPerSecond: number;
  /** Site name; hosts of one site can fetch pages from each other instead of over the source's link. */
  readonly site: string;
  /**
   * The host's libvirt, as the source's libvirt reaches it (e.g. `qemu+tcp://10.0.0.3/system`): its
   * libvirt domains can be moved, and it can take libvirt domains. Absent: no libvirt.
   */
  readonly libvirt?: string;
}

export interface MulticastRange {
  /** First group address (IPv4 multicast, e.g. 239.255.10.0). */
  readonly base: string;
  /** Number of consecutive group addresses available. */
  readonly size: number;
  /** UDP port for data. */
  readonly port: number;
}

export type VmSource =
  | { readonly kind: 'image'; readonly path: string }
  | { readonly kind: 'synthetic'; readonly model: SyntheticModelSpec }
  | { readonly kind: 'qemu'; readonly qmp: string; readonly command: readonly string[] }
  /** A domain of the source host's libvirt, moved by libvirt's own migration (src/libvirt/). */
  | { readonly kind: 'libvirt'; readonly domain: string };

/** A VM that runs while it moves (a QEMU of its own or a libvirt domain), not an image. */
export type RunningVmSource = Extract<VmSource, { kind: 'qemu' | 'libvirt' }>;

export function isRunning(source: VmSource): source is RunningVmSource {
  return source.kind === 'qemu' || source.kind === 'libvirt';
}

/** Parameters of the seeded synthetic guest-memory model (src/memory/synthetic.ts documents it). */
export interface SyntheticModelSpec {
  readonly seed: number;
  /** Name of the OS image family: VMs of one family share its image pages. */
  readonly family: string;
  /** Share of pages that are zero, 0..1. */
  readonly zeroShare: number;
  /** Share of pages drawn from the family's OS image, 0..1. */
  readonly osShare: number;
  /** Share of pages drawn from a pool common to every family (libraries, firmware), 0..1. */
  readonly commonShare: number;
  /** Share of pages that repeat another page of the same VM, 0..1. */
  readonly duplicateShare: number;
  /** The rest is private to the VM. */
}

export interface Vm {
  readonly name: string;
  /** Guest memory size in bytes (a whole number of 4 KiB pages). */
  readonly memoryBytes: number;
  readonly source: VmSource;
  /** Target host this VM must go to, if pinned. */
  readonly fixedTarget?: string;
  /** Target hosts this VM must not go to. */
  readonly excludedTargets: readonly string[];
}

export interface Topology {
  /** File the topology was read from (for messages), or '<embedded>'. */
  readonly file: string;
  readonly hosts: readonly Host[];
  readonly multicast: MulticastRange;
  readonly vms: readonly Vm[];
}

/** The topology's one source host (validate.ts makes sure there is exactly one). */
export function sourceHostOf(topology: Topology): Host {
  return topology.hosts.find((h) => h.role === 'source')!;
}
