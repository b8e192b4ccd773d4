/**
 * Worker thread of imageSha256Beside: hashes the images it is given, one after another, and posts
 * their SHA-256s (or the first error) back. Its own thread, so the whole-image hashes run beside the
 * page fingerprints instead of after them.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { imageSha256 } from './image-hash.js';

if (!parentPort) throw new Error('image-hash-worker must run as a worker thread');
const paths = workerData as readonly string[];
try {
  parentPort.postMessage({ sha256: paths.map((path) => imageSha256(path)) });
} catch (error) {
  parentPort.postMessage({ error: String((error as Error).message) });
}
