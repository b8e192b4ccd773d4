import { DIGEST_BYTES, ZERO_PAGE_ID } from '../memory/page.js';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import { AgentLostError, type AgentLink } from '../wire/agent-link.js';
import type { JobWork } from '../plan/job-work.js';
import { encodeManifest, ZERO_ENTRY } from '../wire/manifest.js';
import { encodeBatch } from '../memory/page-batches.js';
import type { SourcePages } from '../store/source-pages.js';

/**
 * Phase 6, rebuild: each pending VM's manifest goes to its target, which rebuilds the image from the
 * pages it holds and checks it against the source's SHA-256. Pages it lacks (a round it was dropped
 * from, an announcement's false positive) it names, and they follow over the control channel, so a
 * rebuild never fails for want of a page while the source is up.
 */
export interface RebuildOutcome {
  readonly verified: Set<number>;
  readonly errors: Map<number, string>;
  /**
   * Per target: pages it received over the control channel to fill gaps, and their bytes; counted
   * once its verdict on the VM confirms they arrived: an agent lost before that may or may not have them.
   */
  readonly unicastPages: number[];
  readonly unicastBytesByTarget: number[];
  /** Bytes of those pages sent on the source's link, in all and by VM (what was sent, confirmed or not). */
  readonly unicastBytes: number;
  readonly unicastBytesByVm: Map<number, number>;
}

const REBUILD_TIMEOUT_MS = 10 * 60_000;
/** Pages per control message of gap-filling pages (well under the channel's frame limit). */
const UNICAST_CHUNK_PAGES = 1024;

/** Sends every pending VM's manifest to its target and collects the verdicts; targets in parallel. */
export async function rebuildAll(
  work: JobWork,
  plan: ScatterPlan,
  links: readonly AgentLink[],
  pages: SourcePages,
  vms: readonly { name: string; pages: Uint32Array }[],
  sha256: readonly string[],
  onVerdict: (done: number, total: number) => void,
  /**
   * When a target's VMs may be built: once it holds what seeding sends it (false: not at all). Each
   * target starts on its own, so rebuilds overlap the rounds that go to other targets.
   */
  ready: (target: number) => Promise<boolean> = () => Promise.resolve(true),
): Promise<RebuildOutcome> {
  const { assignment, index } = plan.detail;
  const names = vms.map((vm) => vm.name);
  const verified = new Set<number>();
  const errors = new Map<number, string>();
  const unicastPages = new Array<number>(links.length).fill(0);
  let unicastBytes = 0;
  const unicastBytesByTarget = new Array<number>(links.length).fill(0);
  const unicastBytesByVm = new Map<number, number>();
  let finished = 0;
  await Promise.all(
    links.map(async (link) => {
      const mine = work.pendingVms.filter((v) => assignment[v] === link.target);
      if (mine.length === 0 || !(await ready(link.target))) return;
      for (const v of mine) {
        const vm = names[v]!;
        try {
          const { digests, ids, entries } = vmDictionary(vms[v]!.pages, pages);
          const weights = new Uint16Array(ids.length);
          ids.forEach((id, i) => (weights[i] = Math.min(0xffff, index.holderCount[id]!)));
          link.send({
            t: 'vm',
            vm,
            pages: entries.length,
            sha256: sha256[v]!,
            digests,
            weights: new Uint8Array(weights.buffer),
            manifest: encodeManifest(entries),
          });
          const reply = await link.next(['missing', 'rebuilt'], (m) => m.vm === vm, REBUILD_TIMEOUT_MS);
          let verdict = reply;
          if (reply.t === 'missing') {
            let sentBytes = 0;
            const wanted = new Uint32Array(
              reply.indices.buffer.slice(
                reply.indices.byteOffset,
                reply.indices.byteOffset + (reply.indices.length & ~3),
              ),
            );
            for (let i = 0; i < wanted.length; i += UNICAST_CHUNK_PAGES) {
              const chunk = Uint32Array.from(wanted.subarray(i, i + UNICAST_CHUNK_PAGES), (k) => ids[k] ?? 0);
              const records = encodeBatch(
                chunk.filter((id) => id > 0),
                (id) => pages.digestOf(id),
                (id) => pages.read(id),
              );
              link.send({ t: 'pages', records });
              unicastBytes += records.length;
              sentBytes += records.length;
              unicastBytesByVm.set(v, (unicastBytesByVm.get(v) ?? 0) + records.length);
              await link.drain();
            }
            link.send({ t: 'rebuild', vm });
            verdict = await link.next('rebuilt', (m) => m.vm === vm, REBUILD_TIMEOUT_MS);
            unicastPages[link.target]! += wanted.length;
            unicastBytesByTarget[link.target]! += sentBytes;
          }
          if (verdict.t === 'rebuilt' && verdict.ok && verdict.sha256 === sha256[v]) verified.add(v);
          // The agent's reason names paths on its own host (a full disk, a digest that differs):
          // which host is for us to say, as AgentLink does for a lost agent.
          else errors.set(v, `${link.host.name}: ${verdict.t === 'rebuilt' ? verdict.error : 'no verdict'}`);
        } catch (error) {
          if (!(error instanceof AgentLostError)) throw error;
          errors.set(v, error.message);
        }
        onVerdict(++finished, work.pendingVms.length);
      }
    }),
  );
  return { verified, errors, unicastPages, unicastBytes, unicastBytesByTarget, unicastBytesByVm };
}

/** A VM's distinct non-zero digests in first-use order, and its pages as indices into them. */
function vmDictionary(vmPages: Uint32Array, pages: SourcePages) {
  const local = new Map<number, number>();
  const ids: number[] = [];
  const entries = new Int32Array(vmPages.length);
  vmPages.forEach((id, p) => {
    if (id === ZERO_PAGE_ID) {
      entries[p] = ZERO_ENTRY;
      return;
    }
    let k = local.get(id);
    if (k === undefined) {
      k = ids.length;
      local.set(id, k);
      ids.push(id);
    }
    entries[p] = k;
  });
  const digests = new Uint8Array(ids.length * DIGEST_BYTES);
  ids.forEach((id, i) => digests.set(pages.digestOf(id), i * DIGEST_BYTES));
  return { digests, ids, entries };
}
