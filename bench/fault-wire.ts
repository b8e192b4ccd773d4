/**
 * What bench/faults.ts and its helper processes (fault-relay.ts, fault-attacker.ts) share: the job's
 * multicast groups as addresses. The datagram format is the project's own (src/transport/wire-codec.ts).
 */

/** `239.255.97.0/8` (a base address and a group count, as a topology's `multicast` gives them) to addresses. */
export function groupAddresses(spec: string): string[] {
  const match = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(spec);
  if (!match) throw new Error(`groups: expected BASE/SIZE such as 239.255.97.0/8, got '${spec}'`);
  const base = match.slice(1, 5).reduce((n, octet) => n * 256 + Number(octet), 0);
  const size = Number(match[5]);
  if (!(size >= 1 && size <= 256)) throw new Error(`groups: size ${size} is not 1..256`);
  return Array.from({ length: size }, (_, i) => {
    const n = base + i;
    return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
  });
}
