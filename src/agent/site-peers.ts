import { connectControl } from '../control/control-channel.js';
import { splitAddress } from '../transport/datagram.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../memory/page.js';
import { encodeRecords } from '../memory/page-batches.js';
import { parseToAgent } from '../wire/protocol.js';

/**
 * Destination-site content addressing: a target fetches a page from an agent of its own site that holds
 * it, instead of having it cross the source's link. The serving side answers from its store; the
 * asking side checks every page against its digest before storing it, so a peer can at worst withhold
 * pages (they then come from the source at rebuild time), never corrupt one.
 */

/** Digests per request: a reply of raw pages stays near 4 MiB, far under the control frame limit. */
export const FETCH_CHUNK = 1024;
const FETCH_TIMEOUT_MS = 60_000;

/** The records a peer sends back for requested digests: those it holds, in request order. */
export function answerFetch(
  digests: Uint8Array,
  get: (digest: Uint8Array) => Uint8Array | undefined,
): Uint8Array {
  const count = Math.min(FETCH_CHUNK, Math.floor(digests.length / DIGEST_BYTES));
  const found: number[] = [];
  const pages = new Uint8Array(count * PAGE_SIZE);
  for (let i = 0; i < count; i++) {
    const page = get(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
    if (!page) continue;
    pages.set(page, found.length * PAGE_SIZE);
    found.push(i);
  }
  const held = new Uint8Array(found.length * DIGEST_BYTES);
  found.forEach((i, k) =>
    held.set(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), k * DIGEST_BYTES),
  );
  return encodeRecords(held, pages.subarray(0, found.length * PAGE_SIZE), false);
}

/**
 * Fetches `digests` from the peer agent at "address:port", handing each reply's records to `onRecords`
 * (which verifies and stores them). Resolves when done; a peer that cannot be reached or stops
 * answering ends the fetch early (the caller counts what was stored).
 */
export async function fetchFromPeer(
  peer: string,
  digests: Uint8Array,
  secret: Uint8Array,
  onRecords: (records: Uint8Array) => void,
): Promise<void> {
  const { host, port } = splitAddress(peer);
  const channel = await connectControl(host, port, { secret });
  try {
    for (let first = 0; first * DIGEST_BYTES < digests.length; first += FETCH_CHUNK) {
      const chunk = digests.subarray(first * DIGEST_BYTES, (first + FETCH_CHUNK) * DIGEST_BYTES);
      const reply = await new Promise<Uint8Array>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${peer}: no answer`)), FETCH_TIMEOUT_MS);
        channel.onMessage((value) => {
          const message = parseToAgent(value);
          if (message?.t !== 'pages') return;
          clearTimeout(timer);
          resolve(message.records);
        });
        channel.onClose((error) => {
          clearTimeout(timer);
          reject(error ?? new Error(`${peer}: closed`));
        });
        channel.send({ t: 'fetch', digests: chunk });
      });
      onRecords(reply);
    }
  } finally {
    channel.close();
  }
}
