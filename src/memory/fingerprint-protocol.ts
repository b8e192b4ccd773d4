import type { PageSourceSpec } from './page-source.js';

/** Messages between the fingerprint pool and its workers. */

export interface WorkerInit {
  readonly type: 'init';
  readonly key: Uint8Array;
}

export interface ChunkRequest {
  readonly type: 'job';
  readonly jobId: number;
  /** Index of the VM (its input) in the scan: the worker opens each source once, keyed by it. */
  readonly vm: number;
  readonly source: PageSourceSpec;
  readonly firstPage: number;
  readonly count: number;
}

export type ChunkReply =
  | {
      readonly type: 'chunk';
      readonly jobId: number;
      /** 16 bytes per page; undefined content where the page is zero. */
      readonly digests: Uint8Array;
      /** 1 where the page is all zero. */
      readonly zero: Uint8Array;
    }
  | { readonly type: 'error'; readonly jobId: number; readonly message: string };
