import assert from 'node:assert/strict';
import { test } from 'node:test';
import { freecellBytes, maxMemoryOf } from '../../src/libvirt/inventory.js';
import { errorLine } from '../../src/libvirt/virsh.js';

test('libvirt inventory: virsh freecell --all, with a total or one cell only (quiet virsh prints none)', () => {
  assert.equal(freecellBytes('    0:   22494132 KiB\n'), 22494132 * 1024);
  const numa = [
    '    0:    1000 KiB',
    '    1:    2000 KiB',
    '--------------------',
    'Total:     3000 KiB',
    '',
  ];
  assert.equal(freecellBytes(numa.join('\n')), 3000 * 1024);
  assert.equal(freecellBytes('error-free but empty\n'), undefined);
});

test("libvirt inventory: a domain's memory is dominfo's Max memory, in bytes", () => {
  const dominfo = [
    'Id:             3',
    'Name:           web-1',
    'State:          running',
    'Max memory:     262144 KiB',
    'Used memory:    131072 KiB',
    'Persistent:     yes',
  ].join('\n');
  assert.equal(maxMemoryOf(dominfo), 256 * 2 ** 20);
  assert.equal(maxMemoryOf('Name: web-1\n'), undefined);
});

test("virsh's error lines lose their prefixes and join into one", () => {
  assert.equal(
    errorLine("error: failed to get domain 'x'\nerror: Domain not found\n\n"),
    "failed to get domain 'x'; Domain not found",
  );
});
