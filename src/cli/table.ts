/**
 * Renders rows as a plain text table. `align` has one letter per column, 'l' or 'r' (default: the
 * first column left, the rest right, as for a name followed by numbers).
 */
export function renderTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  align = 'l'.padEnd(header.length, 'r'),
): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, c) => (align[c] === 'r' ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

export function percent(part: number, whole: number): string {
  return whole === 0 ? '-' : `${((100 * part) / whole).toFixed(1)}%`;
}

/** A path as the user would type it: relative to the working directory when that is shorter. */
export function displayPath(path: string, cwd = process.cwd()): string {
  const prefix = cwd.endsWith('/') ? cwd : `${cwd}/`;
  return path.startsWith(prefix) ? path.slice(prefix.length) : path;
}
