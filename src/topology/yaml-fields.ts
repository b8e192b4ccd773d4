/**
 * Document access for the topology reader: every value travels with its field path and line, so any
 * check can report them in a TopologyError. Also the scalar readers (names, numbers, sizes, rates,
 * paths), YAML-error translation and the "did you mean" suggestions for misspelt keys and names.
 */
import { resolve } from 'node:path';
import {
  isAlias,
  isMap,
  isNode,
  isScalar,
  isSeq,
  type Alias,
  type Document,
  type LineCounter,
  type Node,
  type YAMLError,
} from 'yaml';
import { TopologyError } from '../errors.js';
import { parseRate, parseSize, RATE_EXPECTED, SIZE_EXPECTED } from './units.js';

/** Names end up in log lines, file names and network-namespace names: keep them to a safe alphabet. */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
export const MAX_NAME_LENGTH = 63;
export const NAME_EXPECTED = `a name of letters, digits, '.', '_' or '-' (starting with a letter or digit, at most ${MAX_NAME_LENGTH} characters)`;

/** A parsed file: enough to name lines, before its aliases are resolved. */
export interface ParsedFile {
  readonly file: string;
  readonly lines: LineCounter;
  readonly doc: Document.Parsed;
}

export interface Ctx extends ParsedFile {
  /** Every alias's node, resolved once by ./aliases.ts. */
  readonly aliases: ReadonlyMap<Alias, Node>;
}

/** A value in the document, with the path and line to name when it is wrong. */
export interface Field {
  readonly node: unknown;
  readonly path: string;
  readonly line: number | undefined;
}

export interface Entries {
  readonly at: Field;
  readonly fields: ReadonlyMap<string, Field>;
}

export function fail(ctx: Ctx, at: Pick<Field, 'path' | 'line'>, problem: string): never {
  throw new TopologyError(ctx.file, at.line, at.path === '' ? undefined : at.path, problem);
}

function lineAt(ctx: ParsedFile, offset: number): number {
  return ctx.lines.linePos(offset).line;
}

export function nodeLine(ctx: ParsedFile, node: unknown): number | undefined {
  return isNode(node) && node.range ? lineAt(ctx, node.range[0]) : undefined;
}

/** Never Alias.resolve: it walks the whole document per call (./aliases.ts says why that matters). */
function deref(ctx: Ctx, node: unknown): unknown {
  return isAlias(node) ? ctx.aliases.get(node) : node;
}

export function isNull(ctx: Ctx, node: unknown): boolean {
  const resolved = deref(ctx, node);
  return resolved === null || resolved === undefined || (isScalar(resolved) && resolved.value === null);
}

export function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

export function readMap(ctx: Ctx, at: Field, what: string, allowed: readonly string[]): Entries {
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

/**
 * The plain value under `key` when `at` is a mapping that has it, else undefined. Never fails: it
 * serves to count entries against a limit before any of them is validated.
 */
export function peek(ctx: Ctx, at: Field, key: string): unknown {
  const node = deref(ctx, at.node);
  if (!isMap(node)) return undefined;
  for (const pair of node.items) {
    const name = deref(ctx, pair.key);
    if (isScalar(name) && name.value === key) {
      const value = deref(ctx, pair.value);
      return isScalar(value) ? value.value : undefined;
    }
  }
  return undefined;
}

/** The field, or undefined when absent or written without a value (`target:`). */
export function optional(ctx: Ctx, entries: Entries, key: string): Field | undefined {
  const field = entries.fields.get(key);
  return field === undefined || isNull(ctx, field.node) ? undefined : field;
}

export function required(ctx: Ctx, entries: Entries, key: string, expected: string): Field {
  const field = entries.fields.get(key);
  if (field === undefined) {
    fail(ctx, { path: join(entries.at.path, key), line: entries.at.line }, `missing; expected ${expected}`);
  }
  if (isNull(ctx, field.node)) fail(ctx, field, `has no value; expected ${expected}`);
  return field;
}

export function readList(ctx: Ctx, at: Field, expected: string): Field[] {
  const node = deref(ctx, at.node);
  if (!isSeq(node)) fail(ctx, at, `expected ${expected}, got ${describe(ctx, node)}`);
  return node.items.map((item, index) => ({
    node: item,
    path: `${at.path}[${index}]`,
    line: nodeLine(ctx, item) ?? at.line,
  }));
}

export function scalar(ctx: Ctx, at: Field): unknown {
  const node = deref(ctx, at.node);
  return isScalar(node) ? node.value : node;
}

export function describe(ctx: Ctx, node: unknown): string {
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

export function readString(ctx: Ctx, at: Field, expected: string): string {
  const value = scalar(ctx, at);
  if (typeof value === 'string' && value.trim() !== '') return value;
  const hint = typeof value === 'number' || typeof value === 'boolean' ? ` (quote it to make it text)` : '';
  return fail(ctx, at, `expected ${expected}, got ${describe(ctx, at.node)}${hint}`);
}

export function readName(ctx: Ctx, at: Field, maxLength = MAX_NAME_LENGTH): string {
  const value = readString(ctx, at, NAME_EXPECTED);
  if (!NAME_PATTERN.test(value) || value.length > maxLength) {
    fail(ctx, at, `expected ${NAME_EXPECTED}, got ${describe(ctx, at.node)}`);
  }
  return value;
}

export function readInteger(ctx: Ctx, at: Field, min: number, max: number, expected: string): number {
  const value = scalar(ctx, at);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(ctx, at, `expected ${expected}, got ${describe(ctx, at.node)}`);
  }
  return value;
}

export function readPort(ctx: Ctx, at: Field): number {
  return readInteger(ctx, at, 1, 65535, 'a port number from 1 to 65535');
}

export function readShare(ctx: Ctx, at: Field): number {
  const value = scalar(ctx, at);
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) {
    fail(ctx, at, `expected a share from 0 to 1 (e.g. 0.3), got ${describe(ctx, at.node)}`);
  }
  return value;
}

export function readSize(ctx: Ctx, at: Field): number {
  const value = scalar(ctx, at);
  const parsed = typeof value === 'string' || typeof value === 'number' ? parseSize(value) : undefined;
  if (typeof parsed === 'number') return parsed;
  return fail(ctx, at, parsed ?? `expected ${SIZE_EXPECTED}, got ${describe(ctx, at.node)}`);
}

export function readRate(ctx: Ctx, at: Field): number {
  const value = scalar(ctx, at);
  const parsed = typeof value === 'string' || typeof value === 'number' ? parseRate(value) : undefined;
  if (typeof parsed === 'number' && parsed > 0) return parsed;
  if (typeof parsed === 'number') return fail(ctx, at, 'a link rate must be more than zero');
  return fail(ctx, at, parsed ?? `expected ${RATE_EXPECTED}, got ${describe(ctx, at.node)}`);
}

export function readPath(ctx: Ctx, at: Field, baseDir: string, expected: string): string {
  return resolve(baseDir, readString(ctx, at, expected));
}

function unknownKeyProblem(key: string, what: string, allowed: readonly string[]): string {
  const guess = closest(key, allowed);
  const hint = guess === undefined ? '' : `did you mean '${guess}'? `;
  return `unknown key '${key}' in ${what}; ${hint}(allowed: ${allowed.join(', ')})`;
}

/** The option within a typo's reach of `word`, compared case-insensitively. */
export function closest(word: string, options: readonly string[]): string | undefined {
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

export function yamlError(ctx: ParsedFile, error: YAMLError): TopologyError {
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
function keyPathAt(ctx: ParsedFile, node: unknown, path: string, offset: number): string | undefined {
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

export function readProblem(error: unknown): string {
  const code = error instanceof Error && 'code' in error ? String(error.code) : undefined;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory; expected a topology YAML file';
  return `cannot read: ${error instanceof Error ? error.message : String(error)}`;
}

export type Place = Pick<Field, 'path' | 'line'>;

export function where(place: Place): string {
  return place.line === undefined ? place.path : `${place.path} (line ${place.line})`;
}

/** Fails at the second occurrence of a key, pointing back at the first. */
export function checkUnique<T extends { readonly key: string; readonly field: Place }>(
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
