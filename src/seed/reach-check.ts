import { randomBytes, randomInt } from 'node:crypto';
import { isIPv4 } from 'node:net';
import type { ScatterPlan } from '../plan/scatter-plan.js';
import type { SendRound } from '../plan/job-work.js';
import type { Host } from '../topology/model.js';
import { realScheduler, type OpenDatagramSocket } from '../transport/datagram.js';
import { DgramSocket } from '../transport/dgram-socket.js';
import { BlockCodec } from '../transport/fec-codec.js';
import { SenderSession } from '../transport/session.js';
import { maxSymbolSize } from '../transport/wire-codec.js';
import type { AgentLink } from '../wire/agent-link.js';

/**
 * Before the first round: does every target hear the groups its rounds go to? Multicast may be
 * filtered on a target's path (a firewall, a switch without IGMP snooping set up, a router between
 * sites); then every round to it would wait for its join and time it out. So each group is probed
 * first: one tiny session per group, all at once, to the targets its rounds go to. A target the
 * probe does not reach is left out of that group's rounds, gets its pages over the control channel
 * (an image's at rebuild, a running VM's in its stream), and the report names it and why.
 *
 * The probe's one object is shorter than a page record, so an agent stores nothing from it.
 */
export interface Unheard {
  readonly target: number;
  readonly group: number;
  readonly why: string;
}

/** A receiver that has not joined by then is silent, not slow: the probe gives up on it. */
export const PROBE_TIMEOUT_MS = 3000;
const PROBE_OBJECT = new Uint8Array(4);
/** How long an agent's 'seeded' answer to a probe is waited for in the background (then dropped). */
const PROBE_ANSWER_MS = 60_000;

/** Where and how the probes go: the job's plan, its agents, the source and its link. */
export interface ProbeOptions {
  readonly plan: ScatterPlan;
  readonly links: readonly AgentLink[];
  readonly source: Host;
  readonly mtu: number;
  readonly rateBytesPerSecond: number;
  readonly insecurePlaintext: boolean;
  readonly openSocket?: OpenDatagramSocket;
}

export async function probeGroups(
  options: ProbeOptions & { readonly rounds: readonly SendRound[] },
): Promise<Unheard[]> {
  const receiversOf = new Map<number, Set<number>>();
  for (const round of options.rounds) {
    const set = receiversOf.get(round.group) ?? new Set<number>();
    for (const t of round.receivers) if (!options.links[t]!.lost) set.add(t);
    receiversOf.set(round.group, set);
  }
  const probes = [...receiversOf].filter(([, set]) => set.size > 0);
  const unheard = await Promise.all(
    probes.map(([group, set]) =>
      probeGroup({ ...options, group, receivers: [...set].sort((a, b) => a - b) }),
    ),
  );
  return unheard.flat();
}

async function probeGroup(
  options: ProbeOptions & { readonly group: number; readonly receivers: readonly number[] },
): Promise<Unheard[]> {
  const { links, receivers } = options;
  const group = options.plan.groups[options.group]!;
  const address = `${group.address}:${group.port}`;
  const socket = await (options.openSocket ?? DgramSocket.open)({
    bindAddress: options.source.address,
    ...(isIPv4(options.source.address) ? { multicastInterface: options.source.address } : {}),
  });
  try {
    const session = randomInt(1, 2 ** 32 - 1);
    const key = options.insecurePlaintext ? new Uint8Array(0) : new Uint8Array(randomBytes(32));
    receivers.forEach((t, i) => {
      links[t]!.send({
        t: 'seed',
        session,
        key,
        group: address,
        sender: socket.address,
        receiver: i + 1,
        maxObjectBytes: PROBE_OBJECT.length,
      });
      // Consumed when it comes, so it does not wait in the link's queue: one that heard nothing
      // answers only when its receiver gives up.
      links[t]!.next('seeded', (m) => m.session === session, PROBE_ANSWER_MS).catch(() => undefined);
    });
    const sender = new SenderSession(
      socket,
      realScheduler,
      { session, key: options.insecurePlaintext ? 'insecure-plaintext' : key, group: address },
      [{ bytes: PROBE_OBJECT }],
      receivers.map((_, i) => i + 1),
      {
        symbolSize: maxSymbolSize(options.mtu),
        blockSymbols: 1,
        parity: new BlockCodec(),
        rateCapBytesPerSecond: options.rateBytesPerSecond,
        joinTimeoutMs: PROBE_TIMEOUT_MS,
        receiverTimeoutMs: PROBE_TIMEOUT_MS,
      },
    );
    const unwatch = receivers.map((t, i) => links[t]!.onLost(() => sender.dropReceiver(i + 1)));
    const result = await sender.run().finally(() => unwatch.forEach((stop) => stop()));
    const heard = new Set(result.completed);
    return receivers.flatMap((target, i) =>
      heard.has(i + 1) || links[target]!.lost
        ? []
        : [
            {
              target,
              group: options.group,
              why: `multicast group ${address} did not reach it within ${PROBE_TIMEOUT_MS / 1000} s (filtered on its path?): its pages went over the control channel`,
            },
          ],
    );
  } finally {
    await socket.close();
  }
}
