import net from 'node:net';
import { Packr, RESET_BUFFER_MODE } from 'msgpackr';
import { VmscatterError } from '../errors.js';
import { encodeFrame, FrameDecoder, frameHeader, FrameTooLargeError } from './frame-decoder.js';
import {
  agree,
  decodeHello,
  deriveChannelKeys,
  deriveControlKey,
  encodeHello,
  FrameCipher,
  generateEphemeral,
  HANDSHAKE_VERSION,
  newHello,
  proofMatches,
  proofOf,
  transcriptOf,
} from './secure-channel.js';

/**
 * The coordinator <-> agent control channel: TCP, length-prefixed frames, mutually authenticated and
 * encrypted (secure-channel.ts), msgpackr-encoded messages, heartbeats and an idle timeout.
 */
export interface ControlOptions {
  /** The deployment secret every host holds. */
  readonly secret: Uint8Array | string;
  /** Largest frame accepted (bytes); larger ones close the connection. */
  readonly maxFrameBytes?: number;
  /** A heartbeat goes out after this much quiet (ms). */
  readonly heartbeatMs?: number;
  /** The connection closes when the peer is silent this long (ms). */
  readonly idleTimeoutMs?: number;
  /** The handshake must finish within this (ms). */
  readonly handshakeTimeoutMs?: number;
}

export class ControlError extends VmscatterError {
  constructor(message: string) {
    super('VMS_CONTROL', message);
  }
}

const HANDSHAKE_FRAME_LIMIT = 128;
export const KIND_MESSAGE = 0;
/** Messages held for a channel whose handler is not set yet. */
const MAX_UNHANDLED = 1024;
const KIND_HEARTBEAT = 1;
/** Each kind as the one-byte first part of a frame's plaintext. */
const KIND_BYTES = [Uint8Array.of(KIND_MESSAGE), Uint8Array.of(KIND_HEARTBEAT)];
const packr = new Packr({ useRecords: false });

/**
 * A sealed frame as the parts to write in order: its length header, then the ciphertext of its kind
 * byte and of `body`, then the tag. Never joined: a live stream's message of a MiB was copied four
 * times on its way out when it was. `kind` is KIND_MESSAGE or KIND_HEARTBEAT.
 */
export function frameParts(sealer: FrameCipher, kind: number, body: Uint8Array): Uint8Array[] {
  const sealed = sealer.sealParts([KIND_BYTES[kind]!, body]);
  let length = 0;
  for (const part of sealed) length += part.length;
  return [frameHeader(length), ...sealed];
}

type Role = 'client' | 'server';

/** One authenticated connection. Messages are any msgpack-encodable values. */
export class ControlChannel {
  private messageHandler: ((message: unknown) => void) | undefined;
  private readonly unhandled: unknown[] = [];
  private closeHandlers: ((error?: ControlError) => void)[] = [];
  private closedWith: { error?: ControlError } | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private idle: NodeJS.Timeout | undefined;
  /** When a frame last arrived (performance.now()). */
  private lastHeard = performance.now();

  /** @internal use connectControl / listenControl */
  constructor(
    private readonly socket: net.Socket,
    private readonly decoder: FrameDecoder,
    private readonly sealer: FrameCipher,
    private readonly opener: FrameCipher,
    private readonly options: Required<ControlOptions>,
    readonly peer: string,
  ) {
    socket.on('data', (chunk) => this.receive(chunk));
    socket.on('close', () =>
      this.finish(this.closedWith?.error ?? new ControlError(`${peer}: connection closed`)),
    );
    socket.on('error', (error: NodeJS.ErrnoException) =>
      this.finish(new ControlError(`${peer}: ${error.code ?? error.message}`)),
    );
    this.heartbeat = setInterval(
      () => this.sendFrame(KIND_HEARTBEAT, new Uint8Array(0)),
      options.heartbeatMs,
    ).unref();
    this.touch();
    // Bytes that came in with the end of the handshake are already in the decoder.
    this.receive(new Uint8Array(0));
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Sets the message handler; messages that arrived before it are delivered to it first. */
  onMessage(handler: (message: unknown) => void): void {
    this.messageHandler = handler;
    for (const message of this.unhandled.splice(0)) handler(message);
  }

  /** Called once when the channel closes: without an error for a close we asked for. */
  onClose(handler: (error?: ControlError) => void): void {
    if (this.closedWith) handler(this.closedWith.error);
    else this.closeHandlers.push(handler);
  }

  /** Sends a message; false when the socket's buffer is full (wait for drain() before sending more). */
  send(message: unknown): boolean {
    // Packed into msgpackr's one buffer from its start each time (RESET_BUFFER_MODE): sendFrame
    // encrypts the bytes before it returns, so nothing reads them after the next pack, and a stream
    // of large messages reuses that buffer instead of filling fresh memory.
    return this.sendFrame(KIND_MESSAGE, packr.pack(message, RESET_BUFFER_MODE));
  }

  /**
   * Resolves when the socket's buffer has drained, or when the channel closes: a peer that dies with
   * our buffer full never drains it, and a sender waiting here must go on to find the channel closed.
   */
  drain(): Promise<void> {
    if (this.closedWith || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  close(): void {
    if (this.closedWith) return;
    this.finish(undefined);
    this.socket.end();
  }

  private sendFrame(kind: number, body: Uint8Array): boolean {
    if (this.closedWith) return false;
    // The frame goes out as its parts in one writev, never joined (see frameParts).
    this.socket.cork();
    let room = true;
    for (const part of frameParts(this.sealer, kind, body))
      if (part.length > 0) room = this.socket.write(part);
    this.socket.uncork();
    return room;
  }

  /** Each frame is opened before the next is read: a frame joined from reads reuses one buffer. */
  private receive(chunk: Uint8Array): void {
    this.decoder.append(chunk);
    for (;;) {
      if (this.closedWith) return;
      let frame: Uint8Array | undefined;
      try {
        frame = this.decoder.nextReusing();
      } catch (error) {
        return this.fail(error instanceof FrameTooLargeError ? error.message : String(error));
      }
      if (!frame) return;
      const plain = this.opener.open(frame);
      if (!plain || plain.length === 0) return this.fail('frame failed authentication');
      this.touch();
      if (plain[0] === KIND_HEARTBEAT) continue;
      if (plain[0] !== KIND_MESSAGE) return this.fail(`unknown frame kind ${plain[0]}`);
      let message: unknown;
      try {
        message = packr.unpack(plain.subarray(1));
      } catch {
        return this.fail('undecodable message');
      }
      if (this.messageHandler) this.messageHandler(message);
      else if (this.unhandled.push(message) > MAX_UNHANDLED)
        return this.fail('peer sent too much before being heard');
    }
  }

  private touch(): void {
    this.lastHeard = performance.now();
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.silent(), this.options.idleTimeoutMs).unref();
  }

  /**
   * The idle timer fired. If it fired late because this process's own event loop was held (a long
   * synchronous step, or a CPU starved by other work), the peer's frames may be waiting unread in the
   * socket: the timer runs before the loop reads sockets. So the verdict waits for the loop's next
   * check phase, after its poll phase read what arrived; a frame read then has touched the channel.
   */
  private silent(): void {
    setImmediate(() => {
      if (this.closedWith) return;
      const quiet = performance.now() - this.lastHeard;
      if (quiet >= this.options.idleTimeoutMs) this.fail(`peer silent for ${this.options.idleTimeoutMs} ms`);
      else this.idle = setTimeout(() => this.silent(), this.options.idleTimeoutMs - quiet).unref();
    }).unref();
  }

  private fail(reason: string): void {
    this.finish(new ControlError(`${this.peer}: ${reason}`));
    this.socket.destroy();
  }

  private finish(error: ControlError | undefined): void {
    if (this.closedWith) return;
    this.closedWith = error ? { error } : {};
    clearInterval(this.heartbeat);
    clearTimeout(this.idle);
    for (const handler of this.closeHandlers.splice(0)) handler(error);
  }
}

function withDefaults(options: ControlOptions): Required<ControlOptions> {
  return {
    maxFrameBytes: 16 * 2 ** 20,
    heartbeatMs: 2000,
    idleTimeoutMs: 10_000,
    handshakeTimeoutMs: 5000,
    ...options,
  };
}

/** Runs the handshake on a fresh socket; resolves with the channel or rejects (and destroys the socket). */
function handshake(
  socket: net.Socket,
  role: Role,
  options: Required<ControlOptions>,
  peer: string,
): Promise<ControlChannel> {
  const psk = deriveControlKey(options.secret);
  const decoder = new FrameDecoder(HANDSHAKE_FRAME_LIMIT);
  const ephemeral = generateEphemeral();
  const own = newHello(ephemeral);
  return new Promise((resolve, reject) => {
    let step = 0;
    let transcript: Uint8Array | undefined;
    let keys: ReturnType<typeof deriveChannelKeys> | undefined;
    const timer = setTimeout(() => fail('handshake timed out'), options.handshakeTimeoutMs).unref();
    const fail = (reason: string) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.destroy();
      reject(new ControlError(`${peer}: ${reason}`));
    };
    const done = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      decoder.setLimit(options.maxFrameBytes);
      const [sendKey, receiveKey] =
        role === 'client'
          ? [keys!.clientToServer, keys!.serverToClient]
          : [keys!.serverToClient, keys!.clientToServer];
      const sealer = new FrameCipher(sendKey);
      resolve(new ControlChannel(socket, decoder, sealer, new FrameCipher(receiveKey), options, peer));
    };
    const onClose = () => fail('closed during the handshake (wrong secret?)');
    const onData = (chunk: Uint8Array) => {
      decoder.append(chunk);
      for (;;) {
        let frame: Uint8Array | undefined;
        try {
          frame = decoder.next();
        } catch {
          return fail('oversized handshake frame');
        }
        if (!frame) return;
        if (role === 'server' && step === 0) {
          const got = decodeHello(frame, false);
          if (!got || got.hello.version !== HANDSHAKE_VERSION) return fail('bad client hello');
          const shared = agree(ephemeral, got.hello.ephemeral);
          if (!shared) return fail('bad client key');
          transcript = transcriptOf(got.hello, own);
          keys = deriveChannelKeys(psk, shared, transcript);
          socket.write(encodeFrame(encodeHello(own, proofOf(keys.auth, 'server', transcript))));
          step = 1;
        } else if (role === 'server' && step === 1) {
          if (!proofMatches(proofOf(keys!.auth, 'client', transcript!), frame))
            return fail('client not authenticated');
          return done();
        } else if (role === 'client' && step === 1) {
          const got = decodeHello(frame, true);
          if (!got || got.hello.version !== HANDSHAKE_VERSION) return fail('bad server hello');
          const shared = agree(ephemeral, got.hello.ephemeral);
          if (!shared) return fail('bad server key');
          transcript = transcriptOf(own, got.hello);
          keys = deriveChannelKeys(psk, shared, transcript);
          if (!proofMatches(proofOf(keys.auth, 'server', transcript), got.proof)) {
            return fail('server not authenticated (wrong secret?)');
          }
          socket.write(encodeFrame(proofOf(keys.auth, 'client', transcript)));
          return done();
        } else {
          return fail('unexpected handshake frame');
        }
      }
    };
    socket.on('data', onData);
    socket.once('close', onClose);
    if (role === 'client') {
      socket.write(encodeFrame(encodeHello(own)));
      step = 1;
    }
  });
}

export async function connectControl(
  host: string,
  port: number,
  options: ControlOptions,
): Promise<ControlChannel> {
  const full = withDefaults(options);
  const peer = `${host}:${port}`;
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new ControlError(`${peer}: no answer within ${full.handshakeTimeoutMs} ms`));
    }, full.handshakeTimeoutMs).unref();
    s.once('connect', () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new ControlError(`${peer}: cannot connect (${error.code ?? error.message})`));
    });
  });
  socket.setNoDelay(true);
  return handshake(socket, 'client', full, peer);
}

/** "address:port" of a connection's far end; an IPv6 address in brackets, so the port stays apart. */
function peerOf(socket: net.Socket): string {
  const address = socket.remoteAddress ?? 'unknown address';
  return `${net.isIPv6(address) ? `[${address}]` : address}:${socket.remotePort ?? '?'}`;
}

export interface ControlServer {
  readonly port: number;
  /** Connections refused because they failed the handshake. */
  readonly rejected: number;
  close(): Promise<void>;
}

/**
 * Accepts authenticated connections on host:port. `onRefused` hears of each connection that failed the
 * handshake, its error naming the peer's address and port and why: a wrong secret or a forged hello
 * must be visible in the log of the host it reached, not only counted. A peer that sent nothing is
 * left out: that is a port check (the coordinator makes one per job to see whether a local agent
 * listens), not an attempt.
 */
export async function listenControl(
  host: string,
  port: number,
  options: ControlOptions,
  onChannel: (channel: ControlChannel) => void,
  onRefused?: (error: ControlError) => void,
): Promise<ControlServer> {
  const full = withDefaults(options);
  let rejected = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.setNoDelay(true);
    socket.on('error', () => undefined); // reported through the handshake or the channel
    handshake(socket, 'server', full, peerOf(socket)).then(onChannel, (error: ControlError) => {
      rejected++;
      if (socket.bytesRead > 0) onRefused?.(error);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(new ControlError(`cannot listen on ${host}:${port} (${error.code ?? error.message})`)),
    );
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as net.AddressInfo;
  return {
    port: address.port,
    get rejected() {
      return rejected;
    },
    /** Stops listening and closes every connection it accepted. */
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}
