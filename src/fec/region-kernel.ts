/** Computes linear combinations of equal-length byte regions over GF(2^8). */
export interface RegionKernel {
  readonly name: 'simd' | 'scalar' | 'native';
  /**
   * outputs[r][0..length) = sum over j of coefficients[r * inputs.length + j] * inputs[j][0..length).
   * Every region must hold at least `length` bytes; outputs must not overlap inputs or each other.
   */
  combine(
    coefficients: Uint8Array,
    inputs: readonly Uint8Array[],
    outputs: readonly Uint8Array[],
    length: number,
  ): void;
}
