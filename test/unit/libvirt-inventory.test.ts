import assert from 'node:assert/strict';
import { test } from 'node:test';
import { freecellBytes, maxMemoryOf } from '../../src/libvirt/inventory.js';
import { errorLine } from '../../src/libvirt/virsh.js';
import { requireVms, withLibvirtInventory } from '../../src/coordinator/inventory.js';
import { parseTopology } from '../../src/topology/load.js';

test('libvirt inventory: virsh freecell --all, with a total or one cell only (quiet virsh prints none)', () => {
  assert.equal(freecellBytes('    0:   22494132 KiB\n'), 22494132 * 1024);
  const numa = [
    '    0:    1000 KiB',
    '    1:    2000 KiB',
    '--------------------',
    'Total:     3000 KiB',
    '',
  ];
  assert.equal(freecellBytes(numa.join('\n')), 3000 * 1024);
  assert.equal(freecellBytes('error-free but empty\n'), undefined);
});

test("libvirt inventory: a domain's memory is dominfo's Max memory, in bytes", () => {
  const dominfo = [
    'Id:             3',
    'Name:           web-1',
    'State:          running',
    'Max memory:     262144 KiB',
    'Used memory:    131072 KiB',
    'Persistent:     yes',
  ].join('\n');
  assert.equal(maxMemoryOf(dominfo), 256 * 2 ** 20);
  assert.equal(maxMemoryOf('Name: web-1\n'), undefined);
});

test("virsh's error lines lose their prefixes and join into one", () => {
  assert.equal(
    errorLine("error: failed to get domain 'x'\nerror: Domain not found\n\n"),
    "failed to get domain 'x'; Domain not found",
  );
});

test('libvirt inventory: the source runs the VMs the topology does not list; targets take what their libvirt has room for', async () => {
  const MiB = 2 ** 20;
  const topology = parseTopology(
    [
      'hosts:',
      '  - { name: src, address: 10.0.0.1, role: source, link: 1Gbit, libvirt: "qemu+tcp://10.0.0.1/system" }',
      '  - { name: t1, address: 10.0.0.2, role: target, memory: 4GiB, maxVms: 3, link: 1Gbit, libvirt: "qemu+tcp://10.0.0.2/system" }',
      '  - { name: t2, address: 10.0.0.3, role: target, memory: 1GiB, link: 1Gbit, libvirt: "qemu+tcp://10.0.0.3/system" }',
      '  - { name: t3, address: 10.0.0.4, role: target, memory: 1GiB, link: 1Gbit }',
      'vms:',
      '  - { name: db, memory: 512MiB, source: { libvirt: { domain: db-main } } }',
    ].join('\n'),
    '/fleet.yaml',
  );
  const free: Record<string, number> = { '10.0.0.2': 2048 * MiB, '10.0.0.3': 4096 * MiB };
  const ask = {
    freeMemoryBytes: (uri: string) => Promise.resolve(free[new URL(uri).hostname]!),
    runningDomainNames: (uri: string) => Promise.resolve(uri.includes('10.0.0.2') ? ['x', 'y'] : ['z']),
    runningDomains: () =>
      Promise.resolve([
        { name: 'db-main', memoryBytes: 512 * MiB },
        { name: 'web-1', memoryBytes: 256 * MiB },
      ]),
  };
  const inventoried = await withLibvirtInventory(topology, ask);
  // db-main is listed already (as db); web-1 joins, to targets with a libvirt only.
  assert.deepEqual(
    inventoried.vms.map((vm) => [vm.name, vm.memoryBytes / MiB, vm.source, vm.excludedTargets]),
    [
      ['db', 512, { kind: 'libvirt', domain: 'db-main' }, ['t3']],
      ['web-1', 256, { kind: 'libvirt', domain: 'web-1' }, ['t3']],
    ],
  );
  const target = (name: string) => inventoried.hosts.find((h) => h.name === name)!;
  assert.equal(target('t1').memoryBytes, 2048 * MiB, "t1's libvirt has less free than its topology memory");
  assert.equal(target('t1').maxVms, 1, 't1 runs two of its three already');
  assert.equal(target('t2').memoryBytes, 1024 * MiB, "t2's topology memory is the smaller");
  assert.equal(target('t2').maxVms, Infinity);
  assert.equal(target('t3').memoryBytes, 1024 * MiB, 't3 has no libvirt to ask');

  const clash = { ...ask, runningDomains: () => Promise.resolve([{ name: 'db', memoryBytes: MiB }]) };
  await assert.rejects(
    withLibvirtInventory(topology, clash),
    /domain 'db' .* has the name of a VM of \/fleet.yaml/,
  );
  assert.throws(
    () => requireVms({ ...topology, vms: [] }),
    /no VMs: it lists none, and src's libvirt runs none/,
  );
});
