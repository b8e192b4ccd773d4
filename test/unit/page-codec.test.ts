import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compressSync } from 'lz4-napi';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { Prng } from '../../src/memory/prng.js';
import {
  classifyPage,
  decodePage,
  encodePage,
  MAX_COMPRESSED_BYTES,
  measureCodec,
  PageEncoding,
  shouldCompress,
  type CodecRates,
} from '../../src/memory/page-codec.js';

/** Deterministic random bytes, so failures reproduce. */
function randomBytes(length: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = rng.nextU32() & 0xff;
  return out;
}

/** One 8-byte word repeated over the page. */
function uniformPage(word: readonly number[]): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) page[i] = word[i % 8]!;
  return page;
}

/** Text-like: lines of words from a small vocabulary, as a page cache page of a source file holds. */
function textPage(seed: number): Uint8Array {
  const words = ['struct', 'page', 'return', 'const', 'memory', 'the', 'guest', 'if', 'for', '{', '}', ';'];
  const rng = new Prng(seed);
  let text = '';
  while (text.length < PAGE_SIZE) text += words[rng.below(words.length)] + (rng.below(8) === 0 ? '\n' : ' ');
  return new TextEncoder().encode(text.slice(0, PAGE_SIZE));
}

/** Nearly empty but neither zero nor uniform: compresses to a few dozen bytes. */
function almostEmptyPage(): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  page[PAGE_SIZE - 1] = 1;
  page[100] = 0x42;
  return page;
}

const randomPage = () => randomBytes(PAGE_SIZE, 7);

function roundTrip(page: Uint8Array, compress: boolean): { encoding: PageEncoding; payloadBytes: number } {
  const { encoding, payload } = encodePage(page, compress);
  const decoded = decodePage(encoding, payload);
  assert.ok(decoded !== undefined, `encoding ${encoding} did not decode`);
  assert.equal(decoded.length, PAGE_SIZE);
  assert.deepEqual(new Uint8Array(decoded), page);
  return { encoding, payloadBytes: payload.length };
}

test('every page class round-trips, each in its own encoding', () => {
  assert.deepEqual(roundTrip(uniformPage([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]), true), {
    encoding: PageEncoding.Uniform,
    payloadBytes: 8,
  });
  assert.deepEqual(roundTrip(uniformPage([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), false), {
    encoding: PageEncoding.Uniform,
    payloadBytes: 8,
  });
  // A zero page never travels (the manifest marks it), but if one is sent it is a uniform page.
  assert.deepEqual(roundTrip(new Uint8Array(PAGE_SIZE), true), {
    encoding: PageEncoding.Uniform,
    payloadBytes: 8,
  });

  const text = roundTrip(textPage(1), true);
  assert.equal(text.encoding, PageEncoding.Lz4);
  assert.ok(text.payloadBytes <= MAX_COMPRESSED_BYTES);

  const tiny = roundTrip(almostEmptyPage(), true);
  assert.equal(tiny.encoding, PageEncoding.Lz4);
  assert.ok(tiny.payloadBytes < 64, `${tiny.payloadBytes} bytes`);

  assert.deepEqual(roundTrip(randomPage(), true), { encoding: PageEncoding.Raw, payloadBytes: PAGE_SIZE });
});

test('with compression off, compressible pages travel raw and raw payloads are the page itself', () => {
  const page = textPage(2);
  const { encoding, payload } = encodePage(page, false);
  assert.equal(encoding, PageEncoding.Raw);
  assert.equal(payload, page);
  assert.equal(decodePage(encoding, payload), payload);
  assert.equal(roundTrip(almostEmptyPage(), false).encoding, PageEncoding.Raw);
});

test('pages inside a larger buffer (subarrays at an offset) encode and decode like standalone ones', () => {
  const buffer = new Uint8Array(3 * PAGE_SIZE);
  buffer.set(textPage(3), PAGE_SIZE);
  const page = buffer.subarray(PAGE_SIZE, 2 * PAGE_SIZE);
  assert.equal(classifyPage(page), 'compressible');
  assert.equal(roundTrip(page, true).encoding, PageEncoding.Lz4);
  buffer.fill(9, PAGE_SIZE, 2 * PAGE_SIZE);
  assert.equal(classifyPage(page), 'uniform');
});

test('classification: zero, uniform word, compressible, incompressible', () => {
  assert.equal(classifyPage(new Uint8Array(PAGE_SIZE)), 'zero');
  assert.equal(classifyPage(uniformPage([1, 0, 0, 0, 0, 0, 0, 0])), 'uniform');
  assert.equal(classifyPage(uniformPage([7, 7, 7, 7, 7, 7, 7, 7])), 'uniform');
  assert.equal(classifyPage(uniformPage([1, 2, 3, 4, 1, 2, 3, 4])), 'uniform'); // period 4 divides 8
  // One differing byte makes it neither zero nor uniform, yet it compresses to almost nothing.
  const nearlyUniform = uniformPage([1, 2, 3, 4, 5, 6, 7, 8]);
  nearlyUniform[PAGE_SIZE - 1] = 0;
  assert.equal(classifyPage(nearlyUniform), 'compressible');
  assert.equal(classifyPage(almostEmptyPage()), 'compressible');
  const period16 = new Uint8Array(PAGE_SIZE).map((_, i) => i % 16);
  assert.equal(classifyPage(period16), 'compressible');
  assert.equal(classifyPage(textPage(4)), 'compressible');
  assert.equal(classifyPage(randomPage()), 'incompressible');
  // Half random: LZ4 saves about half, well past the 1/8 threshold; 15/16 random saves too little.
  const half = randomPage();
  half.fill(0, PAGE_SIZE / 2);
  assert.equal(classifyPage(half), 'compressible');
  const mostlyRandom = randomPage();
  mostlyRandom.fill(0, PAGE_SIZE - PAGE_SIZE / 16);
  assert.equal(classifyPage(mostlyRandom), 'incompressible');
});

test('a buffer that is not one page is a programming error, not a class', () => {
  assert.throws(() => classifyPage(new Uint8Array(PAGE_SIZE - 1)), RangeError);
  assert.throws(() => encodePage(new Uint8Array(PAGE_SIZE + 1), true), RangeError);
  assert.throws(() => measureCodec([new Uint8Array(10)]), RangeError);
});

test('malformed and forged payloads decode to undefined and never throw', () => {
  const compressed = encodePage(textPage(5), true).payload;
  const cases: [string, number, Uint8Array][] = [
    ['raw, one byte short', PageEncoding.Raw, new Uint8Array(PAGE_SIZE - 1)],
    ['raw, one byte long', PageEncoding.Raw, new Uint8Array(PAGE_SIZE + 1)],
    ['raw, empty', PageEncoding.Raw, new Uint8Array(0)],
    ['uniform, 7 bytes', PageEncoding.Uniform, new Uint8Array(7)],
    ['uniform, 9 bytes', PageEncoding.Uniform, new Uint8Array(9)],
    ['lz4, empty', PageEncoding.Lz4, new Uint8Array(0)],
    ['lz4, size prefix only', PageEncoding.Lz4, compressed.subarray(0, 4)],
    ['lz4, a raw page', PageEncoding.Lz4, randomPage()],
    ['lz4, longer than a page', PageEncoding.Lz4, new Uint8Array(PAGE_SIZE + 1).fill(1)],
    ['unknown encoding 3', 3, compressed],
    ['unknown encoding 255', 255, compressed],
    ['encoding -1', -1, compressed],
    ['encoding NaN', Number.NaN, compressed],
    ['encoding 1.5', 1.5, compressed],
  ];
  for (let cut = 5; cut < compressed.length; cut += 7) {
    cases.push([`lz4, truncated to ${cut} bytes`, PageEncoding.Lz4, compressed.subarray(0, cut)]);
  }
  for (const [name, encoding, payload] of cases) {
    assert.equal(decodePage(encoding, payload), undefined, name);
  }
});

test('LZ4 garbage behind a valid size prefix never throws and never yields anything but one page', () => {
  const rng = new Prng(11);
  for (let trial = 0; trial < 2000; trial++) {
    const payload = randomBytes(5 + rng.below(PAGE_SIZE - 5), trial + 1);
    payload.set([0x00, 0x10, 0x00, 0x00]); // 4096, little-endian
    const page = decodePage(PageEncoding.Lz4, payload);
    assert.ok(page === undefined || page.length === PAGE_SIZE);
  }
  // Bit flips in a real block.
  const compressed = encodePage(textPage(6), true).payload;
  for (let i = 4; i < compressed.length; i++) {
    const forged = Uint8Array.from(compressed);
    forged[i]! ^= 1 << (i & 7);
    const page = decodePage(PageEncoding.Lz4, forged);
    assert.ok(page === undefined || page.length === PAGE_SIZE);
  }
});

test('decompression bombs: a block that would decode to more (or less) than one page is refused', () => {
  const big = new Uint8Array(1 << 19).fill(0x61); // 512 KiB of 'a': about 2 KiB of LZ4 (255:1 at most)
  const bomb = new Uint8Array(compressSync(Buffer.from(big)));
  assert.ok(bomb.length <= PAGE_SIZE);
  // Honest size prefix (512 KiB): refused before the codec runs.
  assert.equal(decodePage(PageEncoding.Lz4, bomb), undefined);
  // Forged prefix saying one page: the codec stops at 4096 bytes of output and fails.
  const forged = Uint8Array.from(bomb);
  forged.set([0x00, 0x10, 0x00, 0x00]);
  assert.equal(decodePage(PageEncoding.Lz4, forged), undefined);
  // A prefix claiming 4 GiB never gets to allocate.
  const huge = Uint8Array.from(bomb);
  huge.set([0xff, 0xff, 0xff, 0xff]);
  assert.equal(decodePage(PageEncoding.Lz4, huge), undefined);
  // A block of half a page under a prefix saying one page: too short, refused.
  const short = new Uint8Array(compressSync(Buffer.from(textPage(7).subarray(0, PAGE_SIZE / 2))));
  short.set([0x00, 0x10, 0x00, 0x00]);
  assert.equal(decodePage(PageEncoding.Lz4, short), undefined);
});

const rates: CodecRates = { compressBytesPerSecond: 400e6, decompressBytesPerSecond: 1000e6, ratio: 0.5 };
const MBIT = 1e6;
const GBIT = 1e9;

test('adaptive: compress on a slow link, not on a link faster than the codec, not when nothing shrinks', () => {
  assert.equal(shouldCompress('adaptive', 100 * MBIT, rates), true); // 12.5 MB/s link, 25 MB/s with LZ4
  assert.equal(shouldCompress('adaptive', 1 * GBIT, rates), true); // 125 MB/s link, 250 MB/s with LZ4
  assert.equal(shouldCompress('adaptive', 10 * GBIT, rates), false); // 1250 MB/s link, codec 400 MB/s
  assert.equal(shouldCompress('adaptive', 40 * GBIT, rates), false);
  // Decompression can be the bottleneck too: 3 Gbit/s = 375 MB/s raw, 750 MB/s compressed, but the
  // targets decompress only 300 MB/s.
  assert.equal(shouldCompress('adaptive', 3 * GBIT, { ...rates, decompressBytesPerSecond: 300e6 }), false);
  assert.equal(shouldCompress('adaptive', 3 * GBIT, { ...rates, compressBytesPerSecond: 2000e6 }), true);
  // Ratio near 1: a slow link gains less than the margin.
  assert.equal(shouldCompress('adaptive', 100 * MBIT, { ...rates, ratio: 0.98 }), false);
  assert.equal(shouldCompress('adaptive', 100 * MBIT, { ...rates, ratio: 1 }), false);
  assert.equal(shouldCompress('adaptive', 100 * MBIT, { ...rates, ratio: 0.8 }), true);
});

test("'on' and 'off' are forced whatever the link and rates say", () => {
  assert.equal(shouldCompress('on', 40 * GBIT, rates), true);
  assert.equal(shouldCompress('on', 100 * MBIT, { ...rates, ratio: 1 }), true);
  assert.equal(shouldCompress('off', 100 * MBIT, rates), false);
});

test('adaptive with nothing measurable sends raw', () => {
  const none: CodecRates = { compressBytesPerSecond: 0, decompressBytesPerSecond: 0, ratio: 1 };
  assert.equal(shouldCompress('adaptive', 100 * MBIT, none), false);
  for (const link of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.equal(shouldCompress('adaptive', link, rates), false, String(link));
  }
  assert.equal(shouldCompress('adaptive', 100 * MBIT, { ...rates, ratio: Number.NaN }), false);
});

test('measureCodec times the real codec on the sample and skips zero and uniform pages', () => {
  const sample = [
    ...Array.from({ length: 24 }, (_, i) => textPage(100 + i)),
    ...Array.from({ length: 8 }, (_, i) => randomBytes(PAGE_SIZE, 200 + i)),
    new Uint8Array(PAGE_SIZE),
    uniformPage([1, 2, 3, 4, 5, 6, 7, 8]),
  ];
  const started = performance.now();
  const measured = measureCodec(sample, 40);
  assert.ok(performance.now() - started < 2000);
  assert.ok(measured.compressBytesPerSecond > 1e6, `${measured.compressBytesPerSecond}`);
  assert.ok(measured.decompressBytesPerSecond > 1e6, `${measured.decompressBytesPerSecond}`);
  // 24 text pages shrink, 8 random ones travel raw (ratio exactly 1 for them).
  const textOnly = measureCodec(sample.slice(0, 24), 10).ratio;
  assert.ok(textOnly > 0 && textOnly < 0.875, `${textOnly}`);
  assert.ok(Math.abs(measured.ratio - (24 * textOnly + 8) / 32) < 1e-9, `${measured.ratio}`);
  assert.equal(measureCodec(sample.slice(24, 32), 10).ratio, 1);

  const nothing = measureCodec([new Uint8Array(PAGE_SIZE), uniformPage([5, 5, 5, 5, 5, 5, 5, 5])]);
  assert.deepEqual(nothing, { compressBytesPerSecond: 0, decompressBytesPerSecond: 0, ratio: 1 });
  assert.equal(shouldCompress('adaptive', 100 * MBIT, nothing), false);
});
