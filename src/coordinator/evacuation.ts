import { existsSync } from 'node:fs';
import { InputError } from '../errors.js';
import { connectQmp } from '../qemu/qmp.js';
import { sourceHostOf, type Topology } from '../topology/model.js';
import { domainState } from '../libvirt/domain.js';

/**
 * Host evacuation as a scatter job: the host being emptied is the source, every other host (but the
 * excluded ones) a target with the free capacity the topology gives it, and the VMs of the topology
 * are the host's. A re-run after a partial evacuation finds the VMs that moved gone from the host and
 * moves only the rest.
 */
export function evacuationTopology(
  topology: Topology,
  hostName: string,
  excluded: readonly string[],
  bandwidthBitsPerSecond?: number,
): Topology {
  const names = topology.hosts.map((h) => h.name);
  const host = topology.hosts.find((h) => h.name === hostName);
  if (!host)
    throw new InputError(`${topology.file}: no host named '${hostName}' (hosts: ${names.join(', ')})`);
  for (const name of excluded)
    if (!names.includes(name))
      throw new InputError(
        `--exclude-host ${name}: ${topology.file} has no such host (hosts: ${names.join(', ')})`,
      );
  if (excluded.includes(hostName))
    throw new InputError(`--exclude-host ${hostName}: that is the host being evacuated`);
  const targets = topology.hosts
    .filter((h) => h.name !== hostName && !excluded.includes(h.name) && h.memoryBytes > 0)
    .map((h) => ({ ...h, role: 'target' as const }));
  if (targets.length === 0)
    throw new InputError(
      `${topology.file}: no host is left to take ${hostName}'s VMs (each needs memory: free capacity)`,
    );
  const source = {
    ...host,
    role: 'source' as const,
    ...(bandwidthBitsPerSecond === undefined ? {} : { linkBitsPerSecond: bandwidthBitsPerSecond }),
  };
  // Pins and exclusions naming hosts that are no longer targets are the operator's: they say so.
  const targetNames = new Set(targets.map((h) => h.name));
  for (const vm of topology.vms)
    if (vm.fixedTarget !== undefined && !targetNames.has(vm.fixedTarget))
      throw new InputError(
        `VM ${vm.name} is pinned to ${vm.fixedTarget}, which is not a target of this evacuation`,
      );
  return { ...topology, hosts: [source, ...targets] };
}

export interface AbsentVm {
  readonly name: string;
  readonly reason: string;
}

/**
 * The VMs still on the host: a running VM whose QEMU no longer answers there moved earlier (or is not
 * running) and is left out, and said to be.
 */
export async function presentVms(topology: Topology): Promise<{ topology: Topology; absent: AbsentVm[] }> {
  const absent: AbsentVm[] = [];
  const present = [];
  for (const vm of topology.vms) {
    if (vm.source.kind === 'libvirt') {
      const uri = sourceHostOf(topology).libvirt!;
      const state = await domainState(uri, vm.source.domain).catch((error: Error) => error.message);
      if (state === 'running' || state === 'paused') present.push(vm);
      else
        absent.push({
          name: vm.name,
          reason:
            state === 'absent'
              ? `no domain ${vm.source.domain} at ${uri} (moved earlier, or not defined)`
              : `domain ${vm.source.domain} at ${uri}: ${state}`,
        });
      continue;
    }
    if (vm.source.kind !== 'qemu') {
      present.push(vm);
      continue;
    }
    const path = vm.source.qmp;
    const qmp = existsSync(path)
      ? await connectQmp(path, { connectTimeoutMs: 2000 }).catch(() => undefined)
      : undefined;
    if (!qmp) {
      absent.push({ name: vm.name, reason: `no QEMU answers at ${path} (moved earlier, or not running)` });
      continue;
    }
    await qmp.close();
    present.push(vm);
  }
  return { topology: { ...topology, vms: present }, absent };
}
