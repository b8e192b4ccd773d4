/**
 * The network faults of bench/faults.ts, as nftables rules in the lab's namespaces (test/lab/lab.ts):
 * multicast loss at each target, duplicated multicast datagrams, the source's multicast diverted to a
 * relay host, the receivers' feedback mirrored to an attacker host. Every rule counts what it did, so
 * the bench reports the fault it applied as measured, not as configured. Rules live only in the lab's
 * namespaces and go with them.
 */
import { execFile } from 'node:child_process';
import { findTool, type Lab } from './harness/lab.js';

const TABLE_LOSS = 'inet vmsfault_loss';
const TABLE_SOURCE = 'netdev vmsfault_src';
const TABLE_REDIRECT = 'ip vmsfault_redirect';
const mirrorTable = (veth: string) => `netdev vmsfault_mirror_${veth}`;

function run(command: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      command,
      args,
      { timeout: 20_000, maxBuffer: 16 * 2 ** 20 },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`${command} ${args.join(' ')}: ${stderr.trim() || error.message}`));
        else resolve(stdout);
      },
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

const ip = () => findTool('ip') ?? 'ip';
const nft = () => findTool('nft') ?? 'nft';

async function nftIn(namespace: string, script: string): Promise<void> {
  await run(ip(), ['netns', 'exec', namespace, nft(), '-f', '-'], script);
}

async function listTable(namespace: string, table: string): Promise<string> {
  return run(ip(), ['netns', 'exec', namespace, nft(), 'list', 'table', ...table.split(' ')]).catch(() => '');
}

/** Declares, deletes and recreates a table atomically (or only deletes it when `chains` is empty). */
function replaceTable(table: string, chains: readonly string[]): string {
  return [
    `table ${table}`,
    `delete table ${table}`,
    ...(chains.length ? [`table ${table} {`, ...chains, '}'] : []),
  ]
    .join('\n')
    .concat('\n');
}

/** The packets of each `counter` in a table listing, in rule order. */
function counters(listing: string): number[] {
  return [...listing.matchAll(/counter packets (\d+) bytes \d+/g)].map((m) => Number(m[1]));
}

const multicast = (port: number) => `ip daddr 224.0.0.0/4 udp dport ${port}`;

/** Drops `percent` of the multicast datagrams each of `targets` receives (on the job's port), independently. */
export async function addMulticastLoss(lab: Lab, targets: readonly string[], port: number, percent: number) {
  const threshold = Math.round(percent * 100);
  for (const target of targets)
    await nftIn(
      lab.host(target).namespace,
      replaceTable(TABLE_LOSS, [
        '  chain pre {',
        '    type filter hook prerouting priority -300; policy accept;',
        `    ${multicast(port)} counter`,
        `    ${multicast(port)} numgen random mod 10000 < ${threshold} counter drop`,
        '  }',
      ]),
    );
}

/** Per target: multicast datagrams that reached its namespace, and how many of them were dropped. */
export async function multicastLossCounts(lab: Lab, targets: readonly string[]) {
  const result: Record<string, { seen: number; dropped: number }> = {};
  for (const target of targets) {
    const [seen = 0, dropped = 0] = counters(await listTable(lab.host(target).namespace, TABLE_LOSS));
    result[target] = { seen, dropped };
  }
  return result;
}

/**
 * On the source's switch port: duplicates `percent` of its multicast datagrams towards each target
 * (an extra copy straight out of the target's port, beside the one the bridge floods), independently
 * per target; or, with `divertTo`, sends all of them to that host's port instead of the bridge (the
 * relay then sends them on).
 */
export async function addSourceRule(
  lab: Lab,
  port: number,
  rule: { duplicate: { targets: readonly string[]; percent: number } } | { divertTo: string },
) {
  const source = lab.host('src').veth;
  const lines = [
    // The first counter: every multicast datagram of the job the source sent.
    `    ${multicast(port)} counter`,
    ...('duplicate' in rule
      ? rule.duplicate.targets.map(
          (t) =>
            `    ${multicast(port)} numgen random mod 10000 < ${Math.round(rule.duplicate.percent * 100)} counter dup to "${lab.host(t).veth}"`,
        )
      : [`    ${multicast(port)} counter fwd to "${lab.host(rule.divertTo).veth}"`]),
  ];
  await nftIn(
    lab.switchNamespace,
    replaceTable(TABLE_SOURCE, [
      '  chain in {',
      `    type filter hook ingress device "${source}" priority -400; policy accept;`,
      ...lines,
      '  }',
    ]),
  );
}

/** The counters of the source-port rule: the source's multicast datagrams, then each dup (or the divert) rule's. */
export async function sourceRuleCounts(lab: Lab): Promise<number[]> {
  return counters(await listTable(lab.switchNamespace, TABLE_SOURCE));
}

export async function removeSourceRule(lab: Lab): Promise<void> {
  await nftIn(lab.switchNamespace, replaceTable(TABLE_SOURCE, []));
}

async function macOf(lab: Lab, host: string): Promise<string> {
  const [link] = JSON.parse(
    await run(ip(), ['-n', lab.host(host).namespace, '-j', 'link', 'show', 'e0']),
  ) as { address: string }[];
  if (!link) throw new Error(`no e0 in ${host}`);
  return link.address;
}

/**
 * A monitor port for `to`: a copy of every UDP datagram the targets send to the source (the
 * receivers' feedback to the multicast sender) reaches `to` on `mirrorPort`, whatever port it was
 * sent to. The copy is rewritten to `to`'s addresses on the switch and redirected to the port in
 * `to`'s namespace; the original goes on unchanged.
 */
export async function mirrorFeedback(lab: Lab, targets: readonly string[], to: string, mirrorPort: number) {
  const [srcMac, toMac] = await Promise.all([macOf(lab, 'src'), macOf(lab, to)]);
  const src = lab.host('src').address;
  const dest = lab.host(to);
  for (const target of targets) {
    const veth = lab.host(target).veth;
    await nftIn(
      lab.switchNamespace,
      replaceTable(mirrorTable(veth), [
        '  chain in {',
        `    type filter hook ingress device "${veth}" priority -400; policy accept;`,
        `    ip daddr ${src} meta l4proto udp counter ether daddr set ${toMac} ip daddr set ${dest.address} ` +
          `dup to "${dest.veth}" ether daddr set ${srcMac} ip daddr set ${src}`,
        '  }',
      ]),
    );
  }
  await nftIn(
    dest.namespace,
    replaceTable(TABLE_REDIRECT, [
      '  chain pre {',
      '    type nat hook prerouting priority -100; policy accept;',
      `    ip daddr ${dest.address} udp dport != ${mirrorPort} counter redirect to :${mirrorPort}`,
      '  }',
    ]),
  );
}

export async function mirroredCount(lab: Lab, targets: readonly string[]): Promise<number> {
  let total = 0;
  for (const target of targets)
    total += counters(await listTable(lab.switchNamespace, mirrorTable(lab.host(target).veth)))[0] ?? 0;
  return total;
}

/** UDP receive errors in a host's namespace (/proc/net/snmp): datagrams its sockets had no room for. */
export async function udpReceiveErrors(
  lab: Lab,
  host: string,
): Promise<{ inErrors: number; rcvbufErrors: number }> {
  const snmp = await run(ip(), ['netns', 'exec', lab.host(host).namespace, 'cat', '/proc/net/snmp']);
  const lines = snmp.split('\n').filter((line) => line.startsWith('Udp:'));
  const names = lines[0]?.split(/\s+/) ?? [];
  const numbers = lines[1]?.split(/\s+/) ?? [];
  const field = (name: string) => Number(numbers[names.indexOf(name)] ?? 0);
  return { inErrors: field('InErrors'), rcvbufErrors: field('RcvbufErrors') };
}

/**
 * Whether tc's netem qdisc works here: tried on a veth in the lab's switch namespace. Reported beside
 * the results; the bench does not need it (loss, duplicates and reordering come from nftables and the
 * relay), but says so when a reader would expect netem.
 */
export async function netemAvailable(lab: Lab): Promise<{ available: boolean; why?: string }> {
  const tc = findTool('tc') ?? 'tc';
  const dev = lab.host('src').veth;
  try {
    await run(tc, [
      '-n',
      lab.switchNamespace,
      'qdisc',
      'add',
      'dev',
      dev,
      'root',
      'handle',
      '9:',
      'netem',
      'loss',
      '1%',
    ]);
    await run(tc, ['-n', lab.switchNamespace, 'qdisc', 'del', 'dev', dev, 'root']);
    return { available: true };
  } catch (error) {
    const message = (error as Error).message;
    return { available: false, why: `tc qdisc add ... netem: ${/Error: .*/.exec(message)?.[0] ?? message}` };
  }
}
