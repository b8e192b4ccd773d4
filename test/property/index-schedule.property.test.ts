import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { PAGE_SIZE, ZERO_PAGE_ID, type VmPages } from '../../src/memory/page.js';
import { buildPageIndex, holdersOf, rankTemplates, setSharingStats } from '../../src/plan/page-index.js';
import { buildSchedule } from '../../src/plan/schedule.js';
import { buildSharingModel } from '../../src/plan/sharing.js';
import { modelTraffic, QEMU_PAGE_RECORD_BYTES, QEMU_ZERO_RECORD_BYTES } from '../../src/plan/traffic.js';

/** Random fleets: up to 8 VMs of up to 40 pages over a small digest alphabet, so sharing is common. */
const fleet = fc
  .record({
    digests: fc.integer({ min: 1, max: 30 }),
    vms: fc.array(fc.array(fc.nat(30), { minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 8 }),
    targets: fc.integer({ min: 1, max: 5 }),
    maxGroups: fc.integer({ min: 1, max: 12 }),
  })
  .map(({ digests, vms, targets, maxGroups }) => ({
    digests,
    targets,
    maxGroups,
    vms: vms.map((pages, v): VmPages => ({
      name: `vm${v}`,
      pages: Uint32Array.from(pages, (p) => p % (digests + 1)),
    })),
  }))
  .chain((f) =>
    fc.record({
      f: fc.constant(f),
      assignment: fc.array(fc.nat(f.targets - 1), { minLength: f.vms.length, maxLength: f.vms.length }),
    }),
  );

/** Index, classes and schedule of a generated fleet under a given assignment. */
function scheduled(
  f: { vms: VmPages[]; digests: number; targets: number },
  assignment: number[],
  maxGroups: number,
) {
  const index = buildPageIndex(f.vms, f.digests);
  const sharing = buildSharingModel(index);
  const placed = Int32Array.from(assignment);
  const schedule = buildSchedule({ index, sharing, assignment: placed, targetCount: f.targets, maxGroups });
  return { index, placed, schedule };
}

test('property: index counts match a naive recount', () => {
  fc.assert(
    fc.property(fleet, ({ f }) => {
      const index = buildPageIndex(f.vms, f.digests);
      for (let id = 1; id <= f.digests; id++) {
        const holders = f.vms.flatMap((vm, v) => (vm.pages.includes(id) ? [v] : []));
        assert.deepEqual(Array.from(holdersOf(index, id)), holders);
        assert.equal(index.holderCount[id], holders.length);
        assert.equal(
          index.occurrences[id],
          f.vms.reduce((n, vm) => n + vm.pages.filter((p) => p === id).length, 0),
        );
      }
      index.vmStats.forEach((s, v) => {
        const pages = Array.from(f.vms[v]!.pages);
        const distinct = new Set(pages.filter((p) => p !== ZERO_PAGE_ID));
        const shared = [...distinct].filter((id) => f.vms.some((o, u) => u !== v && o.pages.includes(id)));
        assert.equal(s.zero, pages.filter((p) => p === ZERO_PAGE_ID).length);
        assert.equal(s.shared, shared.length);
        assert.equal(s.unique, distinct.size - shared.length);
        assert.equal(s.zero + s.duplicateWithin + s.shared + s.unique, s.pages);
      });
      const set = setSharingStats(index);
      const all = new Set(f.vms.flatMap((vm) => Array.from(vm.pages)).filter((p) => p !== ZERO_PAGE_ID));
      assert.equal(set.distinct, all.size);
      const templates = rankTemplates(index, 1000);
      for (let i = 1; i < templates.length; i++) assert.ok(templates[i - 1]!.vms >= templates[i]!.vms);
      assert.ok(templates.every((t) => t.vms >= 2));
    }),
  );
});

test('property: sharing classes price a placement exactly as the distinct pages per target', () => {
  fc.assert(
    fc.property(fleet, ({ f, assignment }) => {
      const index = buildPageIndex(f.vms, f.digests);
      const sharing = buildSharingModel(index);
      let modelled = sharing.privatePages.reduce((a, b) => a + b, 0);
      for (const c of sharing.classes)
        modelled += c.weight * new Set(Array.from(c.vms, (v) => assignment[v])).size;
      let direct = 0;
      for (let t = 0; t < f.targets; t++) {
        const onTarget = f.vms.filter((_, v) => assignment[v] === t);
        direct += new Set(onTarget.flatMap((vm) => Array.from(vm.pages)).filter((p) => p !== ZERO_PAGE_ID))
          .size;
      }
      assert.equal(modelled, direct);
    }),
  );
});

test('property: the schedule delivers every unique page to every target that needs it, in exactly one group', () => {
  fc.assert(
    fc.property(fleet, ({ f, assignment }) => {
      const { index, placed, schedule } = scheduled(f, assignment, f.maxGroups);
      assert.ok(schedule.groups.length <= f.maxGroups);
      const carried = new Array<number>(schedule.groups.length).fill(0);
      for (let id = 1; id <= f.digests; id++) {
        if (index.holderCount[id] === 0) continue;
        const group = schedule.groups[schedule.groupOfDigest[id]!];
        assert.ok(group, `digest ${id} has a group`);
        carried[schedule.groupOfDigest[id]!]!++;
        for (const v of holdersOf(index, id))
          assert.ok(group.receivers.includes(placed[v]!), `digest ${id} reaches VM ${v}`);
      }
      schedule.groups.forEach((g, i) => {
        assert.equal(g.pages, carried[i], 'a group carries exactly the pages mapped to it');
        assert.ok(g.extraDeliveries >= 0);
      });
      if (f.maxGroups >= 2 ** f.targets) {
        assert.ok(
          schedule.groups.every((g) => g.extraDeliveries === 0),
          'no merging needed, none done',
        );
      }
    }),
  );
});

test('property: traffic model: naive matches QEMU records, plan never sends more than dedup from the source', () => {
  fc.assert(
    fc.property(fleet, ({ f, assignment }) => {
      const { index, placed, schedule } = scheduled(f, assignment, 64);
      const traffic = modelTraffic({
        index,
        schedule,
        assignment: placed,
        sourceBitsPerSecond: 1e9,
        targetBitsPerSecond: new Array<number>(f.targets).fill(1e9),
      });
      const zero = f.vms.reduce((n, vm) => n + vm.pages.filter((p) => p === ZERO_PAGE_ID).length, 0);
      const pages = f.vms.reduce((n, vm) => n + vm.pages.length, 0);
      assert.equal(
        traffic.naive.source,
        (pages - zero) * QEMU_PAGE_RECORD_BYTES + zero * QEMU_ZERO_RECORD_BYTES,
      );
      assert.ok(traffic.plan.source <= traffic.dedup.source);
      const distinct = setSharingStats(index).distinct;
      assert.equal(
        traffic.plan.source - pages * 4,
        distinct * PAGE_SIZE,
        'each unique page leaves the source once',
      );
    }),
  );
});
