import { domainNames } from './domain.js';
import { LibvirtError, virsh } from './virsh.js';

/** A domain a libvirt runs, with the guest memory it was given. */
export interface RunningDomain {
  readonly name: string;
  readonly memoryBytes: number;
}

/** The names of the domains a libvirt runs (running or paused: `virsh list`). */
export function runningDomainNames(uri: string): Promise<string[]> {
  return domainNames(uri, 'running');
}

/** The domains a libvirt runs, each with its maximum memory. */
export async function runningDomains(uri: string): Promise<RunningDomain[]> {
  const names = await runningDomainNames(uri);
  const domains: RunningDomain[] = [];
  for (const name of names) {
    const memoryBytes = maxMemoryOf(await virsh(uri, ['dominfo', name]));
    if (memoryBytes === undefined)
      throw new LibvirtError(`virsh dominfo ${name} at ${uri}: no Max memory line`);
    domains.push({ name, memoryBytes });
  }
  return domains;
}

/** `virsh dominfo`'s "Max memory: N KiB", in bytes. */
export function maxMemoryOf(dominfo: string): number | undefined {
  const kib = /^Max memory:\s+(\d+) KiB\s*$/m.exec(dominfo)?.[1];
  return kib === undefined ? undefined : Number(kib) * 1024;
}

/** What a libvirt's host has free for more guests: `virsh freecell --all`, in bytes. */
export async function freeMemoryBytes(uri: string): Promise<number> {
  const out = await virsh(uri, ['freecell', '--all']);
  const bytes = freecellBytes(out);
  if (bytes === undefined)
    throw new LibvirtError(`virsh freecell --all at ${uri}: not understood: '${out.trim()}'`);
  return bytes;
}

/**
 * `virsh freecell --all` in bytes: its Total line, or (one NUMA cell, where quiet virsh prints no
 * total) the sum of the cells' lines.
 */
export function freecellBytes(out: string): number | undefined {
  const total = /^\s*Total:\s+(\d+) KiB\s*$/m.exec(out)?.[1];
  if (total !== undefined) return Number(total) * 1024;
  const cells = [...out.matchAll(/^\s*\d+:\s+(\d+) KiB\s*$/gm)].map((m) => Number(m[1]) * 1024);
  return cells.length === 0 ? undefined : cells.reduce((a, b) => a + b, 0);
}
