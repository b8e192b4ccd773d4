import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

/**
 * No import circles among src/'s modules: a page's walk from source memory to target memory goes down
 * the layers (docs/ARCHITECTURE.md) without turning back. Folder-level rules are eslint's
 * (eslint.config.js); this checks what they cannot, two files of one folder importing each other.
 */
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? sources(join(dir, entry.name))
      : entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')
        ? [join(dir, entry.name)]
        : [],
  );
}

/** Relative imports of a module, type-only ones included (they tie the modules' designs together). */
export function importsOf(text: string): string[] {
  return [...text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)].map((m) => m[1]!);
}

/** Strongly connected components of more than one module (Tarjan). */
export function circles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let index = 0;
  const order = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (node: string) => {
    order.set(node, index);
    low.set(node, index++);
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!order.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (onStack.has(next)) low.set(node, Math.min(low.get(node)!, order.get(next)!));
    }
    if (low.get(node) === order.get(node)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const node of graph.keys()) if (!order.has(node)) visit(node);
  return found;
}

test('import graph: the circle finder finds a circle and passes a chain', () => {
  const chain = new Map([
    ['a', ['b']],
    ['b', ['c']],
    ['c', []],
  ]);
  assert.deepEqual(circles(chain), []);
  chain.set('c', ['a']);
  assert.deepEqual(circles(chain), [['a', 'b', 'c']]);
  assert.deepEqual(importsOf(`import type { X } from './x.js';\nconst y = await import('../y/z.js');`), [
    './x.js',
    '../y/z.js',
  ]);
});

test('import graph: no two modules of src/ import each other, directly or around a circle', () => {
  const files = sources(root);
  const graph = new Map(
    files.map((file) => [
      relative(root, file),
      importsOf(readFileSync(file, 'utf8')).map((spec) =>
        relative(root, resolve(dirname(file), spec).replace(/\.js$/, '.ts')),
      ),
    ]),
  );
  assert.ok(graph.size > 50, `found only ${graph.size} modules under ${root}`);
  assert.deepEqual(circles(graph), []);
});
