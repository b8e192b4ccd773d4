import { readFileSync } from 'node:fs';
import { LibvirtError, virsh } from './virsh.js';

/** A domain's state as `virsh domstate` names it ('running', 'paused', 'shut off', …), or 'absent'. */
export async function domainState(uri: string, domain: string): Promise<string> {
  if (!(await domainNames(uri, 'all')).includes(domain)) return 'absent';
  return (await virsh(uri, ['domstate', domain])).trim();
}

/**
 * Names of the domains a libvirt knows: 'all' of them (active ones, transient or not, and defined
 * ones), or the 'running' ones (running or paused).
 */
export async function domainNames(uri: string, which: 'all' | 'running'): Promise<string[]> {
  const listed = await virsh(uri, ['list', ...(which === 'all' ? ['--all'] : []), '--name']);
  return listed
    .split('\n')
    .map((name) => name.trim())
    .filter((name) => name !== '');
}

/**
 * The pid of a running domain's QEMU, from the pid file libvirt's system instance keeps for it (on the
 * host this process runs on): the process whose memory the scan and the memory check read.
 */
export function domainPid(domain: string, runDir = '/run/libvirt/qemu'): number {
  const path = `${runDir}/${domain}.pid`;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new LibvirtError(
      `domain ${domain}: no pid file at ${path} (${(error as NodeJS.ErrnoException).code ?? 'unreadable'}); is it running on this host?`,
    );
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new LibvirtError(`domain ${domain}: ${path} holds no pid`);
  return pid;
}

/** Polls until the domain is in `state` (true) or `timeoutMs` passed (false). */
export async function waitDomainState(
  uri: string,
  domain: string,
  state: string,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // One call per poll: an absent domain fails it, which is not the state either.
    const now = await virsh(uri, ['domstate', domain]).catch(() => '');
    if (now.trim() === state) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}
