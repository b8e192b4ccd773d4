import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DIGEST_BYTES, isZeroPage } from '../memory/page.js';
import type { PageDigester } from '../memory/page-digest.js';
import { StreamParser } from '../qemu/migration-stream.js';
import { openGuestRam, type GuestRamMethod } from '../qemu/guest-ram.js';
import type { QmpClient } from '../qemu/qmp.js';
import type { AgentLink } from './agent-link.js';
import type { CopyStrategy } from './copy-strategy.js';
import { compareMemory, decodeMemoryDigests, digestGuestRam } from './live-memory-check.js';
import { StreamDigest, StreamPageMemory, type LiveRecord } from './live-records.js';
import { encodePage, PageEncoding } from './page-codec.js';
import { streamListener, waitMigrationSettled, withTimeout } from './live-source.js';

/**
 * Phase 5 for a running VM: QEMU migrates into the coordinator, which passes the stream on to the
 * target agent record by record, sending a page the target holds, or one this stream already carried
 * in full (StreamPageMemory), as its digest, and any other page compressed where LZ4 shrinks it. The
 * agent writes the stream, pages put back, into a destination QEMU started paused. Only when both ends
 * agree on the stream's digest and the destination has loaded it does the destination resume and the
 * source quit; on any failure before that the destination is killed and the source resumed: the VM
 * runs at its source or at its target, never nowhere.
 *
 * Backpressure: the coordinator stops reading QEMU's socket while the control channel's buffer is
 * full or the destination has not taken what was sent (live-ack), so QEMU sees the real rate, end to
 * end, and its convergence logic (dirty rate against bandwidth) works.
 */
export interface LiveMigrationResult {
  readonly ok: boolean;
  readonly error?: string;
  /**
   * The stream arrived whole but the target's guest memory was not the source's (pages QEMU never
   * sent): rolled back, and worth another try.
   */
  readonly memoryMismatch?: boolean;
  /** How the source's RAM was read for the memory check (absent when the check was not reached). */
  readonly memoryCheck?: { readonly method: GuestRamMethod; readonly ms: number };
  /**
   * Pages sent as references (held at the target), as data (of which encoded smaller: LZ4, or one word
   * for a uniform page), and as zero records.
   */
  readonly referencedPages: number;
  readonly sentPages: number;
  readonly compressedPages: number;
  readonly zeroPages: number;
  /** Bytes of stream QEMU produced, and bytes sent to the agent (records, before channel framing). */
  readonly streamBytes: number;
  readonly sentBytes: number;
  /** The source's own downtime figure plus the time from the stream's end to the target running (ms). */
  readonly downtimeMs: number;
  /** The two parts of the downtime: QEMU's figure at the source, and stream end to running (ms). */
  readonly sourceDowntimeMs: number;
  readonly switchoverMs: number;
  readonly seconds: number;
}

/** A migration's figures before anything moved (and of one that never started). */
export const NOTHING_MOVED = {
  referencedPages: 0,
  sentPages: 0,
  compressedPages: 0,
  zeroPages: 0,
  streamBytes: 0,
  sentBytes: 0,
  downtimeMs: 0,
  sourceDowntimeMs: 0,
  switchoverMs: 0,
  seconds: 0,
} as const;

const MESSAGE_BYTES = 1 << 20;
/**
 * End-to-end flow control: a message stands for at most this much of QEMU's stream (references put
 * back), and at most MESSAGES_IN_FLIGHT are not yet taken by the destination. So the source's QEMU is
 * read at the rate the destination loads, and when it stops the guest for the last pass the
 * destination is at most about 8 MiB behind, not a whole backlog of expanded references.
 */
const MESSAGE_STREAM_BYTES = 4 << 20;
const MESSAGES_IN_FLIGHT = 2;
const STEP_TIMEOUT_MS = 120_000;

export async function migrateLiveVm(options: {
  readonly vm: string;
  readonly command: readonly string[];
  readonly source: QmpClient;
  /** The source QEMU's QMP socket (finds its process, whose memory the check reads). */
  readonly sourceQmpSocket?: string;
  readonly link: AgentLink;
  readonly runDir: string;
  readonly digester: PageDigester;
  /** Whether the target holds the page with this digest. */
  readonly holds: (digest: Uint8Array) => boolean;
  /** Told of every page sent as data (not held at the target), by its digest. */
  readonly onSentInFull?: (digest: Uint8Array) => void;
  readonly maxBandwidthBytesPerSecond: number;
  /** Pages sent in full go LZ4-compressed when that shrinks them (uniform pages always as one word). */
  readonly compress: boolean;
  readonly strategy: CopyStrategy;
  /** QEMU's downtime limit for the final pass (ms). */
  readonly downtimeLimitMs: number;
  /**
   * The migration must be done by then (ms from its start): on expiry, 'abort' rolls it back and
   * 'stop-and-copy' stops the guest so the copy ends.
   */
  readonly timeout?: { readonly ms: number; readonly action: 'abort' | 'stop-and-copy' };
  /** Aborting (Ctrl-C) rolls the migration back: the VM runs on at its source. */
  readonly signal?: AbortSignal;
}): Promise<LiveMigrationResult> {
  const { vm, source, link } = options;
  const started = performance.now();
  const counts: { -readonly [K in keyof typeof NOTHING_MOVED]: number } = { ...NOTHING_MOVED };
  let memoryCheck: LiveMigrationResult['memoryCheck'];
  const fail = async (error: unknown): Promise<LiveMigrationResult> => {
    // Roll back: the destination goes, the source runs on (whether or not it had stopped).
    link.send({ t: 'live-abort', vm });
    await source.execute('migrate_cancel').catch(() => undefined);
    await waitMigrationSettled(source).catch(() => undefined);
    const status = (await source.execute('query-status').catch(() => ({}))) as { status?: string };
    if (status.status !== 'running') await source.execute('cont').catch(() => undefined);
    return {
      ok: false,
      error: error instanceof Error ? error.message : String(error),
      ...(error instanceof MemoryMismatch ? { memoryMismatch: true } : {}),
      ...(memoryCheck ? { memoryCheck } : {}),
      ...counts,
      seconds: (performance.now() - started) / 1000,
    };
  };
  mkdirSync(options.runDir, { recursive: true, mode: 0o700 });
  const listener = streamListener(join(options.runDir, `${vm}.out`));
  try {
    link.send({ t: 'live-incoming', vm, command: [...options.command] });
    await link.next('live-ready', (m) => m.vm === vm, STEP_TIMEOUT_MS);
    options.signal?.throwIfAborted();
    await source.execute('migrate-set-parameters', {
      'max-bandwidth': Math.max(1, Math.round(options.maxBandwidthBytesPerSecond)),
      'downtime-limit': Math.max(1, Math.round(options.downtimeLimitMs)),
    });
    await source.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'auto-converge', state: options.strategy === 'precopy-auto-converge' }],
    });
    // Stop-and-copy: the guest stops for the whole copy (it could not converge, or is tiny); a
    // rollback resumes it.
    if (options.strategy === 'stop-and-copy') await source.execute('stop');
    await source.execute('migrate', { uri: `unix:${join(options.runDir, `${vm}.out`)}` });
    const socket = await withTimeout(listener.accepted, 30_000, `VM ${vm}: QEMU did not connect`);
    // A complete stream ends with the VM description: one cut short inside device state is refused.
    const parser = new StreamParser();
    const digest = new StreamDigest();
    const hash = new Uint8Array(DIGEST_BYTES);
    const sentBefore = new StreamPageMemory();
    let batch: LiveRecord[] = [];
    let batchBytes = 0;
    // Stream bytes the batch stands for once the target puts referenced pages back.
    let batchStreamBytes = 0;
    let unacknowledged = 0;
    // Counted down before each wait, so two waiters at once never wait for the same ack.
    const acknowledged = async (atMost: number) => {
      while (unacknowledged > atMost) {
        unacknowledged--;
        await link.next('live-ack', (m) => m.vm === vm, STEP_TIMEOUT_MS);
      }
    };
    let flushing: Promise<void> = Promise.resolve();
    const flush = async () => {
      if (batch.length === 0) return;
      link.send({ t: 'live-stream', vm, records: batch });
      unacknowledged++;
      counts.sentBytes += batchBytes;
      batch = [];
      batchBytes = 0;
      batchStreamBytes = 0;
      await link.drain();
      await acknowledged(MESSAGES_IN_FLIGHT - 1);
    };
    await new Promise<void>((resolve, reject) => {
      const abort = () => {
        socket.destroy();
        reject(options.signal?.reason ?? new Error('aborted'));
      };
      if (options.signal?.aborted) return abort();
      options.signal?.addEventListener('abort', abort, { once: true });
      const timer = options.timeout
        ? setTimeout(() => {
            if (options.timeout!.action === 'abort') {
              socket.destroy();
              reject(new Error(`VM ${vm}: not migrated within ${Math.round(options.timeout!.ms / 1000)} s`));
            } else void source.execute('stop').catch(() => undefined);
          }, options.timeout.ms)
        : undefined;
      socket.once('close', () => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', abort);
      });
      socket.on('data', (chunk: Buffer) => {
        counts.streamBytes += chunk.length;
        let records;
        try {
          records = parser.push(chunk);
        } catch (error) {
          socket.destroy();
          return reject(error);
        }
        for (const record of records) {
          digest.add(record);
          if (record.kind === 'page' && !isZeroPage(record.data, 0)) {
            options.digester.digestInto(record.data, 0, hash, 0);
            if (options.holds(hash) || sentBefore.has(hash)) {
              counts.referencedPages++;
              batch.push({ kind: 'ref', block: record.block, offset: record.offset, digest: hash.slice() });
              batchBytes += 40;
              batchStreamBytes += record.data.length;
              continue;
            }
            counts.sentPages++;
            sentBefore.remember(hash);
            options.onSentInFull?.(hash);
            const { encoding, payload } = encodePage(record.data, options.compress);
            if (encoding === PageEncoding.Raw) {
              batch.push({ ...record, data: record.data.slice() });
              batchBytes += record.data.length + 24;
            } else {
              counts.compressedPages++;
              batch.push({ kind: 'packed', block: record.block, offset: record.offset, encoding, payload });
              batchBytes += payload.length + 24;
            }
            batchStreamBytes += record.data.length;
            continue;
          }
          if (record.kind === 'zero' || record.kind === 'page') counts.zeroPages++;
          batch.push(copyRecord(record));
          batchBytes += 24 + ('bytes' in record ? record.bytes.length : 0);
        }
        if (batchBytes >= MESSAGE_BYTES || batchStreamBytes >= MESSAGE_STREAM_BYTES) {
          socket.pause();
          flushing = flush();
          flushing.then(
            () => socket.resume(),
            (error: unknown) => {
              socket.destroy(); // its 'close' clears the timer and the abort listener
              reject(error);
            },
          );
        }
      });
      socket.once('close', () => {
        try {
          parser.end();
          resolve();
        } catch (error) {
          reject(error);
        }
      });
      socket.once('error', reject);
    });
    // QEMU closes the stream once its migration completed: the guest is stopped from then on.
    const streamEnded = performance.now();
    // A paused socket still closes: the flush its last chunk started may still be under way.
    await flushing;
    await flush();
    await acknowledged(0);
    const status = await waitMigrationSettled(source);
    if (status !== 'completed') throw new Error(`VM ${vm}: the source's migration ended '${status}'`);
    link.send({ t: 'live-end', vm, sha256: digest.hex() });
    // The source is stopped now: its RAM is read while the target loads the stream's end and reads its
    // own, and the two must agree chunk for chunk before the target may run.
    const checkStarted = performance.now();
    const ram = await openGuestRam(source, {
      ...(options.sourceQmpSocket ? { qmpSocket: options.sourceQmpSocket } : {}),
      scratchDir: join(options.runDir, 'ram'),
      name: vm,
      running: false,
    });
    let sourceMemory;
    try {
      sourceMemory = await digestGuestRam(ram, options.signal);
    } finally {
      ram.close();
    }
    const verdict = await link.next('live-verified', (m) => m.vm === vm, STEP_TIMEOUT_MS);
    if (!verdict.ok) throw new Error(`VM ${vm}: not verified at ${link.host.name}: ${verdict.error}`);
    memoryCheck = { method: ram.method, ms: Math.round(performance.now() - checkStarted) };
    const targetMemory = decodeMemoryDigests(verdict.memory);
    if (!targetMemory) throw new Error(`VM ${vm}: ${link.host.name} sent no readable memory digests`);
    const differs = compareMemory(sourceMemory, targetMemory);
    if (differs) throw new MemoryMismatch(`VM ${vm}: at ${link.host.name}, ${differs}`);
    link.send({ t: 'live-resume', vm });
    await link.next('live-resumed', (m) => m.vm === vm, STEP_TIMEOUT_MS);
    const switchoverMs = Math.round(performance.now() - streamEnded);
    const info = (await source.execute('query-migrate')) as { downtime?: number };
    // The VM runs at its target: the source's QEMU has nothing left to do.
    await source.execute('quit').catch(() => undefined);
    return {
      ok: true,
      ...(memoryCheck ? { memoryCheck } : {}),
      ...counts,
      downtimeMs: (info.downtime ?? 0) + switchoverMs,
      sourceDowntimeMs: info.downtime ?? 0,
      switchoverMs,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (error) {
    return fail(error);
  } finally {
    listener.close();
  }
}

/** The target's memory differs from the source's: the one failure another attempt may cure. */
class MemoryMismatch extends Error {}

/** Records that may alias the parser's chunk are copied before they are queued. */
function copyRecord(record: LiveRecord): LiveRecord {
  if (record.kind === 'tail' || record.kind === 'config') return { ...record, bytes: record.bytes.slice() };
  if (record.kind === 'page') return { ...record, data: record.data.slice() };
  if (record.kind === 'zero') return { ...record };
  if (record.kind === 'command') return { ...record, data: record.data.slice() };
  return record;
}
