import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DigestTable } from '../../src/memory/digest-table.js';
import { PAGE_SIZE, isZeroPage } from '../../src/memory/page.js';
import {
  readSyntheticPages,
  syntheticContentIds,
  syntheticPageTable,
  type SyntheticVm,
} from '../../src/memory/synthetic.js';
import { buildPageIndex } from '../../src/plan/page-index.js';
import { spec } from '../support/fixtures.js';

const vm = (name: string, seed: number, family: string, pageCount = 8192): SyntheticVm => ({
  name,
  pageCount,
  spec: spec(seed, family),
});

test('the same seed gives the same pages; another seed other pages', () => {
  const a = syntheticContentIds(vm('a', 7, 'debian'));
  assert.deepEqual(syntheticContentIds(vm('a', 7, 'debian')), a);
  assert.notDeepEqual(syntheticContentIds(vm('a', 8, 'debian')), a);
  const bytes1 = new Uint8Array(16 * PAGE_SIZE);
  const bytes2 = new Uint8Array(16 * PAGE_SIZE);
  readSyntheticPages(a, 100, 16, bytes1);
  readSyntheticPages(a, 100, 16, bytes2);
  assert.deepEqual(bytes1, bytes2);
});

test('zero content ids make zero pages and no other content does', () => {
  const ids = syntheticContentIds(vm('a', 3, 'debian', 2048));
  const bytes = new Uint8Array(2048 * PAGE_SIZE);
  readSyntheticPages(ids, 0, 2048, bytes);
  for (let page = 0; page < 2048; page++) {
    assert.equal(isZeroPage(bytes, page * PAGE_SIZE), ids[page * 2] === 0, `page ${page}`);
  }
});

test('page kinds follow the model: shares, family sharing, nothing shared across private pages', () => {
  const vms = [vm('d1', 1, 'debian'), vm('d2', 2, 'debian'), vm('a1', 3, 'alpine')];
  const table = new DigestTable();
  const index = buildPageIndex(
    vms.map((v) => syntheticPageTable(v, table)),
    table.size,
  );
  for (const s of index.vmStats) {
    const zeroShare = s.zero / s.pages;
    assert.ok(Math.abs(zeroShare - 0.3) < 0.03, `${s.name} zero share ${zeroShare}`);
    assert.ok(s.duplicateWithin > 0, `${s.name} has duplicates within`);
  }
  const [d1, d2, a1] = index.vmStats;
  // Same family: most of the OS share (40%) is shared; another family shares only the common pool (5%).
  assert.ok(d1!.shared / d1!.pages > 0.3, `d1 shared ${d1!.shared / d1!.pages}`);
  assert.ok(a1!.shared / a1!.pages < 0.08, `a1 shared ${a1!.shared / a1!.pages}`);
  assert.ok(d2!.unique / d2!.pages > 0.15, `d2 unique ${d2!.unique / d2!.pages}`);
});
