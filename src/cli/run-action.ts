import { InvalidArgumentError } from 'commander';
import { INTERNAL_ERROR_EXIT_CODE, VmscatterError } from '../errors.js';

/**
 * Wraps a command's action: a VmscatterError is a user-facing failure (its message, its exit code, no
 * stack); anything else is a bug and keeps its stack so it can be reported.
 */
export function runAction<A extends unknown[]>(
  action: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    // A command that already printed its report (a partial scatter, an evacuation) has said it in
    // JSON: its failure must not add a second object to stdout.
    let printed = false;
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((...rest: Parameters<typeof write>) => {
      printed = true;
      return write(...rest);
    }) as typeof process.stdout.write;
    try {
      await action(...args);
    } catch (error) {
      process.stdout.write = write;
      const json = wantsJson(process.argv) && !printed;
      if (error instanceof VmscatterError) {
        process.stderr.write(`vmscatter: ${error.message}\n`);
        if (json)
          process.stdout.write(`${JSON.stringify(failureJson(error.code, error.exitCode, error.message))}\n`);
        process.exitCode = error.exitCode;
        return;
      }
      process.stderr.write(
        `vmscatter: internal error (please report): ${(error as Error)?.stack ?? error}\n`,
      );
      if (json)
        process.stdout.write(
          `${JSON.stringify(failureJson('VMS_INTERNAL', INTERNAL_ERROR_EXIT_CODE, `internal error: ${(error as Error)?.message ?? error}`))}\n`,
        );
      process.exitCode = INTERNAL_ERROR_EXIT_CODE;
    } finally {
      process.stdout.write = write;
    }
  };
}

/** Whether the command line asks for JSON output (then failures are JSON on stdout too). */
export function wantsJson(argv: readonly string[]): boolean {
  return argv.includes('--json');
}

/** A failure as `--json` prints it: the stable code, the exit code, the message. */
export function failureJson(code: string, exitCode: number, message: string) {
  return { ok: false, code, exitCode, message };
}

/** Parses a whole number option; commander reports the error with the option's name. */
export function parseWholeNumber(min: number, max: number): (text: string) => number {
  return (text: string) => {
    const value = Number(text);
    if (!/^\d+$/.test(text.trim()) || value < min || value > max) {
      throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    }
    return value;
  };
}
