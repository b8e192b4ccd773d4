/**
 * One error class per failure kind, each with a stable code. The CLI prints `message` (never a stack)
 * for these and exits with `exitCode`; anything else is a bug and is printed with its stack.
 */
export class VmscatterError extends Error {
  readonly code: string;
  readonly exitCode: number;

  constructor(code: string, message: string, exitCode = 1) {
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
    super('VMS_TOPOLOGY', `${where}: ${field === undefined ? '' : `${field}: `}${problem}`, 2);
    this.file = file;
    this.line = line;
    this.field = field;
  }
}

/** A placement that cannot satisfy the constraints: says which constraint fails for which VM or target. */
export class InfeasiblePlacementError extends VmscatterError {
  constructor(message: string) {
    super('VMS_INFEASIBLE', message, 3);
  }
}

/** A memory image or other input that cannot be read as asked. */
export class InputError extends VmscatterError {
  constructor(message: string) {
    super('VMS_INPUT', message, 2);
  }
}
