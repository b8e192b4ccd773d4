import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { ZstdRuns } from '../../src/memory/batch-zstd.js';
import { fullPageCodec } from '../../src/coordinator/live-phase.js';
import { parseFromAgent } from '../../src/wire/protocol.js';

/** Pages that share most of their bytes with their neighbours, as a guest's heap and page cache do. */
function run(pages: number): Uint8Array {
  const bytes = new Uint8Array(pages * 4096);
  for (let i = 0; i < bytes.length; i += 8) bytes[i] = (i >> 12) & 0xff;
  return bytes;
}

test('zstd runs: this machine has libzstd, and a run comes back whole', () => {
  const codec = ZstdRuns.open();
  assert.ok(codec, 'libzstd.so.1 opened through the addon');
  const entries = run(64);
  const frame = codec.compress(entries);
  assert.ok(frame && frame.length < entries.length / 8);
  assert.deepEqual(codec.decompress(frame, entries.length), entries);
});

test('zstd runs: what does not shrink by an eighth is not compressed', () => {
  const random = randomBytes(64 << 10);
  const codec = ZstdRuns.open()!;
  assert.equal(codec.compress(random), undefined);
  assert.equal(codec.compress(new Uint8Array(0)), undefined);
});

test('zstd runs: a frame that is cut, altered, or holds another length than declared is refused', () => {
  const codec = ZstdRuns.open()!;
  const entries = run(16);
  const frame = codec.compress(entries)!;
  assert.equal(codec.decompress(frame, entries.length - 1), undefined, 'holds more than declared');
  assert.equal(codec.decompress(frame, entries.length + 1), undefined, 'holds less than declared');
  assert.equal(codec.decompress(frame.subarray(0, frame.length - 3), entries.length), undefined, 'cut');
  assert.equal(codec.decompress(new Uint8Array(40).fill(0x28), entries.length), undefined, 'not zstd');
  const altered = Uint8Array.from(frame);
  altered[2]! ^= 0xff; // the frame header's descriptor
  assert.equal(codec.decompress(altered, entries.length), undefined, 'altered header');
});

test('stream codec: zstd only where both ends have it, none when compression is off', () => {
  assert.equal(fullPageCodec('adaptive', ['zstd'], true), 'zstd');
  assert.equal(fullPageCodec('on', ['zstd'], true), 'zstd');
  assert.equal(fullPageCodec('adaptive', [], true), 'lz4', 'an agent without libzstd');
  assert.equal(fullPageCodec('adaptive', ['zstd'], false), 'lz4', 'a coordinator without libzstd');
  assert.equal(fullPageCodec('off', ['zstd'], true), 'none');
});

test("protocol: an agent's ready names its codecs, a list of names and nothing else", () => {
  const ready = {
    t: 'ready',
    job: 'j',
    host: 'h',
    held: new Uint8Array(0),
    heldCount: 0,
    verified: [],
    freeBytes: 1,
    qemuVersion: '',
    running: [],
    reserved: 0,
    codecs: ['zstd'],
  };
  assert.deepEqual(parseFromAgent(ready), ready);
  for (const codecs of [undefined, 'zstd', [1], Array(17).fill('zstd')])
    assert.equal(parseFromAgent({ ...ready, codecs }), undefined, JSON.stringify(codecs));
});
