import net from 'node:net';
import { native } from '../native/native.js';

/**
 * QEMU's outgoing stream, read into one buffer that every read reuses. node:net reads a connection
 * it accepted into a fresh 64 KiB buffer per read: a gigabyte of guest memory is 16,000 of them, and
 * the coordinator ran 71 full garbage collections in one bench:qemu job with a heap of 18 MiB (42
 * once the stream was read into one buffer). A net.Socket built with
 * `onread` reads into a buffer of its own, but only one made from a descriptor: so the accepted
 * connection (paused before its first read: streamListener accepts with pauseOnConnect) is
 * duplicated and read, and written back to, through a socket of its own, and the accepted one closes.
 * Where the addon is not built, the accepted socket is read as it is.
 */
export interface StreamSocket {
  /** The connection (the return path is written to it too). */
  readonly socket: net.Socket;
  /** Starts reading; `chunk` is valid only during the call (the next read overwrites it). */
  read(onChunk: (chunk: Buffer) => void): void;
}

/** Bytes read from the socket per read at most. */
export const READ_BUFFER_BYTES = 256 << 10;

export function adoptStream(accepted: net.Socket): StreamSocket {
  // node:net has no public accessor for an accepted connection's descriptor.
  const fd = (accepted as unknown as { _handle?: { fd?: number } })._handle?.fd;
  const copy = native && typeof fd === 'number' && fd >= 0 ? native.duplicateDescriptor(fd) : -1;
  if (copy < 0) {
    return {
      socket: accepted,
      read(onChunk) {
        accepted.on('data', onChunk);
        accepted.resume();
      },
    };
  }
  accepted.destroy(); // closes its descriptor; the connection stays open through the duplicate
  // A socket made from a descriptor starts reading at once: it is paused in the same tick, and
  // anything read before `read` is called (none, so far) is kept as a copy and handed over first.
  const early: Buffer[] = [];
  let handler: (chunk: Buffer) => void = (chunk) => void early.push(Buffer.from(chunk));
  const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  // `onread` is a constructor option since Node 15; the type definitions name it for connect() only.
  const options: net.SocketConstructorOpts & net.ConnectOpts = {
    fd: copy,
    readable: true,
    writable: true,
    onread: {
      buffer,
      callback: (bytes: number) => {
        handler(buffer.subarray(0, bytes));
        return true; // false would pause the socket
      },
    },
  };
  const socket = new net.Socket(options);
  socket.pause();
  return {
    socket,
    read(onChunk) {
      for (const chunk of early.splice(0)) onChunk(chunk);
      handler = onChunk;
      socket.resume();
    },
  };
}
