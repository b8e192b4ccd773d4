/**
 * Announcements of held digests (src/announce/digest-set.ts): for n = 10k, 100k, 1M and 4M held digests,
 * the encoded size, the time to encode and decode, the lookup rate and the measured false-positive rate
 * of each encoding, beside the baseline measured in the same run on the same digests: the full list of
 * 16-byte digests, decoded into a DigestTable (exact, what the coordinator would do without this module).
 *
 *   node dist/bench/digest-set.js [--json] [--sizes 10000,100000,1000000,4000000]
 *
 * Rows per n:
 *   bloom 1e-4, bloom 1e-6    Bloom filters sized for those rates
 *   sorted8 fixed/delta       sorted 8-byte prefixes, fixed width and Elias-Fano delta coded
 *   choose 1e-4, choose 1e-6  chooseAnnouncement's pick for the rate (the smaller of the two kinds)
 *   full list (baseline)      n x 16 bytes
 * Columns: bytes sent, bits per digest, size against the full list, encode ms (from the packed digests,
 * sorting included), decode ms (bytes to a lookup structure), decoded memory, lookups per second (1M held
 * and 1M absent digests, best of 3), and false positives among the 1M absent digests.
 * Digests are random bytes, as keyed SHA-256 digests are. Target: every chosen announcement of up to 4M
 * digests at 1e-6 fits one control frame (16 MiB, src/control/control-channel.ts).
 */
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { DigestTable } from '../src/memory/digest-table.js';
import { DIGEST_BYTES } from '../src/memory/page.js';
import {
  BloomFilter,
  SortedDigests,
  chooseAnnouncement,
  decodeAnnouncement,
  type HeldDigests,
} from '../src/announce/digest-set.js';

const DEFAULT_SIZES = [10_000, 100_000, 1_000_000, 4_000_000] as const;
const QUERIES = 1_000_000;
const FRAME_LIMIT_BYTES = 16 * 2 ** 20;
const LOOKUP_TRIALS = 3;

export interface DigestSetRow {
  readonly n: number;
  readonly encoding: string;
  readonly bytes: number;
  readonly bitsPerDigest: number;
  readonly ofFullList: number;
  readonly encodeMs: number;
  readonly decodeMs: number;
  readonly decodedBytes: number | undefined;
  readonly lookupsPerSecond: number;
  readonly falsePositives: number;
  readonly absentQueries: number;
}

export interface DigestSetReport {
  readonly queries: number;
  readonly frameLimitBytes: number;
  readonly rows: readonly DigestSetRow[];
}

interface Candidate {
  readonly name: string;
  readonly encode: (digests: Uint8Array) => Uint8Array;
  readonly decode: (bytes: Uint8Array) => HeldDigests & { readonly bytesUsed?: number };
}

function milliseconds<T>(run: () => T): { value: T; ms: number } {
  const start = process.hrtime.bigint();
  const value = run();
  return { value, ms: Number(process.hrtime.bigint() - start) / 1e6 };
}

function mustDecode(bytes: Uint8Array): HeldDigests & { readonly bytesUsed?: number } {
  const held = decodeAnnouncement(bytes);
  if (held === undefined) throw new Error('bench: an announcement did not decode');
  return held;
}

function bloom(rate: number): Candidate {
  return {
    name: `bloom ${rate.toExponential(0)}`,
    encode: (digests) => {
      const n = digests.length / DIGEST_BYTES;
      const filter = BloomFilter.forCapacity(n, rate);
      for (let i = 0; i < n; i++) filter.add(digests, i * DIGEST_BYTES);
      return filter.encode();
    },
    decode: (bytes) => {
      const held = mustDecode(bytes) as BloomFilter;
      return Object.assign(held, { bytesUsed: held.bitCount / 8 });
    },
  };
}

const CANDIDATES: readonly Candidate[] = [
  bloom(1e-4),
  bloom(1e-6),
  {
    name: 'sorted8 fixed',
    encode: (digests) => SortedDigests.from(digests, 8).encode('fixed'),
    decode: mustDecode,
  },
  {
    name: 'sorted8 delta',
    encode: (digests) => SortedDigests.from(digests, 8).encode('delta'),
    decode: mustDecode,
  },
  ...[1e-4, 1e-6].map((rate): Candidate => ({
    name: `choose ${rate.toExponential(0)}`,
    encode: (digests) => chooseAnnouncement(digests, rate).bytes,
    decode: (bytes) => {
      const held = mustDecode(bytes);
      return held instanceof BloomFilter ? Object.assign(held, { bytesUsed: held.bitCount / 8 }) : held;
    },
  })),
  {
    name: 'full list (baseline)',
    encode: (digests) => digests.slice(),
    decode: (bytes) => {
      const n = bytes.length / DIGEST_BYTES;
      const table = new DigestTable(n);
      for (let i = 0; i < n; i++) table.intern(bytes, i * DIGEST_BYTES);
      return {
        count: n,
        falsePositiveRate: 0,
        bytesUsed: table.bytesUsed,
        mayHold: (digest: Uint8Array, offset = 0) => table.lookup(digest, offset) > 0,
      };
    },
  },
];

/** 1M held digests (picked at random) then 1M absent ones, packed. */
function queries(digests: Uint8Array): Uint8Array {
  const n = digests.length / DIGEST_BYTES;
  const out = new Uint8Array(2 * QUERIES * DIGEST_BYTES);
  for (let q = 0; q < QUERIES; q++) {
    const i = Math.floor(Math.random() * n);
    out.set(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), q * DIGEST_BYTES);
  }
  out.set(randomBytes(QUERIES * DIGEST_BYTES), QUERIES * DIGEST_BYTES);
  return out;
}

function measure(n: number, candidate: Candidate, digests: Uint8Array, probes: Uint8Array): DigestSetRow {
  const encoded = milliseconds(() => candidate.encode(digests));
  const bytes = encoded.value;
  const decoded = milliseconds(() => candidate.decode(bytes));
  const held = decoded.value;
  let best = 0;
  let falsePositives = 0;
  for (let trial = 0; trial < LOOKUP_TRIALS; trial++) {
    let hits = 0;
    let absentHits = 0;
    const { ms } = milliseconds(() => {
      for (let q = 0; q < QUERIES; q++) if (held.mayHold(probes, q * DIGEST_BYTES)) hits++;
      for (let q = QUERIES; q < 2 * QUERIES; q++) if (held.mayHold(probes, q * DIGEST_BYTES)) absentHits++;
    });
    if (hits !== QUERIES) throw new Error(`bench: ${candidate.name} lost ${QUERIES - hits} held digests`);
    best = Math.max(best, (2 * QUERIES) / (ms / 1e3));
    falsePositives = absentHits;
  }
  return {
    n,
    encoding: candidate.name,
    bytes: bytes.length,
    bitsPerDigest: (bytes.length * 8) / n,
    ofFullList: bytes.length / (n * DIGEST_BYTES),
    encodeMs: encoded.ms,
    decodeMs: decoded.ms,
    decodedBytes: held.bytesUsed,
    lookupsPerSecond: best,
    falsePositives,
    absentQueries: QUERIES,
  };
}

export function runDigestSetBench(sizes: readonly number[] = DEFAULT_SIZES): DigestSetReport {
  const rows: DigestSetRow[] = [];
  for (const n of sizes) {
    const digests = new Uint8Array(randomBytes(n * DIGEST_BYTES));
    const probes = queries(digests);
    for (const candidate of CANDIDATES) rows.push(measure(n, candidate, digests, probes));
  }
  return { queries: QUERIES, frameLimitBytes: FRAME_LIMIT_BYTES, rows };
}

function printReport(report: DigestSetReport): void {
  const mb = (x: number) => (x / 2 ** 20).toFixed(2);
  const lines = [
    `Held-digest announcements; lookups: ${report.queries / 1e6}M held + ${report.queries / 1e6}M absent ` +
      `digests, best of ${LOOKUP_TRIALS}; fp = hits among the absent; MiB = 2^20 bytes`,
    '',
    '       n  encoding                 MiB sent  bits/dig  of full  encode ms  decode ms  decoded MiB  Mlookups/s   fp/1M',
  ];
  for (const r of report.rows) {
    lines.push(
      `${String(r.n).padStart(8)}  ${r.encoding.padEnd(22)} ${mb(r.bytes).padStart(10)}  ` +
        `${r.bitsPerDigest.toFixed(1).padStart(8)}  ${(r.ofFullList * 100).toFixed(1).padStart(6)}%  ` +
        `${r.encodeMs.toFixed(1).padStart(9)}  ${r.decodeMs.toFixed(1).padStart(9)}  ` +
        `${(r.decodedBytes === undefined ? '-' : mb(r.decodedBytes)).padStart(11)}  ` +
        `${(r.lookupsPerSecond / 1e6).toFixed(2).padStart(10)}  ${String(r.falsePositives).padStart(6)}`,
    );
  }
  const chosen = report.rows.filter((r) => r.encoding === 'choose 1e-6');
  const largest = Math.max(...chosen.map((r) => r.bytes));
  lines.push(
    '',
    `largest chosen announcement at 1e-6: ${mb(largest)} MiB vs the ${mb(report.frameLimitBytes)} MiB control frame: ` +
      (largest <= report.frameLimitBytes ? 'PASS' : 'MISS'),
  );
  console.log(lines.join('\n'));
}

function main(argv: readonly string[]): void {
  const { values } = parseArgs({
    args: [...argv],
    options: { json: { type: 'boolean' }, sizes: { type: 'string', default: DEFAULT_SIZES.join(',') } },
  });
  const sizes = values.sizes.split(',').map(Number);
  if (sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 2 ** 26)) {
    process.stderr.write(`--sizes: expected whole numbers from 1 to 2^26, got '${values.sizes}'\n`);
    process.exit(2);
  }
  const report = runDigestSetBench(sizes);
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else printReport(report);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2));
}
