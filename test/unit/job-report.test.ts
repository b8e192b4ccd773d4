import assert from 'node:assert/strict';
import { test } from 'node:test';
import { targetReports, type VmReport } from '../../src/coordinator/job-report.js';
import type { Host } from '../../src/topology/model.js';

const host = (name: string) => ({ name, address: '10.0.0.2', port: 7411, role: 'target' }) as Host;
const vm = (name: string, target: string) => ({ name, target, verified: false }) as VmReport;

test('a target lost mid-job is credited what it confirmed receiving, beside what was planned', () => {
  const rows = targetReports({
    hosts: [host('t1'), host('t2')],
    vms: [vm('a', 't1'), vm('b', 't2'), vm('c', 't2')],
    rounds: [
      { group: 0, receivers: [0, 1], needed: [3, 2], ids: Uint32Array.from([1, 2, 3, 4]) },
      { group: 0, receivers: [0, 1], needed: [1, 4], ids: Uint32Array.from([5, 6, 7, 8]) },
      { group: 1, receivers: [1], needed: [5], ids: Uint32Array.from([9, 10, 11, 12, 13]) },
    ],
    // t2 stored the first round, was lost during the second, and the third went to nobody.
    roundWireBytes: [1000, 800, 0],
    roundCompleted: [[0, 1], [0], []],
    heldPages: Int32Array.from([7, 1]),
    plannedMulticastPages: Int32Array.from([4, 11]),
    unicastPages: [2, 0],
    unicastBytes: [300, 0],
    peerPages: [0, 0],
    droppedDatagrams: [0, 3],
    lost: [undefined, 't2: agent lost (connection reset)'],
    unreachable: [{ name: 't3', why: 't3: connect ECONNREFUSED 10.0.0.4:7411' }],
  });
  assert.deepEqual(rows, [
    {
      name: 't1',
      vms: ['a'],
      heldPages: 7,
      multicastPages: 4,
      plannedMulticastPages: 4,
      unicastPages: 2,
      peerPages: 0,
      wireBytes: 2100,
      droppedDatagrams: 0,
    },
    {
      name: 't2',
      vms: ['b', 'c'],
      heldPages: 1,
      multicastPages: 2,
      plannedMulticastPages: 11,
      unicastPages: 0,
      peerPages: 0,
      wireBytes: 1000,
      droppedDatagrams: 3,
      lost: 't2: agent lost (connection reset)',
    },
    {
      name: 't3',
      vms: [],
      heldPages: 0,
      multicastPages: 0,
      plannedMulticastPages: 0,
      unicastPages: 0,
      peerPages: 0,
      wireBytes: 0,
      droppedDatagrams: 0,
      lost: 't3: connect ECONNREFUSED 10.0.0.4:7411',
    },
  ]);
});
