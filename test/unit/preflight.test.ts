import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compareVersions, preflightProblems } from '../../src/coordinator/preflight.js';

test('pre-flight: disk space and QEMU versions, every problem named', () => {
  const ok = {
    name: 't1',
    freeBytes: 10e9,
    neededBytes: 1e9,
    qemuVersion: '7.2.22',
    incomingQemuVersions: ['7.2.22'],
  };
  assert.deepEqual(preflightProblems([ok]), []);
  const problems = preflightProblems([
    { ...ok, name: 't2', freeBytes: 1e6 },
    { ...ok, name: 't3', qemuVersion: '7.1.0', incomingQemuVersions: ['7.2.0'] },
    { ...ok, name: 't4', qemuVersion: '' },
    { ...ok, name: 't5', qemuVersion: '', incomingQemuVersions: [] },
  ]);
  assert.equal(problems.length, 3);
  assert.match(problems[0]!, /^t2: needs .* free$/);
  assert.match(problems[1]!, /^t3: QEMU 7\.1\.0 is older than a source's 7\.2\.0$/);
  assert.match(problems[2]!, /^t4: .*no qemu-system-x86_64/);
  assert.ok(compareVersions('7.10', '7.9') > 0);
  assert.equal(compareVersions('7.2', '7.2.0'), 0);
});
