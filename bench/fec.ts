/**
 * Reed-Solomon FEC throughput for blocks of k = 32 source symbols with 1, 4 and 8 parity symbols, symbol
 * sizes 1400 and 8900 bytes, beside baselines measured in the same run on the same blocks: a memcpy of
 * the block and a plain XOR parity over it (the cheapest possible code).
 *
 *   node dist/bench/fec.js [--json] [--seconds 0.3]
 *
 * Figures are MB/s (10^6 bytes) of source data: block bytes (k x symbol size) per second, best of 5 trials.
 *   encode       all m parity symbols of a block in one call (encodeParities)
 *   encode/idx   the same, one parity symbol per call (as repairs are made, index by index, per NAK)
 *   decode       m data symbols lost, rebuilt from m parity symbols; the erasure pattern changes every
 *                block (256 patterns in turn, more than the decode-matrix cache holds), so the matrix
 *                inversion is in the figure
 * with the default (WebAssembly SIMD) kernel and, for reference, the scalar JavaScript kernel.
 * Target: the transport sustains 1 Gbit/s (125 MB/s) with a few % parity on a 2-core machine.
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { defaultKernel, scalarKernel, type RegionKernel } from '../src/fec/gf256.js';
import { ReedSolomon } from '../src/fec/reed-solomon.js';

const K = 32;
const SYMBOL_SIZES = [1400, 8900] as const;
const PARITY_COUNTS = [1, 4, 8] as const;
const MB = 1e6;
const TARGET_MB_PER_SECOND = 125;
const TRIALS = 5;

export interface FecRow {
  readonly symbolSize: number;
  readonly parity: number;
  readonly encode: number;
  readonly encodePerIndex: number;
  readonly decode: number;
  readonly scalarEncode: number;
  readonly scalarDecode: number;
}

export interface FecReport {
  readonly k: number;
  readonly kernel: string;
  readonly unit: 'MB/s of source data';
  readonly targetMbPerSecond: number;
  readonly baselines: readonly {
    readonly symbolSize: number;
    readonly memcpy: number;
    readonly xorParity: number;
  }[];
  readonly rows: readonly FecRow[];
}

/**
 * Calls per second of `once`: the best of TRIALS runs of seconds / TRIALS each (calls in growing batches),
 * so that other load on a shared machine shows as little as possible.
 */
function rate(once: () => void, seconds: number): number {
  for (let i = 0; i < 20; i++) once();
  let best = 0;
  for (let trial = 0; trial < TRIALS; trial++) {
    let calls = 0;
    let batch = 1;
    let elapsed = 0;
    const start = process.hrtime.bigint();
    while (elapsed < seconds / TRIALS) {
      for (let i = 0; i < batch; i++) once();
      calls += batch;
      batch = Math.min(batch * 2, 256);
      elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    }
    best = Math.max(best, calls / elapsed);
  }
  return best;
}

function randomBlock(size: number): Uint8Array[] {
  return Array.from({ length: K }, () => {
    const symbol = new Uint8Array(size);
    for (let i = 0; i < size; i++) symbol[i] = (Math.random() * 256) | 0;
    return symbol;
  });
}

/** The baseline code: parity = XOR of the sources, 32 bits at a time (all buffers here are aligned). */
function xorParity(sources: readonly Uint8Array[], out: Uint8Array): void {
  const words = out.length >>> 2;
  const o = new Uint32Array(out.buffer, out.byteOffset, words);
  o.set(new Uint32Array(sources[0]!.buffer, sources[0]!.byteOffset, words));
  for (let j = 1; j < sources.length; j++) {
    const s = new Uint32Array(sources[j]!.buffer, sources[j]!.byteOffset, words);
    for (let w = 0; w < words; w++) o[w]! ^= s[w]!;
  }
  for (let i = words << 2; i < out.length; i++) {
    let x = 0;
    for (const s of sources) x ^= s[i]!;
    out[i] = x;
  }
}

/** Pseudo-random erasure patterns: which m of the k data symbols are lost. */
function erasurePatterns(m: number, count: number): number[][] {
  return Array.from({ length: count }, () => {
    const lost = new Set<number>();
    while (lost.size < m) lost.add((Math.random() * K) | 0);
    return [...lost];
  });
}

function measureCode(
  kernel: RegionKernel,
  sources: readonly Uint8Array[],
  m: number,
  seconds: number,
): { encode: number; encodePerIndex: number; decode: number } {
  const size = sources[0]!.length;
  const blockBytes = K * size;
  const rs = new ReedSolomon(K, m, { kernel });
  const indices = Array.from({ length: m }, (_, i) => K + i);
  const parity = indices.map(() => new Uint8Array(size));
  const encode = rate(() => rs.encodeParities(sources, indices, parity), seconds) * blockBytes;
  const encodePerIndex =
    rate(() => {
      for (let i = 0; i < m; i++) rs.encodeParity(sources, K + i, parity[i]!);
    }, seconds) * blockBytes;

  const patterns = erasurePatterns(m, 256).map((lost) => {
    const symbols = new Map<number, Uint8Array>();
    sources.forEach((symbol, j) => {
      if (!lost.includes(j)) symbols.set(j, symbol);
    });
    parity.forEach((symbol, i) => symbols.set(K + i, symbol));
    return symbols;
  });
  // Received data symbols are decoded in place; only the lost ones get fresh buffers.
  const outs = patterns.map((symbols) =>
    Array.from({ length: K }, (_, j) => symbols.get(j) ?? new Uint8Array(size)),
  );
  let next = 0;
  const decode =
    rate(() => {
      rs.decode(patterns[next]!, outs[next]!);
      next = (next + 1) & 255;
    }, seconds) * blockBytes;
  const check = outs[(next + 255) & 255]!;
  for (let j = 0; j < K; j++) {
    if (Buffer.compare(check[j]!, sources[j]!) !== 0)
      throw new Error(`bench: decode mismatch at symbol ${j}`);
  }
  return { encode: encode / MB, encodePerIndex: encodePerIndex / MB, decode: decode / MB };
}

export function runFecBench(seconds = 0.3): FecReport {
  const baselines: { symbolSize: number; memcpy: number; xorParity: number }[] = [];
  const rows: FecRow[] = [];
  for (const size of SYMBOL_SIZES) {
    const sources = randomBlock(size);
    const blockBytes = K * size;
    const copies = sources.map(() => new Uint8Array(size));
    const memcpy = rate(() => {
      for (let j = 0; j < K; j++) copies[j]!.set(sources[j]!);
    }, seconds);
    const xorOut = new Uint8Array(size);
    const xor = rate(() => xorParity(sources, xorOut), seconds);
    baselines.push({
      symbolSize: size,
      memcpy: (memcpy * blockBytes) / MB,
      xorParity: (xor * blockBytes) / MB,
    });
    for (const m of PARITY_COUNTS) {
      const fast = measureCode(defaultKernel, sources, m, seconds);
      const scalar = measureCode(scalarKernel, sources, m, seconds / 2);
      rows.push({
        symbolSize: size,
        parity: m,
        encode: fast.encode,
        encodePerIndex: fast.encodePerIndex,
        decode: fast.decode,
        scalarEncode: scalar.encode,
        scalarDecode: scalar.decode,
      });
    }
  }
  return {
    k: K,
    kernel: defaultKernel.name,
    unit: 'MB/s of source data',
    targetMbPerSecond: TARGET_MB_PER_SECOND,
    baselines,
    rows,
  };
}

function printReport(report: FecReport): void {
  const n = (x: number) => x.toFixed(0).padStart(8);
  const lines = [
    `Reed-Solomon FEC, k = ${report.k}, ${report.unit} (1 MB = 10^6 bytes), best of ${TRIALS} trials; ` +
      `default kernel: ${report.kernel}`,
    '',
    ' symbol  parity    encode  enc/idx    decode  | scalar:  encode    decode',
  ];
  for (const r of report.rows) {
    lines.push(
      `${String(r.symbolSize).padStart(7)}  ${String(r.parity).padStart(6)}  ${n(r.encode)} ${n(r.encodePerIndex)}  ` +
        `${n(r.decode)}  |         ${n(r.scalarEncode)}  ${n(r.scalarDecode)}`,
    );
  }
  lines.push('', 'baselines, same run, same blocks:', ' symbol    memcpy  XOR parity (JS, 32-bit words)');
  for (const b of report.baselines) {
    lines.push(`${String(b.symbolSize).padStart(7)}  ${n(b.memcpy)}  ${n(b.xorParity)}`);
  }
  const worst = Math.min(...report.rows.map((r) => Math.min(r.encode, r.decode)));
  lines.push(
    '',
    `slowest encode/decode ${worst.toFixed(0)} MB/s vs ${report.targetMbPerSecond} MB/s (1 Gbit/s) on one core: ` +
      (worst >= report.targetMbPerSecond ? 'PASS' : 'MISS'),
  );
  console.log(lines.join('\n'));
}

function main(argv: readonly string[]): void {
  const { values } = parseArgs({
    args: [...argv],
    options: { json: { type: 'boolean' }, seconds: { type: 'string', default: '0.3' } },
  });
  const seconds = Number(values.seconds);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    process.stderr.write(`--seconds: expected a positive number, got '${values.seconds}'\n`);
    process.exit(2);
  }
  const report = runFecBench(seconds);
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else printReport(report);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2));
}
