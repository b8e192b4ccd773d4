import {
  MigCommand,
  RamFlag,
  SectionType,
  StreamError,
  commandName,
  formatUuid,
  type ConfigRecord,
  type RamBlock,
  type StreamLimits,
  type StreamRecord,
} from './stream-records.js';
import { copyBytes } from '../copy-bytes.js';

/**
 * The parser's protocol (a generator that asks for exactly the bytes it needs and yields records) and
 * the readers of the stream parts that need none of the parser's state: the configuration section, a
 * command, the RAM block list. They are apart from stream-parser.ts so that the parser keeps only what
 * depends on where the stream is (sections, pages, the block of the last page); each reader checks its
 * part against QEMU 7.2's layout and throws StreamError at the offset it was given.
 */

/** Ask for `need` bytes, or everything there is (`need === REST`, the tail). */
export interface Need {
  readonly need: number;
  readonly what: string;
  /** Asked for by the RAM payload's loop: the head of its next record (the parser's fast path). */
  readonly ramRecord?: true;
}
export type Step = Need | StreamRecord;
export type Parse<T = void> = Generator<Step, T, Uint8Array>;

export const REST = -1;
export const EMPTY = new Uint8Array(0);

export const need = (n: number, what: string): Need => ({ need: n, what });
const u16 = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
export const u32 = (b: Uint8Array, at: number) =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
export const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
export const hex = (n: number) => `0x${n.toString(16)}`;
const SECTION_TYPES: ReadonlySet<number> = new Set(Object.values(SectionType));
/** The bytes of QEMU's machine and capability names: printable ASCII, no space. */
const isNameByte = (byte: number) => byte >= 0x21 && byte <= 0x7e;

export function typeName(type: number): string {
  const name = Object.entries(SectionType).find(([, value]) => value === type)?.[0];
  return name === undefined ? `unknown section type ${hex(type)}` : `${name} (${hex(type)})`;
}

/**
 * The configuration section and the type byte after it (read to find where its subsections end).
 * `position` is the parser's offset as the reader goes, so errors carry where the failing part starts.
 * Nothing in the section says where it ends, so a wrong length shows only in the bytes it takes or
 * leaves: a machine name with a byte no name holds, or name characters where a section type belongs.
 * Both are reported as the length that caused them, not as whatever the misplaced bytes looked like.
 */
export function* readConfiguration(
  position: () => number,
  limits: StreamLimits,
): Parse<{ record: ConfigRecord; nextType: number }> {
  const start = position();
  const pieces: Uint8Array[] = [];
  const take = function* (n: number, what: string): Parse<Uint8Array> {
    const bytes = copyBytes(yield need(n, what));
    pieces.push(bytes);
    return bytes;
  };
  const type = (yield* take(1, 'the configuration section'))[0]!;
  if (type !== SectionType.CONFIGURATION) {
    const problem = `expected the configuration section (0x07) after the header, found ${typeName(type)}`;
    throw new StreamError(start, 'unsupported', problem);
  }
  const machine = yield* readMachineName(start + 1, limits, take);
  const capabilities: string[] = [];
  let uuid: string | undefined;
  const seen = new Set<string>();
  let last = `machine name length ${machine.length} ('${machine}')`;
  while (true) {
    const at = position();
    const next = (yield need(1, 'a section type'))[0]!;
    if (next !== SectionType.SUBSECTION) {
      if (isNameByte(next) && !SECTION_TYPES.has(next)) {
        // A name cut short by its length leaves the rest of it here, where a section type belongs.
        const problem =
          `configuration section: the ${last} is followed by ${hex(next)} ('${String.fromCharCode(next)}') ` +
          `at byte ${at}, which starts no section: a corrupt length?`;
        throw new StreamError(seen.size > 0 ? at : start + 1, 'invalid', problem);
      }
      const bytes = Buffer.concat(pieces);
      const ignoreShared = capabilities.includes('x-ignore-shared');
      const record: ConfigRecord = { kind: 'config', machine, capabilities, ignoreShared, bytes };
      return { record: uuid === undefined ? record : { ...record, uuid }, nextType: next };
    }
    pieces.push(Uint8Array.of(next));
    const name = latin1(yield* take((yield* take(1, 'a subsection name length'))[0]!, 'a subsection name'));
    const version = u32(yield* take(4, `the version of subsection '${name}'`), 0);
    if (seen.has(name)) throw new StreamError(at, 'invalid', `configuration subsection '${name}' twice`);
    seen.add(name);
    last = `subsection '${name}'`;
    if (version !== 1) {
      throw new StreamError(
        at,
        'unsupported',
        `configuration subsection '${name}' version ${version} (expected 1)`,
      );
    }
    if (name === 'configuration/target-page-bits') {
      const bits = u32(yield* take(4, 'the target page bits'), 0);
      if (bits !== 12)
        throw new StreamError(at, 'unsupported', `target pages of 2^${bits} bytes (only 4096)`);
    } else if (name === 'configuration/capabilities') {
      const count = u32(yield* take(4, 'the capability count'), 0);
      if (count > limits.maxCapabilities) {
        const problem = `configuration section: ${count} capabilities exceed maxCapabilities (${limits.maxCapabilities})`;
        throw new StreamError(at, 'invalid', problem);
      }
      for (let i = 0; i < count; i++) {
        const where = position();
        const length = (yield* take(1, 'a capability name length'))[0]!;
        const bytes = yield* take(length, 'a capability name');
        const what = `capability ${i + 1} of ${count}`;
        capabilities.push(printableName(bytes, where, where + 1, `${what}: name length ${length}`));
      }
    } else if (name === 'configuration/uuid') {
      uuid = formatUuid(yield* take(16, 'the UUID'));
    } else {
      throw new StreamError(at, 'unsupported', `unknown configuration subsection '${name}'`);
    }
  }
}

/** The machine name: be32 length (at `at`, checked against its limit), then the name. */
function* readMachineName(
  at: number,
  limits: StreamLimits,
  take: (n: number, what: string) => Parse<Uint8Array>,
): Parse<string> {
  const length = u32(yield* take(4, 'the machine name length'), 0);
  if (length > limits.maxMachineNameBytes) {
    const problem = `configuration section: machine name length ${length} exceeds maxMachineNameBytes (${limits.maxMachineNameBytes})`;
    throw new StreamError(at, 'invalid', problem);
  }
  return printableName(yield* take(length, 'the machine name'), at, at + 4, `machine name length ${length}`);
}

/**
 * A name of the configuration section (machine, capability) whose bytes start at `first`: QEMU's are
 * printable ASCII without spaces, and every section header starts with a byte below 0x20, so a length
 * (at `at`) too large shows as a byte that no name holds.
 */
function printableName(bytes: Uint8Array, at: number, first: number, what: string): string {
  const bad = bytes.findIndex((byte) => !isNameByte(byte));
  if (bytes.length === 0)
    throw new StreamError(at, 'invalid', `configuration section: ${what}: an empty name`);
  if (bad >= 0) {
    const problem =
      `configuration section: ${what} runs past the name: byte ${first + bad} (${hex(bytes[bad]!)}) is ` +
      'no name character (a corrupt length?)';
    throw new StreamError(at, 'invalid', problem);
  }
  return latin1(bytes);
}

/**
 * A command section after its type byte (at `at`): only OPEN_RETURN_PATH and PING are accepted, each
 * with its fixed length, checked before the data is read.
 */
export function* readCommand(at: number): Parse {
  const head = yield need(4, 'the command header');
  const command = u16(head, 0);
  const length = u16(head, 2);
  const name = commandName(command);
  const accepted = ACCEPTED_COMMAND_BYTES[command];
  if (accepted === undefined && command >= MigCommand.POSTCOPY_ADVISE && command <= MigCommand.RECV_BITMAP) {
    throw new StreamError(
      at,
      'unsupported',
      `${name} command (postcopy, COLO or packaged streams are not supported)`,
    );
  }
  if (accepted === undefined) {
    throw new StreamError(at, 'unsupported', `unknown command ${command} (${length} bytes of data)`);
  }
  if (length !== accepted)
    throw new StreamError(at, 'invalid', `${name} command with ${length} bytes of data`);
  const data = copyBytes(yield need(length, `the data of ${name}`));
  yield { kind: 'command', command, data };
}

/** The data length of each command accepted. */
const ACCEPTED_COMMAND_BYTES: Readonly<Record<number, number>> = {
  [MigCommand.OPEN_RETURN_PATH]: 0,
  [MigCommand.PING]: 4,
};

/**
 * The MEM_SIZE list after its head (at `at`, carrying `total`): name, used_length (and the region
 * address with x-ignore-shared) per block until the lengths sum to the total, then the EOS that ends
 * the START section (QEMU 7.2's ram_save_setup writes nothing between). Nothing else says where the
 * list ends, so a wrong total shows as a block that cannot be one or a record that is no EOS; both are
 * reported as the total they come from. The caller records the blocks before it yields the ram-blocks
 * record, as pages refer to them by name.
 */
export function* readBlockList(
  at: number,
  total: number,
  ignoreShared: boolean,
  limits: StreamLimits,
): Parse<{ blocks: RamBlock[]; byName: Map<string, RamBlock> }> {
  const blocks: RamBlock[] = [];
  const byName = new Map<string, RamBlock>();
  const u64 = (b: Uint8Array, what: string) => {
    const value = u32(b, 0) * 2 ** 32 + u32(b, 4);
    if (!Number.isSafeInteger(value))
      throw new StreamError(at, 'invalid', `${what} ${hex(value)} is too large`);
    return value;
  };
  const mismatch = (problem: string) =>
    new StreamError(at, 'invalid', `RAM total ${total} bytes does not match the blocks' lengths${problem}`);
  let sum = 0;
  while (sum < total) {
    if (blocks.length >= limits.maxRamBlocks) {
      const problem = `RAM block list: more than maxRamBlocks (${limits.maxRamBlocks}) blocks`;
      throw new StreamError(at, 'invalid', problem);
    }
    const nameLength = (yield need(1, 'a RAM block name length'))[0]!;
    if (nameLength === 0) {
      // Where the list ended (EOS starts with 0x00) but the total asked for more.
      throw mismatch(` ${sum} (${count(blocks.length)}, then an empty name where a block would start)`);
    }
    const name = latin1(yield need(nameLength, 'a RAM block name'));
    const length = u64(yield need(8, `the length of RAM block '${name}'`), `the length of '${name}'`);
    const addr = ignoreShared
      ? u64(yield need(8, `the address of RAM block '${name}'`), `the address of '${name}'`)
      : undefined;
    if (byName.has(name)) throw new StreamError(at, 'invalid', `RAM block '${name}' twice in the block list`);
    if (length === 0)
      throw new StreamError(at, 'invalid', `RAM block '${name}' of 0 bytes in the block list`);
    if (sum + length > total)
      throw mismatch(`: block '${name}' of ${length} bytes brings them to ${sum + length}`);
    const block: RamBlock = addr === undefined ? { name, length } : { name, length, addr };
    blocks.push(block);
    byName.set(name, block);
    sum += length;
  }
  const end = yield need(8, 'the EOS after the RAM block list');
  if (u32(end, 0) !== 0 || u32(end, 4) !== RamFlag.EOS) {
    // The total was reached with blocks still to come, or a record QEMU never puts here.
    const found = Buffer.from(end).toString('hex');
    throw mismatch(`: the total is reached after ${count(blocks.length)}, then 0x${found} where EOS belongs`);
  }
  return { blocks, byName };
}

const count = (blocks: number) => `${blocks} block${blocks === 1 ? '' : 's'}`;
