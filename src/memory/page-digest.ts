import { createHash, hkdfSync, randomBytes, type Hash } from 'node:crypto';
import { native } from '../native/native.js';
import { DIGEST_BYTES, isZeroPage, PAGE_SIZE } from './page.js';

/**
 * Page digests: the first 128 bits of SHA-256(key || page), with a 64-byte secret key.
 *
 * Why keyed: a guest controls its own memory. With a public hash a guest could search offline for a
 * page colliding with one it expects in another tenant's memory, and the target would then rebuild the
 * victim's page from the attacker's bytes. With a secret key no digest can be computed outside the
 * deployment, so no collision can be searched for; 128 bits then leave accidental collisions at about
 * n^2 / 2^129 (1e-20 for 2^40 pages), and halve the digest store against full SHA-256.
 * Why SHA-256: it runs on the SHA extensions of these CPUs (about 0.8 GB/s a core per 4 KiB page here,
 * call overhead included, beside 0.6 for BLAKE2b and 0.4 for HMAC-SHA-256; `npm run bench:fingerprint`).
 * The key fills exactly one SHA-256 block, so its state is computed once and copied per page; the
 * length-extension property of SHA-256 does not apply, pages being of one fixed length and the output
 * truncated.
 */

export const DIGEST_KEY_BYTES = 64;

/** A page check's size (PageDigester.digestChecked): a fast 64-bit lane digest kept beside a digest. */
export const PAGE_CHECK_BYTES = 8;

/** Derives the page-digest key from a deployment secret (every host of a deployment derives the same). */
export function deriveDigestKey(secret: Uint8Array | string): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', secret, 'vmscatter', 'page-digest v1', DIGEST_KEY_BYTES));
}

/** A fresh random key, for scans whose digests never leave the process (inspect, plan). */
export function randomDigestKey(): Uint8Array {
  return new Uint8Array(randomBytes(DIGEST_KEY_BYTES));
}

/**
 * Computes keyed page digests; holds the keyed SHA-256 state so each page costs one copy of it. The
 * native addon does the copy as a struct copy (about 2.4 us a page here, against 5 us through Node's
 * crypto, which makes a hash object per page); Node's crypto is the fallback.
 */
export class PageDigester {
  private readonly keyed: Hash;
  private readonly nativeState: object | undefined;

  constructor(key: Uint8Array) {
    if (key.length !== DIGEST_KEY_BYTES) throw new RangeError(`digest key must be ${DIGEST_KEY_BYTES} bytes`);
    this.keyed = createHash('sha256').update(key);
    this.nativeState = native?.keyedState(key);
  }

  /** Whether digests are computed by the native addon. */
  get isNative(): boolean {
    return this.nativeState !== undefined;
  }

  /** Writes the digest of the page at pages[offset..offset+PAGE_SIZE) into out[outOffset..+16). */
  digestInto(pages: Uint8Array, offset: number, out: Uint8Array, outOffset: number): void {
    if (this.nativeState !== undefined)
      return native!.digestPages(this.nativeState, pages, offset, 1, out, outOffset);
    const digest = this.keyed
      .copy()
      .update(pages.subarray(offset, offset + PAGE_SIZE))
      .digest();
    out.set(digest.subarray(0, DIGEST_BYTES), outOffset);
  }

  /** Digests of `count` consecutive pages from pages[offset..], 16 bytes each into out[outOffset..]. */
  digestMany(pages: Uint8Array, offset: number, count: number, out: Uint8Array, outOffset: number): void {
    if (this.nativeState !== undefined)
      return native!.digestPages(this.nativeState, pages, offset, count, out, outOffset);
    for (let i = 0; i < count; i++)
      this.digestInto(pages, offset + i * PAGE_SIZE, out, outOffset + i * DIGEST_BYTES);
  }

  /**
   * Whether the page at pages[offset..] still has the check `checks` holds for it at `index` (from
   * `scanPages`): then the digest known with that check is its digest, and `out` is left alone.
   * Otherwise its digest is written to out[0..16) and that check is cleared. Without the addon there
   * are no checks (all zero), so this always digests.
   */
  digestChecked(
    pages: Uint8Array,
    offset: number,
    checks: Uint8Array,
    index: number,
    out: Uint8Array,
  ): boolean {
    if (this.nativeState !== undefined)
      return native!.digestPageChecked(this.nativeState, pages, offset, checks, index, out);
    this.digestInto(pages, offset, out, 0);
    return false;
  }

  /**
   * A scan's step, in libuv's thread pool where the addon is built: reads `count` pages from `file`
   * (when given; only where `isNative`; with a pid, that process's memory) into `pages`, then marks
   * each page zero (zeros[i] = 1) or writes its digest to `digests`, and its check to checks[8 i..]
   * when `checks` is given (only where `isNative`: a check is the addon's lane digest, 0 for none).
   * The event loop meanwhile handles what the previous step found.
   */
  async scanPages(
    file: { readonly fd: number; readonly position: number; readonly pid?: number } | undefined,
    pages: Uint8Array,
    count: number,
    digests: Uint8Array,
    zeros: Uint8Array,
    checks?: Uint8Array,
  ): Promise<void> {
    if (this.nativeState !== undefined)
      return native!.scanPages(
        this.nativeState,
        file?.fd ?? -1,
        file?.position ?? 0,
        pages,
        count,
        digests,
        zeros,
        checks,
        file?.pid,
      );
    if (file) throw new Error('PageDigester.scanPages: reading a file needs the native addon');
    checks?.fill(0, 0, count * PAGE_CHECK_BYTES);
    for (let i = 0; i < count; i++) {
      zeros[i] = isZeroPage(pages, i * PAGE_SIZE) ? 1 : 0;
      if (zeros[i] === 0) this.digestInto(pages, i * PAGE_SIZE, digests, i * DIGEST_BYTES);
    }
  }
}
