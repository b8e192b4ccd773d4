import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fingerprintVms } from '../../src/memory/fingerprint.js';
import { DIGEST_BYTES, PAGE_SIZE, ZERO_PAGE_ID } from '../../src/memory/page.js';
import { deriveDigestKey, PageDigester } from '../../src/memory/page-digest.js';
import { Prng } from '../../src/memory/prng.js';
import { readSyntheticPages, syntheticContentIds } from '../../src/memory/synthetic.js';
import { buildScatterPlan } from '../../src/plan/scatter-plan.js';
import { ContentStore } from '../../src/store/content-store.js';
import { rebuildImage } from '../../src/agent/image-rebuild.js';
import { imageSha256 } from '../../src/memory/image-hash.js';
import { decodeManifest, encodeManifest, ZERO_ENTRY } from '../../src/wire/manifest.js';
import { decodeBatch, encodeBatch, firstLocations, groupBatches } from '../../src/memory/page-batches.js';
import type { Topology } from '../../src/topology/model.js';
import { BlockCodec } from '../../src/transport/fec-codec.js';
import { MemoryNetwork } from '../../src/transport/memory-network.js';
import { ReceiverSession, SenderSession } from '../../src/transport/session.js';
import { VirtualClock } from '../../src/transport/virtual-clock.js';
import { spec, tempDir } from '../support/fixtures.js';

/**
 * The image data path end to end, in one process: real images scanned, planned, each group's unique
 * pages multicast (encrypted, 5% loss) to the targets that need them, stored by digest after checking
 * the digest, manifests sent, images rebuilt and verified against the source's SHA-256.
 */
test('images: scan, plan, multicast seed with loss, store, manifest, rebuild: byte-identical', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const pagesPerVm = 1024;
  const families = ['debian', 'debian', 'alpine', 'alpine', 'debian', 'alpine'];
  const images = families.map((family, i) => {
    const path = join(dir, `vm${i}.raw`);
    const bytes = new Uint8Array(pagesPerVm * PAGE_SIZE);
    readSyntheticPages(
      syntheticContentIds({ name: `vm${i}`, pageCount: pagesPerVm, spec: spec(i + 1, family) }),
      0,
      pagesPerVm,
      bytes,
    );
    writeFileSync(path, bytes);
    return path;
  });
  const topology: Topology = {
    file: '<test>',
    multicast: { base: '239.255.60.0', size: 8, port: 7420 },
    hosts: [
      {
        name: 'src',
        address: '10.9.0.1',
        port: 7410,
        role: 'source',
        memoryBytes: 0,
        maxVms: Infinity,
        linkBitsPerSecond: 1e9,
        site: 'a',
      },
      ...[1, 2, 3].map((n) => ({
        name: `t${n}`,
        address: `10.9.0.${n + 1}`,
        port: 7411,
        role: 'target' as const,
        memoryBytes: 2 * pagesPerVm * PAGE_SIZE,
        maxVms: 2,
        linkBitsPerSecond: 1e9,
        site: 'a',
      })),
    ],
    vms: images.map((path, i) => ({
      name: `vm${i}`,
      memoryBytes: pagesPerVm * PAGE_SIZE,
      source: { kind: 'image' as const, path },
      excludedTargets: [],
    })),
  };
  const key = deriveDigestKey('deployment secret');
  const scan = await fingerprintVms(
    topology.vms.map((vm, i) => ({ name: vm.name, source: { kind: 'image', path: images[i]! } })),
    { key },
  );
  const plan = buildScatterPlan(topology, scan.vms, scan.table.size, { maxGroups: 4, seed: 1 });
  const { index, schedule, assignment } = plan.detail;

  const clock = new VirtualClock();
  const rng = new Prng(99);
  const network = new MemoryNetwork(clock, () => rng.next(), { loss: 0.05, reorder: 0.05, reorderMs: 2 });
  const codec = new BlockCodec();
  const digester = new PageDigester(key);
  const stores = [1, 2, 3].map((n) => ContentStore.open(join(dir, `store-t${n}`)));
  t.after(() => stores.forEach((s) => s.close()));
  let rejectedPages = 0;

  const locations = firstLocations(scan.vms, scan.table.size);
  const fds = images.map((path) => openSync(path, 'r'));
  t.after(() => fds.forEach((fd) => closeSync(fd)));
  const pageOf = (id: number) => {
    const page = new Uint8Array(PAGE_SIZE);
    readSync(fds[locations.vm[id]!]!, page, 0, PAGE_SIZE, locations.page[id]! * PAGE_SIZE);
    return page;
  };
  let seededBytes = 0;
  for (const [g, group] of schedule.groups.entries()) {
    const batches = groupBatches(schedule.groupOfDigest, index.holderCount, g, 64);
    const objects = batches.map((ids) => ({
      // Odd groups compressed, even ones raw: both encodings cross the lossy network.
      bytes: encodeBatch(ids, (id) => scan.table.digestOf(id), pageOf, g % 2 === 1),
    }));
    const identity = {
      session: 100 + g,
      key: new Uint8Array(randomBytes(32)),
      group: `239.255.60.${g}:7420`,
    };
    const senderAddress = `10.9.0.1:${8000 + g}`;
    const receivers = group.receivers.map((target) => {
      const session = new ReceiverSession(
        network.socket(`10.9.0.${target + 2}:${9000 + g}`),
        clock,
        identity,
        target + 1,
        senderAddress,
        { decoder: codec },
        (_id, bytes) => {
          for (const { digest, page } of decodeBatch(bytes)) {
            if (!page) {
              rejectedPages++;
              continue;
            }
            const check = new Uint8Array(DIGEST_BYTES);
            digester.digestInto(page, 0, check, 0);
            if (Buffer.compare(check, digest) === 0) stores[target]!.put(digest.slice(), page.slice());
            else rejectedPages++;
          }
        },
        () => rng.next(),
      );
      void session.run();
      return session;
    });
    const sender = new SenderSession(
      network.socket(senderAddress),
      clock,
      identity,
      objects,
      group.receivers.map((t) => t + 1),
      {
        symbolSize: 1400,
        blockSymbols: 32,
        parity: codec,
        rateCapBytesPerSecond: 100e6,
      },
    );
    void sender.run();
    assert.ok(
      clock.runUntil(() => sender.done, 120_000),
      `group ${g} finishes`,
    );
    assert.deepEqual(sender.result().dropped, []);
    assert.ok(receivers.every((r) => r.state === 'complete'));
    seededBytes += objects.reduce((n, o) => n + o.bytes.length, 0);
  }
  assert.equal(rejectedPages, 0);

  for (const [v, vm] of scan.vms.entries()) {
    const entries = Int32Array.from(vm.pages, (id) => (id === ZERO_PAGE_ID ? ZERO_ENTRY : id - 1));
    const manifest = encodeManifest(entries);
    const target = assignment[v]!;
    const out = join(dir, `rebuilt-vm${v}.raw`);
    await rebuildImage({
      path: out,
      entries: decodeManifest(manifest, vm.pages.length, scan.table.size),
      pageFor: (i) => stores[target]!.get(scan.table.digestOf(i + 1)),
      expectedSha256: imageSha256(images[v]!),
    });
    assert.ok(readFileSync(out).equals(readFileSync(images[v]!)), `vm${v} rebuilt byte-identical`);
  }
  // Each unique page crossed the source's link once (plus headers), not once per VM.
  assert.ok(seededBytes < images.length * pagesPerVm * PAGE_SIZE * 0.8);
});
