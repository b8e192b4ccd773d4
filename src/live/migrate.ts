import type net from 'node:net';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { PageDigester } from '../memory/page-digest.js';
import { StreamParser } from '../qemu/migration-stream.js';
import type { GuestRam, GuestRamMethod } from '../qemu/guest-ram.js';
import type { LiveLink } from './messages.js';
import { AckWindow, type SwitchoverGate, type WireBudget } from './flow.js';
import type { CopyStrategy } from './copy-strategy.js';
import { decodeMemoryDigests, digestGuestRam, newMemorySeed } from './memory-check.js';
import { MAX_REPAIR_BYTES, MemoryMismatch, reconcileMemory } from './memory-repair.js';
import { LiveStreamEncoder, type ScanKnowledge } from './encoder.js';
import type { FullPageCodec } from './batch.js';
import { streamListener, withTimeout } from './source-qemu.js';
import { adoptStream, type StreamSocket } from './stream-socket.js';
import type { MigrationSource } from './migration-source.js';

/**
 * Phase 5 for a running VM: QEMU migrates into the coordinator, which passes the stream on to the
 * target agent record by record, sending a page the target holds, or one this stream already carried
 * in full (StreamPageMemory), as its digest, and any other page compressed (FullPageCodec). The
 * agent writes the stream, pages put back, into a destination QEMU started paused. Only when both ends
 * agree on the stream's digest and the destination has loaded it does the destination resume and the
 * source quit; on any failure before that the destination is killed and the source resumed: the VM
 * runs at its source or at its target, never nowhere.
 *
 * Backpressure: the coordinator stops reading QEMU's socket while the control channel's buffer is
 * full or the destination has not taken what was sent (AckWindow), so QEMU sees the real rate, end to
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
  readonly memoryCheck?: {
    readonly method: GuestRamMethod;
    readonly ms: number;
    /** MiB chunks of the destination's RAM that differed and were rewritten from the source's. */
    readonly repairedMiB: number;
  };
  /**
   * Pages sent as references (held at the target), as data (of which encoded smaller: LZ4, or one word
   * for a uniform page), and as zero records.
   */
  readonly referencedPages: number;
  readonly sentPages: number;
  readonly compressedPages: number;
  readonly zeroPages: number;
  /** Pages that went by the scan's digest, their check holding (not hashed again). */
  readonly scanDigests: number;
  /** Bytes of stream QEMU produced, and bytes sent to the agent (records, before channel framing). */
  readonly streamBytes: number;
  readonly sentBytes: number;
  /** The source's own downtime figure plus the time from the stream's end to the target running (ms). */
  readonly downtimeMs: number;
  /** The two parts of the downtime: QEMU's figure at the source, and stream end to running (ms). */
  readonly sourceDowntimeMs: number;
  readonly switchoverMs: number;
  /**
   * Where the switch-over went (ms): the stream's tail to the target and QEMU's end confirmed; the
   * memory check (and any repair); the target told to run until it does.
   */
  readonly switchoverSteps?: {
    readonly drainMs: number;
    readonly checkMs: number;
    readonly resumeMs: number;
  };
  readonly seconds: number;
  /** The most QEMU's auto-converge throttled the guest during the migration (percent of its CPU). */
  readonly throttlePercent: number;
  /** The highest dirty rate QEMU's migration itself measured between its passes (bytes/s). */
  readonly migrationDirtyBytesPerSecond: number;
}

/** A migration's figures before anything moved (and of one that never started). */
export const NOTHING_MOVED = {
  referencedPages: 0,
  sentPages: 0,
  compressedPages: 0,
  zeroPages: 0,
  scanDigests: 0,
  streamBytes: 0,
  sentBytes: 0,
  downtimeMs: 0,
  sourceDowntimeMs: 0,
  switchoverMs: 0,
  seconds: 0,
} as const;

/** The most one step of a migration (an answer from the agent, a source command) may take. */
export const STEP_TIMEOUT_MS = 120_000;

export async function migrateLiveVm(options: {
  readonly vm: string;
  /** The source end: a QEMU of its own (source-qemu.ts) or a libvirt domain (source-libvirt.ts). */
  readonly source: MigrationSource;
  readonly link: LiveLink;
  readonly runDir: string;
  readonly digester: PageDigester;
  /** The scan's checks and digests of the VM's pages (one hash per page), where it made checks. */
  readonly scanned?: ScanKnowledge;
  /** Whether the target holds the page with this digest. */
  readonly holds: (digest: Uint8Array) => boolean;
  /** Told of every page sent as data (not held at the target), by its digest. */
  readonly onSentInFull?: (digest: Uint8Array) => void;
  /** The source link, shared by the job's migrations: each message waits for room on it. */
  readonly wire?: WireBudget;
  /** The job's switch-overs: this stream pauses during the others', and holds it during its own. */
  readonly switchovers?: SwitchoverGate;
  /** The most of the destination's RAM a failed memory check may rewrite (MAX_REPAIR_BYTES; 0: none). */
  readonly maxRepairBytes?: number;
  /** How pages sent in full are compressed where that shrinks them (uniform pages always as one word). */
  readonly codec: FullPageCodec;
  readonly strategy: CopyStrategy;
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
  let encoder: LiveStreamEncoder | undefined;
  let sourceRam: GuestRam | undefined;
  const observed = { throttlePercent: 0, migrationDirtyBytesPerSecond: 0 };
  let watching = { stop: () => undefined as void };
  let leaveSwitchover: (() => void) | undefined;
  let stopListening: (() => void) | undefined;
  // Whether the source ran when this migration began: only then does a rollback resume it (a source
  // left stopped by an earlier migration may have its VM running elsewhere).
  let sourceWasRunning = false;
  // Once the target is told to run the VM, nothing rolls back: the VM may be running there.
  let committed = false;
  let stream: net.Socket | undefined;
  const fail = async (error: unknown): Promise<LiveMigrationResult> => {
    watching.stop();
    if (encoder) Object.assign(counts, encoder.counts);
    if (committed) {
      const why = error instanceof Error ? error.message : String(error);
      return {
        ok: false,
        error: `VM ${vm}: told to run at ${link.host.name}, which did not confirm it (${why}); its source stays stopped, so it runs at most there`,
        ...(memoryCheck ? { memoryCheck } : {}),
        ...counts,
        ...observed,
        seconds: (performance.now() - started) / 1000,
      };
    }
    // Roll back: the destination goes, the source runs on.
    link.send({ t: 'live-abort', vm });
    stream?.destroy();
    await source.rollBack(sourceWasRunning);
    return {
      ok: false,
      error: error instanceof Error ? error.message : String(error),
      ...(error instanceof MemoryMismatch ? { memoryMismatch: true } : {}),
      ...(memoryCheck ? { memoryCheck } : {}),
      ...counts,
      ...observed,
      seconds: (performance.now() - started) / 1000,
    };
  };
  mkdirSync(options.runDir, { recursive: true, mode: 0o700 });
  const listener = streamListener(source.streamPath);
  const gaveUp = source.gaveUp.then((why): never => {
    throw new Error(why);
  });
  gaveUp.catch(() => undefined); // raced below; a source that gives up later fails its own step
  // The target's agent gets ready to receive (starting the destination, or attaching to the one the
  // source's libvirt has started once the migration began).
  const destinationReady = async () => {
    link.send(source.destinationFor(sourceRam?.map));
    const ready = await Promise.race([
      link.next(['live-ready', 'live-refused'], (m) => m.vm === vm, STEP_TIMEOUT_MS),
      gaveUp,
    ]);
    if (ready.t === 'live-refused')
      throw new Error(`VM ${vm}: ${link.host.name} refused to receive it: ${ready.error}`);
  };
  try {
    if (!source.destinationAfterStart) await destinationReady();
    options.signal?.throwIfAborted();
    ({ wasRunning: sourceWasRunning } = await source.prepare());
    // Stop-and-copy: the guest stops for the whole copy (it could not converge, or is tiny); a
    // rollback resumes it.
    let stoppedAt: number | undefined;
    if (options.strategy === 'stop-and-copy' && source.stop) {
      await source.stop();
      stoppedAt = performance.now();
    }
    // Found while the guest still runs (its mapping stays for the process's life), so the check after
    // the source stopped only reads: the search samples pages through QMP, downtime it need not cost.
    // Kept open until the VM runs somewhere: a repair reads the differing chunks through it.
    const ram = await source.openRam(join(options.runDir, 'ram'), stoppedAt === undefined);
    sourceRam = ram;
    // The guest is down from its stop at the source, before its stream's end says so.
    stopListening = source.onStopped?.(() => (leaveSwitchover ??= options.switchovers?.enter(vm)));
    await source.start();
    if (source.destinationAfterStart) await destinationReady();
    const { socket, read } = adoptStream(
      await withTimeout(Promise.race([listener.accepted, gaveUp]), 30_000, `VM ${vm}: QEMU did not connect`),
    );
    stream = socket;
    watching = source.watch(observed);
    // A complete stream ends with the VM description: one cut short inside device state is refused.
    const streamEncoder = new LiveStreamEncoder({
      digester: options.digester,
      holds: options.holds,
      ...(options.onSentInFull ? { onSentInFull: options.onSentInFull } : {}),
      ...(options.scanned ? { scanned: options.scanned } : {}),
      codec: options.codec,
    });
    encoder = streamEncoder;
    // Every record reaches the encoder as the parser reads it, most pages without a record object.
    const parser = new StreamParser({
      onRecord: (record) => streamEncoder.add(record),
      pages: streamEncoder,
    });
    const window = new AckWindow(link, vm, STEP_TIMEOUT_MS);
    const flush = async () => {
      const message = encoder!.take();
      if (!message) return;
      await options.wire?.take(message.wireBytes);
      link.send({ t: 'live-stream', vm, records: message.records });
      window.sent();
      counts.sentBytes += message.wireBytes;
      await link.drain();
      await window.room();
      await options.switchovers?.clear(vm);
    };
    const { lastFlush } = await pumpStream({
      socket,
      read,
      parser,
      encoder,
      flush,
      onBytes: (n) => (counts.streamBytes += n),
      vm,
      ...(source.stop ? { stop: source.stop } : {}),
      ...(options.timeout ? { timeout: options.timeout } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    // The stream is whole: the guest is stopped, and QEMU waits for the return path's answer. Its RAM
    // is read for the memory check at once, while the stream's tail drains to the target, which then
    // loads it and reads its own; the two must agree chunk for chunk before the target may run.
    const streamEnded = performance.now();
    leaveSwitchover ??= options.switchovers?.enter(vm);
    watching.stop();
    const memorySeed = newMemorySeed();
    const sourceDigests = ram.remap().then(() => digestGuestRam(ram, memorySeed, options.signal));
    sourceDigests.catch(() => undefined); // awaited below, unless the migration failed first
    // A paused socket still closes: the flush its last chunk started may still be under way.
    await lastFlush;
    await flush();
    await window.all();
    await source.whole();
    Object.assign(counts, encoder.counts);
    link.send({ t: 'live-end', vm, sha256: encoder.digest.hex(), memorySeed });
    const checkStarted = performance.now();
    const drainMs = Math.round(checkStarted - streamEnded);
    const sourceMemory = await sourceDigests;
    const verdict = await link.next('live-verified', (m) => m.vm === vm, STEP_TIMEOUT_MS);
    if (!verdict.ok) throw new Error(`VM ${vm}: not verified at ${link.host.name}: ${verdict.error}`);
    memoryCheck = { method: ram.method, ms: Math.round(performance.now() - checkStarted), repairedMiB: 0 };
    const targetMemory = decodeMemoryDigests(verdict.memory);
    if (!targetMemory) throw new Error(`VM ${vm}: ${link.host.name} sent no readable memory digests`);
    const repairedMiB = await reconcileMemory({
      vm,
      link,
      ram,
      source: sourceMemory,
      target: targetMemory,
      seed: memorySeed,
      maxRepairBytes: options.maxRepairBytes ?? MAX_REPAIR_BYTES,
      stepTimeoutMs: STEP_TIMEOUT_MS,
    });
    if (repairedMiB > 0)
      memoryCheck = { ...memoryCheck, ms: Math.round(performance.now() - checkStarted), repairedMiB };
    // Commit. The source first: once QEMU reads the answer its migration completes and it will not
    // restart the guest; only then may the target run it. Should this process die in between, the
    // guest stays stopped at its source, whole, until `scatter --resume` resumes it there. (A libvirt
    // source completed already: the agent's releasing the stream's tail is what commits.)
    const resumeStarted = performance.now();
    const completedAt = await source.commit(socket);
    committed = true;
    link.send({ t: 'live-resume', vm });
    await link.next('live-resumed', (m) => m.vm === vm, STEP_TIMEOUT_MS);
    const resumed = performance.now();
    const switchoverMs = Math.round(resumed - streamEnded);
    const switchoverSteps = {
      drainMs,
      checkMs: Math.round(resumeStarted - checkStarted),
      resumeMs: Math.round(resumed - resumeStarted),
    };
    const sourceFigure = await source.finish();
    // QEMU's figure runs from its stop to its completion, which waited for our answer (the tail, the
    // memory check); the target ran a little after. A guest stopped by us for the whole copy was
    // down since our stop.
    const sourceDowntimeMs =
      stoppedAt === undefined ? (sourceFigure ?? 0) : Math.round(completedAt - stoppedAt);
    const downtimeMs = sourceDowntimeMs + Math.round(resumed - completedAt);
    return {
      ok: true,
      ...(memoryCheck ? { memoryCheck } : {}),
      ...counts,
      ...observed,
      downtimeMs,
      sourceDowntimeMs,
      switchoverMs,
      switchoverSteps,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (error) {
    return fail(error);
  } finally {
    stopListening?.();
    leaveSwitchover?.();
    listener.close();
    sourceRam?.close();
  }
}

/**
 * Reads QEMU's stream into the encoder until it is whole (QEMU then stopped the guest and waits for
 * the return path's answer) or closes; a full encoder is flushed with the socket paused, so QEMU is
 * read no faster than the destination takes it. Resolves with the flush the last chunk started (it may
 * still be under way: the caller starts the memory check meanwhile).
 */
function pumpStream(options: {
  readonly socket: net.Socket;
  /** Starts reading the socket (stream-socket.ts: each chunk is valid only during the call). */
  readonly read: StreamSocket['read'];
  readonly parser: StreamParser;
  readonly encoder: LiveStreamEncoder;
  readonly flush: () => Promise<void>;
  readonly onBytes: (bytes: number) => void;
  readonly vm: string;
  /** Stops the guest (a timeout's stop-and-copy); where absent, the timeout aborts. */
  readonly stop?: () => Promise<void>;
  readonly timeout?: { readonly ms: number; readonly action: 'abort' | 'stop-and-copy' };
  readonly signal?: AbortSignal;
}): Promise<{ readonly lastFlush: Promise<void> }> {
  const { socket, read, parser, encoder, signal, timeout } = options;
  let lastFlush: Promise<void> = Promise.resolve();
  return new Promise((resolve, reject) => {
    const abort = () => {
      socket.destroy();
      reject(signal?.reason ?? new Error('aborted'));
    };
    if (signal?.aborted) return abort();
    signal?.addEventListener('abort', abort, { once: true });
    const timer = timeout
      ? setTimeout(() => {
          if (timeout.action === 'abort' || !options.stop) {
            socket.destroy();
            reject(new Error(`VM ${options.vm}: not migrated within ${Math.round(timeout.ms / 1000)} s`));
          } else void options.stop().catch(() => undefined);
        }, timeout.ms)
      : undefined;
    const settle = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
    };
    socket.once('close', settle);
    read((chunk) => {
      options.onBytes(chunk.length);
      try {
        parser.push(chunk); // its records go to the encoder (the parser's sinks)
      } catch (error) {
        socket.destroy();
        return reject(error);
      }
      // Whole: QEMU stopped the guest, sent its last pages and device state, and now waits for the
      // return path's answer with the socket open.
      if (parser.complete) {
        settle();
        return resolve({ lastFlush });
      }
      if (encoder.full) {
        socket.pause();
        lastFlush = options.flush();
        lastFlush.then(
          () => socket.resume(),
          (error: unknown) => {
            socket.destroy(); // its 'close' clears the timer and the abort listener
            reject(error);
          },
        );
      }
    });
    // Closed before it was whole: QEMU's migration failed (a stream cut short is refused here).
    socket.once('close', () => {
      try {
        parser.end();
        resolve({ lastFlush });
      } catch (error) {
        reject(error);
      }
    });
    socket.once('error', reject);
  });
}
