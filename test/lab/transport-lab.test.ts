import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createLab, labAvailable, watchProcess } from '../../bench/harness/lab.js';

const peer = fileURLToPath(new URL('../../bench/harness/transport-peer.js', import.meta.url));

test('lab: 1 sender -> 4 receivers in namespaces, 2% loss on one link, 64 MiB byte-exact to all', async (t) => {
  const available = labAvailable();
  assert.ok(available.ok, available.ok ? '' : `the network lab is needed: ${available.why}`);
  const lab = await createLab({ hosts: ['src', 'r1', 'r2', 'r3', 'r4'] });
  t.after(() => lab.destroy());
  await lab.shape('src', { rate: '400mbit' });
  await lab.dropShare('r3', 2, 'in');
  const group = '239.255.90.1:7431';
  const sender = lab.host('src');
  const env = { ...process.env, VMS_SESSION_KEY: Buffer.from(randomBytes(32)).toString('hex') };
  const common = ['--group', group, '--size', '64MiB', '--object', '4MiB', '--mtu', '1500', '--seed', '5'];
  const receivers = [1, 2, 3, 4].map((id) => {
    const host = lab.host(`r${id}`);
    const args = [
      peer,
      'receive',
      ...common,
      '--iface',
      host.address,
      '--id',
      `${id}`,
      '--sender',
      `${sender.address}:7430`,
    ];
    return watchProcess(lab.spawn(host, process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] }));
  });
  const sendArgs = [
    peer,
    'send',
    ...common,
    '--iface',
    sender.address,
    '--receivers',
    '4',
    '--rate',
    '380Mbit',
  ];
  const sending = watchProcess(
    lab.spawn(sender, process.execPath, sendArgs, { env, stdio: ['ignore', 'pipe', 'pipe'] }),
  );
  const sent = await sending.exit(120_000);
  assert.equal(sent.code, 0, `sender failed: ${sent.stderr}`);
  const senderReport = JSON.parse(sent.stdout.trim());
  assert.deepEqual(senderReport.dropped, [], `no receiver dropped: ${sent.stdout}`);
  assert.deepEqual(senderReport.completed.slice().sort(), [1, 2, 3, 4]);
  for (const [i, receiving] of receivers.entries()) {
    const done = await receiving.exit(30_000);
    assert.equal(done.code, 0, `receiver ${i + 1} not byte-exact: ${done.stdout} ${done.stderr}`);
    const report = JSON.parse(done.stdout.trim());
    assert.equal(report.exact, true);
    if (i === 2) assert.ok(report.stats.decodedBlocks > 0, 'the lossy receiver rebuilt blocks from parity');
  }
  assert.ok(senderReport.stats.repairPackets > 0, 'the 2% loss was repaired');
});
