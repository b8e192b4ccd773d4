import { isIPv4 } from 'node:net';
import { InputError } from '../errors.js';
import { Agent } from '../scatter/agent.js';
import { readSecretFile } from '../scatter/workspace.js';
import { loadTopology } from '../topology/load.js';

export interface AgentCommandOptions {
  readonly topology: string;
  readonly host: string;
  readonly dir?: string;
  readonly secretFile?: string;
}

/**
 * `vmscatter agent`: serves scatter jobs for one target host of a topology until stopped (SIGINT or
 * SIGTERM). One line on stdout says where it listens; its log goes to stderr.
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
    log,
  });
  process.stdout.write(`agent ${host.name} listening on ${host.address}:${agent.port}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      log('stopping');
      agent.close().then(resolve, resolve);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
