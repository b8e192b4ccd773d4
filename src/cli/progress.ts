import ora, { type Ora } from 'ora';
import { formatBytes } from '../topology/units.js';
import { PAGE_SIZE } from '../memory/page.js';

/**
 * Progress on stderr: a spinner with phase, bytes and rate when stderr is a terminal and the output is
 * for people; silent otherwise, so --json output and scripts' logs stay clean.
 */
/**
 * A spinner only on a terminal with columns: on one of width 0 (a pseudo-terminal nobody sized) ora's
 * line wrapping never ends, and the job behind it never starts.
 */
export function spinnerWanted(enabled: boolean, stream: { isTTY?: boolean; columns?: number }): boolean {
  return enabled && stream.isTTY === true && (stream.columns ?? 0) > 0;
}

export class Progress {
  private readonly spinner: Ora | undefined;
  private phaseStart = performance.now();

  constructor(enabled: boolean) {
    // discardStdin off: ora's discarder puts the terminal in raw mode, where Ctrl-C is a byte it
    // would have to read back into SIGINT; left cooked, Ctrl-C stays a signal the job handles.
    this.spinner = spinnerWanted(enabled, process.stderr)
      ? ora({ stream: process.stderr, discardStdin: false })
      : undefined;
  }

  phase(text: string): void {
    this.phaseStart = performance.now();
    if (this.spinner) this.spinner.start(text);
  }

  /** A scan's progress in pages: percent, bytes and rate. */
  pages(label: string, done: number, total: number): void {
    if (!this.spinner) return;
    const seconds = (performance.now() - this.phaseStart) / 1000;
    const rate = seconds > 0 ? (done * PAGE_SIZE) / seconds : 0;
    const eta = rate > 0 ? ((total - done) * PAGE_SIZE) / rate : 0;
    this.spinner.text =
      `${label} ${((100 * done) / Math.max(1, total)).toFixed(0)}%  ` +
      `${formatBytes(done * PAGE_SIZE)} of ${formatBytes(total * PAGE_SIZE)}  ` +
      `${formatBytes(rate)}/s  ETA ${eta.toFixed(1)} s`;
  }

  /** Progress counted in things (targets, VMs). */
  count(label: string, done: number, total: number, unit: string): void {
    if (this.spinner) this.spinner.text = `${label} ${done} of ${total} ${unit}`;
  }

  succeed(text: string): void {
    this.spinner?.succeed(text);
  }

  stop(): void {
    this.spinner?.stop();
  }
}
