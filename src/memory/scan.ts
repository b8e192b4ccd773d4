import { InputError } from '../errors.js';
import type { Topology, Vm } from '../topology/model.js';
import { fingerprintVms, type FingerprintOptions, type FingerprintResult } from './fingerprint.js';
import { PAGE_SIZE } from './page.js';
import { pageCountOf, type PageSourceSpec } from './page-source.js';

/** Where each VM of a topology is scanned from. */
export function pageSourceOf(vm: Vm): PageSourceSpec {
  switch (vm.source.kind) {
    case 'image':
      return { kind: 'image', path: vm.source.path };
    case 'synthetic':
      return {
        kind: 'synthetic',
        vm: { name: vm.name, pageCount: vm.memoryBytes / PAGE_SIZE, spec: vm.source.model },
      };
    case 'qemu':
    case 'libvirt':
      // Running guests are read through their QEMU (live/plan.ts, coordinator/job-scan.ts).
      throw new InputError(`VM ${vm.name}: a running guest is scanned through its QEMU, not as a file`);
  }
}

/** Scans every VM of a topology (phase 3); checks first that each image matches its declared size. */
export async function scanTopology(
  topology: Topology,
  options: FingerprintOptions,
): Promise<FingerprintResult> {
  const inputs = topology.vms.map((vm) => ({ name: vm.name, source: pageSourceOf(vm) }));
  inputs.forEach((input, i) => {
    const vm = topology.vms[i]!;
    const pages = pageCountOf(input.source);
    if (pages * PAGE_SIZE !== vm.memoryBytes) {
      throw new InputError(
        `VM ${vm.name}: memory is ${vm.memoryBytes} bytes in ${topology.file} but its image holds ${pages * PAGE_SIZE}`,
      );
    }
  });
  return fingerprintVms(inputs, options);
}
