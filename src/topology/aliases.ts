/**
 * YAML aliases, resolved once for the whole document. Aliases stay allowed (VMs may share a source or
 * an exclude list through `&name` / `*name`), but the `yaml` library's Alias.resolve walks the whole
 * document on every call: reading a file of n aliases cost n walks, and 20,000 `- *a` lines took two
 * minutes to be rejected. One walk here, in the library's order (an alias refers to the last anchor of
 * its name before it), maps every alias to its node, and enforces ./limits.ts: the alias count, and the
 * size of the document with each alias counted as what it refers to, since that is what the
 * validators will read.
 */
import { isAlias, isMap, isNode, isSeq, type Alias, type Node } from 'yaml';
import { TopologyError } from '../errors.js';
import { MAX_ALIASES, MAX_EXPANDED_NODES, tooManyValues } from './limits.js';
import { nodeLine, type ParsedFile } from './yaml-fields.js';

/**
 * Counting stops here: past the limit the exact figure does not matter, and nested aliases could
 * otherwise double it per level up to Infinity.
 */
const COUNT_CAP = MAX_EXPANDED_NODES + 1;

type Step = { readonly node: unknown } | { readonly anchored: Node; readonly start: number };

/** Maps each alias of the document to its anchored node, or fails naming the line. */
export function resolveAliases(parsed: ParsedFile): ReadonlyMap<Alias, Node> {
  function fail(node: Node, problem: string): never {
    throw new TopologyError(parsed.file, nodeLine(parsed, node), undefined, problem);
  }
  const anchors = new Map<string, Node>();
  const targets = new Map<Alias, Node>();
  /** Expanded size of each anchored node whose subtree has been walked. */
  const sizes = new Map<Node, number>();
  /** Anchored nodes being walked: an alias to one of them would make the document contain itself. */
  const open = new Set<Node>();
  let expanded = 0;
  let overAt: Node | undefined;
  let extraAlias: Alias | undefined;
  const count = (n: number, node: Node): void => {
    expanded = Math.min(expanded + n, COUNT_CAP);
    if (expanded > MAX_EXPANDED_NODES && overAt === undefined) overAt = node;
  };
  // An explicit stack: a document nested thousands deep must not overflow the call stack.
  const stack: Step[] = [{ node: parsed.doc.contents }];
  for (let step = stack.pop(); step !== undefined; step = stack.pop()) {
    if ('anchored' in step) {
      open.delete(step.anchored);
      sizes.set(step.anchored, expanded - step.start);
      continue;
    }
    const node = step.node;
    if (!isNode(node)) continue;
    if (isAlias(node)) {
      const target = anchors.get(node.source);
      if (target === undefined) {
        fail(node, `alias *${node.source} has no anchor &${node.source} before it`);
      }
      if (open.has(target)) {
        fail(node, `alias *${node.source} is inside the value it refers to`);
      }
      targets.set(node, target);
      if (targets.size === MAX_ALIASES + 1) extraAlias = node;
      count(sizes.get(target) ?? 0, node);
      continue;
    }
    const start = expanded;
    count(1, node);
    if (node.anchor !== undefined) {
      anchors.set(node.anchor, node);
      open.add(node);
      stack.push({ anchored: node, start });
    }
    // Children pushed last-first, so they are taken in document order (keys before their values).
    if (isMap(node)) {
      for (let i = node.items.length - 1; i >= 0; i--) {
        const pair = node.items[i];
        stack.push({ node: pair?.value }, { node: pair?.key });
      }
    } else if (isSeq(node)) {
      for (let i = node.items.length - 1; i >= 0; i--) stack.push({ node: node.items[i] });
    }
  }
  if (extraAlias !== undefined) {
    fail(
      extraAlias,
      `the topology has ${targets.size} aliases (this is number ${MAX_ALIASES + 1}); the limit is ${MAX_ALIASES}`,
    );
  }
  if (overAt !== undefined) fail(overAt, tooManyValues());
  return targets;
}
