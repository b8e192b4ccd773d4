import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { VmscatterError } from '../errors.js';
import { connectQmp, type QmpClient } from './qmp.js';

/**
 * A destination QEMU waiting for a migration stream: started from the VM's command line with
 * `-incoming defer` and `-S`, so it loads the stream and then stays paused until the agent has
 * verified what it loaded and says `cont`. It listens for the stream on a unix socket of its own
 * (`migrate-incoming`), which the agent writes the expanded stream into.
 */
export class QemuLaunchError extends VmscatterError {
  constructor(message: string) {
    super('VMS_QEMU', message);
  }
}

export interface IncomingQemu {
  readonly qmp: QmpClient;
  readonly process: ChildProcess;
  /** Where the stream goes (a unix socket QEMU listens on). */
  readonly streamSocket: string;
  /** Kills QEMU (the VM was not verified here) and removes its sockets. */
  kill(): Promise<void>;
  /** Lets QEMU outlive this process (the VM runs here now). */
  release(): void;
}

export async function startIncomingQemu(options: {
  /** The VM's command line at a target: the QEMU binary and its arguments. */
  readonly command: readonly string[];
  /** Directory for the sockets (short: unix socket paths are limited to 107 bytes). */
  readonly dir: string;
  readonly vm: string;
}): Promise<IncomingQemu> {
  const [binary, ...args] = options.command;
  if (!binary) throw new QemuLaunchError(`VM ${options.vm}: empty QEMU command line`);
  const qmpSocket = join(options.dir, `${options.vm}.qmp`);
  const streamSocket = join(options.dir, `${options.vm}.in`);
  rmSync(qmpSocket, { force: true });
  rmSync(streamSocket, { force: true });
  const child = spawn(
    binary,
    [...args, '-S', '-incoming', 'defer', '-qmp', `unix:${qmpSocket},server=on,wait=off`],
    // Its own process group: the VM must outlive the agent that started it once it runs here.
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
  );
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  // The sockets this QEMU made, by inode: a kill removes only those. A rollback's kill can finish after
  // the next attempt's QEMU has made its own sockets at the same paths, which must stay.
  const made = new Map<string, number>();
  const remember = (path: string) => {
    if (made.has(path)) return;
    try {
      made.set(path, statSync(path).ino);
    } catch {
      // not made (yet)
    }
  };
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    for (const [path, ino] of made) {
      try {
        if (statSync(path).ino === ino) rmSync(path, { force: true });
      } catch {
        // gone already
      }
    }
  };
  const died = exited.then((): never => {
    throw new QemuLaunchError(`VM ${options.vm}: ${binary} exited at start: ${stderr.trim()}`);
  });
  died.catch(() => undefined);
  const connecting = new AbortController();
  try {
    const qmp = await Promise.race([
      connectQmp(qmpSocket, { connectTimeoutMs: 15_000, signal: connecting.signal }),
      died,
    ]);
    remember(qmpSocket);
    await qmp.execute('migrate-incoming', { uri: `unix:${streamSocket}` });
    remember(streamSocket);
    return {
      qmp,
      process: child,
      streamSocket,
      kill: async () => {
        await qmp.close().catch(() => undefined);
        await kill();
      },
      release: () => {
        child.stderr!.destroy();
        child.unref();
      },
    };
  } catch (error) {
    connecting.abort();
    await kill();
    throw error;
  }
}
