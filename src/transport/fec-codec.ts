import type { ErasureDecoder } from './multicast-receiver.js';
import type { ParityEncoder } from './multicast-sender.js';
import { fastestKernel } from '../fec/gf256.js';
import { MAX_BLOCK_SYMBOLS, ReedSolomon } from '../fec/reed-solomon.js';

/**
 * Reed-Solomon for the protocol: one code per block size k (an object's last block is short), each
 * able to make every parity row the wire allows (indices k..254), built on first use.
 */
export class BlockCodec implements ParityEncoder, ErasureDecoder {
  private readonly codes = new Map<number, ReedSolomon>();

  encodeParity(sources: readonly Uint8Array[], parityIndex: number): Uint8Array {
    const out = new Uint8Array(sources[0]!.length);
    this.code(sources.length).encodeParity(sources, parityIndex, out);
    return out;
  }

  decode(k: number, symbols: ReadonlyMap<number, Uint8Array>, symbolSize: number): Uint8Array[] {
    const out = Array.from({ length: k }, (_, i) => symbols.get(i) ?? new Uint8Array(symbolSize));
    this.code(k).decode(symbols, out);
    return out;
  }

  private code(k: number): ReedSolomon {
    let code = this.codes.get(k);
    if (!code) {
      code = new ReedSolomon(k, MAX_BLOCK_SYMBOLS - k, { kernel: fastestKernel });
      this.codes.set(k, code);
    }
    return code;
  }
}
