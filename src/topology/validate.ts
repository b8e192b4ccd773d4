/**
 * The per-section validators of a topology file: the multicast range, the hosts (exactly one source,
 * at least one target, unique names and endpoints) and the VMs with their sources, pins, exclusions
 * and the `count` shorthand. Each reads from the document through ./yaml-fields.ts and fails with a
 * TopologyError at the first problem.
 */
import { isIP, isIPv4 } from 'node:net';
import { DEFAULT_AGENT_PORT, DEFAULT_MULTICAST, DEFAULT_SITE, SYNTHETIC_DEFAULTS } from './defaults.js';
import type { Host, HostRole, MulticastRange, SyntheticModelSpec, Vm, VmSource } from './model.js';
import { MAX_TARGETS, MAX_VMS } from './limits.js';
import { RATE_EXPECTED, SIZE_EXPECTED } from './units.js';
import {
  checkUnique,
  closest,
  describe,
  fail,
  isNull,
  MAX_NAME_LENGTH,
  NAME_EXPECTED,
  optional,
  peek,
  readInteger,
  readList,
  readMap,
  readName,
  readPath,
  readPort,
  readRate,
  readShare,
  readSize,
  readString,
  required,
  scalar,
  where,
  type Ctx,
  type Field,
  type Place,
} from './yaml-fields.js';

const PAGE_BYTES = 4096;
/** One entry may make up to the whole job's limit of VMs. */
const MAX_COUNT = MAX_VMS;
/** 224.0.0.0/4. */
const MULTICAST_FIRST = 0xe0000000;
const MULTICAST_LAST = 0xefffffff;
/** Shares are decimals written by people; 0.3 + 0.4 + 0.2 + 0.1 must not fail on rounding. */
const SHARE_TOLERANCE = 1e-9;

// ---------------------------------------------------------------------------------------------------
// Multicast

function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((value, octet) => value * 256 + Number(octet), 0);
}

function numberToIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

export function readMulticast(ctx: Ctx, at: Field): MulticastRange {
  const entries = readMap(ctx, at, 'the multicast range', ['base', 'size', 'port']);
  const baseField = optional(ctx, entries, 'base');
  const sizeField = optional(ctx, entries, 'size');
  const portField = optional(ctx, entries, 'port');
  const base = baseField === undefined ? DEFAULT_MULTICAST.base : readMulticastBase(ctx, baseField);
  const size =
    sizeField === undefined
      ? DEFAULT_MULTICAST.size
      : readInteger(
          ctx,
          sizeField,
          1,
          MULTICAST_LAST - MULTICAST_FIRST + 1,
          'a number of groups, at least 1',
        );
  const port = portField === undefined ? DEFAULT_MULTICAST.port : readPort(ctx, portField);
  const last = ipv4ToNumber(base) + size - 1;
  if (last > MULTICAST_LAST) {
    fail(
      ctx,
      sizeField ?? baseField ?? at,
      `${size} groups from ${base} would run to ${numberToIpv4(last)}, past 239.255.255.255, the end of the IPv4 multicast range`,
    );
  }
  return { base, size, port };
}

function readMulticastBase(ctx: Ctx, at: Field): string {
  const expected = 'an IPv4 multicast address (224.0.0.0 to 239.255.255.255, e.g. 239.255.42.0)';
  const value = readString(ctx, at, expected);
  if (!isIPv4(value)) fail(ctx, at, `expected ${expected}, got ${describe(ctx, at.node)}`);
  const number = ipv4ToNumber(value);
  if (number < MULTICAST_FIRST || number > MULTICAST_LAST) {
    fail(ctx, at, `${value} is not a multicast address; expected ${expected}`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------------
// Hosts

const HOST_KEYS = ['name', 'address', 'port', 'role', 'memory', 'maxVms', 'link', 'site', 'libvirt'] as const;

interface ReadHost {
  readonly host: Host;
  readonly nameField: Field;
  readonly roleField: Field;
  /** Where to point when two agents share an address and port. */
  readonly endpointField: Field;
}

/** Hosts in file order, plus what VM pins and exclusions are checked against. */
export interface Hosts {
  readonly list: readonly Host[];
  readonly source: Host;
  readonly targetNames: readonly string[];
}

export function readHosts(ctx: Ctx, at: Field): Hosts {
  const items = readList(ctx, at, 'a list of hosts');
  const targets = items.filter((item) => peek(ctx, item, 'role') === 'target').length;
  if (targets > MAX_TARGETS) {
    fail(ctx, at, `the topology has ${targets} targets; the limit is ${MAX_TARGETS}`);
  }
  const read = items.map((item) => readHost(ctx, item));
  checkUnique(
    ctx,
    read.map((h) => ({ key: h.host.name, field: h.nameField })),
    (duplicate, first) => `host name '${duplicate.key}' is already used at ${where(first.field)}`,
  );
  checkUnique(
    ctx,
    read.map((h) => ({ key: `${h.host.address} port ${h.host.port}`, field: h.endpointField })),
    (duplicate, first) =>
      `${duplicate.key} is already used at ${where(first.field)}; give each host's agent its own address or port`,
  );
  const sources = read.filter((h) => h.host.role === 'source');
  const [source, second] = sources;
  if (source === undefined) fail(ctx, at, 'no host has role: source; exactly one host must be the source');
  if (second !== undefined) {
    fail(
      ctx,
      second.roleField,
      `'${second.host.name}' is a second source; ${where(source.roleField)} already makes '${source.host.name}' the source, and exactly one host may have role: source`,
    );
  }
  const targetNames = read.filter((h) => h.host.role === 'target').map((h) => h.host.name);
  if (targetNames.length === 0) fail(ctx, at, 'no host has role: target; at least one target is needed');
  return { list: read.map((h) => h.host), source: source.host, targetNames };
}

function readHost(ctx: Ctx, at: Field): ReadHost {
  const entries = readMap(ctx, at, 'a host', HOST_KEYS);
  const nameField = required(ctx, entries, 'name', NAME_EXPECTED);
  const name = readName(ctx, nameField);
  const addressField = required(ctx, entries, 'address', 'an IPv4 or IPv6 address such as 10.0.0.2');
  const address = readString(ctx, addressField, 'an IPv4 or IPv6 address such as 10.0.0.2');
  if (isIP(address) === 0) {
    fail(ctx, addressField, `expected an IPv4 or IPv6 address such as 10.0.0.2 or fd00::2, got '${address}'`);
  }
  const portField = optional(ctx, entries, 'port');
  const port = portField === undefined ? DEFAULT_AGENT_PORT : readPort(ctx, portField);
  const roleField = required(ctx, entries, 'role', 'source or target');
  const role = readRole(ctx, roleField);
  const memoryField =
    role === 'target'
      ? required(ctx, entries, 'memory', 'the guest memory this target can take, e.g. 64GiB')
      : optional(ctx, entries, 'memory');
  const memoryBytes = memoryField === undefined ? 0 : readSize(ctx, memoryField);
  if (role === 'target' && memoryBytes === 0 && memoryField !== undefined) {
    fail(ctx, memoryField, 'a target needs memory for guests; expected a size above zero, e.g. 64GiB');
  }
  const maxVmsField = optional(ctx, entries, 'maxVms');
  const maxVms =
    maxVmsField === undefined
      ? Number.POSITIVE_INFINITY
      : readInteger(ctx, maxVmsField, 0, Number.MAX_SAFE_INTEGER, 'a whole number of VMs, 0 or more');
  const link = readRate(ctx, required(ctx, entries, 'link', RATE_EXPECTED));
  const siteField = optional(ctx, entries, 'site');
  const site = siteField === undefined ? DEFAULT_SITE : readName(ctx, siteField);
  const libvirtField = optional(ctx, entries, 'libvirt');
  const libvirt = libvirtField === undefined ? undefined : readLibvirtUri(ctx, libvirtField);
  const host: Host = {
    name,
    address,
    port,
    role,
    memoryBytes,
    maxVms,
    linkBitsPerSecond: link,
    site,
    ...(libvirt === undefined ? {} : { libvirt }),
  };
  return { host, nameField, roleField, endpointField: portField ?? addressField };
}

const LIBVIRT_EXPECTED =
  "the host's libvirt URI as the source's libvirt reaches it, e.g. qemu+tcp://10.0.0.3/system";

function readLibvirtUri(ctx: Ctx, at: Field): string {
  const uri = readString(ctx, at, LIBVIRT_EXPECTED);
  // virsh takes it as one argument: no whitespace, and a driver scheme such as qemu or qemu+tcp.
  if (!/^[a-z][a-z0-9+]*:\/\/[^\s]*$/.test(uri)) fail(ctx, at, `expected ${LIBVIRT_EXPECTED}, got '${uri}'`);
  return uri;
}

function readRole(ctx: Ctx, at: Field): HostRole {
  const value = scalar(ctx, at);
  if (value === 'source' || value === 'target') return value;
  return fail(ctx, at, `expected source or target, got ${describe(ctx, at.node)}`);
}

// ---------------------------------------------------------------------------------------------------
// VMs

const VM_KEYS = ['name', 'count', 'memory', 'source', 'target', 'exclude'] as const;
const SYNTHETIC_KEYS = ['seed', 'family', 'zeroShare', 'osShare', 'commonShare', 'duplicateShare'] as const;
const SHARE_KEYS = ['zeroShare', 'osShare', 'commonShare', 'duplicateShare'] as const;

interface ReadVm {
  readonly vm: Vm;
  readonly nameField: Place;
  /** The entry's count when this VM was made by one, for messages. */
  readonly count: number | undefined;
}

export function readVms(ctx: Ctx, at: Field, hosts: Hosts, baseDir: string, mayBeEmpty = false): Vm[] {
  const items = readList(ctx, at, 'a list of VMs');
  if (items.length === 0 && !mayBeEmpty) fail(ctx, at, 'no VMs; list at least one VM to migrate');
  // Counted before any entry is read, so a file over the limit costs no per-VM work.
  const total = items.reduce((sum, item) => sum + countOf(ctx, item), 0);
  if (total > MAX_VMS) {
    const made = total === items.length ? '' : ` (from ${items.length} entries, counting each count:)`;
    fail(ctx, at, `the topology has ${total} VMs${made}; the limit is ${MAX_VMS}`);
  }
  const read = items.flatMap((item) => readVmEntry(ctx, item, hosts, baseDir));
  checkUnique(
    ctx,
    read.map((r) => ({ key: r.vm.name, field: r.nameField, count: r.count })),
    (duplicate, first) => {
      const made = duplicate.count === undefined ? '' : ` (made by count: ${duplicate.count})`;
      const firstMade = first.count === undefined ? '' : `, made by count: ${first.count}`;
      return `VM name '${duplicate.key}'${made} is already used at ${where(first.field)}${firstMade}`;
    },
  );
  return read.map((r) => r.vm);
}

/** How many VMs an entry makes; 1 when its count is invalid, which reading the entry reports. */
function countOf(ctx: Ctx, item: Field): number {
  const count = peek(ctx, item, 'count');
  return typeof count === 'number' && Number.isInteger(count) && count >= 1 && count <= MAX_COUNT ? count : 1;
}

/** One list entry: a VM, or with `count: n` the VMs name-1 .. name-n. */
function readVmEntry(ctx: Ctx, at: Field, hosts: Hosts, baseDir: string): ReadVm[] {
  const entries = readMap(ctx, at, 'a VM', VM_KEYS);
  const countField = optional(ctx, entries, 'count');
  const count =
    countField === undefined
      ? undefined
      : readInteger(ctx, countField, 1, MAX_COUNT, `a count from 1 to ${MAX_COUNT}`);
  const nameField = required(ctx, entries, 'name', NAME_EXPECTED);
  const suffixLength = count === undefined ? 0 : `-${count}`.length;
  const name = readName(ctx, nameField, MAX_NAME_LENGTH - suffixLength);
  const memoryBytes = readVmMemory(ctx, required(ctx, entries, 'memory', SIZE_EXPECTED));
  const sourceField = required(ctx, entries, 'source', 'one of synthetic, image, qemu or libvirt');
  const source = readSource(ctx, sourceField, baseDir);
  if (countField !== undefined && source.kind !== 'synthetic') {
    fail(
      ctx,
      countField,
      'count works only with a synthetic source: each image, qemu or libvirt VM needs its own',
    );
  }
  const targetField = optional(ctx, entries, 'target');
  const fixedTarget = targetField === undefined ? undefined : readTargetName(ctx, targetField, hosts);
  const excludeField = optional(ctx, entries, 'exclude');
  const excludedTargets =
    excludeField === undefined ? [] : readExclusions(ctx, excludeField, hosts, fixedTarget);
  if (source.kind === 'libvirt')
    checkLibvirtHosts(ctx, sourceField, targetField, hosts, fixedTarget, excludedTargets);
  const names = count === undefined ? [name] : Array.from({ length: count }, (_, i) => `${name}-${i + 1}`);
  return names.map((vmName, index) => ({
    vm: {
      name: vmName,
      memoryBytes,
      source: source.make(vmName, index),
      ...(fixedTarget === undefined ? {} : { fixedTarget }),
      excludedTargets,
    },
    nameField,
    count,
  }));
}

/**
 * A libvirt domain moves from the source's libvirt to a target's: the source must have one, and
 * targets without one are left out of its placement (a pinned one is an error).
 */
function checkLibvirtHosts(
  ctx: Ctx,
  sourceField: Field,
  targetField: Field | undefined,
  hosts: Hosts,
  fixedTarget: string | undefined,
  excludedTargets: string[],
): void {
  if (hosts.source.libvirt === undefined)
    fail(
      ctx,
      sourceField,
      `a libvirt domain, but the source host '${hosts.source.name}' has no libvirt: URI`,
    );
  const without = hosts.list.filter((h) => h.role === 'target' && h.libvirt === undefined).map((h) => h.name);
  if (fixedTarget !== undefined && without.includes(fixedTarget))
    fail(ctx, targetField!, `'${fixedTarget}' has no libvirt: URI, so it cannot take a libvirt domain`);
  for (const name of without) if (!excludedTargets.includes(name)) excludedTargets.push(name);
  if (excludedTargets.length === hosts.targetNames.length)
    fail(ctx, sourceField, 'a libvirt domain, but no target it may go to has a libvirt: URI');
}

function readVmMemory(ctx: Ctx, at: Field): number {
  const bytes = readSize(ctx, at);
  if (bytes <= 0) fail(ctx, at, 'a VM needs memory; expected a size above zero, e.g. 256MiB');
  if (bytes % PAGE_BYTES !== 0) {
    const pages = Math.ceil(bytes / PAGE_BYTES);
    fail(
      ctx,
      at,
      `${bytes} bytes is not a whole number of 4 KiB pages; use a multiple of 4096 such as ${pages * PAGE_BYTES} (${pages} pages)`,
    );
  }
  return bytes;
}

function readTargetName(ctx: Ctx, at: Field, hosts: Hosts): string {
  const name = readString(ctx, at, 'the name of a target host');
  if (hosts.targetNames.includes(name)) return name;
  if (name === hosts.source.name) {
    fail(ctx, at, `'${name}' is the source host; expected a target (${hosts.targetNames.join(', ')})`);
  }
  const guess = closest(name, hosts.targetNames);
  const hint = guess === undefined ? '' : `did you mean '${guess}'? `;
  return fail(ctx, at, `no target host named '${name}'; ${hint}(targets: ${hosts.targetNames.join(', ')})`);
}

function readExclusions(ctx: Ctx, at: Field, hosts: Hosts, fixedTarget: string | undefined): string[] {
  const excluded: string[] = [];
  for (const item of readList(ctx, at, 'a list of target host names')) {
    const name = readTargetName(ctx, item, hosts);
    if (name === fixedTarget) {
      fail(ctx, item, `'${name}' is this VM's pinned target; a VM cannot be pinned to a target it excludes`);
    }
    if (!excluded.includes(name)) excluded.push(name);
  }
  if (excluded.length === hosts.targetNames.length) {
    fail(ctx, at, `excludes every target (${excluded.join(', ')}); no host could take this VM`);
  }
  return excluded;
}

/** The parsed source, and how to make each VM's copy of it (seeds differ per VM under `count`). */
interface SourceMaker {
  readonly kind: VmSource['kind'];
  readonly make: (vmName: string, index: number) => VmSource;
}

function readSource(ctx: Ctx, at: Field, baseDir: string): SourceMaker {
  const entries = readMap(ctx, at, 'a VM source', ['synthetic', 'image', 'qemu', 'libvirt']);
  const given = [...entries.fields];
  const [first] = given;
  if (first === undefined || given.length > 1) {
    const got = given.length === 0 ? 'none' : given.map(([key]) => key).join(' and ');
    fail(ctx, at, `expected exactly one of synthetic, image, qemu or libvirt, got ${got}`);
  }
  const [kind, field] = first;
  if (kind === 'image') {
    const path = readPath(ctx, field, baseDir, 'the path of a raw memory image file');
    return { kind, make: () => ({ kind, path }) };
  }
  if (kind === 'qemu') {
    const qemu = readQemu(ctx, field, baseDir);
    return { kind, make: () => ({ kind, ...qemu }) };
  }
  if (kind === 'libvirt') {
    const domain = readLibvirtDomain(ctx, field);
    return { kind, make: () => ({ kind, domain }) };
  }
  const synthetic = readSynthetic(ctx, field);
  return {
    kind: 'synthetic',
    make: (vmName, index) => ({
      kind: 'synthetic',
      model: {
        seed: synthetic.seed === undefined ? fnv1a(vmName) : (synthetic.seed + index) >>> 0,
        ...synthetic.spec,
      },
    }),
  };
}

function readQemu(ctx: Ctx, at: Field, baseDir: string): { qmp: string; command: string[] } {
  const entries = readMap(ctx, at, 'a qemu source', ['qmp', 'command']);
  const qmpExpected = "the path of the VM's QMP unix socket";
  const qmp = readPath(ctx, required(ctx, entries, 'qmp', qmpExpected), baseDir, qmpExpected);
  const commandExpected = 'the command line that starts the destination qemu, as a list of strings';
  const commandField = required(ctx, entries, 'command', commandExpected);
  const command = readList(ctx, commandField, commandExpected).map((item) =>
    readString(ctx, item, 'a non-empty command-line argument'),
  );
  if (command.length === 0) fail(ctx, commandField, `expected ${commandExpected}, got an empty list`);
  return { qmp, command };
}

/** A libvirt domain name vmscatter takes (agents check it again before they attach to one). */
export const DOMAIN_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const DOMAIN_EXPECTED = "the domain's name at the source's libvirt (letters, digits, '.', '_', '-')";

function readLibvirtDomain(ctx: Ctx, at: Field): string {
  const entries = readMap(ctx, at, 'a libvirt source', ['domain']);
  const field = required(ctx, entries, 'domain', DOMAIN_EXPECTED);
  const domain = readString(ctx, field, DOMAIN_EXPECTED);
  if (!DOMAIN_NAME.test(domain)) fail(ctx, field, `expected ${DOMAIN_EXPECTED}, got '${domain}'`);
  return domain;
}

function readSynthetic(
  ctx: Ctx,
  at: Field,
): { readonly seed: number | undefined; readonly spec: Omit<SyntheticModelSpec, 'seed'> } {
  // `synthetic:` with no value means "all defaults".
  if (isNull(ctx, at.node)) return { seed: undefined, spec: SYNTHETIC_DEFAULTS };
  const entries = readMap(ctx, at, 'a synthetic model', SYNTHETIC_KEYS);
  const seedField = optional(ctx, entries, 'seed');
  const seed =
    seedField === undefined
      ? undefined
      : readInteger(ctx, seedField, 0, 0xffffffff, 'a seed from 0 to 4294967295');
  const familyField = optional(ctx, entries, 'family');
  const family = familyField === undefined ? SYNTHETIC_DEFAULTS.family : readName(ctx, familyField);
  const shares = { ...SYNTHETIC_DEFAULTS };
  for (const key of SHARE_KEYS) {
    const field = optional(ctx, entries, key);
    if (field !== undefined) shares[key] = readShare(ctx, field);
  }
  const total = SHARE_KEYS.reduce((sum, key) => sum + shares[key], 0);
  if (total > 1 + SHARE_TOLERANCE) {
    const terms = SHARE_KEYS.map((key) => `${key} ${shares[key]}`).join(' + ');
    fail(
      ctx,
      at,
      `shares add up to ${Number(total.toFixed(6))} (${terms}); they may total at most 1, the rest being private pages`,
    );
  }
  return { seed, spec: { ...shares, family } };
}

/** 32-bit FNV-1a: a stable default seed, so two runs of one topology generate the same guests. */
function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  return hash;
}
