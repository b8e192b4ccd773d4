import { connectControl } from '../control/control-channel.js';
import { DIGEST_BYTES, ZERO_PAGE_ID, type VmPages } from '../memory/page.js';
import { DigestTable } from '../memory/digest-table.js';
import { confirmedDigests } from '../announce/held-confirmation.js';
import type { Host, Topology } from '../topology/model.js';
import { AgentLostError, type AgentLink } from '../wire/agent-link.js';
import { decodeAnnouncement, type HeldDigests } from '../announce/digest-set.js';
import type { PeerFetch } from '../plan/job-work.js';
import { PROTOCOL_VERSION } from '../wire/protocol.js';
import type { ScatterProgress } from './progress.js';
import type { SourcePages } from '../store/source-pages.js';

/**
 * The coordinator's dealings with its agents as a group: connecting to all of them (one that does not
 * answer is left out and reported, not fatal), believing what they announce only within reason,
 * confirming exactly the announced pages running VMs' streams will refer to, and having targets fetch
 * from their site peers.
 */
const CONTROL_OPTIONS = { heartbeatMs: 2000, idleTimeoutMs: 30_000 };
const MAX_ANNOUNCEMENT_FALSE_POSITIVES = 1e-3;
const PEER_FETCH_TIMEOUT_MS = 10 * 60_000;
const CONFIRM_TIMEOUT_MS = 60_000;
/** Digests per 'confirm-held' (4 MiB of them; the control channel's frames stop at 16 MiB). */
const CONFIRM_PART_DIGESTS = 1 << 18;

/** Has each target fetch from its site peers what they announced; returns pages stored per target. */
export async function fetchFromPeers(
  fetches: readonly PeerFetch[],
  links: readonly AgentLink[],
  pages: SourcePages,
): Promise<number[]> {
  const stored = new Array<number>(links.length).fill(0);
  await Promise.all(
    fetches.map(async ({ target, peer, ids }, id) => {
      const digests = new Uint8Array(ids.length * DIGEST_BYTES);
      ids.forEach((digestId, i) => digests.set(pages.digestOf(digestId), i * DIGEST_BYTES));
      const peerHost = links[peer]!.host;
      links[target]!.send({ t: 'fetch-from', id, peer: `${peerHost.address}:${peerHost.port}`, digests });
      try {
        const reply = await links[target]!.next('fetched', (m) => m.id === id, PEER_FETCH_TIMEOUT_MS);
        stored[target]! += reply.stored;
      } catch (error) {
        if (!(error instanceof AgentLostError)) throw error;
      }
    }),
  );
  return stored;
}

/**
 * Reserves at each target the guest memory of the VMs this job places there (those not there already),
 * against the target's capacity in the topology. Resolves with the targets that refused (other jobs
 * reserved meanwhile) and what those jobs hold there now; an agent lost meanwhile is left to the job.
 */
export async function reserveMemory(
  links: readonly AgentLink[],
  topology: Topology,
  assignment: Int32Array,
  doneAt: readonly (string | undefined)[],
): Promise<{ target: number; reserved: number }[]> {
  const bytes = links.map(() => 0);
  topology.vms.forEach((vm, v) => {
    if (doneAt[v] === undefined) bytes[assignment[v]!]! += vm.memoryBytes;
  });
  const refused: { target: number; reserved: number }[] = [];
  await Promise.all(
    links.map(async (link, t) => {
      link.send({ t: 'reserve', bytes: bytes[t]!, capacity: link.host.memoryBytes });
      try {
        const reply = await link.next('reserved', () => true, 30_000);
        if (!reply.ok) refused.push({ target: t, reserved: reply.reserved });
      } catch (error) {
        if (!(error instanceof AgentLostError)) throw error;
      }
    }),
  );
  return refused;
}

/**
 * Per target, the digests its running VMs' streams could refer to as held there: the distinct non-zero
 * pages of the running VMs placed on it, as of the scan, that its announcement may hold (packed, 16
 * bytes each). Empty where it announced nothing or runs none of them.
 */
export function liveReferenceCandidates(
  vms: readonly VmPages[],
  running: readonly number[],
  assignment: Int32Array,
  held: readonly (HeldDigests | undefined)[],
  table: DigestTable,
): Uint8Array[] {
  return held.map((announced, t) => {
    if (!announced) return new Uint8Array(0);
    const ids: number[] = [];
    const seen = new Uint8Array(table.size + 1);
    for (const v of running) {
      if (assignment[v] !== t) continue;
      for (const id of vms[v]!.pages) {
        if (id === ZERO_PAGE_ID || seen[id] === 1) continue;
        seen[id] = 1;
        if (announced.mayHold(table.digestOf(id))) ids.push(id);
      }
    }
    const digests = new Uint8Array(ids.length * DIGEST_BYTES);
    ids.forEach((id, i) => digests.set(table.digestOf(id), i * DIGEST_BYTES));
    return digests;
  });
}

/**
 * Asks each target which of `candidates[t]` it holds (held-confirmation.ts): the exact set that running
 * VMs' streams may refer to. Asked in parts of CONFIRM_PART_DIGESTS, one at a time, so no message
 * nears the control channel's frame limit. A target that is lost meanwhile, or does not answer, has
 * confirmed only what it answered before: its other pages go in full, which costs bytes, never a move.
 */
export async function confirmHeld(
  links: readonly AgentLink[],
  candidates: readonly Uint8Array[],
): Promise<DigestTable[]> {
  return Promise.all(
    links.map(async (link, t) => {
      const digests = candidates[t]!;
      const confirmed = new DigestTable(Math.max(16, digests.length / DIGEST_BYTES));
      const partBytes = CONFIRM_PART_DIGESTS * DIGEST_BYTES;
      for (let at = 0; at < digests.length; at += partBytes) {
        const part = digests.subarray(at, at + partBytes);
        link.send({ t: 'confirm-held', digests: part });
        try {
          const reply = await link.next('held-confirmed', () => true, CONFIRM_TIMEOUT_MS);
          confirmedDigests(part, reply.held, confirmed);
        } catch {
          break;
        }
      }
      return confirmed;
    }),
  );
}

/**
 * What an agent says it holds, if believable: an announcement that claims too much (a Bloom filter
 * whose bits are mostly set) would make the source skip pages wholesale, so it is ignored, and said.
 */
export function trustedAnnouncement(
  bytes: Uint8Array,
  host: string,
  warn: ((line: string) => void) | undefined,
): HeldDigests | undefined {
  const held = decodeAnnouncement(bytes);
  if (held && held.falsePositiveRate <= MAX_ANNOUNCEMENT_FALSE_POSITIVES) return held;
  warn?.(
    `${host}: ignoring its announcement of held pages (${held ? 'too many false positives' : 'malformed'})`,
  );
  return undefined;
}

export async function connectAgents(
  targets: readonly Host[],
  secret: Uint8Array,
  job: string,
  progress: (event: ScatterProgress) => void,
) {
  const links = new Map<string, Awaited<ReturnType<typeof connectControl>>>();
  const failures: string[] = [];
  const failedHosts: string[] = [];
  let done = 0;
  await Promise.all(
    targets.map(async (host) => {
      try {
        const channel = await connectControl(host.address, host.port, { secret, ...CONTROL_OPTIONS });
        channel.send({ t: 'job', version: PROTOCOL_VERSION, job, host: host.name });
        links.set(host.name, channel);
      } catch (error) {
        failures.push(`${host.name}: ${(error as Error).message}`);
        failedHosts.push(host.name);
      }
      progress({ phase: 'connect', done: ++done, total: targets.length, unit: 'targets' });
    }),
  );
  return { links, failures, failedHosts };
}
