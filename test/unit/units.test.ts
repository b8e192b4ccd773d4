import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatBytes, formatRate, parseRate, parseSize } from '../../src/topology/units.js';

const KiB = 1024;
const MiB = KiB * 1024;
const GiB = MiB * 1024;
const TiB = GiB * 1024;

test('parseSize reads binary and decimal suffixes and bare byte counts', () => {
  const cases: ReadonlyArray<readonly [string | number, number]> = [
    ['256MiB', 256 * MiB],
    ['1GiB', GiB],
    ['1.5GiB', 1.5 * GiB],
    ['4 GiB', 4 * GiB],
    ['  64KiB ', 64 * KiB],
    ['2TiB', 2 * TiB],
    ['500MB', 500e6],
    ['1kB', 1000],
    ['1KB', 1000],
    ['3GB', 3e9],
    ['1TB', 1e12],
    ['4096', 4096],
    ['4096B', 4096],
    ['0', 0],
    [4096, 4096],
    [0, 0],
  ];
  for (const [input, bytes] of cases) assert.equal(parseSize(input), bytes, `parseSize(${String(input)})`);
});

test('parseSize rounds fractions to the nearest byte, exactly', () => {
  assert.equal(parseSize('0.1KiB'), 102);
  assert.equal(parseSize('1.0000001GiB'), 1073741931);
  assert.equal(parseSize('0.4B'), 0);
});

test('parseSize refuses one-letter suffixes instead of guessing binary or decimal', () => {
  const problem = parseSize('512M');
  assert.equal(typeof problem, 'string');
  assert.match(String(problem), /ambiguous/);
  assert.match(String(problem), /512MiB/);
  assert.match(String(problem), /512MB/);
  assert.match(String(parseSize('4g')), /4GiB .* 4GB/);
});

test('parseSize hints at the right case for a miscased unit', () => {
  assert.match(String(parseSize('1gib')), /case-sensitive.*did you mean GiB\?/);
});

test('parseSize describes what it expected and what it got', () => {
  assert.equal(
    parseSize('10 furlongs'),
    "expected a size such as 256MiB, 4GiB, 500MB or a whole number of bytes, got '10 furlongs'",
  );
  for (const bad of ['', '-1GiB', 'GiB', '1,5GiB', '1e9', '.5GiB', '1  GiB', '1 GiB extra']) {
    assert.equal(typeof parseSize(bad), 'string', `parseSize(${JSON.stringify(bad)})`);
  }
  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60]) {
    assert.equal(typeof parseSize(bad), 'string', `parseSize(${bad})`);
  }
  assert.match(String(parseSize('99999999999TiB')), /too large/);
  assert.match(String(parseSize('9'.repeat(200))), /200-character/);
});

test('parseRate reads bit and byte rates to bits per second', () => {
  const cases: ReadonlyArray<readonly [string, number]> = [
    ['1Gbit', 1e9],
    ['800Mbit', 800e6],
    ['1Gbit/s', 1e9],
    ['100Mbps', 100e6],
    ['1.5Gbit', 1.5e9],
    ['125MB/s', 1e9],
    ['10Gb/s', 10e9],
    ['25 Gbit/s', 25e9],
    ['1kbit', 1000],
    ['1Kbps', 1000],
    ['9600bit/s', 9600],
    ['1Tbit', 1e12],
    ['1GiB/s', 8 * GiB],
    ['1B/s', 8],
  ];
  for (const [input, bps] of cases) assert.equal(parseRate(input), bps, `parseRate(${input})`);
});

test('parseRate insists on a unit, since bits and bytes differ eightfold', () => {
  assert.match(String(parseRate(1000)), /needs a unit/);
  assert.match(String(parseRate('1000')), /needs a unit/);
  const ambiguous = String(parseRate('1G'));
  assert.match(ambiguous, /ambiguous/);
  assert.match(ambiguous, /1Gbit/);
  assert.match(ambiguous, /1GB\/s/);
});

test('parseRate describes what it expected and what it got', () => {
  assert.equal(parseRate('10 furlongs'), "expected a rate such as 1Gbit or 800Mbit/s, got '10 furlongs'");
  assert.match(String(parseRate('1gbit')), /did you mean Gbit\?/);
  assert.match(String(parseRate('1mb/s')), /did you mean Mb\/s or MB\/s\?/);
  for (const bad of ['', 'fast', '-1Gbit', 'Gbit', '1 Gbit/h']) {
    assert.equal(typeof parseRate(bad), 'string', `parseRate(${JSON.stringify(bad)})`);
  }
});

test('formatBytes picks the largest binary unit and at most two decimals', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(4096), '4 KiB');
  assert.equal(formatBytes(256 * MiB), '256 MiB');
  assert.equal(formatBytes(1.5 * GiB), '1.5 GiB');
  assert.equal(formatBytes(GiB + 1), '1 GiB');
  assert.equal(formatBytes(MiB - 1), '1 MiB', 'rounding up to 1024 KiB moves to the next unit');
  assert.equal(formatBytes(256 * GiB), '256 GiB');
  assert.equal(formatBytes(3000 * TiB), '3000 TiB');
  assert.equal(formatBytes(-2048), '-2 KiB');
});

test('formatRate picks the largest decimal unit and at most two decimals', () => {
  assert.equal(formatRate(999), '999 bit/s');
  assert.equal(formatRate(1e9), '1 Gbit/s');
  assert.equal(formatRate(800e6), '800 Mbit/s');
  assert.equal(formatRate(1.5e9), '1.5 Gbit/s');
  assert.equal(formatRate(25e9), '25 Gbit/s');
  assert.equal(formatRate(999_999), '1 Mbit/s');
});

const byteUnits = [1, KiB, MiB, GiB, TiB] as const;
/** Rounding to two decimals can carry a value just below 2^53 past it, where parsing rightly refuses. */
const LARGEST_ROUND_TRIP = 2 ** 52;
const rateUnits = [1, 1e3, 1e6, 1e9, 1e12] as const;

test('property: formatBytes output parses back to the same size within its rounding', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: LARGEST_ROUND_TRIP }), (bytes) => {
      const back = parseSize(formatBytes(bytes));
      assert.equal(typeof back, 'number', formatBytes(bytes));
      assert.ok(Math.abs(Number(back) - bytes) <= bytes * 0.005 + 0.5, `${bytes} → ${formatBytes(bytes)}`);
    }),
  );
});

test('property: whole multiples of a unit round-trip exactly', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 1023 }), fc.constantFrom(...byteUnits), (count, unit) => {
      assert.equal(parseSize(formatBytes(count * unit)), count * unit);
    }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 999 }), fc.constantFrom(...rateUnits), (count, unit) => {
      assert.equal(parseRate(formatRate(count * unit)), count * unit);
    }),
  );
});

test('property: formatRate output parses back within its rounding', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: LARGEST_ROUND_TRIP }), (bps) => {
      const back = parseRate(formatRate(bps));
      assert.equal(typeof back, 'number', formatRate(bps));
      assert.ok(Math.abs(Number(back) - bps) <= bps * 0.005 + 0.5, `${bps} → ${formatRate(bps)}`);
    }),
  );
});

/** Either a non-negative safe integer or a non-empty problem: nothing else, and never a throw. */
function assertClean(result: unknown): void {
  if (typeof result === 'number') {
    assert.ok(Number.isSafeInteger(result) && result >= 0, `bad value ${result}`);
  } else {
    assert.equal(typeof result, 'string');
    assert.notEqual(result, '');
  }
}

test('property: arbitrary input yields a value or a clean problem, never an exception', () => {
  const nearMisses = fc
    .tuple(
      fc.stringMatching(/^-?\d{0,30}(\.\d{0,30})?$/),
      fc.constantFrom(' ', '', '  ', '\t'),
      fc.constantFrom('', 'B', 'KiB', 'GiB', 'gib', 'M', 'Gbit', 'Gbit/s', 'MB/s', 'mbps', 'furlongs', 'iB'),
    )
    .map(([number, space, unit]) => number + space + unit);
  const inputs = fc.oneof(
    fc.string(),
    fc.string({ unit: 'binary' }),
    nearMisses,
    fc.double(),
    fc.maxSafeInteger(),
  );
  fc.assert(
    fc.property(inputs, (input) => {
      assertClean(parseSize(input));
      assertClean(parseRate(input));
    }),
    { numRuns: 2000 },
  );
});
