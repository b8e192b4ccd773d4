import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseFromAgent, parseToAgent, PROTOCOL_VERSION } from '../../src/wire/protocol.js';

test('protocol: well-formed messages parse both ways', () => {
  const job = { t: 'job', version: PROTOCOL_VERSION, job: 'j1', host: 't1' };
  assert.deepEqual(parseToAgent(job), job);
  const seeded = {
    t: 'seeded',
    session: 7,
    state: 'complete',
    stored: 3,
    rejected: 0,
    objects: 1,
    dropped: 2,
  };
  assert.deepEqual(parseFromAgent(seeded), seeded);
  const vm = {
    t: 'vm',
    vm: 'web-1',
    pages: 4,
    sha256: 'ab',
    digests: new Uint8Array(32),
    weights: new Uint8Array(4),
    manifest: new Uint8Array(3),
  };
  assert.deepEqual(parseToAgent(vm), vm);
});

test('protocol: forged or malformed values are refused, never thrown on', () => {
  const bad: unknown[] = [
    null,
    42,
    'job',
    [],
    {},
    { t: 'nope' },
    { t: 'toString' },
    { t: '__proto__' },
    { t: 'job', version: '1', job: 'j', host: 't' },
    { t: 'job', version: -1, job: 'j', host: 't' },
    { t: 'seed', session: 1, key: 'not bytes', group: 'g', sender: 's', receiver: 1, maxObjectBytes: 1 },
    {
      t: 'vm',
      vm: 'x',
      pages: 1.5,
      sha256: '',
      digests: new Uint8Array(0),
      weights: new Uint8Array(0),
      manifest: new Uint8Array(0),
    },
    // 2^40 pages once reached the manifest decoder and threw a raw RangeError there.
    {
      t: 'vm',
      vm: 'x',
      pages: 2 ** 40,
      sha256: '',
      digests: new Uint8Array(0),
      weights: new Uint8Array(0),
      manifest: new Uint8Array(0),
    },
    { t: 'live-repair', vm: 'x', chunks: 'not bytes' },
    { t: 'pages', records: [1, 2, 3] },
    { t: 'rebuild', vm: 'x'.repeat(5000) },
  ];
  for (const value of bad) assert.equal(parseToAgent(value), undefined, JSON.stringify(value));
  const badFromAgent: unknown[] = [
    { t: 'seeded', session: 1, state: 'maybe', stored: 0, rejected: 0, objects: 0, dropped: 0 },
    { t: 'ready', job: 'j', host: 'h', held: new Uint8Array(0), heldCount: 0, verified: [{ vm: 1 }] },
    { t: 'missing', vm: 'v', indices: 'x' },
    { t: 'rebuilt', vm: 'v', ok: 'yes', sha256: '', error: '' },
  ];
  for (const value of badFromAgent) assert.equal(parseFromAgent(value), undefined, JSON.stringify(value));
});
