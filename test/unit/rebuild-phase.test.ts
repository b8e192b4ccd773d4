import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import type { ControlChannel } from '../../src/control/control-channel.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import type { ScatterPlan } from '../../src/plan/scatter-plan.js';
import { AgentLink } from '../../src/wire/agent-link.js';
import { DiskFullError } from '../../src/store/content-store.js';
import { rebuildImage } from '../../src/agent/image-rebuild.js';
import type { JobWork } from '../../src/plan/job-work.js';
import type { FromAgent, ToAgent } from '../../src/wire/protocol.js';
import { rebuildAll } from '../../src/coordinator/rebuild-phase.js';
import type { SourcePages } from '../../src/store/source-pages.js';
import type { Host } from '../../src/topology/model.js';
import { tempDir } from '../support/fixtures.js';

/** An agent in memory: each message the coordinator sends is answered by `answer`, a turn later. */
function fakeLink(
  target: number,
  name: string,
  answer: (message: ToAgent) => FromAgent | undefined | Promise<FromAgent | undefined>,
) {
  let deliver: (message: unknown) => void = () => undefined;
  const channel = {
    onMessage: (handler: (message: unknown) => void) => (deliver = handler),
    onClose: () => undefined,
    send: (message: unknown) => {
      setImmediate(async () => {
        const reply = await answer(message as ToAgent);
        if (reply) deliver(reply);
      });
      return true;
    },
    drain: () => Promise.resolve(),
    close: () => undefined,
  };
  const host = { name, address: '127.0.0.1', port: 7411, role: 'target' } as Host;
  return new AgentLink(target, host, channel as unknown as ControlChannel);
}

const noSpace = () => {
  throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
};

test('a VM whose target runs out of disk fails naming the target and what was being written', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const page = new Uint8Array(PAGE_SIZE).fill(7);
  const vms = ['vm-a', 'vm-b', 'vm-c'].map((name) => ({ name, pages: Uint32Array.from([1]) }));
  const sha256 = vms.map(() => 'f'.repeat(64));
  const links = [
    fakeLink(0, 't1', (m) =>
      m.t === 'vm' ? { t: 'rebuilt', vm: m.vm, ok: true, sha256: sha256[0]!, error: '' } : undefined,
    ),
    // t2's disk fills as it writes the image: the agent answers with rebuildImage's own error.
    fakeLink(1, 't2', async (m) => {
      if (m.t !== 'vm') return undefined;
      try {
        await rebuildImage({
          path: join(dir, `${m.vm}.raw`),
          entries: Int32Array.from([0]),
          pageFor: () => page,
          expectedSha256: m.sha256,
          write: noSpace,
        });
        return { t: 'rebuilt', vm: m.vm, ok: true, sha256: m.sha256, error: '' };
      } catch (error) {
        return { t: 'rebuilt', vm: m.vm, ok: false, sha256: '', error: (error as Error).message };
      }
    }),
    // t3's disk fills as pages arrive: the agent fails the job with an error reply.
    fakeLink(2, 't3', (m) =>
      m.t === 'vm' ? { t: 'error', message: new DiskFullError(join(dir, 'store')).message } : undefined,
    ),
  ];
  const plan = {
    detail: { assignment: Int32Array.from([0, 1, 2]), index: { holderCount: Uint32Array.from([0, 3]) } },
  } as unknown as ScatterPlan;
  const pages = {
    digestOf: () => new Uint8Array(16).fill(1),
    read: () => page,
  } as unknown as SourcePages;
  const work = { pendingVms: [0, 1, 2] } as unknown as JobWork;

  const outcome = await rebuildAll(work, plan, links, pages, vms, sha256, () => undefined);
  assert.deepEqual([...outcome.verified], [0]);
  assert.equal(
    outcome.errors.get(1),
    `t2: ${join(dir, 'vm-b.raw')}: no space left on device while writing the VM image`,
  );
  assert.equal(
    outcome.errors.get(2),
    `t3: ${join(dir, 'store')}: no space left on device while storing pages`,
  );
});
