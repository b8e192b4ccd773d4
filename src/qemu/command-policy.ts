import { accessSync, constants, readdirSync, realpathSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';

/**
 * What an agent agrees to run as a destination QEMU. The command line comes from the coordinator (the
 * topology's `command`), and whoever holds the deployment secret can send one, so the agent checks it:
 *
 * - the program must be one of the emulators this agent allows (by default every `qemu-system-*` on its
 *   PATH; `vmscatter agent --allow-emulator PATH` names others), compared after resolving links, so no
 *   shell, interpreter or other binary runs;
 * - no option that would take the process or its control away from the agent: a second `-incoming`,
 *   `-daemonize`, `-runas`, `-chroot`, `-run-with`, or a monitor (`-monitor`, `-qmp`, `-qmp-pretty`,
 *   `-mon`, `-chardev` sockets) on a path outside the agent's own directory.
 *
 * What is left is a QEMU command line, which can still name files (disks, serial logs): the deployment
 * secret must be guarded like root's password on the targets (README).
 */
const FORBIDDEN = new Set(['-incoming', '-daemonize', '-runas', '-chroot', '-run-with']);
const MONITORS = new Set(['-monitor', '-qmp', '-qmp-pretty', '-mon', '-chardev']);

/** Every `qemu-system-*` executable on `PATH`, resolved. */
export function defaultEmulators(path = process.env.PATH ?? ''): string[] {
  const found = new Set<string>();
  for (const dir of path.split(':')) {
    if (!dir) continue;
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      if (!name.startsWith('qemu-system-')) continue;
      const resolved = resolveExecutable(join(dir, name));
      if (resolved) found.add(resolved);
    }
  }
  return [...found];
}

function resolveExecutable(path: string): string | undefined {
  try {
    accessSync(path, constants.X_OK);
    return realpathSync(path);
  } catch {
    return undefined;
  }
}

/** The program a command names, resolved as spawn would (PATH for a bare name), or undefined. */
export function resolveProgram(program: string, path = process.env.PATH ?? ''): string | undefined {
  if (program.includes('/')) return resolveExecutable(resolve(program));
  for (const dir of path.split(':')) {
    if (!dir) continue;
    const found = resolveExecutable(join(dir, program));
    if (found) return found;
  }
  return undefined;
}

/** Why the agent refuses to run `command`, or undefined when it may. */
export function refuseCommand(
  command: readonly string[],
  options: { readonly emulators: readonly string[]; readonly ownDir: string; readonly path?: string },
): string | undefined {
  const [program, ...args] = command;
  if (!program) return 'an empty command line';
  const resolved = resolveProgram(program, options.path);
  if (!resolved) return `'${program}' is not an executable here`;
  if (!options.emulators.includes(resolved))
    return `'${program}' (${resolved}) is not an allowed emulator (allowed: ${options.emulators.join(', ') || 'none'})`;
  const ownDir = resolve(options.ownDir);
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    // QEMU takes `-opt value` and `--opt value` alike.
    const name = arg.startsWith('--') ? arg.slice(1) : arg;
    if (FORBIDDEN.has(name)) return `option ${arg} is not allowed in a destination's command line`;
    if (!MONITORS.has(name)) continue;
    const value = args[i + 1] ?? '';
    if (/^(tcp|telnet|udp|websocket):/.test(value) || /(^|,)(host|port)=/.test(value))
      return `option ${arg} ${value}: a monitor or socket on the network is not allowed`;
    const outside = socketPaths(value).find((p) => !isAbsolute(p) || !resolve(p).startsWith(`${ownDir}/`));
    if (outside !== undefined) return `option ${arg} ${value}: socket ${outside} is outside ${ownDir}`;
  }
  return undefined;
}

/** Unix socket paths a monitor or chardev value names (`unix:PATH,...`, `socket,path=PATH`). */
function socketPaths(value: string): string[] {
  const paths: string[] = [];
  const unix = /^unix:([^,]+)/.exec(value);
  if (unix) paths.push(unix[1]!);
  for (const m of value.matchAll(/(?:^|,)path=([^,]+)/g)) paths.push(m[1]!);
  return paths;
}
