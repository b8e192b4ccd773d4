/**
 * Codec for QEMU 7.2 precopy migration streams (x86_64): an incremental parser that yields every RAM
 * page with its block and offset and passes everything else on byte-exact, and a writer that re-emits
 * parsed records or synthesises a stream with pages in any order. See src/qemu/README.md.
 */
export * from './stream-records.js';
export { parseConfigSection, parseStream, StreamParser } from './stream-parser.js';
export type { PageSink, StreamEnd, StreamParserOptions } from './stream-parser.js';
export { latestPages, streamImage, StreamWriter, writeStream, writeStreamTo } from './stream-writer.js';
export type { StreamImage } from './stream-writer.js';
