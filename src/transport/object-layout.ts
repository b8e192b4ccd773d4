/**
 * How an object is cut into symbols and blocks. Symbols are `symbolSize` bytes; the last symbol of an
 * object is zero-padded for the erasure code and the padding dropped on delivery. Block b holds source
 * symbols [b*k, min((b+1)*k, symbolCount)).
 */
export interface ObjectLayout {
  readonly length: number;
  readonly symbolSize: number;
  readonly blockSymbols: number;
  readonly symbolCount: number;
  readonly blockCount: number;
}

export function layoutObject(length: number, symbolSize: number, blockSymbols: number): ObjectLayout {
  const symbolCount = Math.max(1, Math.ceil(length / symbolSize));
  return { length, symbolSize, blockSymbols, symbolCount, blockCount: Math.ceil(symbolCount / blockSymbols) };
}

/** Source symbols in block b (the last block may be short). */
export function symbolsInBlock(layout: ObjectLayout, block: number): number {
  return Math.min(layout.blockSymbols, layout.symbolCount - block * layout.blockSymbols);
}

/** The bytes of source symbol `index` of block `block`, zero-padded to symbolSize. */
export function sourceSymbol(
  bytes: Uint8Array,
  layout: ObjectLayout,
  block: number,
  index: number,
): Uint8Array {
  const start = (block * layout.blockSymbols + index) * layout.symbolSize;
  const end = Math.min(start + layout.symbolSize, bytes.length);
  if (end - start === layout.symbolSize) return bytes.subarray(start, end);
  const padded = new Uint8Array(layout.symbolSize);
  if (end > start) padded.set(bytes.subarray(start, end));
  return padded;
}
