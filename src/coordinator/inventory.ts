import { InputError } from '../errors.js';
import {
  freeMemoryBytes,
  runningDomainNames,
  runningDomains,
  type RunningDomain,
} from '../libvirt/inventory.js';
import { sourceHostOf, type Host, type Topology, type Vm } from '../topology/model.js';
import { VM_NAME } from '../wire/protocol.js';

/**
 * Hosts with a libvirt speak for themselves (`scatter`, `evacuate` and `plan` alike):
 * - the source's running domains that the topology does not list become VMs of the job, named after
 *   their domain, with the memory libvirt gave them; they may go only to targets with a libvirt;
 * - a target with a libvirt takes at most what its libvirt reports free, under its topology memory,
 *   and its `maxVms` counts the domains it runs already.
 * A topology of libvirt hosts thus needs no VM list: what runs is what moves.
 */
export async function withLibvirtInventory(
  topology: Topology,
  ask: LibvirtInventory = VIRSH_INVENTORY,
): Promise<Topology> {
  const source = sourceHostOf(topology);
  const hosts = await Promise.all(
    topology.hosts.map(async (host): Promise<Host> => {
      if (host.role !== 'target' || host.libvirt === undefined) return host;
      const free = await ask.freeMemoryBytes(host.libvirt);
      const running = Number.isFinite(host.maxVms) ? (await ask.runningDomainNames(host.libvirt)).length : 0;
      return {
        ...host,
        memoryBytes: Math.min(host.memoryBytes, free),
        maxVms: Math.max(0, host.maxVms - running),
      };
    }),
  );
  const vms: Vm[] = [...topology.vms];
  if (source.libvirt !== undefined) {
    const listed = new Set(
      topology.vms.flatMap((vm) => (vm.source.kind === 'libvirt' ? [vm.source.domain] : [])),
    );
    const withoutLibvirt = hosts
      .filter((h) => h.role === 'target' && h.libvirt === undefined)
      .map((h) => h.name);
    for (const domain of await ask.runningDomains(source.libvirt)) {
      if (listed.has(domain.name)) continue;
      if (!VM_NAME.test(domain.name))
        throw new InputError(
          `domain '${domain.name}' at ${source.libvirt} has a name vmscatter cannot use for a VM; list it in ${topology.file} under another name`,
        );
      if (vms.some((vm) => vm.name === domain.name))
        throw new InputError(
          `domain '${domain.name}' at ${source.libvirt} has the name of a VM of ${topology.file} that is not that domain; rename one`,
        );
      vms.push({
        name: domain.name,
        memoryBytes: domain.memoryBytes,
        source: { kind: 'libvirt', domain: domain.name },
        excludedTargets: withoutLibvirt,
      });
    }
  }
  return { ...topology, hosts, vms };
}

/** A job needs a VM: a topology that lists none and whose source's libvirt runs none is refused. */
export function requireVms(topology: Topology): Topology {
  if (topology.vms.length > 0) return topology;
  const source = sourceHostOf(topology);
  throw new InputError(
    `${topology.file}: no VMs: it lists none${source.libvirt === undefined ? '' : `, and ${source.name}'s libvirt runs none`}`,
  );
}

/** What the inventory asks of a libvirt (libvirt/inventory.ts; tests give their own answers). */
export interface LibvirtInventory {
  freeMemoryBytes(uri: string): Promise<number>;
  runningDomainNames(uri: string): Promise<string[]>;
  runningDomains(uri: string): Promise<RunningDomain[]>;
}

const VIRSH_INVENTORY: LibvirtInventory = { freeMemoryBytes, runningDomainNames, runningDomains };
