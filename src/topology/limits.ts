/**
 * The bounds on a topology file. Within them loading costs time and memory linear in the file's size;
 * beyond them a file is refused with a TopologyError naming the limit and what was found, before the
 * work it would cost is done: a generated file with a runaway loop or an alias bomb must not take
 * minutes and gigabytes to be rejected. Each is set far above real use; src/topology/README.md and the
 * README list them.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { CST, Lexer } from 'yaml';
import { TopologyError } from '../errors.js';
import { readProblem } from './yaml-fields.js';

/**
 * Bytes of topology text. Checked against the file's size before it is read and again while reading
 * (a pipe or device reports no size, and a file can grow). 4 MiB holds MAX_VMS VMs written out one by
 * one with a QEMU command each (about 400 bytes a VM, as in topologies/lab-4.yaml); synthetic VMs take
 * far less with `count:`.
 */
export const MAX_TOPOLOGY_BYTES = 4 * 1024 * 1024;

/**
 * VMs in one job, counting each `count:` entry as that many. One source host runs at most a few hundred
 * guests; ten thousand leaves ample room for synthetic jobs (bench:placement's largest has 500).
 */
export const MAX_VMS = 10_000;

/**
 * Target hosts. The coordinator keeps a control connection to each and the source's link is saturated
 * by a few dozen; a thousand is far past any useful fan-out from one source.
 */
export const MAX_TARGETS = 1_000;

/**
 * YAML aliases (`*name`). Aliases let VMs share a block (a source, an exclude list); one per VM is
 * already more than a real file uses, and `count:` is the way to write many alike VMs.
 */
export const MAX_ALIASES = 10_000;

/**
 * YAML values (scalars, lists, mappings, keys included) with each alias counted as the size of what it
 * refers to: the work of validating the file, and what bounds the parse's memory (the `yaml` document
 * tree takes about 1 KB per value). Without it a few aliases to one long list would make a small file
 * cost as much as a huge one. MAX_VMS VMs written out with a QEMU command each are about 340,000.
 */
export const MAX_EXPANDED_NODES = 500_000;

/** Reading stops at most one chunk past the limit, whatever the file turns out to be. */
const READ_CHUNK = 64 * 1024;

/** A topology file's text, refused by its size before a byte is read when the size is too large. */
export function readBoundedText(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    throw new TopologyError(path, undefined, undefined, readProblem(error));
  }
  try {
    const size = fstatSync(fd).size;
    if (size > MAX_TOPOLOGY_BYTES) throw tooLarge(path, `is ${size} bytes`);
    // Bounded all the same: a pipe or device reports size 0, and a file can grow meanwhile.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(READ_CHUNK);
      const read = readSync(fd, chunk, 0, READ_CHUNK, null);
      if (read === 0) break;
      chunks.push(chunk.subarray(0, read));
      total += read;
      if (total > MAX_TOPOLOGY_BYTES) throw tooLarge(path, `has more than ${MAX_TOPOLOGY_BYTES} bytes`);
    }
    return Buffer.concat(chunks, total).toString('utf8');
  } catch (error) {
    if (error instanceof TopologyError) throw error;
    throw new TopologyError(path, undefined, undefined, readProblem(error));
  } finally {
    closeSync(fd);
  }
}

const SCALAR_TOKENS: ReadonlySet<string | null> = new Set([
  'scalar',
  'single-quoted-scalar',
  'double-quoted-scalar',
]);

/**
 * Checks text against the limits before it is parsed: its size, and its count of scalars (a lower
 * bound of its values), which the lexer finds in a fraction of the time and none of the memory of a
 * parse: a 4 MiB file of one-letter list items would otherwise build a 2 GB tree first.
 */
export function checkTextBounds(text: string, file: string): void {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_TOPOLOGY_BYTES) throw tooLarge(file, `is ${bytes} bytes`);
  let scalars = 0;
  for (const token of new Lexer().lex(text)) {
    if (SCALAR_TOKENS.has(CST.tokenType(token)) && ++scalars > MAX_EXPANDED_NODES) {
      throw new TopologyError(file, undefined, undefined, tooManyValues());
    }
  }
}

export function tooManyValues(): string {
  return `the topology has more than ${MAX_EXPANDED_NODES} YAML values (with aliases expanded); the limit is ${MAX_EXPANDED_NODES}`;
}

function tooLarge(file: string, found: string): TopologyError {
  return new TopologyError(
    file,
    undefined,
    undefined,
    `the file ${found}; the limit for a topology is ${MAX_TOPOLOGY_BYTES} bytes (4 MiB)`,
  );
}
