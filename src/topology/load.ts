/**
 * Reads a topology/job file (YAML) into the validated, unit-normalised Topology of ./model.ts.
 *
 * Every problem becomes a TopologyError naming file, line and field path (`hosts[2].link`) and saying
 * what was expected, so a user can fix the file without reading this code. The first problem found is
 * reported. Unknown keys are errors: a misspelt optional key (`maxVm: 4`) would otherwise be ignored
 * and the default used without anyone noticing.
 *
 * Shape (see topologies/*.yaml for complete files):
 *
 *   multicast: { base: 239.255.42.0, size: 16, port: 7420 }   # optional; these are the defaults
 *   hosts:
 *     - { name: src, address: 10.0.0.1, port: 7411, role: source, link: 1Gbit }
 *     - { name: t1, address: 10.0.0.2, role: target, memory: 64GiB, maxVms: 8, link: 10Gbit, site: rack-a }
 *   vms:
 *     - name: web-1
 *       memory: 256MiB
 *       source: { synthetic: { family: debian } }        # or { image: path } or { qemu: { qmp, command } }
 *       target: t1                                        # optional pin
 *       exclude: [t2]                                     # optional
 *     - name: db        # `count: 3` makes db-1, db-2, db-3 (synthetic sources only)
 *       count: 3
 *       memory: 4GiB
 *       source: { synthetic: { family: alpine, seed: 100 } }  # with count, seeds 100, 101, 102
 *
 * Defaults: host port 7411, site 'default', maxVms unlimited (Infinity), source memory 0.
 * Synthetic model defaults (a typical small Linux guest): seed = FNV-1a hash of the VM name, family
 * 'default', zeroShare 0.3, osShare 0.4, commonShare 0.05, duplicateShare 0.02.
 * Relative image and QMP socket paths are resolved against the topology file's directory, so a
 * topology and its images can move together.
 */
import { readFileSync } from 'node:fs';
import { isIP, isIPv4 } from 'node:net';
import { dirname, resolve } from 'node:path';
import {
  isAlias,
  isMap,
  isNode,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type Document,
  type YAMLError,
} from 'yaml';
import { TopologyError } from '../errors.js';
import type { Host, HostRole, MulticastRange, SyntheticModelSpec, Topology, Vm, VmSource } from './model.js';
import { parseRate, parseSize, RATE_EXPECTED, SIZE_EXPECTED } from './units.js';

export const DEFAULT_AGENT_PORT = 7411;
export const DEFAULT_SITE = 'default';
export const DEFAULT_MULTICAST: MulticastRange = Object.freeze({
  base: '239.255.42.0',
  size: 16,
  port: 7420,
});
/** Shared by every VM that takes them, hence frozen. */
export const SYNTHETIC_DEFAULTS: Omit<SyntheticModelSpec, 'seed'> = Object.freeze({
  family: 'default',
  zeroShare: 0.3,
  osShare: 0.4,
  commonShare: 0.05,
  duplicateShare: 0.02,
});

const PAGE_BYTES = 4096;
const MAX_COUNT = 10_000;
/** Names end up in log lines, file names and network-namespace names: keep them to a safe alphabet. */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MAX_NAME_LENGTH = 63;
const NAME_EXPECTED = `a name of letters, digits, '.', '_' or '-' (starting with a letter or digit, at most ${MAX_NAME_LENGTH} characters)`;
/** 224.0.0.0/4. */
const MULTICAST_FIRST = 0xe0000000;
const MULTICAST_LAST = 0xefffffff;
/** Shares are decimals written by people; 0.3 + 0.4 + 0.2 + 0.1 must not fail on rounding. */
const SHARE_TOLERANCE = 1e-9;

/** Reads and validates a topology file. Throws TopologyError (never a raw fs or YAML error). */
export function loadTopology(path: string): Topology {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new TopologyError(path, undefined, undefined, readProblem(error));
  }
  return parseTopology(text, path);
}

/**
 * Validates topology text. `file` names the source in messages and anchors relative paths; pure
 * otherwise (no file system access).
 */
export function parseTopology(text: string, file: string): Topology {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const ctx: Ctx = { file, lines, doc };
  const yamlProblem = doc.errors[0] ?? doc.warnings[0];
  if (yamlProblem !== undefined) throw yamlError(ctx, yamlProblem);
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    fail(ctx, { path: '', line: undefined }, 'the file is empty; expected a mapping with hosts: and vms:');
  }
  const root = readMap(
    ctx,
    { node: doc.contents, path: '', line: nodeLine(ctx, doc.contents) ?? 1 },
    'a topology',
    ['multicast', 'hosts', 'vms'],
  );
  const multicastField = optional(ctx, root, 'multicast');
  const multicast = multicastField === undefined ? DEFAULT_MULTICAST : readMulticast(ctx, multicastField);
  const hosts = readHosts(ctx, required(ctx, root, 'hosts', 'a list of hosts'));
  const vms = readVms(ctx, required(ctx, root, 'vms', 'a list of VMs'), hosts, dirname(file));
  return { file, hosts: hosts.list, multicast, vms };
}

// ---------------------------------------------------------------------------------------------------
// Document access: every value travels with its field path and line so any check can report them.

interface Ctx {
  readonly file: string;
  readonly lines: LineCounter;
  readonly doc: Document.Parsed;
}

/** A value in the document, with the path and line to name when it is wrong. */
interface Field {
  readonly node: unknown;
  readonly path: string;
  readonly line: number | undefined;
}

interface Entries {
  readonly at: Field;
  readonly fields: ReadonlyMap<string, Field>;
}

function fail(ctx: Ctx, at: Pick<Field, 'path' | 'line'>, problem: string): never {
  throw new TopologyError(ctx.file, at.line, at.path === '' ? undefined : at.path, problem);
}

function lineAt(ctx: Ctx, offset: number): number {
  return ctx.lines.linePos(offset).line;
}

function nodeLine(ctx: Ctx, node: unknown): number | undefined {
  return isNode(node) && node.range ? lineAt(ctx, node.range[0]) : undefined;
}

function deref(ctx: Ctx, node: unknown): unknown {
  return isAlias(node) ? node.resolve(ctx.doc) : node;
}

function isNull(ctx: Ctx, node: unknown): boolean {
  const resolved = deref(ctx, node);
  return resolved === null || resolved === undefined || (isScalar(resolved) && resolved.value === null);
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function readMap(ctx: Ctx, at: Field, what: string, allowed: readonly string[]): Entries {
  const node = deref(ctx, at.node);
  if (!isMap(node)) fail(ctx, at, `expected ${what} (a mapping of key: value), got ${describe(ctx, node)}`);
  const fields = new Map<string, Field>();
  for (const pair of node.items) {
    const key = deref(ctx, pair.key);
    const keyLine = nodeLine(ctx, key) ?? at.line;
    if (!isScalar(key) || typeof key.value !== 'string') {
      fail(ctx, { path: at.path, line: keyLine }, `keys must be names, got ${describe(ctx, key)}`);
    }
    const path = join(at.path, key.value);
    if (!allowed.includes(key.value)) {
      fail(ctx, { path, line: keyLine }, unknownKeyProblem(key.value, what, allowed));
    }
    const line = isNull(ctx, pair.value) ? keyLine : (nodeLine(ctx, pair.value) ?? keyLine);
    fields.set(key.value, { node: pair.value, path, line });
  }
  return { at, fields };
}

/** The field, or undefined when absent or written without a value (`target:`). */
function optional(ctx: Ctx, entries: Entries, key: string): Field | undefined {
  const field = entries.fields.get(key);
  return field === undefined || isNull(ctx, field.node) ? undefined : field;
}

function required(ctx: Ctx, entries: Entries, key: string, expected: string): Field {
  const field = entries.fields.get(key);
  if (field === undefined) {
    fail(ctx, { path: join(entries.at.path, key), line: entries.at.line }, `missing; expected ${expected}`);
  }
  if (isNull(ctx, field.node)) fail(ctx, field, `has no value; expected ${expected}`);
  return field;
}

function readList(ctx: Ctx, at: Field, expected: string): Field[] {
  const node = deref(ctx, at.node);
  if (!isSeq(node)) fail(ctx, at, `expected ${expected}, got ${describe(ctx, node)}`);
  return node.items.map((item, index) => ({
    node: item,
    path: `${at.path}[${index}]`,
    line: nodeLine(ctx, item) ?? at.line,
  }));
}

function scalar(ctx: Ctx, at: Field): unknown {
  const node = deref(ctx, at.node);
  return isScalar(node) ? node.value : node;
}

function describe(ctx: Ctx, node: unknown): string {
  const resolved = deref(ctx, node);
  if (isMap(resolved)) return 'a mapping';
  if (isSeq(resolved)) return 'a list';
  const value = isScalar(resolved) ? resolved.value : resolved;
  if (value === null || value === undefined) return 'nothing';
  if (typeof value === 'string') return `'${value.length > 40 ? `${value.slice(0, 40)}…` : value}'`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return `${typeof value} ${String(value)}`;
  }
  return 'an unsupported value';
}

function readString(ctx: Ctx, at: Field, expected: string): string {
  const value = scalar(ctx, at);
  if (typeof value === 'string' && value.trim() !== '') return value;
  const hint = typeof value === 'number' || typeof value === 'boolean' ? ` (quote it to make it text)` : '';
  return fail(ctx, at, `expected ${expected}, got ${describe(ctx, at.node)}${hint}`);
}

function readName(ctx: Ctx, at: Field, maxLength = MAX_NAME_LENGTH): string {
  const value = readString(ctx, at, NAME_EXPECTED);
  if (!NAME_PATTERN.test(value) || value.length > maxLength) {
    fail(ctx, at, `expected ${NAME_EXPECTED}, got ${describe(ctx, at.node)}`);
  }
  return value;
}

function readInteger(ctx: Ctx, at: Field, min: number, max: number, expected: string): number {
  const value = scalar(ctx, at);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(ctx, at, `expected ${expected}, got ${describe(ctx, at.node)}`);
  }
  return value;
}

function readPort(ctx: Ctx, at: Field): number {
  return readInteger(ctx, at, 1, 65535, 'a port number from 1 to 65535');
}

function readShare(ctx: Ctx, at: Field): number {
  const value = scalar(ctx, at);
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) {
    fail(ctx, at, `expected a share from 0 to 1 (e.g. 0.3), got ${describe(ctx, at.node)}`);
  }
  return value;
}

function readSize(ctx: Ctx, at: Field): number {
  const value = scalar(ctx, at);
  const parsed = typeof value === 'string' || typeof value === 'number' ? parseSize(value) : undefined;
  if (typeof parsed === 'number') return parsed;
  return fail(ctx, at, parsed ?? `expected ${SIZE_EXPECTED}, got ${describe(ctx, at.node)}`);
}

function readRate(ctx: Ctx, at: Field): number {
  const value = scalar(ctx, at);
  const parsed = typeof value === 'string' || typeof value === 'number' ? parseRate(value) : undefined;
  if (typeof parsed === 'number' && parsed > 0) return parsed;
  if (typeof parsed === 'number') return fail(ctx, at, 'a link rate must be more than zero');
  return fail(ctx, at, parsed ?? `expected ${RATE_EXPECTED}, got ${describe(ctx, at.node)}`);
}

function readPath(ctx: Ctx, at: Field, baseDir: string, expected: string): string {
  return resolve(baseDir, readString(ctx, at, expected));
}

function unknownKeyProblem(key: string, what: string, allowed: readonly string[]): string {
  const guess = closest(key, allowed);
  const hint = guess === undefined ? '' : `did you mean '${guess}'? `;
  return `unknown key '${key}' in ${what}; ${hint}(allowed: ${allowed.join(', ')})`;
}

/** The option within a typo's reach of `word`, compared case-insensitively. */
function closest(word: string, options: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const option of options) {
    const distance = editDistance(word.toLowerCase(), option.toLowerCase());
    if (distance < bestDistance) {
      best = option;
      bestDistance = distance;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

function yamlError(ctx: Ctx, error: YAMLError): TopologyError {
  const line = lineAt(ctx, error.pos[0]);
  if (error.code === 'DUPLICATE_KEY') {
    const path = keyPathAt(ctx, ctx.doc.contents, '', error.pos[0]);
    return new TopologyError(
      ctx.file,
      line,
      path,
      'duplicate key: each key may appear only once in a mapping',
    );
  }
  if (error.code === 'MULTIPLE_DOCS') {
    return new TopologyError(
      ctx.file,
      line,
      undefined,
      'a topology file holds one YAML document; remove the ---',
    );
  }
  return new TopologyError(ctx.file, line, undefined, `invalid YAML: ${error.message}`);
}

/** Path of the mapping key starting at `offset`, to name the field of a duplicate key. */
function keyPathAt(ctx: Ctx, node: unknown, path: string, offset: number): string | undefined {
  if (isMap(node)) {
    for (const pair of node.items) {
      const name = isScalar(pair.key) ? String(pair.key.value) : '?';
      if (isNode(pair.key) && pair.key.range?.[0] === offset) return join(path, name);
      const inner = keyPathAt(ctx, pair.value, join(path, name), offset);
      if (inner !== undefined) return inner;
    }
  } else if (isSeq(node)) {
    for (const [index, item] of node.items.entries()) {
      const inner = keyPathAt(ctx, item, `${path}[${index}]`, offset);
      if (inner !== undefined) return inner;
    }
  }
  return undefined;
}

function readProblem(error: unknown): string {
  const code = error instanceof Error && 'code' in error ? String(error.code) : undefined;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory; expected a topology YAML file';
  return `cannot read: ${error instanceof Error ? error.message : String(error)}`;
}

// ---------------------------------------------------------------------------------------------------
// Multicast

function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((value, octet) => value * 256 + Number(octet), 0);
}

function numberToIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

function readMulticast(ctx: Ctx, at: Field): MulticastRange {
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

const HOST_KEYS = ['name', 'address', 'port', 'role', 'memory', 'maxVms', 'link', 'site'] as const;

interface ReadHost {
  readonly host: Host;
  readonly nameField: Field;
  readonly roleField: Field;
  /** Where to point when two agents share an address and port. */
  readonly endpointField: Field;
}

/** Hosts in file order, plus what VM pins and exclusions are checked against. */
interface Hosts {
  readonly list: readonly Host[];
  readonly source: Host;
  readonly targetNames: readonly string[];
}

function readHosts(ctx: Ctx, at: Field): Hosts {
  const read = readList(ctx, at, 'a list of hosts').map((item) => readHost(ctx, item));
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
  const host: Host = { name, address, port, role, memoryBytes, maxVms, linkBitsPerSecond: link, site };
  return { host, nameField, roleField, endpointField: portField ?? addressField };
}

function readRole(ctx: Ctx, at: Field): HostRole {
  const value = scalar(ctx, at);
  if (value === 'source' || value === 'target') return value;
  return fail(ctx, at, `expected source or target, got ${describe(ctx, at.node)}`);
}

type Place = Pick<Field, 'path' | 'line'>;

function where(place: Place): string {
  return place.line === undefined ? place.path : `${place.path} (line ${place.line})`;
}

/** Fails at the second occurrence of a key, pointing back at the first. */
function checkUnique<T extends { readonly key: string; readonly field: Place }>(
  ctx: Ctx,
  items: readonly T[],
  problem: (duplicate: T, first: T) => string,
): void {
  const seen = new Map<string, T>();
  for (const item of items) {
    const first = seen.get(item.key);
    if (first !== undefined) fail(ctx, item.field, problem(item, first));
    seen.set(item.key, item);
  }
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

function readVms(ctx: Ctx, at: Field, hosts: Hosts, baseDir: string): Vm[] {
  const items = readList(ctx, at, 'a list of VMs');
  if (items.length === 0) fail(ctx, at, 'no VMs; list at least one VM to migrate');
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
  const sourceField = required(ctx, entries, 'source', 'one of synthetic, image or qemu');
  const source = readSource(ctx, sourceField, baseDir);
  if (countField !== undefined && source.kind !== 'synthetic') {
    fail(
      ctx,
      countField,
      'count works only with a synthetic source: each image or qemu VM needs its own file',
    );
  }
  const targetField = optional(ctx, entries, 'target');
  const fixedTarget = targetField === undefined ? undefined : readTargetName(ctx, targetField, hosts);
  const excludeField = optional(ctx, entries, 'exclude');
  const excludedTargets =
    excludeField === undefined ? [] : readExclusions(ctx, excludeField, hosts, fixedTarget);
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
  const entries = readMap(ctx, at, 'a VM source', ['synthetic', 'image', 'qemu']);
  const given = [...entries.fields];
  const [first] = given;
  if (first === undefined || given.length > 1) {
    const got = given.length === 0 ? 'none' : given.map(([key]) => key).join(' and ');
    fail(ctx, at, `expected exactly one of synthetic, image or qemu, got ${got}`);
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
