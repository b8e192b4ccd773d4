import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  METHOD_LABELS,
  METHODS,
  renderSvg,
  renderTable,
  runQemuVsScatter,
} from '../../bench/qemu-vs-scatter.js';
import { labAvailable } from '../../bench/harness/lab.js';

/**
 * A small run of the headline benchmark (bench/qemu-vs-scatter.ts): 2 running guests (one idle, one
 * writing 5 MB/s) x 128 MiB -> 2 targets in the lab, each method once on freshly booted guests: QEMU's
 * own migration with defaults, with multifd+zstd and with xbzrle, and vmscatter with the same and with
 * its own placement. Every guest must run at its target afterwards (destination 'running', ticking past
 * where it was, source gone or 'postmigrate'), and the figures must be sane. Needs root, the lab tools
 * and QEMU: without them it fails, it does not skip.
 */
const MiB = 2 ** 20;

test(
  'qemu-vs-scatter smoke: 2 guests -> 2 targets, each method once, every guest runs at its target',
  { timeout: 420_000 },
  async (t) => {
    const available = labAvailable();
    assert.ok(available.ok, available.ok ? '' : `the network lab is needed: ${available.why}`);
    const result = await runQemuVsScatter({
      count: 2,
      memoryMiB: 128,
      targets: 2,
      rate: '1gbit',
      mtu: 9000,
      repeat: 1,
      methods: METHODS,
      log: (line) => t.diagnostic(line),
    });
    for (const line of renderTable(result).split('\n')) t.diagnostic(line);
    assert.deepEqual(
      result.runs.map((r) => r.method),
      [...METHODS],
    );
    for (const run of result.runs) {
      const what = run.label;
      // QEMU's own migration (the baselines) loses a guest now and then on QEMU 7.2 with TCG (pages its
      // dirty tracking missed: see bench:soak, which counts them): that is the baseline's result, said
      // here, not a failure of this tool. vmscatter's methods must move every guest alive.
      const baseline = run.method !== 'c' && run.method !== 'd';
      if (baseline && !run.ok && /: (no tick past|destination is)/.test(run.error ?? '')) {
        t.diagnostic(`${what}: QEMU's own migration lost a guest: ${run.error}`);
        continue;
      }
      assert.ok(run.ok, `${what}: ${run.error}`);
      assert.equal(run.guests.length, 2, what);
      const targets = run.guests.map((g) => g.target);
      if (run.method === 'd')
        assert.deepEqual([...targets].sort(), ['t1', 't2'], `${what}: one VM per target`);
      else assert.deepEqual(targets, ['t1', 't2'], `${what}: guest i at target i`);
      for (const guest of run.guests) {
        assert.equal(guest.destinationStatus, 'running', `${what}: ${guest.name} runs at its target`);
        assert.ok(
          guest.sourceStatus === 'postmigrate' || guest.sourceStatus === 'gone',
          `${what}: ${guest.name}'s source is ${guest.sourceStatus}`,
        );
        assert.ok((guest.tickAfter ?? 0) > guest.tickBefore, `${what}: ${guest.name} goes on ticking`);
        assert.ok(
          guest.downtimeMs !== undefined && guest.downtimeMs >= 0 && guest.downtimeMs < 30_000,
          `${what}: ${guest.name}'s downtime ${guest.downtimeMs} ms`,
        );
      }
      // Two guests of 128 MiB: tens of MiB at least (mostly non-zero), never several times their memory.
      assert.ok(run.bytes > 16 * MiB && run.bytes < 4 * 256 * MiB, `${what}: ${run.bytes} bytes on the link`);
      assert.ok(run.seconds > 0 && run.seconds < 240, `${what}: ${run.seconds} s`);
      assert.ok(
        run.cpu.total >= 0 && run.cpu.total < 2 * run.seconds + 30,
        `${what}: ${run.cpu.total} CPU s at the source`,
      );
    }
    // The link counter sees at least what the senders say they sent (multifd's figure counts pages
    // before compression, so it is left out).
    for (const run of result.runs.filter((r) => r.method === 'a' || r.method === 'b-xbzrle')) {
      const sent = (run.detail.qemu as { transferred?: number }[]).reduce(
        (s, q) => s + (q.transferred ?? 0),
        0,
      );
      assert.ok(
        sent > 0 && run.bytes >= 0.95 * sent,
        `${run.label}: link ${run.bytes} B, QEMU sent ${sent} B`,
      );
    }
    for (const run of result.runs.filter((r) => ['c', 'd'].includes(r.method))) {
      const source = run.detail.source as { multicastWireBytes: number };
      assert.ok(run.bytes >= 0.95 * source.multicastWireBytes, `${run.label}: link vs multicast bytes`);
      assert.ok(run.cpu.tool > 0, `${run.label}: vmscatter's CPU was measured`);
    }
    assert.ok(result.b && result.b.method.startsWith('b-'), 'a (b) was chosen');
    assert.equal(result.checks.length, 10, 'five targets for each of (c) and (d)');
    const svg = renderSvg(result);
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    for (const method of METHODS) assert.ok(svg.includes(METHOD_LABELS[method]), `the chart shows ${method}`);
  },
);
