import { RAM_FLAG_MASK, RamFlag, STREAM_PAGE_SIZE, type RamBlock } from './stream-records.js';
import { u32 } from './stream-sections.js';

/**
 * Where page records may go without becoming record objects: the parser's fast path hands over a page
 * as the chunk it lies in and its position there (valid only during the call), and allocates nothing
 * per page. Only records that continue the previous page's block and lie whole in one pushed chunk
 * take it; the others come as records, through onRecord, in stream order with these.
 */
export interface PageSink {
  page(block: string, offset: number, bytes: Uint8Array, at: number): void;
  zero(block: string, offset: number, fill: number): void;
}

const PAGE_RECORD_BYTES = 8 + STREAM_PAGE_SIZE;
const CONTINUED_PAGE = RamFlag.PAGE | RamFlag.CONTINUE;
const CONTINUED_ZERO = RamFlag.ZERO | RamFlag.CONTINUE;

/**
 * The parser's fast path, while it waits for a RAM record's head: reads the records from chunk[at..]
 * that continue `block` and lie whole in the chunk, straight to the sink, and returns where it
 * stopped. Anything else (a block name, another flag, an offset beyond the block, a record cut by the
 * chunk's end) is left to the parser's generator, which reads it, or refuses it, as always.
 */
export function readPageRun(chunk: Uint8Array, at: number, block: RamBlock, sink: PageSink): number {
  while (chunk.length - at >= 9) {
    const high = u32(chunk, at);
    const low = u32(chunk, at + 4);
    const flags = low & RAM_FLAG_MASK;
    const offset = high * 2 ** 32 + (low - flags);
    if (offset >= block.length) break;
    if (flags === CONTINUED_PAGE) {
      if (chunk.length - at < PAGE_RECORD_BYTES) break;
      sink.page(block.name, offset, chunk, at + 8);
      at += PAGE_RECORD_BYTES;
    } else if (flags === CONTINUED_ZERO) {
      sink.zero(block.name, offset, chunk[at + 8]!);
      at += 9;
    } else break;
  }
  return at;
}
