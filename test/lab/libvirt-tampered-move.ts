/**
 * Run by libvirt-lab.test.ts inside the source host's namespaces (where the source's libvirt and its
 * /run/libvirt are): one live move of a libvirt domain by migrateLiveVm, the coordinator's path, to
 * the agent of the topology's target, with one page of the source's memory changed as the memory
 * check reads it (as a page QEMU never sent would be) and repairs off. Prints the migration's result as
 * one line of JSON.
 *
 *   node libvirt-tampered-move.js TOPOLOGY SECRET_FILE RUN_DIR
 */
import { connectControl } from '../../src/control/control-channel.js';
import { readSecretFile } from '../../src/local/workspace.js';
import { deriveDigestKey, PageDigester } from '../../src/memory/page-digest.js';
import { migrateLiveVm, STEP_TIMEOUT_MS } from '../../src/live/migrate.js';
import { libvirtMigrationSource } from '../../src/live/source-libvirt.js';
import type { GuestRam } from '../../src/qemu/guest-ram.js';
import { loadTopology } from '../../src/topology/load.js';
import { AgentLink } from '../../src/wire/agent-link.js';
import { PROTOCOL_VERSION } from '../../src/wire/protocol.js';

/** Where the changed byte is: 8 MiB into the guest's RAM, past firmware areas. */
const CHANGED_OFFSET = 8 << 20;

/** The RAM as the check reads it, one byte of it flipped; no file, so every read goes through here. */
function tampered(ram: GuestRam): GuestRam {
  return {
    method: ram.method,
    get map() {
      return ram.map;
    },
    remap: () => ram.remap(),
    read: async (into, offset, length) => {
      await ram.read(into, offset, length);
      if (CHANGED_OFFSET >= offset && CHANGED_OFFSET < offset + length)
        into[CHANGED_OFFSET - offset] = into[CHANGED_OFFSET - offset]! ^ 0x5a;
    },
    close: () => ram.close(),
  };
}

async function main(): Promise<void> {
  const [topologyPath, secretFile, runDir] = process.argv.slice(2);
  if (!topologyPath || !secretFile || !runDir) throw new Error('usage: TOPOLOGY SECRET_FILE RUN_DIR');
  const topology = loadTopology(topologyPath);
  const source = topology.hosts.find((h) => h.role === 'source')!;
  const target = topology.hosts.find((h) => h.role === 'target')!;
  const vm = topology.vms[0]!;
  if (vm.source.kind !== 'libvirt') throw new Error(`${vm.name} is not a libvirt domain`);
  const secret = readSecretFile(secretFile);
  const channel = await connectControl(target.address, target.port, { secret });
  const link = new AgentLink(0, target, channel);
  link.send({ t: 'job', version: PROTOCOL_VERSION, job: 'libvirt-tampered', host: target.name });
  await link.next('ready', () => true, 30_000);
  const libvirt = libvirtMigrationSource({
    vm: vm.name,
    domain: vm.source.domain,
    uri: source.libvirt!,
    targetUri: target.libvirt!,
    autoConverge: true,
    downtimeLimitMs: 300,
    stepTimeoutMs: STEP_TIMEOUT_MS,
  });
  const result = await migrateLiveVm({
    vm: vm.name,
    source: {
      ...libvirt,
      openRam: async (scratchDir, running) => tampered(await libvirt.openRam(scratchDir, running)),
    },
    link,
    runDir,
    digester: new PageDigester(deriveDigestKey(secret)),
    holds: () => false,
    codec: 'zstd',
    strategy: 'precopy',
    maxRepairBytes: 0,
  });
  link.send({ t: 'end' });
  await link.drain();
  await channel.close();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
