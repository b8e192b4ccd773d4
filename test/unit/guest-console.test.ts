import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  GUEST_SUM_MARKER,
  GUEST_TICK_MARKER,
  lastMarked,
  lastTick,
  tickCount,
} from '../../bench/harness/qemu-guest.js';

/**
 * A guest's console is read while the guest writes it: the last line may be half written. Its value
 * is not the guest's (a checksum read as "d9" once made the fault benchmark report a guest whose data
 * was intact as changed).
 */
const sum = 'd9a1a2ee94908a3513e0c11fc7fbcd58';

test('console markers: only whole lines count, LF or CRLF', () => {
  const whole = `${GUEST_TICK_MARKER} 11\r\n${GUEST_SUM_MARKER} ${sum}\r\n${GUEST_TICK_MARKER} 12\n`;
  assert.equal(lastMarked(whole, GUEST_SUM_MARKER), sum);
  assert.equal(lastTick(whole), 12);
  assert.equal(tickCount(whole), 2);
  const cut = `${whole}${GUEST_SUM_MARKER} d9`;
  assert.equal(lastMarked(cut, GUEST_SUM_MARKER), sum, 'the half-written line is not read');
  assert.equal(lastTick(`${whole}${GUEST_TICK_MARKER} 1`), 12, 'nor a half-written tick');
  assert.equal(lastMarked('', GUEST_SUM_MARKER), undefined);
  assert.equal(lastTick(''), 0);
});
