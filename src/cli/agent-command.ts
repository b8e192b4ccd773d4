import { isIPv4 } from 'node:net';
import { InputError } from '../errors.js';
import { resolveProgram } from '../qemu/command-policy.js';
import { Agent } from '../agent/agent.js';
import { readSecretFile } from '../local/workspace.js';
import { loadTopology } from '../topology/load.js';

export interface AgentCommandOptions {
  readonly topology: string;
  readonly host: string;
  readonly dir?: string;
  readonly secretFile?: string;
  /** Emulators a destination may run (paths); default: every qemu-system-* on PATH. */
  readonly allowEmulator?: readonly string[];
  /** Accept unencrypted multicast rounds (a coordinator's --insecure-plaintext). */
  readonly insecurePlaintext?: boolean;
  /** Stop when stdin closes: set by a coordinator that starts the agent, so it never outlives it. */
  readonly exitOnStdinClose?: boolean;
}

/**
 * `vmscatter agent`: serves scatter jobs for one target host of a topology until stopped (SIGINT or
 * SIGTERM, or stdin closing with --exit-on-stdin-close). One line on stdout says where it listens;
 * its log goes to stderr.
 */
export async function agentCommand(options: AgentCommandOptions): Promise<void> {
  const topology = loadTopology(options.topology);
  const host = topology.hosts.find((h) => h.name === options.host);
  if (!host)
    throw new InputError(
      `${topology.file}: no host named '${options.host}' (hosts: ${topology.hosts.map((h) => h.name).join(', ')})`,
    );
  if (host.role !== 'target') throw new InputError(`${topology.file}: host '${host.name}' is not a target`);
  const secretFile = options.secretFile ?? process.env.VMSCATTER_SECRET_FILE;
  if (secretFile === undefined)
    throw new InputError('no deployment secret: pass --secret-file FILE (the same file as the coordinator)');
  const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${host.name}: ${line}\n`);
  const agent = await Agent.start({
    name: host.name,
    listenAddress: host.address,
    port: host.port,
    multicastInterface: isIPv4(host.address) ? host.address : '0.0.0.0',
    dir: options.dir ?? `.vmscatter/agents/${host.name}`,
    secret: readSecretFile(secretFile),
    ...(options.allowEmulator ? { emulators: allowedEmulators(options.allowEmulator) } : {}),
    ...(host.libvirt === undefined ? {} : { libvirt: host.libvirt }),
    insecurePlaintext: options.insecurePlaintext ?? false,
    log,
  });
  if (options.insecurePlaintext)
    log('WARNING: --insecure-plaintext: accepts guest memory sent UNENCRYPTED over multicast');
  // Its coordinator reads stdout; if that one is gone, stdin's end says so and stops the agent.
  if (options.exitOnStdinClose) process.stdout.on('error', () => undefined);
  process.stdout.write(`agent ${host.name} listening on ${host.address}:${agent.port}\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (why: string) => {
      if (stopping) return;
      stopping = true;
      log(`stopping (${why})`);
      // An open stdin would keep the process alive once the agent is closed.
      if (options.exitOnStdinClose) process.stdin.destroy();
      agent.close().then(resolve, resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    if (options.exitOnStdinClose) {
      const closed = () => stop('stdin closed: the coordinator that started this agent is gone');
      process.stdin.once('end', closed);
      process.stdin.once('error', closed);
      process.stdin.resume(); // nothing is expected on it; reading is how its end is seen
    }
  });
}

/** The emulators named on the command line, resolved; one that is not an executable is a user error. */
function allowedEmulators(paths: readonly string[]): string[] {
  return paths.map((path) => {
    const resolved = resolveProgram(path);
    if (!resolved) throw new InputError(`--allow-emulator ${path}: not an executable file`);
    return resolved;
  });
}
