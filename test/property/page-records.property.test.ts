import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { native } from '../../src/native/native.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../../src/memory/page.js';
import {
  decodeBatch,
  decodeRecords,
  decodeRecordsOneByOne,
  encodeRecords,
  encodeRecordsOneByOne,
} from '../../src/memory/page-batches.js';
import { MAX_COMPRESSED_BYTES, PageEncoding } from '../../src/memory/page-codec.js';

/**
 * The addon's batch encoder (native/page-records.c, its own LZ4 compressor) against the page codec:
 * every record decodes, with the binding's LZ4 decoder, to the page it was made from; uniform and
 * raw pages are encoded as the page codec does; a compressed page saves at least 1/8.
 */

/** Pages of the kinds guest memory holds: runs, repeats with noise, words, random bytes, fills. */
const page = fc.oneof(
  fc.uint8Array({ minLength: PAGE_SIZE, maxLength: PAGE_SIZE }),
  fc.integer({ min: 0, max: 255 }).map((b) => new Uint8Array(PAGE_SIZE).fill(b)),
  fc
    .tuple(fc.uint8Array({ minLength: 8, maxLength: 8 }))
    .map(([word]) => Uint8Array.from({ length: PAGE_SIZE }, (_, i) => word[i % 8]!)),
  fc
    .tuple(
      fc.uint8Array({ minLength: 1, maxLength: 300 }),
      fc.array(fc.tuple(fc.nat(PAGE_SIZE - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 200 }),
    )
    .map(([motif, noise]) => {
      const bytes = Uint8Array.from({ length: PAGE_SIZE }, (_, i) => motif[i % motif.length]!);
      for (const [at, value] of noise) bytes[at] = value;
      return bytes;
    }),
  fc.tuple(fc.uint8Array({ minLength: 16, maxLength: 2048 }), fc.nat(PAGE_SIZE)).map(([head, at]) => {
    const bytes = new Uint8Array(PAGE_SIZE);
    bytes.set(
      head.subarray(0, PAGE_SIZE - Math.min(at, PAGE_SIZE - head.length)),
      Math.min(at, PAGE_SIZE - head.length),
    );
    return bytes;
  }),
);

test('native page records: built, and every record decodes to its page', () => {
  assert.equal(typeof native?.encodePageRecords, 'function', 'npm ci builds native/page-records.c');
  fc.assert(
    fc.property(fc.array(page, { minLength: 1, maxLength: 12 }), fc.boolean(), (pages, compress) => {
      const bytes = new Uint8Array(pages.length * PAGE_SIZE);
      pages.forEach((p, i) => bytes.set(p, i * PAGE_SIZE));
      const digests = Uint8Array.from({ length: pages.length * DIGEST_BYTES }, (_, i) => (i * 13) & 0xff);
      const counts = { raw: 0, uniform: 0, compressed: 0 };
      const batch = encodeRecords(digests, bytes, compress, counts);
      const reference = { raw: 0, uniform: 0, compressed: 0 };
      const oneByOne = [...decodeBatch(encodeRecordsOneByOne(digests, bytes, compress, reference))];
      const records = [...decodeBatch(batch)];
      assert.equal(records.length, pages.length);
      assert.equal(counts.raw + counts.uniform + counts.compressed, pages.length);
      assert.equal(counts.uniform, reference.uniform, 'uniform pages found alike');
      if (!compress)
        assert.deepEqual(Buffer.from(batch), Buffer.from(encodeRecordsOneByOne(digests, bytes, false)));
      records.forEach((record, i) => {
        assert.deepEqual(Buffer.from(record.digest), Buffer.from(digests.subarray(i * 16, i * 16 + 16)));
        assert.ok(record.page, `record ${i} decodes`);
        assert.deepEqual(Buffer.from(record.page), Buffer.from(pages[i]!), `record ${i} is its page`);
        assert.ok(oneByOne[i]!.page);
      });
      // Each record's encoding byte and length: a compressed one saves at least 1/8 of the page.
      let offset = 0;
      for (let i = 0; i < pages.length; i++) {
        const encoding = batch[offset + DIGEST_BYTES]!;
        const length = batch[offset + DIGEST_BYTES + 1]! | (batch[offset + DIGEST_BYTES + 2]! << 8);
        if (encoding === PageEncoding.Lz4) assert.ok(length <= MAX_COMPRESSED_BYTES, `${length} bytes`);
        if (!compress) assert.notEqual(encoding, PageEncoding.Lz4);
        offset += DIGEST_BYTES + 3 + length;
      }
      assert.equal(offset, batch.length);
    }),
    { numRuns: 300 },
  );
});

test('native page records: pages that compress well are compressed, as the page codec would', () => {
  const text = new TextEncoder().encode('the quick brown fox jumps over the lazy dog; '.repeat(100));
  const pages = new Uint8Array(2 * PAGE_SIZE);
  pages.set(text.subarray(0, PAGE_SIZE), 0);
  for (let i = 0; i < PAGE_SIZE; i += 64) pages.set(text.subarray(i % 512, (i % 512) + 40), PAGE_SIZE + i);
  const counts = { raw: 0, uniform: 0, compressed: 0 };
  const batch = encodeRecords(new Uint8Array(2 * DIGEST_BYTES), pages, true, counts);
  assert.deepEqual(counts, { raw: 0, uniform: 0, compressed: 2 });
  assert.ok(batch.length < PAGE_SIZE, `${batch.length} bytes for two pages`);
});

test('native page records: decoded as decodeBatch decodes them, forged and truncated batches too', () => {
  assert.equal(typeof native?.decodePageRecords, 'function', 'npm ci builds native/page-records.c');
  const same = (bytes: Uint8Array) => {
    const fast = decodeRecords(bytes);
    const slow = decodeRecordsOneByOne(bytes);
    assert.equal(fast.count, slow.count);
    assert.equal(fast.rejected, slow.rejected);
    assert.deepEqual(
      Buffer.from(fast.digests.subarray(0, fast.count * DIGEST_BYTES)),
      Buffer.from(slow.digests.subarray(0, slow.count * DIGEST_BYTES)),
    );
    assert.deepEqual(
      Buffer.from(fast.pages.subarray(0, fast.count * PAGE_SIZE)),
      Buffer.from(slow.pages.subarray(0, slow.count * PAGE_SIZE)),
    );
    return fast;
  };
  fc.assert(
    fc.property(
      fc.array(page, { minLength: 1, maxLength: 8 }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
      fc.nat(),
      (pages, flips, cut) => {
        const bytes = new Uint8Array(pages.length * PAGE_SIZE);
        pages.forEach((p, i) => bytes.set(p, i * PAGE_SIZE));
        const digests = Uint8Array.from({ length: pages.length * DIGEST_BYTES }, (_, i) => i & 0xff);
        const batch = encodeRecords(digests, bytes, true);
        // Intact: every page back, in order.
        const whole = same(batch);
        assert.equal(whole.count, pages.length);
        assert.deepEqual(Buffer.from(whole.pages), Buffer.from(bytes));
        // Bytes changed anywhere (headers, lengths, LZ4 tokens, offsets) and the batch cut short:
        // both decoders keep and refuse the same records, and neither throws.
        const forged = batch.slice(0, batch.length - (cut % Math.max(1, batch.length)));
        for (const [at, value] of flips) if (forged.length > 0) forged[at % forged.length] = value;
        same(forged);
      },
    ),
    { numRuns: 500 },
  );
  same(new Uint8Array(0));
  same(Uint8Array.from({ length: 5000 }, (_, i) => (i * 31) & 0xff));
});
