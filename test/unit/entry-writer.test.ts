import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EntryType, EntryWriter, readEntries } from '../../src/live/batch.js';
import { decodePage, MAX_COMPRESSED_BYTES, PageEncoding } from '../../src/memory/page-codec.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { Prng } from '../../src/memory/prng.js';

/**
 * A page a live stream sends in full is encoded straight into the message being built: its word when
 * uniform, LZ4 when that saves an eighth (and compression is on), else raw. Whatever the mix, every
 * entry reads back as its own page, and an attempt at compressing that did not pay leaves nothing
 * behind in the buffer (the raw entry follows the previous one directly).
 */
test('entry writer: pages in full, uniform, compressed or raw, read back as written', () => {
  const prng = new Prng(7);
  const text = (n: number) =>
    Uint8Array.from({ length: PAGE_SIZE }, (_, i) => 'the quick brown fox '.charCodeAt((i + n) % 20));
  const random = () => Uint8Array.from({ length: PAGE_SIZE }, () => prng.nextU32() & 0xff);
  const uniform = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i += 8) uniform.set([1, 2, 3, 4, 5, 6, 7, 8], i);
  const texts = [text(0), text(3), text(9)];
  const pages = [texts[0]!, random(), uniform, texts[1]!, random(), random(), texts[2]!];
  for (const compress of [true, false]) {
    const writer = new EntryWriter(1024); // small: the writer grows while compressing into itself
    const digestOf = (i: number) => new Uint8Array(16).fill(i + 1);
    const encodings = pages.map((page, i) => writer.full(100 + i, digestOf(i), page, compress));
    assert.deepEqual(
      encodings,
      pages.map((page) =>
        page === uniform
          ? PageEncoding.Uniform
          : compress && texts.includes(page)
            ? PageEncoding.Lz4
            : PageEncoding.Raw,
      ),
    );
    assert.equal(writer.count, pages.length);
    const entries = [...readEntries(writer.take())];
    assert.equal(entries.length, pages.length);
    entries.forEach((entry, i) => {
      assert.equal(entry.page, 100 + i);
      assert.deepEqual(entry.digest, digestOf(i));
      const page = entry.type === EntryType.Raw ? entry.body : decodePage(entry.value, entry.body);
      if (entry.type === EntryType.Packed) assert.ok(entry.body.length <= MAX_COMPRESSED_BYTES);
      assert.deepEqual(Buffer.from(page!), Buffer.from(pages[i]!), `page ${i}`);
    });
  }
});
