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
 *
 * Anchors and aliases (`source: &debian {...}`, then `source: *debian`) may share a block between
 * entries. Limits (./limits.ts, each far above real use): 4 MiB of text, 10,000 VMs (a `count:` entry
 * counts as that many), 1,000 targets, 10,000 aliases, 500,000 YAML values with aliases expanded.
 */
import { dirname } from 'node:path';
import { isScalar, LineCounter, parseDocument } from 'yaml';
import { DEFAULT_MULTICAST } from './defaults.js';
import { resolveAliases } from './aliases.js';
import { checkTextBounds, readBoundedText } from './limits.js';
import type { Topology } from './model.js';
import { readHosts, readMulticast, readVms } from './validate.js';
import { fail, nodeLine, optional, readMap, required, yamlError, type Ctx } from './yaml-fields.js';

export { DEFAULT_AGENT_PORT, DEFAULT_MULTICAST, DEFAULT_SITE, SYNTHETIC_DEFAULTS } from './defaults.js';

/** Reads and validates a topology file. Throws TopologyError (never a raw fs or YAML error). */
export function loadTopology(path: string): Topology {
  return parseTopology(readBoundedText(path), path);
}

/**
 * Validates topology text. `file` names the source in messages and anchors relative paths; pure
 * otherwise (no file system access).
 */
export function parseTopology(text: string, file: string): Topology {
  checkTextBounds(text, file);
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const parsed = { file, lines, doc };
  const yamlProblem = doc.errors[0] ?? doc.warnings[0];
  if (yamlProblem !== undefined) throw yamlError(parsed, yamlProblem);
  const ctx: Ctx = { ...parsed, aliases: resolveAliases(parsed) };
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
  // Hosts with a libvirt bring their running domains (libvirt/inventory.ts): the list may be left out.
  const libvirtHosts = hosts.list.some((h) => h.libvirt !== undefined);
  const vmsField = libvirtHosts ? optional(ctx, root, 'vms') : required(ctx, root, 'vms', 'a list of VMs');
  const vms = vmsField === undefined ? [] : readVms(ctx, vmsField, hosts, dirname(file), libvirtHosts);
  return { file, hosts: hosts.list, multicast, vms };
}
