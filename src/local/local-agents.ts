import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmscatterError } from '../errors.js';
import type { Host } from '../topology/model.js';
import { isLoopback } from './workspace.js';

/**
 * Agents for the loopback targets of a topology that have none listening: started as child processes
 * of the coordinator (no root needed), each with its own state directory and log, and stopped when the
 * job ends. This is what makes `vmscatter scatter` on the embedded default a one-command job.
 *
 * Each runs in a process group of its own, so a Ctrl-C at the terminal reaches only the coordinator,
 * which then ends the job with the agents still there to hear it. Each also exits when its stdin (a
 * pipe from the coordinator) closes: a coordinator that dies without stopping them (SIGKILL) leaves
 * no agent behind.
 */
export interface LocalAgents {
  /** Names of the hosts whose agents were started here. */
  readonly started: readonly string[];
  /** Stops them (SIGTERM, SIGKILL after a grace) and waits until they are gone. */
  stop(): Promise<void>;
  /** Tells them to stop, without waiting: for a coordinator about to exit at once. */
  stopNow(): void;
}

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const START_TIMEOUT_MS = 15_000;

export async function startLocalAgents(
  targets: readonly Host[],
  topologyFile: string,
  secretFile: string,
  workDir: string,
  options: { readonly insecurePlaintext?: boolean } = {},
): Promise<LocalAgents> {
  const children: ChildProcess[] = [];
  const started: string[] = [];
  const stop = async () => {
    await Promise.all(children.map((child) => stopChild(child)));
  };
  try {
    for (const host of targets) {
      if (!isLoopback(host.address) || (await listening(host))) continue;
      const dir = join(workDir, 'agents', host.name);
      mkdirSync(dir, { recursive: true });
      const log = openSync(join(dir, 'agent.log'), 'a');
      const child = spawn(
        process.execPath,
        [
          CLI,
          'agent',
          '--topology',
          topologyFile,
          '--host',
          host.name,
          '--dir',
          dir,
          '--secret-file',
          secretFile,
          '--exit-on-stdin-close',
          ...(options.insecurePlaintext ? ['--insecure-plaintext'] : []),
        ],
        { stdio: ['pipe', 'pipe', log], detached: true },
      );
      closeSync(log);
      // Nothing is written to it: it is open for as long as this process lives, and that is all.
      child.stdin!.on('error', () => undefined);
      children.push(child);
      await ready(child, host, join(dir, 'agent.log'));
      started.push(host.name);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  const stopNow = () => {
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  };
  return { started, stop, stopNow };
}

/** Whether something accepts connections at the host's control port. */
function listening(host: Host): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: host.address, port: host.port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Resolves when the agent prints that it listens; rejects if it exits or stays silent. */
function ready(child: ChildProcess, host: Host, logPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let output = '';
    const fail = (why: string) => {
      clearTimeout(timer);
      reject(new VmscatterError('VMS_AGENT', `local agent for ${host.name} ${why}; see ${logPath}`));
    };
    const timer = setTimeout(
      () => fail(`did not start within ${START_TIMEOUT_MS / 1000} s`),
      START_TIMEOUT_MS,
    );
    child.once('exit', (code) => fail(`exited with code ${code}`));
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      output += chunk;
      if (output.includes('listening')) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        child.stdout!.resume();
        resolve();
      }
    });
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(force);
      resolve();
    });
    child.kill('SIGTERM');
    child.stdin?.end(); // the same request, should the signal not be handled yet
  });
}
