import { QmpError, type QemuMonitor } from '../qemu/qmp.js';
import { LibvirtError, virsh } from './virsh.js';

/**
 * A libvirt domain's QEMU monitor: libvirt holds it, so QMP commands go through
 * `virsh qemu-monitor-command` (one process per command; a scan and a migration ask a few dozen).
 */
export class LibvirtMonitor implements QemuMonitor {
  readonly path: string;

  constructor(
    readonly uri: string,
    readonly domain: string,
  ) {
    this.path = `domain ${domain} at ${uri}`;
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const request = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command });
    const out = await virsh(this.uri, ['qemu-monitor-command', this.domain, request]);
    let reply: { return?: unknown; error?: { class?: string; desc?: string } };
    try {
      reply = JSON.parse(out) as typeof reply;
    } catch {
      throw new LibvirtError(`${this.path}: QMP ${command}: not a QMP reply: ${out.slice(0, 200)}`);
    }
    if (reply.error) throw new QmpError(command, reply.error.class ?? 'Error', reply.error.desc ?? '');
    return reply.return as T;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
