/**
 * A copy of bytes[start..end) in memory of its own, of the same type. A Buffer's slice() is a view of
 * the same memory (unlike a Uint8Array's), so code that may be handed either, and keeps what it was
 * handed beyond the call (a socket's read buffer is reused: src/live/stream-socket.ts), copies with this.
 */
export function copyBytes<T extends Uint8Array>(bytes: T, start = 0, end = bytes.length): T {
  return Uint8Array.prototype.slice.call(bytes, start, end) as T;
}
