import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildPageIndex } from '../../src/plan/page-index.js';
import { attributeWireBytes } from '../../src/coordinator/wire-attribution.js';

test('wire bytes: shared by pages, then by the VMs being built that hold them; totals preserved', () => {
  // vm0 and vm1 share pages 1 and 2; vm2 alone holds 3; vm3 (verified earlier) also holds 1.
  const vms = [[1, 2, 0], [1, 2], [3, 3], [1]].map((pages, v) => ({
    name: `vm${v}`,
    pages: Uint32Array.from(pages),
  }));
  const index = buildPageIndex(vms, 3);
  const result = attributeWireBytes({
    rounds: [
      { group: 0, receivers: [0, 1], needed: [2, 2], ids: Uint32Array.from([1, 2]) },
      { group: 1, receivers: [1], needed: [1], ids: Uint32Array.from([3]) },
    ],
    roundWireBytes: [1000, 600],
    index,
    done: [false, false, false, true],
    vmCount: 4,
  });
  assert.deepEqual(Array.from(result.vmBytes), [500, 500, 600, 0]);
});
