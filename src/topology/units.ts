/**
 * Sizes and rates as people write them in topology files, normalised to bytes and bits per second.
 *
 * The parsers never throw: they return the number, or a string saying what is wrong and what was
 * expected, so the loader can prefix it with file, line and field. Units are case-sensitive because
 * case carries meaning (Mb is megabits, MB megabytes); a wrong case gets a "did you mean" hint.
 */

/** Either the parsed value or a problem description a user can act on. */
export type UnitResult = number | string;

export const SIZE_EXPECTED = 'a size such as 256MiB, 4GiB, 500MB or a whole number of bytes';
export const RATE_EXPECTED = 'a rate such as 1Gbit or 800Mbit/s';

const KIB = 1024;
const MIB = KIB * 1024;
const GIB = MIB * 1024;
const TIB = GIB * 1024;

const SIZE_UNITS: ReadonlyMap<string, number> = new Map([
  ['', 1],
  ['B', 1],
  ['KiB', KIB],
  ['MiB', MIB],
  ['GiB', GIB],
  ['TiB', TIB],
  ['kB', 1e3],
  ['KB', 1e3],
  ['MB', 1e6],
  ['GB', 1e9],
  ['TB', 1e12],
]);

/**
 * Bit rates take decimal prefixes because link speeds are quoted that way (1 Gbit/s = 10^9 bit/s);
 * byte rates also take binary ones, as copy tools print them (MiB/s).
 */
function rateUnits(): ReadonlyMap<string, number> {
  const units = new Map<string, number>();
  for (const [prefix, factor] of [
    ['', 1],
    ['k', 1e3],
    ['K', 1e3],
    ['M', 1e6],
    ['G', 1e9],
    ['T', 1e12],
  ] as const) {
    for (const bits of ['bit', 'bit/s', 'bps', 'b/s']) units.set(prefix + bits, factor);
    units.set(`${prefix}B/s`, factor * 8);
  }
  for (const [prefix, factor] of [
    ['Ki', KIB],
    ['Mi', MIB],
    ['Gi', GIB],
    ['Ti', TIB],
  ] as const) {
    units.set(`${prefix}B/s`, factor * 8);
  }
  return units;
}

const RATE_UNITS = rateUnits();

/** Longer input is certainly not a size or rate; refusing it early keeps BigInt work bounded. */
const MAX_INPUT_LENGTH = 64;
const NUMBER_AND_UNIT = /^(\d+)(?:\.(\d+))?\s?(\S*)$/;

/** Parses a size ("256MiB", "1.5GiB", "500MB", "4096", or a YAML integer) to a whole number of bytes. */
export function parseSize(input: string | number): UnitResult {
  if (typeof input === 'number') {
    if (Number.isSafeInteger(input) && input >= 0) return input;
    return `expected ${SIZE_EXPECTED}, got ${String(input)}`;
  }
  return parseQuantity(
    input,
    SIZE_UNITS,
    SIZE_EXPECTED,
    (n, letter) => `${n}${letter}iB (binary) or ${n}${letter}B (decimal)`,
  );
}

/** Parses a link rate ("1Gbit", "800Mbit/s", "100Mbps", "125MB/s") to bits per second. */
export function parseRate(input: string | number): UnitResult {
  if (typeof input === 'number') {
    return `a rate needs a unit: expected ${RATE_EXPECTED}, got the bare number ${String(input)}`;
  }
  if (NUMBER_AND_UNIT.exec(input.trim())?.[3] === '') {
    return `a rate needs a unit: expected ${RATE_EXPECTED}, got '${input.trim()}'`;
  }
  return parseQuantity(
    input,
    RATE_UNITS,
    RATE_EXPECTED,
    (n, letter) => `${n}${letter}bit (bits per second) or ${n}${letter}B/s (bytes per second)`,
  );
}

/**
 * Splits "1.5 GiB" into number and unit and scales exactly (BigInt), rounding to the nearest whole
 * byte or bit per second.
 */
function parseQuantity(
  input: string,
  units: ReadonlyMap<string, number>,
  expected: string,
  disambiguate: (digits: string, letter: string) => string,
): UnitResult {
  const text = input.trim();
  if (text.length > MAX_INPUT_LENGTH) return `expected ${expected}, got a ${text.length}-character string`;
  const match = NUMBER_AND_UNIT.exec(text);
  if (match === null) return `expected ${expected}, got ${quote(text)}`;
  const whole = match[1] ?? '';
  const fraction = match[2] ?? '';
  const unit = match[3] ?? '';
  const factor = units.get(unit);
  if (factor === undefined) {
    // A bare K/M/G/T is refused rather than guessed: "512M" is MiB to some people and MB to others,
    // and a 5% error in capacity silently changes placements.
    if (unit.length === 1 && 'KMGT'.includes(unit.toUpperCase())) {
      const digits = fraction === '' ? whole : `${whole}.${fraction}`;
      return `${quote(text)} is ambiguous: write ${disambiguate(digits, unit.toUpperCase())}`;
    }
    return unknownUnit(text, unit, units, expected);
  }
  const numerator = BigInt(whole + fraction) * BigInt(factor);
  const denominator = 10n ** BigInt(fraction.length);
  const rounded = (2n * numerator + denominator) / (2n * denominator);
  if (rounded > BigInt(Number.MAX_SAFE_INTEGER)) return `${quote(text)} is too large`;
  return Number(rounded);
}

function unknownUnit(
  text: string,
  unit: string,
  units: ReadonlyMap<string, number>,
  expected: string,
): string {
  const candidates = [...units.keys()].filter((u) => u !== '' && u.toLowerCase() === unit.toLowerCase());
  if (candidates.length > 0) {
    return `unknown unit '${unit}' in ${quote(text)} (units are case-sensitive): did you mean ${candidates.join(' or ')}?`;
  }
  return `expected ${expected}, got ${quote(text)}`;
}

function quote(text: string): string {
  const shown = text.length > 40 ? `${text.slice(0, 40)}…` : text;
  return `'${shown}'`;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;
const RATE_NAMES = ['bit/s', 'kbit/s', 'Mbit/s', 'Gbit/s', 'Tbit/s'] as const;

/** "268435456" → "256 MiB", "1610612736" → "1.5 GiB"; at most two decimals. parseSize reads it back. */
export function formatBytes(bytes: number): string {
  return formatScaled(bytes, 1024, BYTE_UNITS);
}

/** 1e9 → "1 Gbit/s", 8e8 → "800 Mbit/s"; at most two decimals. parseRate reads it back. */
export function formatRate(bitsPerSecond: number): string {
  return formatScaled(bitsPerSecond, 1000, RATE_NAMES);
}

function formatScaled(value: number, base: number, names: readonly string[]): string {
  if (!Number.isFinite(value)) return String(value);
  if (value < 0) return `-${formatScaled(-value, base, names)}`;
  let unit = 0;
  let scaled = value;
  while (scaled >= base && unit < names.length - 1) {
    scaled /= base;
    unit += 1;
  }
  let text = twoDecimals(scaled);
  // 1023.999 MiB must print as 1 GiB, not 1024 MiB.
  if (Number(text) >= base && unit < names.length - 1) {
    unit += 1;
    text = twoDecimals(scaled / base);
  }
  return `${text} ${names[unit] ?? ''}`;
}

function twoDecimals(value: number): string {
  return value.toFixed(2).replace(/\.?0+$/, '');
}
