import { EventEmitter } from 'node:events';
import net from 'node:net';
import { VmscatterError } from '../errors.js';

/**
 * A client for QEMU's machine protocol (QMP) on a unix socket: one JSON object per line each way. QEMU
 * sends a greeting, we negotiate capabilities, then commands carry ids so replies match their commands
 * even with asynchronous events interleaved between them.
 */

/** QEMU answered a command with an error; `errorClass` and `desc` are QMP's own. */
export class QmpError extends VmscatterError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super('VMS_QMP', `QMP ${command}: ${errorClass}: ${desc}`);
  }
}

/** The socket could not be opened, closed, timed out or carried something that is not QMP. */
export class QmpConnectionError extends VmscatterError {
  constructor(message: string) {
    super('VMS_QMP_CONNECTION', message);
  }
}

/**
 * What reading and migrating a running guest asks of its QEMU's monitor: QMP commands. A QMP socket of
 * its own (QmpClient) or, for a libvirt domain, libvirt's hold on the monitor (libvirt/monitor.ts).
 */
export interface QemuMonitor {
  /** Names the monitor in messages. */
  readonly path: string;
  /** Runs a command and resolves with its `return` value; rejects with QmpError for a QMP error. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
  close(): Promise<void>;
}

export interface QmpEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
  readonly timestamp: { readonly seconds: number; readonly microseconds: number };
}

/** A line longer than this is not QMP; QEMU's largest replies (query-qmp-schema) are well below it. */
const MAX_LINE_CHARS = 16 * 2 ** 20;

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** Emits 'event' (QmpEvent) and, once, 'close' (QmpConnectionError, or undefined after close()). */
export class QmpClient extends EventEmitter implements QemuMonitor {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buffer = '';
  private closedWith: { error?: QmpConnectionError } | undefined;
  /** QEMU's greeting (`version`, `capabilities`); connectQmp resolves only after it arrived. */
  greeting: Record<string, unknown> | undefined;

  /** @internal use connectQmp */
  constructor(
    private readonly socket: net.Socket,
    readonly path: string,
    private readonly commandTimeoutMs: number,
  ) {
    super();
    socket.setEncoding('utf8'); // a multi-byte character split across chunks stays whole
    socket.on('data', (chunk: string) => this.receive(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) =>
      this.finish(
        new QmpConnectionError(`${path}: connection to QEMU lost (${error.code ?? error.message})`),
      ),
    );
    socket.on('close', () => this.finish(new QmpConnectionError(`${path}: QEMU closed the QMP socket`)));
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Runs a command and resolves with its `return` value; rejects with QmpError for a QMP error. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedWith) {
      const reason = this.closedWith.error?.message ?? `${this.path}: closed`;
      return Promise.reject(new QmpConnectionError(`${command}: ${reason}`));
    }
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpConnectionError(`${this.path}: ${command}: no reply in ${this.commandTimeoutMs} ms`));
      }, this.commandTimeoutMs).unref();
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      this.socket.write(
        `${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`,
      );
    });
  }

  /** Calls `listener` for each event named `name`; returns a function that stops it. */
  onEvent(name: string, listener: (event: QmpEvent) => void): () => void {
    const filter = (event: QmpEvent) => {
      if (event.event === name) listener(event);
    };
    this.on('event', filter);
    return () => this.off('event', filter);
  }

  /**
   * Resolves with the next event named `name` (and matching `accept`). Events are not kept, so call
   * this before the command that causes the event.
   */
  waitForEvent(name: string, timeoutMs: number, accept?: (event: QmpEvent) => boolean): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const done = (error: Error | undefined, event?: QmpEvent) => {
        clearTimeout(timer);
        stop();
        this.off('close', onClose);
        if (error) reject(error);
        else resolve(event!);
      };
      const timer = setTimeout(
        () => done(new QmpConnectionError(`${this.path}: no ${name} event within ${timeoutMs} ms`)),
        timeoutMs,
      ).unref();
      const stop = this.onEvent(name, (event) => {
        if (!accept || accept(event)) done(undefined, event);
      });
      const onClose = (error?: Error) =>
        done(new QmpConnectionError(`waiting for ${name}: ${error?.message ?? `${this.path}: closed`}`));
      if (this.closedWith) onClose(this.closedWith.error);
      else this.once('close', onClose);
    });
  }

  /** Closes the socket; pending commands are rejected. Resolves once the socket is closed. */
  close(): Promise<void> {
    if (!this.closedWith) this.finish(undefined);
    if (this.socket.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref(); // a peer that never closes its side
    });
  }

  private receive(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while (!this.closedWith && (newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.handle(line);
    }
    if (this.buffer.length > MAX_LINE_CHARS) this.fail(`a line longer than ${MAX_LINE_CHARS} characters`);
  }

  private handle(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return this.fail(`not JSON: ${line.slice(0, 80)}`);
    }
    if (typeof message.event === 'string') {
      this.emit('event', { data: {}, ...message } as unknown as QmpEvent);
    } else if ('QMP' in message) {
      this.greeting = message.QMP as Record<string, unknown>;
      this.emit('greeting');
    } else if (typeof message.id === 'number' && this.pending.has(message.id)) {
      const pending = this.pending.get(message.id)!;
      this.pending.delete(message.id);
      clearTimeout(pending.timer);
      const error = message.error as { class?: string; desc?: string } | undefined;
      if (error) pending.reject(new QmpError(pending.command, error.class ?? '?', error.desc ?? ''));
      else pending.resolve(message.return);
    } // else: the reply to a command that already timed out
  }

  private fail(reason: string): void {
    this.finish(new QmpConnectionError(`${this.path}: ${reason}`));
    this.socket.destroy();
  }

  private finish(error: QmpConnectionError | undefined): void {
    if (this.closedWith) return;
    this.closedWith = error ? { error } : {};
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      clearTimeout(pending.timer);
      const reason = error?.message ?? `${this.path}: closed`;
      pending.reject(new QmpConnectionError(`${pending.command}: ${reason} before replying`));
    }
    this.emit('close', error);
  }
}

/**
 * Connects to QEMU's QMP socket, reads the greeting and leaves capabilities negotiation mode. A socket
 * that is missing or refuses is retried until the timeout: QEMU creates it a moment after it starts.
 */
export async function connectQmp(
  path: string,
  options: {
    /** Connecting, greeting and capabilities must finish within this (ms, default 10 s). */
    readonly connectTimeoutMs?: number;
    /** A command without a reply for this long is rejected (ms, default 60 s). */
    readonly commandTimeoutMs?: number;
    /** Abandons the attempt, so that it cannot take QEMU's only QMP connection after its caller gave up. */
    readonly signal?: AbortSignal;
  } = {},
): Promise<QmpClient> {
  const timeoutMs = options.connectTimeoutMs ?? 10_000;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  const givenUp = () =>
    new QmpConnectionError(
      `${path}: ${timeout.aborted ? `no QMP greeting within ${timeoutMs} ms` : 'connecting abandoned'}`,
    );
  let socket: net.Socket | undefined;
  while (!(socket = await tryConnect(path))) {
    if (signal.aborted) throw givenUp();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const client = new QmpClient(socket, path, options.commandTimeoutMs ?? 60_000);
  let onAbort: (() => void) | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      onAbort = () => reject(givenUp());
      if (signal.aborted) onAbort();
      signal.addEventListener('abort', onAbort);
      client.once('close', (error?: Error) => reject(error ?? givenUp()));
      client.once('greeting', () => client.execute('qmp_capabilities').then(() => resolve(), reject));
    });
    return client;
  } catch (error) {
    socket.destroy();
    throw error;
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

/** A connected socket, or undefined while QEMU has not created (or not yet listens on) it. */
function tryConnect(path: string): Promise<net.Socket | undefined> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path });
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') resolve(undefined);
      else reject(new QmpConnectionError(`${path}: cannot connect (${error.code ?? error.message})`));
    });
  });
}
