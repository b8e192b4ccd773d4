import { execFile, spawn } from 'node:child_process';
import { VmscatterError } from '../errors.js';

/**
 * libvirt through `virsh` (docs/ARCHITECTURE.md says why not a binding or the remote protocol): one
 * process per call, its exit code and its error line turned into a LibvirtError naming the command.
 */
export class LibvirtError extends VmscatterError {
  constructor(message: string) {
    super('VMS_LIBVIRT', message);
  }
}

const DEFAULT_TIMEOUT_MS = 60_000;

/** `virsh -c uri args…`: resolves with its stdout, rejects with virsh's own error line. */
export function virsh(
  uri: string,
  args: readonly string[],
  options: { readonly timeoutMs?: number } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'virsh',
      ['-q', '-c', uri, ...args],
      { timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS, maxBuffer: 64 << 20, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (!error) return resolve(stdout);
        const code = (error as NodeJS.ErrnoException).code;
        const why =
          code === 'ENOENT'
            ? 'virsh is not installed (Debian: libvirt-clients)'
            : errorLine(stderr) || error.message;
        reject(new LibvirtError(`virsh ${args[0] ?? ''} at ${uri}: ${why}`));
      },
    );
  });
}

/** A `virsh` that runs until it exits (a migration): its exit code and error line, and a way to stop it. */
export interface VirshRun {
  readonly exited: Promise<{ readonly code: number; readonly error: string }>;
  kill(): void;
}

export function spawnVirsh(uri: string, args: readonly string[]): VirshRun {
  const child = spawn('virsh', ['-q', '-c', uri, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  const exited = new Promise<{ code: number; error: string }>((resolve) => {
    child.once('error', (error) => resolve({ code: -1, error: error.message }));
    child.once('close', (code, signal) =>
      resolve({ code: code ?? -1, error: errorLine(stderr) || (signal ? `killed by ${signal}` : '') }),
    );
  });
  return { exited, kill: () => child.kill('SIGTERM') };
}

/** virsh's message without its "error: " prefixes, on one line. */
export function errorLine(stderr: string): string {
  return stderr
    .split('\n')
    .map((line) => line.replace(/^error:\s*/, '').trim())
    .filter((line) => line !== '')
    .join('; ');
}
