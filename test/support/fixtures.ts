import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PAGE_SIZE } from '../../src/memory/page.js';
import type { SyntheticModelSpec } from '../../src/topology/model.js';

/** Repository root, from the compiled test file's place in dist/test/<dir>/. */
export const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * The CLI's arguments for `scatter` of a test job in many small multicast rounds: every round gets a
 * session of its own however small (the tests that use it are about rounds).
 */
export function roundsScatterArgs(topology: string, dir: string): string[] {
  return [
    join(repoRoot, 'dist/src/cli/main.js'),
    ...['scatter', '--topology', topology, '--work-dir', dir, '--json'],
    ...['--round-pages', '512', '--unicast-below-ms', '0'],
  ];
}

export function spec(
  seed: number,
  family: string,
  overrides: Partial<SyntheticModelSpec> = {},
): SyntheticModelSpec {
  return {
    seed,
    family,
    zeroShare: 0.3,
    osShare: 0.4,
    commonShare: 0.05,
    duplicateShare: 0.02,
    ...overrides,
  };
}

/** A temporary directory removed by the returned cleanup, failure or not (call it in t.after). */
export function tempDir(prefix = 'vmscatter-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Writes an image whose page i holds pattern(i) in its first byte (0 = a zero page) and returns its path. */
export function writeImage(dir: string, name: string, firstBytes: readonly number[]): string {
  const bytes = new Uint8Array(firstBytes.length * PAGE_SIZE);
  firstBytes.forEach((value, i) => {
    bytes[i * PAGE_SIZE] = value;
    bytes[i * PAGE_SIZE + PAGE_SIZE - 1] = value; // touch both ends of the page
  });
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

export { livePagesFile as storePagesFile } from '../../src/store/template-store.js';
