/**
 * The scatter job's control messages between the coordinator (`vmscatter scatter`, on the source) and
 * each agent (`vmscatter agent`, on a target), carried by the authenticated control channel.
 *
 * A job, as the agent sees it:
 *   job -> ready (what it holds: an announcement of digests, and images already verified)
 *   confirm-held -> held-confirmed (which announced pages its running VMs' streams may refer to)
 *   seed* -> seeded* (one per multicast group it receives: a session for the whole seeding, whose
 *     key travels here)
 *   fetch-from* -> fetched* (pages a peer of its site holds; the agent fetches them there with 'fetch')
 *   vm -> missing? -> pages* -> rebuild -> rebuilt (one per VM image placed on it)
 *   live-* (one exchange per running VM placed on it: live/messages.ts; each live-stream is acknowledged
 *     once the destination QEMU took its bytes)
 *   end
 * and between agents of a site: fetch -> pages (the asking agent checks every page against its digest).
 *
 * Messages come off the network, so every one is checked field by field (`parseToAgent`,
 * `parseFromAgent`); anything else is dropped and counted by the receiving side, never trusted.
 */

import type { LiveFromAgent, LiveToAgent } from '../live/messages.js';
import { isLiveRecord } from '../live/records.js';
import { DIGEST_BYTES } from '../memory/page.js';

/**
 * 2: several jobs per agent, with guest memory reserved per job ('reserve', 'ready'.reserved).
 * 3: agents name the codecs they decode beyond LZ4 ('ready'.codecs: 'zstd' for live page runs).
 * 4: agents confirm exactly the announced pages a live stream will refer to ('confirm-held').
 * 5: live page runs mark the pages sent in full that both ends remember (KEEP in live/batch.ts).
 * 6: one open multicast session per group for the whole seeding; 'seeded' says how many of its
 *    leading objects were stored ('objects').
 */
export const PROTOCOL_VERSION = 6;

/** A VM's name as the job protocol carries it (agents name files and sockets after it). */
export const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export type ToAgent =
  | { readonly t: 'job'; readonly version: number; readonly job: string; readonly host: string }
  /**
   * This job places `bytes` of guest memory here: the agent holds them for the job until it ends, if
   * they fit in `capacity` (the coordinator's view of the target's) beside other jobs' reservations.
   */
  | { readonly t: 'reserve'; readonly bytes: number; readonly capacity: number }
  /**
   * Which of these digests (16 bytes each) the agent holds, exactly: an announcement may say a page is
   * held that is not (a false positive), and a live stream must refer only to pages that are.
   */
  | { readonly t: 'confirm-held'; readonly digests: Uint8Array }
  | {
      readonly t: 'seed';
      readonly session: number;
      /** AES-256-GCM key of this round's multicast session, or empty for explicit plaintext. */
      readonly key: Uint8Array;
      /** Multicast group "address:port". */
      readonly group: string;
      /** The coordinator's unicast "address:port" for NAKs and reports. */
      readonly sender: string;
      /** This agent's receiver id in the session. */
      readonly receiver: number;
      readonly maxObjectBytes: number;
    }
  | {
      readonly t: 'vm';
      readonly vm: string;
      readonly pages: number;
      readonly sha256: string;
      /** The VM's distinct non-zero page digests, 16 bytes each; the manifest indexes into them. */
      readonly digests: Uint8Array;
      /** How many VMs of the job hold each of those digests (u16 LE each): the template weight. */
      readonly weights: Uint8Array;
      readonly manifest: Uint8Array;
    }
  | { readonly t: 'pages'; readonly records: Uint8Array }
  | { readonly t: 'rebuild'; readonly vm: string }
  /** Fetch these digests (16 bytes each) from the agent at `peer` ("address:port") of the same site. */
  | { readonly t: 'fetch-from'; readonly id: number; readonly peer: string; readonly digests: Uint8Array }
  /** From a peer agent: send back, as 'pages', those of these digests held. */
  | { readonly t: 'fetch'; readonly digests: Uint8Array }
  | LiveToAgent
  | { readonly t: 'end' };

export interface VerifiedImage {
  readonly vm: string;
  readonly sha256: string;
}

export type FromAgent =
  | {
      readonly t: 'ready';
      readonly job: string;
      readonly host: string;
      /** Digest announcement (digest-set.ts) of the pages the agent holds. */
      readonly held: Uint8Array;
      readonly heldCount: number;
      readonly verified: readonly VerifiedImage[];
      /** Bytes free where the agent keeps its store and images (pre-flight checks). */
      readonly freeBytes: number;
      /** `qemu-system-x86_64 --version`'s version, or '' when there is none. */
      readonly qemuVersion: string;
      /** Running VMs whose destinations this agent started and which run here now. */
      readonly running: readonly string[];
      /** Guest memory other jobs under way reserved here (bytes): this job's placement leaves it. */
      readonly reserved: number;
      /** Codecs this agent decodes beyond LZ4: 'zstd' where it has libzstd (memory/batch-zstd.ts). */
      readonly codecs: readonly string[];
    }
  /** The reservation was taken (ok) or did not fit; `reserved` is what other jobs hold now. */
  | { readonly t: 'reserved'; readonly ok: boolean; readonly reserved: number }
  /** The answer to 'confirm-held': bit i (bit i % 8 of byte i / 8) set when digest i is held. */
  | { readonly t: 'held-confirmed'; readonly held: Uint8Array }
  | {
      readonly t: 'seeded';
      readonly session: number;
      readonly state: 'complete' | 'failed';
      /** Pages stored, and pages whose record failed its digest check. */
      readonly stored: number;
      readonly rejected: number;
      /** Leading objects of the session stored (all of them when complete): the rounds it holds. */
      readonly objects: number;
      /** Datagrams the session's receiver dropped: forged, replayed, stale, truncated or malformed. */
      readonly dropped: number;
    }
  /** Indices (u32 LE) into the VM's digest list of pages the agent lacks. */
  | { readonly t: 'missing'; readonly vm: string; readonly indices: Uint8Array }
  | {
      readonly t: 'rebuilt';
      readonly vm: string;
      readonly ok: boolean;
      readonly sha256: string;
      readonly error: string;
    }
  /** The outcome of a 'fetch-from': pages stored; the rest will be asked for at rebuild time. */
  | { readonly t: 'fetched'; readonly id: number; readonly stored: number; readonly failed: number }
  | LiveFromAgent
  | { readonly t: 'error'; readonly message: string };

type Check = (value: unknown) => boolean;
const isString: Check = (v) => typeof v === 'string' && v.length <= 4096;
const isUint: Check = (v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
/** A VM's pages: at most 2^32 (16 TiB of guest memory), so nothing sized from it can overflow. */
const isPageCount: Check = (v) => isUint(v) && (v as number) <= 2 ** 32;
const isBytes: Check = (v) => v instanceof Uint8Array;
const isBool: Check = (v) => typeof v === 'boolean';
const isVerifiedList: Check = (v) =>
  Array.isArray(v) &&
  v.length <= 65536 &&
  v.every((e) => typeof e === 'object' && e !== null && isString(e.vm) && isString(e.sha256));

/** A guest's main RAM as the source's QEMU lays it out (qemu/memory-map.ts MainRam). */
const isMainRam: Check = (v) => {
  if (typeof v !== 'object' || v === null) return false;
  const { block, bytes, ranges } = v as { block?: unknown; bytes?: unknown; ranges?: unknown };
  return (
    isString(block) &&
    isUint(bytes) &&
    Array.isArray(ranges) &&
    ranges.length <= 64 &&
    ranges.every(
      (r: { offset?: unknown; gpa?: unknown; length?: unknown } | null) =>
        typeof r === 'object' && r !== null && isUint(r.offset) && isUint(r.gpa) && isUint(r.length),
    )
  );
};

const toAgentShapes: Record<ToAgent['t'], Record<string, Check>> = {
  job: { version: isUint, job: isString, host: isString },
  reserve: { bytes: isUint, capacity: isUint },
  'confirm-held': { digests: (v) => isBytes(v) && (v as Uint8Array).length % DIGEST_BYTES === 0 },
  seed: {
    session: isUint,
    key: isBytes,
    group: isString,
    sender: isString,
    receiver: isUint,
    maxObjectBytes: isUint,
  },
  vm: {
    vm: isString,
    pages: isPageCount,
    sha256: isString,
    digests: isBytes,
    weights: isBytes,
    manifest: isBytes,
  },
  pages: { records: isBytes },
  rebuild: { vm: isString },
  'fetch-from': { id: isUint, peer: isString, digests: isBytes },
  fetch: { digests: isBytes },
  'live-incoming': {
    vm: isString,
    command: (v) => Array.isArray(v) && v.length >= 1 && v.length <= 4096 && v.every((a) => isString(a)),
  },
  'live-attach': { vm: isString, domain: isString, socket: isString, ram: (v) => isMainRam(v) },
  'live-stream': {
    vm: isString,
    records: (v) => Array.isArray(v) && v.length <= 1 << 20 && v.every((r) => isLiveRecord(r)),
  },
  'live-end': {
    vm: isString,
    sha256: isString,
    memorySeed: (v) => isBytes(v) && (v as Uint8Array).length === 32,
  },
  'live-resume': { vm: isString },
  'live-repair': { vm: isString, chunks: isBytes },
  'live-abort': { vm: isString },
  end: {},
};

const fromAgentShapes: Record<FromAgent['t'], Record<string, Check>> = {
  ready: {
    job: isString,
    host: isString,
    held: isBytes,
    heldCount: isUint,
    verified: isVerifiedList,
    freeBytes: isUint,
    qemuVersion: isString,
    running: (v) => Array.isArray(v) && v.length <= 65_536 && v.every((name) => isString(name)),
    reserved: isUint,
    codecs: (v) => Array.isArray(v) && v.length <= 16 && v.every((name) => isString(name)),
  },
  reserved: { ok: isBool, reserved: isUint },
  'held-confirmed': { held: isBytes },
  seeded: {
    session: isUint,
    state: (v) => v === 'complete' || v === 'failed',
    stored: isUint,
    rejected: isUint,
    objects: isUint,
    dropped: isUint,
  },
  missing: { vm: isString, indices: isBytes },
  rebuilt: { vm: isString, ok: isBool, sha256: isString, error: isString },
  fetched: { id: isUint, stored: isUint, failed: isUint },
  'live-ready': { vm: isString },
  'live-refused': { vm: isString, error: isString },
  'live-ack': { vm: isString },
  'live-verified': { vm: isString, ok: isBool, error: isString, memory: isBytes },
  'live-resumed': { vm: isString },
  'live-repaired': { vm: isString, ok: isBool, error: isString, digests: isBytes },
  error: { message: isString },
};

function parseWith<T>(shapes: Record<string, Record<string, Check>>, value: unknown): T | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const record = value as Record<string, unknown>;
  const shape = typeof record.t === 'string' ? shapes[record.t] : undefined;
  if (!shape || !Object.hasOwn(shapes, record.t as string)) return undefined;
  for (const [field, check] of Object.entries(shape)) if (!check(record[field])) return undefined;
  return value as T;
}

/** A coordinator's message as an agent receives it, or undefined when it is not one. */
export function parseToAgent(value: unknown): ToAgent | undefined {
  return parseWith<ToAgent>(toAgentShapes, value);
}

/** An agent's message as the coordinator receives it, or undefined when it is not one. */
export function parseFromAgent(value: unknown): FromAgent | undefined {
  return parseWith<FromAgent>(fromAgentShapes, value);
}
