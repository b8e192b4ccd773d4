import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { TopologyError } from '../../src/errors.js';
import {
  DEFAULT_AGENT_PORT,
  DEFAULT_MULTICAST,
  SYNTHETIC_DEFAULTS,
  loadTopology,
  parseTopology,
} from '../../src/topology/load.js';
import type { Topology, Vm } from '../../src/topology/model.js';
import { tempDir } from '../support/fixtures.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const FILE = '/lab/jobs/t.yaml';

/** A valid topology; tests replace numbered lines (1-based) to make one thing wrong at a known line. */
const BASE = [
  'multicast: { base: 239.255.42.0, size: 16, port: 7420 }', // 1
  'hosts:', // 2
  '  - { name: src, address: 127.0.0.1, port: 7410, role: source, link: 1Gbit }', // 3
  '  - { name: t1, address: 127.0.0.1, port: 7411, role: target, memory: 1GiB, link: 1Gbit }', // 4
  '  - { name: t2, address: 127.0.0.1, port: 7412, role: target, memory: 1GiB, link: 1Gbit }', // 5
  'vms:', // 6
  '  - name: a', // 7
  '    memory: 64MiB', // 8
  '    source: { synthetic: { seed: 1 } }', // 9
  '  - name: b', // 10
  '    memory: 64MiB', // 11
  '    source: { image: ../images/b.raw }', // 12
];

/** BASE with line n replaced by the given lines (none to delete it), and extra lines appended. */
function edit(changes: Record<number, string | readonly string[]>, append: readonly string[] = []): string {
  const lines = BASE.flatMap((line, index) => {
    const change = changes[index + 1];
    if (change === undefined) return [line];
    return typeof change === 'string' ? [change] : change;
  });
  return [...lines, ...append].join('\n') + '\n';
}

function parse(text: string): Topology {
  return parseTopology(text, FILE);
}

function vm(topology: Topology, name: string): Vm {
  const found = topology.vms.find((v) => v.name === name);
  assert.ok(found, `no VM ${name}`);
  return found;
}

/** Asserts a TopologyError at exactly this line and field whose message says `problem`. */
function rejects(text: string, line: number | undefined, field: string | undefined, problem: RegExp): void {
  assert.throws(
    () => parse(text),
    (error: unknown) => {
      assert.ok(error instanceof TopologyError, `expected a TopologyError, got ${String(error)}`);
      assert.equal(error.line, line, error.message);
      assert.equal(error.field, field, error.message);
      const where = line === undefined ? FILE : `${FILE}:${line}`;
      assert.ok(
        error.message.startsWith(field === undefined ? `${where}: ` : `${where}: ${field}: `),
        error.message,
      );
      assert.match(error.message, problem);
      assert.equal(error.code, 'VMS_TOPOLOGY');
      return true;
    },
  );
}

function example(name: string): string {
  return fileURLToPath(new URL(`../../../topologies/${name}`, import.meta.url));
}

// --- Good input ------------------------------------------------------------------------------------

test('a valid file gives normalised hosts, multicast and VMs', () => {
  const topology = parse(edit({}));
  assert.equal(topology.file, FILE);
  assert.deepEqual(topology.multicast, { base: '239.255.42.0', size: 16, port: 7420 });
  assert.deepEqual(topology.hosts[0], {
    name: 'src',
    address: '127.0.0.1',
    port: 7410,
    role: 'source',
    memoryBytes: 0,
    maxVms: Number.POSITIVE_INFINITY,
    linkBitsPerSecond: 1e9,
    site: 'default',
  });
  assert.deepEqual(topology.hosts[1], {
    name: 't1',
    address: '127.0.0.1',
    port: 7411,
    role: 'target',
    memoryBytes: GiB,
    maxVms: Number.POSITIVE_INFINITY,
    linkBitsPerSecond: 1e9,
    site: 'default',
  });
  assert.deepEqual(vm(topology, 'a'), {
    name: 'a',
    memoryBytes: 64 * MiB,
    source: { kind: 'synthetic', model: { ...SYNTHETIC_DEFAULTS, seed: 1 } },
    excludedTargets: [],
  });
  assert.equal('fixedTarget' in vm(topology, 'a'), false);
});

test('image paths are resolved against the topology file directory', () => {
  const topology = parse(edit({ 12: '    source: { image: ../images/b.raw }' }));
  assert.deepEqual(vm(topology, 'b').source, { kind: 'image', path: '/lab/images/b.raw' });
  const absolute = parse(edit({ 12: '    source: { image: /srv/b.raw }' }));
  assert.deepEqual(vm(absolute, 'b').source, { kind: 'image', path: '/srv/b.raw' });
});

test('defaults: multicast range, agent port, site, unlimited maxVms, synthetic model', () => {
  const topology = parse(
    edit({
      1: [],
      4: '  - { name: t1, address: 10.0.0.2, role: target, memory: 1GiB, link: 1Gbit }',
      9: '    source: { synthetic: }',
    }),
  );
  assert.deepEqual(topology.multicast, DEFAULT_MULTICAST);
  const t1 = topology.hosts.find((h) => h.name === 't1');
  assert.equal(t1?.port, DEFAULT_AGENT_PORT);
  assert.equal(t1?.port, 7411);
  assert.equal(t1?.site, 'default');
  assert.equal(t1?.maxVms, Number.POSITIVE_INFINITY);
  const source = vm(topology, 'a').source;
  assert.equal(source.kind, 'synthetic');
  if (source.kind !== 'synthetic') return;
  assert.equal(source.model.family, 'default');
  assert.equal(source.model.zeroShare, 0.3);
  assert.equal(source.model.osShare, 0.4);
  assert.equal(source.model.commonShare, 0.05);
  assert.equal(source.model.duplicateShare, 0.02);
  assert.ok(Number.isInteger(source.model.seed) && source.model.seed >= 0 && source.model.seed < 2 ** 32);
});

test('the default seed is a stable function of the VM name', () => {
  const seedOf = (topology: Topology, name: string): number => {
    const source = vm(topology, name).source;
    assert.equal(source.kind, 'synthetic');
    return source.kind === 'synthetic' ? source.model.seed : -1;
  };
  const text = edit({ 9: '    source: { synthetic: { family: debian } }' }, [
    '  - name: c',
    '    memory: 64MiB',
    '    source: { synthetic: { family: debian } }',
  ]);
  const first = parse(text);
  const second = parse(text);
  assert.equal(seedOf(first, 'a'), seedOf(second, 'a'));
  assert.notEqual(seedOf(first, 'a'), seedOf(first, 'c'));
});

test('host fields take units, limits and sites', () => {
  const topology = parse(
    edit({
      4: '  - { name: t1, address: "fd00::2", role: target, memory: 512MB, maxVms: 0, link: 800Mbit/s, site: rack-a }',
      5: '  - { name: t2, address: 127.0.0.1, port: 7412, role: target, memory: 4294967296, link: 125MB/s }',
    }),
  );
  const [, t1, t2] = topology.hosts;
  assert.equal(t1?.address, 'fd00::2');
  assert.equal(t1?.memoryBytes, 512e6);
  assert.equal(t1?.maxVms, 0);
  assert.equal(t1?.linkBitsPerSecond, 800e6);
  assert.equal(t1?.site, 'rack-a');
  assert.equal(t2?.memoryBytes, 4 * GiB);
  assert.equal(t2?.linkBitsPerSecond, 1e9);
});

test('a pinned target and exclusions are kept; repeated exclusions count once', () => {
  const topology = parse(edit({}, ['    target: t1', '    exclude: [t2, t2]']));
  assert.equal(vm(topology, 'b').fixedTarget, 't1');
  assert.deepEqual(vm(topology, 'b').excludedTargets, ['t2']);
  const empty = parse(edit({}, ['    target:', '    exclude:']));
  assert.equal(vm(empty, 'b').fixedTarget, undefined);
  assert.deepEqual(vm(empty, 'b').excludedTargets, []);
});

test('synthetic shares that total exactly 1 pass despite floating-point rounding', () => {
  const topology = parse(
    edit({
      9: '    source: { synthetic: { zeroShare: 0.3, osShare: 0.4, commonShare: 0.2, duplicateShare: 0.1 } }',
    }),
  );
  assert.equal(vm(topology, 'a').source.kind, 'synthetic');
});

test('count makes numbered VMs with consecutive seeds', () => {
  const topology = parse(
    edit({
      7: ['  - name: web', '    count: 3'],
      9: '    source: { synthetic: { seed: 4294967295, family: debian } }',
    }),
  );
  assert.deepEqual(
    topology.vms.map((v) => v.name),
    ['web-1', 'web-2', 'web-3', 'b'],
  );
  const seeds = topology.vms
    .slice(0, 3)
    .map((v) => (v.source.kind === 'synthetic' ? v.source.model.seed : -1));
  assert.deepEqual(seeds, [4294967295, 0, 1], 'seeds wrap around at 2^32');
  assert.ok(topology.vms.slice(0, 3).every((v) => v.memoryBytes === 64 * MiB));
});

test('count without a seed gives each VM its own seed', () => {
  const topology = parse(edit({ 7: ['  - name: web', '    count: 4'], 9: '    source: { synthetic: {} }' }));
  const seeds = topology.vms.flatMap((v) => (v.source.kind === 'synthetic' ? [v.source.model.seed] : []));
  assert.equal(seeds.length, 4);
  assert.equal(new Set(seeds).size, 4, 'four distinct seeds');
});

test('a qemu source keeps its command and resolves its QMP socket path', () => {
  const topology = parse(
    edit({
      12: [
        '    source:',
        '      qemu:',
        '        qmp: run/b.qmp',
        '        command: [qemu-system-x86_64, -m, 64M, -incoming, defer]',
      ],
    }),
  );
  assert.deepEqual(vm(topology, 'b').source, {
    kind: 'qemu',
    qmp: '/lab/jobs/run/b.qmp',
    command: ['qemu-system-x86_64', '-m', '64M', '-incoming', 'defer'],
  });
});

test('YAML anchors and aliases may share a block between VMs', () => {
  const topology = parse(
    edit({
      9: '    source: &debian { synthetic: { family: debian, osShare: 0.5 } }',
      12: '    source: *debian',
    }),
  );
  const source = vm(topology, 'b').source;
  assert.equal(source.kind === 'synthetic' && source.model.osShare, 0.5);
});

// --- Example files ---------------------------------------------------------------------------------

test('topologies/local.yaml: loopback source and three targets, six synthetic VMs', () => {
  const topology = loadTopology(example('local.yaml'));
  const sources = topology.hosts.filter((h) => h.role === 'source');
  const targets = topology.hosts.filter((h) => h.role === 'target');
  assert.equal(sources.length, 1);
  assert.equal(targets.length, 3);
  assert.ok(topology.hosts.every((h) => h.address === '127.0.0.1' && h.linkBitsPerSecond === 1e9));
  assert.deepEqual(
    topology.hosts.map((h) => h.port),
    [7410, 7411, 7412, 7413],
  );
  assert.deepEqual(topology.multicast, { base: '239.255.42.0', size: 16, port: 7420 });
  assert.equal(topology.vms.length, 6);
  assert.ok(topology.vms.every((v) => v.memoryBytes === 64 * MiB && v.source.kind === 'synthetic'));
  const families = topology.vms.map((v) => (v.source.kind === 'synthetic' ? v.source.model.family : ''));
  assert.equal(families.filter((f) => f === 'debian').length, 4);
  assert.equal(families.filter((f) => f === 'alpine').length, 2);
  assert.equal(topology.vms.filter((v) => v.fixedTarget !== undefined).length, 1);
  assert.equal(topology.vms.filter((v) => v.excludedTargets.length > 0).length, 1);
});

test('topologies/lab-4.yaml: four hosts on 10.77.0.0/24, four running 128MiB QEMU guests', () => {
  const topology = loadTopology(example('lab-4.yaml'));
  assert.deepEqual(
    topology.hosts.map((h) => [h.name, h.address, h.role, h.port]),
    [
      ['src', '10.77.0.1', 'source', DEFAULT_AGENT_PORT],
      ['t1', '10.77.0.2', 'target', DEFAULT_AGENT_PORT],
      ['t2', '10.77.0.3', 'target', DEFAULT_AGENT_PORT],
      ['t3', '10.77.0.4', 'target', DEFAULT_AGENT_PORT],
    ],
  );
  assert.ok(topology.hosts.every((h) => h.linkBitsPerSecond === 1e9));
  assert.deepEqual(
    topology.hosts.filter((h) => h.role === 'target').map((h) => h.maxVms),
    [2, 2, 2],
  );
  const dir = '/run/vmscatter-lab-4';
  assert.deepEqual(
    topology.vms.map((v) => [v.name, v.memoryBytes, v.source]),
    ['g1', 'g2', 'g3', 'g4'].map((name) => [
      name,
      128 * MiB,
      {
        kind: 'qemu',
        qmp: `${dir}/${name}.qmp`,
        command: [
          'qemu-system-x86_64',
          ...['-accel', 'tcg', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot'],
          ...['-serial', `file:${dir}/${name}.target.serial`],
          ...['-kernel', `${dir}/vmlinuz`, '-initrd', `${dir}/${name}.initrd.gz`],
          ...['-append', 'console=ttyS0 panic=-1 quiet'],
        ],
      },
    ]),
  );
});

test('topologies/rack.yaml: eight 256GiB targets in two sites, 48 VMs in three families', () => {
  const topology = loadTopology(example('rack.yaml'));
  const targets = topology.hosts.filter((h) => h.role === 'target');
  assert.equal(targets.length, 8);
  assert.ok(targets.every((h) => h.memoryBytes === 256 * GiB && h.linkBitsPerSecond === 25e9));
  assert.deepEqual(new Set(targets.map((h) => h.site)), new Set(['rack-a', 'rack-b']));
  assert.equal(topology.vms.length, 48);
  assert.ok(topology.vms.every((v) => v.memoryBytes >= 4 * GiB && v.memoryBytes <= 16 * GiB));
  const families = new Set(
    topology.vms.map((v) => (v.source.kind === 'synthetic' ? v.source.model.family : '')),
  );
  assert.equal(families.size, 3);
  const capacity = targets.reduce((sum, h) => sum + h.memoryBytes, 0);
  const demand = topology.vms.reduce((sum, v) => sum + v.memoryBytes, 0);
  assert.ok(demand < capacity, 'the rack can hold every VM');
});

test('loadTopology names the file when it cannot be read', () => {
  const missing = example('no-such-topology.yaml');
  assert.throws(
    () => loadTopology(missing),
    (error: unknown) =>
      error instanceof TopologyError &&
      error.line === undefined &&
      error.message === `${missing}: no such file`,
  );
  assert.throws(
    () => loadTopology(example('')),
    (error: unknown) => error instanceof TopologyError && /is a directory/.test(error.message),
  );
});

// --- YAML-level problems ---------------------------------------------------------------------------

test('YAML syntax errors name the line', () => {
  rejects(edit({ 9: '    source: { synthetic: { seed: 1 }' }), 10, undefined, /invalid YAML/);
  rejects(edit({ 8: '\tmemory: 64MiB' }), 8, undefined, /invalid YAML: Tabs/);
});

test('a duplicated key names its line and field', () => {
  rejects(edit({}, ['    memory: 128MiB']), 13, 'vms[1].memory', /duplicate key/);
  rejects(
    edit({
      4: '  - { name: t1, address: 127.0.0.1, port: 7411, port: 7419, role: target, memory: 1GiB, link: 1Gbit }',
    }),
    4,
    'hosts[1].port',
    /duplicate key/,
  );
});

test('empty, non-mapping and multi-document files are rejected', () => {
  rejects('', undefined, undefined, /empty/);
  rejects('# only a comment\n', undefined, undefined, /empty/);
  rejects('- a\n- b\n', 1, undefined, /expected a topology \(a mapping/);
  rejects(edit({}, ['---', 'hosts: []']), 13, undefined, /one YAML document/);
});

test('unknown tags are errors, not silently strings', () => {
  rejects(edit({ 8: '    memory: !bytes 64MiB' }), 8, undefined, /Unresolved tag/);
});

// --- Unknown keys and missing fields ---------------------------------------------------------------

test('unknown keys are rejected with a suggestion', () => {
  rejects(edit({}, ['hostz: []']), 13, 'hostz', /unknown key 'hostz' in a topology; did you mean 'hosts'\?/);
  rejects(
    edit({ 4: '  - { name: t1, address: 127.0.0.1, port: 7411, role: target, memroy: 1GiB, link: 1Gbit }' }),
    4,
    'hosts[1].memroy',
    /did you mean 'memory'\?.*allowed: name, address/,
  );
  rejects(edit({}, ['    maxvms: 3']), 13, 'vms[1].maxvms', /unknown key 'maxvms' in a VM/);
  rejects(
    edit({ 9: '    source: { synthetic: { seed: 1, zeroshare: 0.1 } }' }),
    9,
    'vms[0].source.synthetic.zeroshare',
    /did you mean 'zeroShare'\?/,
  );
  rejects(edit({ 1: 'multicast: { base: 239.255.42.0, groups: 16 }' }), 1, 'multicast.groups', /unknown key/);
});

test('missing required fields name the field and what belongs there', () => {
  rejects(
    edit({ 3: '  - { name: src, address: 127.0.0.1, port: 7410, role: source }' }),
    3,
    'hosts[0].link',
    /missing; expected a rate such as 1Gbit/,
  );
  rejects(
    edit({ 4: '  - { name: t1, address: 127.0.0.1, role: target, link: 1Gbit }' }),
    4,
    'hosts[1].memory',
    /missing; expected the guest memory/,
  );
  rejects(edit({ 8: [] }), 7, 'vms[0].memory', /missing; expected a size/);
  rejects(edit({ 9: [] }), 7, 'vms[0].source', /missing/);
  rejects(edit({ 7: '  - memory: 1GiB', 8: [] }), 7, 'vms[0].name', /missing/);
  rejects(
    edit({ 6: [], 7: [], 8: [], 9: [], 10: [], 11: [], 12: [] }),
    1,
    'vms',
    /missing; expected a list of VMs/,
  );
  rejects(edit({ 8: '    memory:' }), 8, 'vms[0].memory', /has no value/);
});

// --- Hosts -----------------------------------------------------------------------------------------

test('a bad link rate names the expected unit and the offending text', () => {
  rejects(
    edit({
      5: '  - { name: t2, address: 127.0.0.1, port: 7412, role: target, memory: 1GiB, link: 10 furlongs }',
    }),
    5,
    'hosts[2].link',
    /expected a rate such as 1Gbit or 800Mbit\/s, got '10 furlongs'$/,
  );
  rejects(
    edit({ 3: '  - { name: src, address: 127.0.0.1, port: 7410, role: source, link: 1000 }' }),
    3,
    'hosts[0].link',
    /needs a unit/,
  );
  rejects(
    edit({ 3: '  - { name: src, address: 127.0.0.1, port: 7410, role: source, link: 0Gbit }' }),
    3,
    'hosts[0].link',
    /more than zero/,
  );
});

test('bad host memory sizes are rejected', () => {
  const host = (memory: string): string =>
    edit({
      4: `  - { name: t1, address: 127.0.0.1, port: 7411, role: target, memory: ${memory}, link: 1Gbit }`,
    });
  rejects(host('4G'), 4, 'hosts[1].memory', /ambiguous: write 4GiB \(binary\) or 4GB \(decimal\)/);
  rejects(host('lots'), 4, 'hosts[1].memory', /expected a size such as 256MiB/);
  rejects(host('0'), 4, 'hosts[1].memory', /above zero/);
  rejects(host('-1GiB'), 4, 'hosts[1].memory', /expected a size/);
});

test('addresses must be IPv4 or IPv6', () => {
  for (const address of ['300.1.1.1', 'localhost', '10.0.0', '"::g"']) {
    rejects(
      edit({
        4: `  - { name: t1, address: ${address}, port: 7411, role: target, memory: 1GiB, link: 1Gbit }`,
      }),
      4,
      'hosts[1].address',
      /expected an IPv4 or IPv6 address/,
    );
  }
});

test('ports must be whole numbers from 1 to 65535', () => {
  for (const port of ['0', '65536', '7411.5', '"7411"', 'http']) {
    rejects(
      edit({
        4: `  - { name: t1, address: 127.0.0.1, port: ${port}, role: target, memory: 1GiB, link: 1Gbit }`,
      }),
      4,
      'hosts[1].port',
      /expected a port number from 1 to 65535/,
    );
  }
});

test('roles, names, maxVms and sites are checked', () => {
  rejects(
    edit({ 4: '  - { name: t1, address: 127.0.0.1, port: 7411, role: dest, memory: 1GiB, link: 1Gbit }' }),
    4,
    'hosts[1].role',
    /expected source or target, got 'dest'/,
  );
  rejects(
    edit({ 4: '  - { name: t 1, address: 127.0.0.1, port: 7411, role: target, memory: 1GiB, link: 1Gbit }' }),
    4,
    'hosts[1].name',
    /expected a name of letters/,
  );
  rejects(
    edit({ 4: '  - { name: 7, address: 127.0.0.1, port: 7411, role: target, memory: 1GiB, link: 1Gbit }' }),
    4,
    'hosts[1].name',
    /got number 7 \(quote it/,
  );
  rejects(
    edit({
      4: '  - { name: t1, address: 127.0.0.1, port: 7411, role: target, memory: 1GiB, maxVms: -1, link: 1Gbit }',
    }),
    4,
    'hosts[1].maxVms',
    /0 or more/,
  );
  rejects(
    edit({
      4: '  - { name: t1, address: 127.0.0.1, port: 7411, role: target, memory: 1GiB, link: 1Gbit, site: "" }',
    }),
    4,
    'hosts[1].site',
    /expected a name/,
  );
  rejects(
    edit({ 2: 'hosts: { src: 1 }', 3: [], 4: [], 5: [] }),
    2,
    'hosts',
    /expected a list of hosts, got a mapping/,
  );
  rejects(edit({ 3: '  - src' }), 3, 'hosts[0]', /expected a host \(a mapping of key: value\), got 'src'/);
});

test('host names must be unique', () => {
  rejects(
    edit({ 5: '  - { name: t1, address: 127.0.0.1, port: 7412, role: target, memory: 1GiB, link: 1Gbit }' }),
    5,
    'hosts[2].name',
    /host name 't1' is already used at hosts\[1\]\.name \(line 4\)/,
  );
});

test('two agents may not share an address and port', () => {
  rejects(
    edit({ 5: '  - { name: t2, address: 127.0.0.1, port: 7411, role: target, memory: 1GiB, link: 1Gbit }' }),
    5,
    'hosts[2].port',
    /127\.0\.0\.1 port 7411 is already used at hosts\[1\]\.port \(line 4\)/,
  );
});

test('exactly one source and at least one target', () => {
  rejects(
    edit({ 4: '  - { name: t1, address: 127.0.0.1, port: 7411, role: source, link: 1Gbit }' }),
    4,
    'hosts[1].role',
    /'t1' is a second source; hosts\[0\]\.role \(line 3\) already makes 'src' the source/,
  );
  rejects(
    edit({ 3: '  - { name: src, address: 127.0.0.1, port: 7410, role: target, memory: 1GiB, link: 1Gbit }' }),
    3,
    'hosts',
    /no host has role: source/,
  );
  rejects(edit({ 4: [], 5: [] }), 3, 'hosts', /at least one target/);
});

// --- Multicast -------------------------------------------------------------------------------------

test('the multicast base must be an IPv4 multicast address', () => {
  rejects(
    edit({ 1: 'multicast: { base: 10.0.0.1 }' }),
    1,
    'multicast.base',
    /10\.0\.0\.1 is not a multicast address/,
  );
  rejects(
    edit({ 1: 'multicast: { base: "ff02::1" }' }),
    1,
    'multicast.base',
    /expected an IPv4 multicast address/,
  );
  rejects(edit({ 1: 'multicast: { base: 240.0.0.1 }' }), 1, 'multicast.base', /not a multicast address/);
});

test('the multicast range must stay inside 224.0.0.0/4', () => {
  rejects(
    edit({ 1: ['multicast:', '  base: 239.255.255.250', '  size: 16'] }),
    3,
    'multicast.size',
    /16 groups from 239\.255\.255\.250 would run to 240\.0\.0\.9/,
  );
  const fits = parse(edit({ 1: 'multicast: { base: 239.255.255.240, size: 16 }' }));
  assert.deepEqual(fits.multicast, { base: '239.255.255.240', size: 16, port: 7420 });
  rejects(edit({ 1: 'multicast: { size: 0 }' }), 1, 'multicast.size', /at least 1/);
  rejects(edit({ 1: 'multicast: { port: 99999 }' }), 1, 'multicast.port', /port number/);
});

// --- VMs -------------------------------------------------------------------------------------------

test('VM memory must be a positive whole number of 4 KiB pages', () => {
  rejects(
    edit({ 8: '    memory: 1000000' }),
    8,
    'vms[0].memory',
    /not a whole number of 4 KiB pages.*1003520/,
  );
  rejects(edit({ 8: '    memory: 1MB' }), 8, 'vms[0].memory', /4 KiB pages/);
  rejects(edit({ 8: '    memory: 0' }), 8, 'vms[0].memory', /above zero/);
  rejects(edit({ 8: '    memory: 64 mib' }), 8, 'vms[0].memory', /did you mean MiB\?/);
});

test('VM names must be unique, including names made by count', () => {
  rejects(
    edit({ 10: '  - name: a' }),
    10,
    'vms[1].name',
    /VM name 'a' is already used at vms\[0\]\.name \(line 7\)/,
  );
  rejects(
    edit({ 7: ['  - name: b', '    count: 3'], 10: '  - name: b-2' }),
    11,
    'vms[1].name',
    /VM name 'b-2' is already used at vms\[0\]\.name \(line 7\), made by count: 3/,
  );
  rejects(edit({ 7: '  - name: "-a"' }), 7, 'vms[0].name', /starting with a letter or digit/);
});

test('count is a positive whole number and needs a synthetic source', () => {
  rejects(edit({ 7: ['  - name: a', '    count: 0'] }), 8, 'vms[0].count', /a count from 1 to 10000/);
  rejects(edit({ 10: ['  - name: b', '    count: 2'] }), 11, 'vms[1].count', /only with a synthetic source/);
});

test('a VM source is exactly one of synthetic, image, qemu or libvirt', () => {
  rejects(
    edit({ 12: '    source: {}' }),
    12,
    'vms[1].source',
    /exactly one of synthetic, image, qemu or libvirt, got none/,
  );
  rejects(
    edit({ 12: '    source: { image: b.raw, synthetic: {} }' }),
    12,
    'vms[1].source',
    /got image and synthetic/,
  );
  rejects(
    edit({ 12: '    source: { file: b.raw }' }),
    12,
    'vms[1].source.file',
    /unknown key 'file' in a VM source/,
  );
  rejects(edit({ 12: '    source: b.raw' }), 12, 'vms[1].source', /expected a VM source \(a mapping/);
  rejects(edit({ 12: '    source: { image: "" }' }), 12, 'vms[1].source.image', /path of a raw memory image/);
});

test('a qemu source needs a QMP path and a non-empty command', () => {
  rejects(
    edit({ 12: '    source: { qemu: { command: [qemu-system-x86_64] } }' }),
    12,
    'vms[1].source.qemu.qmp',
    /missing; expected the path of the VM's QMP unix socket/,
  );
  rejects(
    edit({ 12: '    source: { qemu: { qmp: q.sock, command: [] } }' }),
    12,
    'vms[1].source.qemu.command',
    /got an empty list/,
  );
  rejects(
    edit({ 12: '    source: { qemu: { qmp: q.sock, command: qemu-system-x86_64 -m 64 } }' }),
    12,
    'vms[1].source.qemu.command',
    /as a list of strings, got 'qemu-system-x86_64 -m 64'/,
  );
  rejects(
    edit({
      12: [
        '    source:',
        '      qemu:',
        '        qmp: q.sock',
        '        command:',
        '          - qemu',
        '          - 64',
      ],
    }),
    17,
    'vms[1].source.qemu.command[1]',
    /got number 64 \(quote it/,
  );
});

test('a libvirt domain: hosts name their libvirt; targets without one are left out of its placement', () => {
  const withLibvirt = (line: string) => line.replace(' }', ', libvirt: "qemu+tcp://10.0.0.9/system" }');
  const topology = parse(
    edit({
      3: withLibvirt(BASE[2]!),
      4: withLibvirt(BASE[3]!),
      12: '    source: { libvirt: { domain: web-1 } }',
    }),
  );
  assert.equal(topology.hosts[0]!.libvirt, 'qemu+tcp://10.0.0.9/system');
  assert.equal(topology.hosts[2]!.libvirt, undefined);
  assert.deepEqual(vm(topology, 'b').source, { kind: 'libvirt', domain: 'web-1' });
  assert.deepEqual(vm(topology, 'b').excludedTargets, ['t2'], 't2 has no libvirt');
  assert.deepEqual(vm(topology, 'a').excludedTargets, [], 'an image VM goes anywhere');

  rejects(
    edit({ 4: withLibvirt(BASE[3]!), 12: '    source: { libvirt: { domain: web-1 } }' }),
    12,
    'vms[1].source',
    /the source host 'src' has no libvirt: URI/,
  );
  rejects(
    edit({ 3: withLibvirt(BASE[2]!), 12: '    source: { libvirt: { domain: web-1 } }' }),
    12,
    'vms[1].source',
    /no target it may go to has a libvirt: URI/,
  );
  rejects(
    edit({
      3: withLibvirt(BASE[2]!),
      4: withLibvirt(BASE[3]!),
      12: ['    source: { libvirt: { domain: web-1 } }', '    target: t2'],
    }),
    13,
    'vms[1].target',
    /'t2' has no libvirt: URI, so it cannot take a libvirt domain/,
  );
  rejects(
    edit({
      3: withLibvirt(BASE[2]!),
      4: withLibvirt(BASE[3]!),
      12: '    source: { libvirt: { domain: "web 1" } }',
    }),
    12,
    'vms[1].source.libvirt.domain',
    /the domain's name at the source's libvirt/,
  );
  rejects(
    edit({
      3: '  - { name: src, address: 127.0.0.1, port: 7410, role: source, link: 1Gbit, libvirt: "qemu system" }',
    }),
    3,
    'hosts[0].libvirt',
    /expected the host's libvirt URI/,
  );
});

test('synthetic shares lie in [0, 1] and total at most 1', () => {
  rejects(
    edit({ 9: '    source: { synthetic: { zeroShare: 1.5 } }' }),
    9,
    'vms[0].source.synthetic.zeroShare',
    /share from 0 to 1/,
  );
  rejects(
    edit({ 9: '    source: { synthetic: { osShare: high } }' }),
    9,
    'vms[0].source.synthetic.osShare',
    /got 'high'/,
  );
  rejects(
    edit({ 9: ['    source:', '      synthetic:', '        zeroShare: 0.5', '        osShare: 0.6'] }),
    11,
    'vms[0].source.synthetic',
    /shares add up to 1\.17 \(zeroShare 0\.5 \+ osShare 0\.6 \+ commonShare 0\.05 \+ duplicateShare 0\.02\); they may total at most 1/,
  );
  rejects(
    edit({ 9: '    source: { synthetic: { seed: -1 } }' }),
    9,
    'vms[0].source.synthetic.seed',
    /seed from 0 to 4294967295/,
  );
  rejects(
    edit({ 9: '    source: { synthetic: { family: "" } }' }),
    9,
    'vms[0].source.synthetic.family',
    /expected a name/,
  );
});

test('pins and exclusions must name existing targets and agree', () => {
  rejects(
    edit({}, ['    target: t3']),
    13,
    'vms[1].target',
    /no target host named 't3'; did you mean 't1'\? \(targets: t1, t2\)/,
  );
  rejects(
    edit({}, ['    target: src']),
    13,
    'vms[1].target',
    /'src' is the source host; expected a target \(t1, t2\)/,
  );
  rejects(edit({}, ['    exclude: [t1, nope]']), 13, 'vms[1].exclude[1]', /no target host named 'nope'/);
  rejects(edit({}, ['    target: t1', '    exclude: [t2, t1]']), 14, 'vms[1].exclude[1]', /pinned target/);
  rejects(edit({}, ['    exclude: [t1, t2]']), 13, 'vms[1].exclude', /excludes every target \(t1, t2\)/);
  rejects(
    edit({}, ['    exclude: t1']),
    13,
    'vms[1].exclude',
    /expected a list of target host names, got 't1'/,
  );
});

test('a job needs at least one VM', () => {
  rejects(edit({ 6: 'vms: []', 7: [], 8: [], 9: [], 10: [], 11: [], 12: [] }), 6, 'vms', /no VMs/);
});

// --- Limits --------------------------------------------------------------------------------------

/** Lines 7-12 (the VMs) replaced by one anchored VM `a` at line 7, then `extra`. */
function anchoredVm(extra: readonly string[]): string {
  return edit(
    {
      7: '  - &a { name: a, memory: 64MiB, source: { synthetic: {} } }',
      8: [],
      9: [],
      10: [],
      11: [],
      12: [],
    },
    extra,
  );
}

function assertTopologyError(action: () => unknown, check: (error: TopologyError) => void): void {
  assert.throws(action, (error: unknown) => {
    assert.ok(error instanceof TopologyError, `expected a TopologyError, got ${String(error)}`);
    assert.equal(error.code, 'VMS_TOPOLOGY');
    assert.equal(error.exitCode, 2);
    check(error);
    return true;
  });
}

test('an alias resolves to the last anchor of its name before it', () => {
  const topology = parse(
    edit({
      9: '    source: &s { synthetic: { family: debian } }',
      10: ['  - name: c', '    memory: 64MiB', '    source: *s', '  - name: b'],
      12: [
        '    source: &s { synthetic: { family: alpine } }',
        '  - name: d',
        '    memory: 64MiB',
        '    source: *s',
      ],
    }),
  );
  const family = (name: string): string => {
    const source = vm(topology, name).source;
    return source.kind === 'synthetic' ? source.model.family : source.kind;
  };
  assert.deepEqual(['a', 'c', 'b', 'd'].map(family), ['debian', 'debian', 'alpine', 'alpine']);
});

test('an alias with no anchor before it, or inside what it refers to, is named at its line', () => {
  rejects(edit({ 12: '    source: *img' }), 12, undefined, /alias \*img has no anchor &img before it/);
  rejects(
    edit({ 12: '    source: *img' }, [
      '  - name: c',
      '    memory: 64MiB',
      '    source: &img { image: c.raw }',
    ]),
    12,
    undefined,
    /alias \*img has no anchor &img before it/,
  );
  rejects(
    edit({}, ['    exclude: &x [t1, *x]']),
    13,
    undefined,
    /alias \*x is inside the value it refers to/,
  );
});

test('20,000 aliases are refused at the first past the limit of 10000, without resolving each', () => {
  // Each `*a` once walked the whole document: this 140 KB file took two minutes to be rejected.
  const text = anchoredVm(Array.from({ length: 20_000 }, () => '  - *a'));
  rejects(
    text,
    7 + 10_001,
    undefined,
    /the topology has 20000 aliases \(this is number 10001\); the limit is 10000$/,
  );
});

test('aliases may not expand the topology past the limit of 500000 values', () => {
  // 100,000 command arguments, read again through every alias to them: a small file, a large job.
  const command = `&cmd [${Array.from({ length: 100_000 }, () => 'x').join(', ')}]`;
  const aliased = ['c1', 'c2', 'c3', 'c4', 'c5'].flatMap((name) => [
    `  - name: ${name}`,
    '    memory: 64MiB',
    '    source: { qemu: { qmp: q.sock, command: *cmd } }',
  ]);
  const text = edit({ 12: `    source: { qemu: { qmp: q.sock, command: ${command} } }` }, aliased);
  const aliasLines = aliased.flatMap((line, index) => (line.includes('*cmd') ? [13 + index] : []));
  assertTopologyError(
    () => parse(text),
    (error) => {
      assert.match(
        error.message,
        /more than 500000 YAML values \(with aliases expanded\); the limit is 500000$/,
      );
      assert.ok(error.line !== undefined && aliasLines.includes(error.line), error.message);
    },
  );
});

test('text with more scalars than the value limit is refused before it is parsed', () => {
  const text = edit({}, [`    exclude: [${Array.from({ length: 500_001 }, () => 't1').join(',')}]`]);
  rejects(
    text,
    undefined,
    undefined,
    /more than 500000 YAML values \(with aliases expanded\); the limit is 500000$/,
  );
});

test('a topology over 4 MiB is refused by its size, before it is read or parsed', () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, 'big.yaml');
    writeFileSync(path, edit({}));
    truncateSync(path, 4 * MiB + 1); // valid YAML, then NULs: only the size is wrong
    assertTopologyError(
      () => loadTopology(path),
      (error) => {
        assert.equal(error.line, undefined);
        assert.equal(
          error.message,
          `${path}: the file is 4194305 bytes; the limit for a topology is 4194304 bytes (4 MiB)`,
        );
      },
    );
  } finally {
    cleanup();
  }
  rejects(
    `${edit({})}#${'-'.repeat(4 * MiB)}\n`,
    undefined,
    undefined,
    /^\S+: the file is \d+ bytes; the limit for a topology is 4194304 bytes \(4 MiB\)$/,
  );
});

test('a file that reports no size is read only up to the limit', { skip: !existsSync('/dev/zero') }, () => {
  assertTopologyError(
    () => loadTopology('/dev/zero'),
    (error) => assert.match(error.message, /^\/dev\/zero: the file has more than 4194304 bytes; the limit/),
  );
});

test('more than 10000 VMs are refused naming the limit and the count, before any is read', () => {
  const entries = Array.from(
    { length: 15 },
    (_, i) => `  - { name: v${i}, count: 10000, memory: 64MiB, source: { synthetic: {} } }`,
  );
  // A mistake in an entry past the limit is not reached: the count comes first.
  const text = edit({ 7: [], 8: [], 9: [], 10: [], 11: [], 12: [] }, [
    ...entries,
    '  - { name: bad, memory: 1 }',
  ]);
  rejects(
    text,
    7,
    'vms',
    /^\S+ vms: the topology has 150001 VMs \(from 16 entries, counting each count:\); the limit is 10000$/,
  );
  rejects(
    edit({ 7: ['  - name: a', '    count: 9999'] }, [
      '  - name: c',
      '    memory: 64MiB',
      '    source: { synthetic: {} }',
    ]),
    7,
    'vms',
    /the topology has 10001 VMs \(from 3 entries, counting each count:\); the limit is 10000$/,
  );
  const atLimit = parse(edit({ 7: ['  - name: a', '    count: 9999'] }));
  assert.equal(atLimit.vms.length, 10_000);
});

test('more than 1000 targets are refused naming the limit and the count', () => {
  const targets = (n: number): string[] =>
    Array.from(
      { length: n },
      (_, i) =>
        `  - { name: t${i}, address: 127.0.0.1, port: ${10_000 + i}, role: target, memory: 1GiB, link: 1Gbit }`,
    );
  rejects(
    edit({ 4: targets(1_001), 5: [] }),
    3,
    'hosts',
    /^\S+ hosts: the topology has 1001 targets; the limit is 1000$/,
  );
  assert.equal(parse(edit({ 4: targets(1_000), 5: [] }, ['    exclude: [t0]'])).hosts.length, 1_001);
});

// --- Properties ------------------------------------------------------------------------------------

function onlyTopologyErrors(text: string): void {
  try {
    parse(text);
  } catch (error) {
    if (!(error instanceof TopologyError)) throw error;
    assert.ok(error.line === undefined || (error.line >= 1 && error.line <= text.split('\n').length + 1));
  }
}

test('property: any text either loads or fails with a TopologyError', () => {
  fc.assert(fc.property(fc.string({ unit: 'binary' }), onlyTopologyErrors), { numRuns: 300 });
  fc.assert(
    fc.property(fc.jsonValue(), (value) => onlyTopologyErrors(JSON.stringify(value))),
    { numRuns: 300 },
  );
});

test('property: any single line replaced by junk fails cleanly at a sensible line', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: BASE.length }),
      fc.string({ unit: 'grapheme-ascii', maxLength: 40 }),
      (line, junk) => onlyTopologyErrors(edit({ [line]: junk })),
    ),
    { numRuns: 500 },
  );
});
