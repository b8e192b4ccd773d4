import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ZERO_PAGE_ID, type VmPages } from '../../src/memory/page.js';
import { buildPageIndex } from '../../src/plan/page-index.js';
import { buildSchedule } from '../../src/plan/schedule.js';
import { buildSharingModel } from '../../src/plan/sharing.js';
import { planJobWork } from '../../src/plan/job-work.js';

/** Random jobs: small fleets over a small digest alphabet, random placement, holdings and finished VMs. */
const job = fc
  .record({
    digests: fc.integer({ min: 1, max: 30 }),
    vms: fc.array(fc.array(fc.nat(30), { minLength: 1, maxLength: 30 }), { minLength: 1, maxLength: 7 }),
    targets: fc.integer({ min: 1, max: 4 }),
    maxGroups: fc.integer({ min: 1, max: 6 }),
    roundPages: fc.integer({ min: 1, max: 8 }),
    seed: fc.nat(),
  })
  .chain((j) =>
    fc.record({
      j: fc.constant(j),
      assignment: fc.array(fc.nat(j.targets - 1), { minLength: j.vms.length, maxLength: j.vms.length }),
      done: fc.array(fc.boolean(), { minLength: j.vms.length, maxLength: j.vms.length }),
      /** Whether VM v carries its own pages in a live stream. */
      streamed: fc.array(fc.boolean(), { minLength: j.vms.length, maxLength: j.vms.length }),
      held: fc.array(fc.array(fc.boolean(), { minLength: 31, maxLength: 31 }), {
        minLength: j.targets,
        maxLength: j.targets,
      }),
      /** Whether target t may fetch digest id from a peer (the next target) holding it. */
      peered: fc.array(fc.array(fc.boolean(), { minLength: 31, maxLength: 31 }), {
        minLength: j.targets,
        maxLength: j.targets,
      }),
    }),
  );

test('property: every page a pending VM lacks reaches its target exactly once; pages nobody lacks stay home', () => {
  fc.assert(
    fc.property(job, ({ j, assignment, done, streamed, held, peered }) => {
      const vms: VmPages[] = j.vms.map((pages, v) => ({
        name: `vm${v}`,
        pages: Uint32Array.from(pages, (p) => p % (j.digests + 1)),
      }));
      const index = buildPageIndex(vms, j.digests);
      const placed = Int32Array.from(assignment);
      const schedule = buildSchedule({
        index,
        sharing: buildSharingModel(index),
        assignment: placed,
        targetCount: j.targets,
        maxGroups: j.maxGroups,
      });
      const work = planJobWork({
        vms,
        index,
        schedule,
        assignment: placed,
        targetCount: j.targets,
        held: (t, id) => held[t]![id]!,
        // A peer serves only what it holds: the next target, when it does.
        peerHolding: (t, id) => {
          const peer = (t + 1) % j.targets;
          return peer !== t && peered[t]![id] && held[peer]![id] ? peer : undefined;
        },
        done,
        roundPages: j.roundPages,
        streamed: (v) => streamed[v]!,
      });
      // A page whose one pending holder streams it is left to that stream.
      const pendingHolders = (id: number) =>
        vms.flatMap((vm, v) => (!done[v] && vm.pages.includes(id) ? [v] : []));
      const streamedAlone = (id: number) => {
        const holders = pendingHolders(id);
        return holders.length === 1 && streamed[holders[0]!]!;
      };
      const deliveries = new Map<string, number>();
      const fetched = new Map<string, number>();
      for (const f of work.peerFetches) {
        assert.notEqual(f.peer, f.target);
        for (const id of f.ids) fetched.set(`${f.target}:${id}`, (fetched.get(`${f.target}:${id}`) ?? 0) + 1);
      }
      for (const round of work.rounds) {
        assert.ok(round.ids.length >= 1 && round.ids.length <= j.roundPages);
        for (const id of round.ids)
          for (const t of round.receivers)
            deliveries.set(`${t}:${id}`, (deliveries.get(`${t}:${id}`) ?? 0) + 1);
      }
      const needed = new Set<string>();
      vms.forEach((vm, v) => {
        if (done[v]) return;
        for (const id of vm.pages) if (id !== ZERO_PAGE_ID) needed.add(`${assignment[v]}:${id}`);
      });
      for (const key of needed) {
        const [t, id] = key.split(':').map(Number) as [number, number];
        // A held page may still pass a target that shares the group with one lacking it; never twice.
        if (held[t]![id]) assert.ok((deliveries.get(key) ?? 0) <= 1, `held ${key} at most once`);
        else if (fetched.has(key)) {
          assert.equal(fetched.get(key), 1, `${key} fetched from a peer once`);
          assert.ok((deliveries.get(key) ?? 0) <= 1, `${key} fetched, multicast to it at most in passing`);
        } else if (streamedAlone(id))
          assert.equal(deliveries.get(key), undefined, `${key} left to its stream`);
        else assert.equal(deliveries.get(key), 1, `${key} arrives exactly once`);
      }
      // No page goes out that no pending VM's target lacks.
      const sent = new Set(work.rounds.flatMap((r) => [...r.ids]));
      const lacks = (k: string) =>
        !held[Number(k.split(':')[0])]![Number(k.split(':')[1])] && !fetched.has(k);
      const lacksAndMulticast = (k: string) => lacks(k) && !streamedAlone(Number(k.split(':')[1]));
      for (const id of sent) assert.ok([...needed].some((k) => k.endsWith(`:${id}`) && lacksAndMulticast(k)));
      assert.deepEqual(
        work.pendingVms,
        vms.map((_, v) => v).filter((v) => !done[v]),
      );
      const count = (t: number, is: (k: string) => boolean) =>
        [...needed].filter((k) => k.startsWith(`${t}:`) && is(k)).length;
      const lacking = Array.from({ length: j.targets }, (_, t) => count(t, lacksAndMulticast));
      assert.deepEqual(Array.from(work.neededPages), lacking);
      const leftToStreams = Array.from({ length: j.targets }, (_, t) =>
        count(t, (k) => lacks(k) && !lacksAndMulticast(k)),
      );
      assert.deepEqual(Array.from(work.streamedPages), leftToStreams);
      // Per round, what each receiver needs of it: together, what it needs by multicast.
      const byRounds = new Array<number>(j.targets).fill(0);
      for (const round of work.rounds) {
        assert.equal(round.needed.length, round.receivers.length);
        round.receivers.forEach((t, k) => (byRounds[t]! += round.needed[k]!));
        assert.ok(round.needed.every((n) => n <= round.ids.length));
      }
      assert.deepEqual(byRounds, Array.from(work.neededPages));
    }),
    { numRuns: 300 },
  );
});
