import net from 'node:net';
import { native } from '../native/native.js';
import { openProcessRam, pidListeningAt } from '../qemu/guest-ram.js';
import type { MainRam } from '../qemu/memory-map.js';
import { waitDomainState } from '../libvirt/domain.js';
import { LiveTargetError, LOAD_TIMEOUT_MS, type Destination } from './target.js';

/**
 * The target side of a libvirt domain's move: the target's libvirt starts the destination QEMU itself
 * (libvirt's prepare step, for the migration the source's libvirt began), listening at the socket the
 * coordinator named; the agent connects there in place of the source's QEMU. The destination must not
 * run before the memory check passed, so the stream's tail (device state, then EOF) is held back: the
 * destination waits in 'inmigrate' with every page loaded, and libvirt waits for it. Releasing the tail
 * lets QEMU finish loading, and libvirt runs the domain here and removes it from the source; closing
 * the connection instead fails the migration, and libvirt resumes the domain at its source.
 */

/** Where the coordinator listens and the target's QEMU listens: one name, the same on both hosts. */
export const LIBVIRT_SOCKET_DIR = '/run/libvirt';
/** The only socket paths an agent connects to (a coordinator names one of these, nothing else). */
export const LIBVIRT_SOCKET_PATTERN = /^\/run\/libvirt\/vmscatter-[0-9a-f]{16}\.sock$/;

/** How long libvirt may take to start the destination once the agent is told to attach. */
const ATTACH_TIMEOUT_MS = 60_000;
const POLL_MS = 5;
/**
 * After QEMU read every byte written: the last buffer it read is parsed in the same turn of its loop,
 * before it waits for more; this margin covers the turn. Should it not, the memory check finds the
 * pages still missing and the repair writes them, with the same bytes the stream carries.
 */
const SETTLE_MS = 20;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function attachLibvirtDestination(options: {
  /** This host's libvirt. */
  readonly uri: string;
  readonly domain: string;
  readonly socket: string;
  /** The source's main RAM layout (the destination's is the same). */
  readonly ram: MainRam;
  readonly signal?: AbortSignal;
}): Promise<{ readonly destination: Destination; readonly socket: net.Socket }> {
  const { uri, domain, signal } = options;
  if (!LIBVIRT_SOCKET_PATTERN.test(options.socket))
    throw new LiveTargetError(`domain ${domain}: '${options.socket}' is not a migration socket of ours`);
  const deadline = Date.now() + ATTACH_TIMEOUT_MS;
  let found: number | undefined;
  while ((found = pidListeningAt(options.socket)) === undefined) {
    signal?.throwIfAborted();
    if (Date.now() > deadline)
      throw new LiveTargetError(
        `domain ${domain}: libvirt at ${uri} started no destination at ${options.socket} within ${ATTACH_TIMEOUT_MS / 1000} s`,
      );
    await sleep(20);
  }
  const pid = found;
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ path: options.socket });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  let held = true;
  socket.once('close', () => (held = false));
  const destination: Destination = {
    holdsTail: true,
    knownBlock: options.ram.block,
    // libvirt refuses every monitor command while the incoming migration runs: the RAM is found in the
    // process by pages the stream wrote, with the source's layout, and only once it is loaded.
    openRam: ({ loading, known }) => {
      if (loading) return Promise.reject(new LiveTargetError('found once loaded'));
      const ram = openProcessRam(pid, options.ram, known);
      return ram
        ? Promise.resolve(ram)
        : Promise.reject(
            new LiveTargetError(`domain ${domain}: its RAM was not found in process ${pid}'s memory`),
          );
    },
    waiting: () =>
      Promise.resolve(held ? undefined : 'its stream closed: libvirt ended the incoming migration'),
    loaded: async (stream) => {
      const fd = (stream as unknown as { _handle?: { fd?: number } })._handle?.fd;
      const until = Date.now() + LOAD_TIMEOUT_MS;
      if (native && fd !== undefined && fd >= 0) {
        for (;;) {
          const unread = native.socketUnread(fd);
          if (unread === 0) break;
          if (unread < 0) return `cannot tell what the destination read (errno ${-unread})`;
          if (Date.now() > until) return `destination still loading after ${LOAD_TIMEOUT_MS / 1000} s`;
          await sleep(POLL_MS);
        }
      }
      await sleep(native ? SETTLE_MS : 10 * SETTLE_MS);
      return held ? undefined : 'the destination closed its stream before its device state';
    },
    resume: async () => {
      if (!(await waitDomainState(uri, domain, 'running', LOAD_TIMEOUT_MS)))
        throw new LiveTargetError(`domain ${domain}: libvirt at ${uri} did not run it after its stream`);
    },
    // The caller destroys the connection: libvirt sees the migration fail and removes the destination.
    kill: () => Promise.resolve(),
  };
  return { destination, socket };
}
