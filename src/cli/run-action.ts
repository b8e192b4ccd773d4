import { InvalidArgumentError } from 'commander';
import { VmscatterError } from '../errors.js';

/**
 * Wraps a command's action: a VmscatterError is a user-facing failure (its message, its exit code, no
 * stack); anything else is a bug and keeps its stack so it can be reported.
 */
export function runAction<A extends unknown[]>(
  action: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await action(...args);
    } catch (error) {
      if (error instanceof VmscatterError) {
        process.stderr.write(`vmscatter: ${error.message}\n`);
        process.exitCode = error.exitCode;
        return;
      }
      process.stderr.write(
        `vmscatter: internal error (please report): ${(error as Error)?.stack ?? error}\n`,
      );
      process.exitCode = 70;
    }
  };
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
