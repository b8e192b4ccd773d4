/**
 * Every error code, the exit code a command ends with for it, and what it means: one table, which the
 * README's list of error codes repeats (test/unit/errors.test.ts checks the two agree). An evacuation
 * ends with 1 for any error before a VM moved, whatever its code (evacuate-command.ts).
 */
export const ERROR_CATALOGUE = {
  VMS_PREFLIGHT: { exitCode: 1, meaning: 'pre-flight checks failed, every problem named; nothing moved' },
  VMS_NOT_MOVED: { exitCode: 1, meaning: 'an evacuation moved no VM' },
  VMS_SOCKET: { exitCode: 1, meaning: 'a UDP socket that cannot be opened or bound (multicast)' },
  VMS_SEQUENCE_EXHAUSTED: {
    exitCode: 1,
    meaning: "a multicast sender used up its packets' sequence numbers",
  },
  VMS_USAGE: { exitCode: 2, meaning: 'a bad option or argument' },
  VMS_TOPOLOGY: { exitCode: 2, meaning: 'a topology file that is unreadable or invalid (file, line, field)' },
  VMS_INPUT: { exitCode: 2, meaning: 'an image, secret file or other input that cannot be read as asked' },
  VMS_PARTIAL: { exitCode: 2, meaning: 'an evacuation moved some VMs; the others stayed' },
  VMS_INFEASIBLE: {
    exitCode: 3,
    meaning: 'a placement that cannot satisfy the constraints (which, for what)',
  },
  VMS_NO_AGENTS: { exitCode: 4, meaning: 'no agent answered' },
  VMS_AGENT: { exitCode: 4, meaning: 'a local agent that did not start' },
  VMS_CONTROL: { exitCode: 4, meaning: 'the control channel failed (handshake, listening, connection)' },
  VMS_PROTOCOL: { exitCode: 4, meaning: 'a peer broke the job protocol' },
  VMS_STORE: { exitCode: 5, meaning: 'a page store that cannot be opened or read' },
  VMS_DISK_FULL: { exitCode: 5, meaning: 'no space left where pages or an image are written' },
  VMS_INCOMPLETE: {
    exitCode: 6,
    meaning: 'some VMs not verified at their target, each named; they run at the source',
  },
  VMS_REBUILD: { exitCode: 6, meaning: 'an image that could not be rebuilt or verified at its target' },
  VMS_QEMU: { exitCode: 7, meaning: 'a QEMU that could not be started' },
  VMS_QMP: { exitCode: 7, meaning: 'QEMU refused a QMP command' },
  VMS_QMP_CONNECTION: { exitCode: 7, meaning: "QEMU's QMP socket could not be reached or closed" },
  VMS_STREAM: { exitCode: 7, meaning: 'a QEMU migration stream that is not well-formed (byte offset)' },
  VMS_GUEST_RAM: { exitCode: 7, meaning: "a running guest's RAM that cannot be read" },
  VMS_LIBVIRT: { exitCode: 7, meaning: 'libvirt (through virsh) refused a command or could not be reached' },
  VMS_LIVE: { exitCode: 7, meaning: 'a live migration that failed (the VM runs on at its source)' },
  VMS_INTERRUPTED: { exitCode: 130, meaning: 'interrupted by Ctrl-C or SIGTERM' },
  VMS_ABORTED: { exitCode: 130, meaning: 'work cancelled because its job was interrupted' },
  VMS_INTERNAL: {
    exitCode: 70,
    meaning: 'an internal error (a bug: please report it with the printed stack)',
  },
} as const satisfies Record<string, { readonly exitCode: number; readonly meaning: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** An error that is not one of these (a bug) exits with this, its stack printed. */
export const INTERNAL_ERROR_EXIT_CODE = ERROR_CATALOGUE.VMS_INTERNAL.exitCode;

/**
 * One error class per failure kind, each with a stable code from ERROR_CATALOGUE. The CLI prints
 * `message` (never a stack) for these and exits with `exitCode`; anything else is a bug and is printed
 * with its stack.
 */
export class VmscatterError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;

  /** `exitCode` only where a command documents its own (an evacuation's 1). */
  constructor(code: ErrorCode, message: string, exitCode: number = ERROR_CATALOGUE[code].exitCode) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** A topology or job file that is unreadable or invalid: names the file, line and field. */
export class TopologyError extends VmscatterError {
  readonly file: string;
  readonly line: number | undefined;
  readonly field: string | undefined;

  constructor(file: string, line: number | undefined, field: string | undefined, problem: string) {
    const where = line === undefined ? file : `${file}:${line}`;
    super('VMS_TOPOLOGY', `${where}: ${field === undefined ? '' : `${field}: `}${problem}`);
    this.file = file;
    this.line = line;
    this.field = field;
  }
}

/** A placement that cannot satisfy the constraints: says which constraint fails for which VM or target. */
export class InfeasiblePlacementError extends VmscatterError {
  constructor(message: string) {
    super('VMS_INFEASIBLE', message);
  }
}

/** A memory image or other input that cannot be read as asked. */
export class InputError extends VmscatterError {
  constructor(message: string) {
    super('VMS_INPUT', message);
  }
}
