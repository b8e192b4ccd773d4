import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoRoot, tempDir, writeImage } from '../support/fixtures.js';

const cli = join(repoRoot, 'dist/src/cli/main.js');

function run(...args: string[]) {
  const result = spawnSync(process.execPath, [cli, ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function assertNoStack(stderr: string): void {
  assert.doesNotMatch(stderr, /\n\s+at /, `no stack trace for a user error:\n${stderr}`);
}

test('plan --json on the embedded default: every VM placed within its constraints, fewer bytes than naive', () => {
  const { code, stdout, stderr } = run('plan', '--json');
  assert.equal(code, 0, stderr);
  const plan = JSON.parse(stdout);
  const vms = ['web-1', 'web-2', 'web-3', 'db-1', 'cache-1', 'cache-2'];
  assert.deepEqual(Object.keys(plan.placement).sort(), vms.slice().sort());
  assert.equal(plan.placement['web-1'], 't1', 'web-1 is pinned to t1');
  assert.notEqual(plan.placement['db-1'], 't3', 'db-1 excludes t3');
  for (const target of plan.targets) assert.ok(target.vms.length <= 4, `${target.name} holds at most maxVms`);
  assert.ok(plan.groups.length >= 1);
  for (const group of plan.groups) assert.match(group.address, /^239\.255\.42\.\d+$/);
  assert.ok(plan.traffic.planBytes < plan.traffic.naiveBytes);
  assert.ok(plan.traffic.planBytes > 0);
});

test('plan on an invalid topology names file, line and field, exit code 2, no stack', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const file = join(dir, 'bad.yaml');
  writeFileSync(
    file,
    [
      'hosts:',
      '  - { name: src, address: 127.0.0.1, role: source, link: 1Gbit }',
      '  - { name: t1, address: 127.0.0.1, port: 7412, role: target, memory: 1GiB, link: 10 furlongs }',
      'vms:',
      '  - { name: a, memory: 64MiB, source: { synthetic: {} } }',
      '',
    ].join('\n'),
  );
  const { code, stderr } = run('plan', '--topology', file);
  assert.equal(code, 2);
  assert.match(stderr, /bad\.yaml:3: hosts\[1\]\.link: .*10 furlongs/);
  assertNoStack(stderr);
});

test('plan on a missing file and an infeasible job: clear errors', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const missing = run('plan', '--topology', join(dir, 'nope.yaml'));
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /nope\.yaml/);
  assertNoStack(missing.stderr);
  const file = join(dir, 'big.yaml');
  writeFileSync(
    file,
    [
      'hosts:',
      '  - { name: src, address: 127.0.0.1, role: source, link: 1Gbit }',
      '  - { name: t1, address: 127.0.0.1, port: 7412, role: target, memory: 32MiB, link: 1Gbit }',
      'vms:',
      '  - { name: huge, memory: 64MiB, source: { synthetic: {} } }',
      '',
    ].join('\n'),
  );
  const infeasible = run('plan', '--topology', file);
  assert.equal(infeasible.code, 3, infeasible.stderr);
  assert.match(infeasible.stderr, /huge/);
  assertNoStack(infeasible.stderr);
});

test('plan of a running VM whose QMP socket is not there: exit 7, the VM and socket named', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const file = join(dir, 'live.yaml');
  writeFileSync(
    file,
    [
      'hosts:',
      '  - { name: src, address: 127.0.0.1, role: source, link: 1Gbit }',
      '  - { name: t1, address: 127.0.0.1, port: 7412, role: target, memory: 1GiB, link: 1Gbit }',
      'vms:',
      '  - { name: g1, memory: 128MiB, source: { qemu: { qmp: g1.qmp, command: [qemu-system-x86_64] } } }',
      '',
    ].join('\n'),
  );
  const result = run('plan', '--topology', file);
  assert.equal(result.code, 7, result.stderr);
  assert.match(result.stderr, /VM g1: no QMP socket at .*g1\.qmp/);
  assertNoStack(result.stderr);
});

test('a bad option value is refused with the option named', () => {
  const { code, stderr } = run('plan', '--max-groups', 'lots');
  assert.notEqual(code, 0);
  assert.match(stderr, /--max-groups/);
  assertNoStack(stderr);
});

test('evacuate: a usage error exits 1, an error before anything moved (2 is a partial evacuation)', () => {
  const badValue = run('evacuate', '--host', 't1', '--max-parallel', 'lots', '--json');
  assert.equal(badValue.code, 1, badValue.stderr);
  assert.deepEqual(JSON.parse(badValue.stdout), {
    ok: false,
    code: 'VMS_USAGE',
    exitCode: 1,
    message:
      "option '--max-parallel <count>' argument 'lots' is invalid. expected a whole number from 1 to 64.",
  });
  const missing = run('evacuate');
  assert.equal(missing.code, 1, missing.stderr);
  assert.match(missing.stderr, /--host/);
  assertNoStack(missing.stderr);
});

test('inspect --json reports the split of each image and the set', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const a = writeImage(dir, 'a.raw', [0, 1, 2, 2, 9]);
  const b = writeImage(dir, 'b.raw', [1, 0, 0, 3]);
  const { code, stdout, stderr } = run('inspect', '--json', a, b);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  assert.deepEqual(
    report.vms.map((v: Record<string, unknown>) => [
      v.name,
      v.pages,
      v.zero,
      v.duplicateWithin,
      v.shared,
      v.unique,
    ]),
    [
      ['a.raw', 5, 1, 1, 1, 2],
      ['b.raw', 4, 2, 0, 1, 1],
    ],
  );
  assert.equal(report.set.distinct, 4);
  assert.equal(report.templates.length, 1, 'content 1 is the only page both hold');
  assert.equal(report.templates[0].vms, 2);
});

test('inspect on an image that is not whole pages: exit 2, file named', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const odd = join(dir, 'odd.raw');
  writeFileSync(odd, new Uint8Array(5000));
  const { code, stderr } = run('inspect', odd);
  assert.equal(code, 2);
  assert.match(stderr, /odd\.raw: memory image is 5000 bytes/);
  assertNoStack(stderr);
});

test('a FIFO, a directory or an oversized file as --secret-file: named at once (exit 2), no stack, no hang', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const fifo = join(dir, 'secret.fifo');
  execFileSync('mkfifo', ['-m', '600', fifo]);
  const folder = join(dir, 'secret.d');
  mkdirSync(folder, { mode: 0o700 });
  const big = join(dir, 'big');
  writeFileSync(big, Buffer.alloc(1 << 20, 7), { mode: 0o600 });
  const cases: [string, RegExp][] = [
    [fifo, /secret\.fifo: not a regular file \(a FIFO\)/],
    [folder, /secret\.d: not a regular file \(a directory\)/],
    [big, /big: 1048576 bytes; a secret is at most 4096/],
  ];
  for (const [path, message] of cases) {
    // A FIFO with no writer used to block the read for ever: the spawn's timeout would end it (null).
    const { code, stderr } = run('agent', '--host', 't1', '--secret-file', path);
    assert.equal(code, 2, stderr);
    assert.match(stderr, message);
    assertNoStack(stderr);
  }
});

test('usage errors exit 2 (not commander 1); with --json every failure is one JSON object on stdout', (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const badValue = run('plan', '--max-groups', 'lots');
  assert.equal(badValue.code, 2, badValue.stderr);
  assert.match(badValue.stderr, /--max-groups/);
  assertNoStack(badValue.stderr);
  const unknown = run('scatter', '--no-such-option', '--json');
  assert.equal(unknown.code, 2);
  const usage = JSON.parse(unknown.stdout);
  assert.deepEqual([usage.ok, usage.code, usage.exitCode], [false, 'VMS_USAGE', 2]);
  assert.match(usage.message, /no-such-option/);
  const missing = run('plan', '--topology', join(dir, 'none.yaml'), '--json');
  assert.equal(missing.code, 2, missing.stderr);
  const failure = JSON.parse(missing.stdout);
  assert.equal(failure.ok, false);
  assert.equal(failure.exitCode, 2);
  assert.match(failure.code, /^VMS_/);
  assert.match(failure.message, /none\.yaml/);
});
