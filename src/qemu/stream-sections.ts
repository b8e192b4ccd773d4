import {
  MigCommand,
  SectionType,
  StreamError,
  commandName,
  formatUuid,
  type ConfigRecord,
  type RamBlock,
  type StreamRecord,
} from './stream-records.js';

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
}
export type Step = Need | StreamRecord;
export type Parse<T = void> = Generator<Step, T, Uint8Array>;

export const REST = -1;
export const EMPTY = new Uint8Array(0);
const MAX_MACHINE_NAME = 256;
const MAX_CAPABILITIES = 64;
const MAX_RAM_BLOCKS = 1024;

export const need = (n: number, what: string): Need => ({ need: n, what });
const u16 = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
export const u32 = (b: Uint8Array, at: number) =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
export const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
export const hex = (n: number) => `0x${n.toString(16)}`;

export function typeName(type: number): string {
  const name = Object.entries(SectionType).find(([, value]) => value === type)?.[0];
  return name === undefined ? `unknown section type ${hex(type)}` : `${name} (${hex(type)})`;
}

/**
 * The configuration section and the type byte after it (read to find where its subsections end).
 * `position` is the parser's offset as the reader goes, so errors carry where the failing part starts.
 */
export function* readConfiguration(
  position: () => number,
): Parse<{ record: ConfigRecord; nextType: number }> {
  const start = position();
  const pieces: Uint8Array[] = [];
  const take = function* (n: number, what: string): Parse<Uint8Array> {
    const bytes = (yield need(n, what)).slice();
    pieces.push(bytes);
    return bytes;
  };
  const type = (yield* take(1, 'the configuration section'))[0]!;
  if (type !== SectionType.CONFIGURATION) {
    const problem = `expected the configuration section (0x07) after the header, found ${typeName(type)}`;
    throw new StreamError(start, 'unsupported', problem);
  }
  const nameLength = u32(yield* take(4, 'the machine name length'), 0);
  if (nameLength === 0 || nameLength > MAX_MACHINE_NAME) {
    throw new StreamError(
      start + 1,
      'invalid',
      `machine name of ${nameLength} bytes in the configuration section`,
    );
  }
  const machine = latin1(yield* take(nameLength, 'the machine name'));
  const capabilities: string[] = [];
  let uuid: string | undefined;
  const seen = new Set<string>();
  while (true) {
    const at = position();
    const next = (yield need(1, 'a section type'))[0]!;
    if (next !== SectionType.SUBSECTION) {
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
      if (count > MAX_CAPABILITIES)
        throw new StreamError(at, 'invalid', `${count} capabilities in the configuration`);
      for (let i = 0; i < count; i++) {
        const length = (yield* take(1, 'a capability name length'))[0]!;
        capabilities.push(latin1(yield* take(length, 'a capability name')));
      }
    } else if (name === 'configuration/uuid') {
      uuid = formatUuid(yield* take(16, 'the UUID'));
    } else {
      throw new StreamError(at, 'unsupported', `unknown configuration subsection '${name}'`);
    }
  }
}

/** A command section after its type byte (at `at`): only OPEN_RETURN_PATH and PING are accepted. */
export function* readCommand(at: number): Parse {
  const head = yield need(4, 'the command header');
  const command = u16(head, 0);
  const length = u16(head, 2);
  const name = commandName(command);
  const data = (yield need(length, `the data of ${name}`)).slice();
  const accepted = { [MigCommand.OPEN_RETURN_PATH]: 0, [MigCommand.PING]: 4 } as Record<number, number>;
  if (accepted[command] === length) {
    yield { kind: 'command', command, data };
  } else if (accepted[command] !== undefined) {
    throw new StreamError(at, 'invalid', `${name} command with ${length} bytes of data`);
  } else if (command >= MigCommand.POSTCOPY_ADVISE && command <= MigCommand.RECV_BITMAP) {
    throw new StreamError(
      at,
      'unsupported',
      `${name} command (postcopy, COLO or packaged streams are not supported)`,
    );
  } else {
    throw new StreamError(at, 'unsupported', `unknown command ${command} (${length} bytes of data)`);
  }
}

/**
 * The MEM_SIZE list: name, used_length (and the region address with x-ignore-shared) per block. The
 * caller records the blocks before it yields the ram-blocks record, as pages refer to them by name.
 */
export function* readBlockList(
  at: number,
  total: number,
  ignoreShared: boolean,
): Parse<{ blocks: RamBlock[]; byName: Map<string, RamBlock> }> {
  const blocks: RamBlock[] = [];
  const byName = new Map<string, RamBlock>();
  const u64 = (b: Uint8Array, what: string) => {
    const value = u32(b, 0) * 2 ** 32 + u32(b, 4);
    if (!Number.isSafeInteger(value))
      throw new StreamError(at, 'invalid', `${what} ${hex(value)} is too large`);
    return value;
  };
  for (let remaining = total; remaining > 0;) {
    if (blocks.length >= MAX_RAM_BLOCKS)
      throw new StreamError(at, 'invalid', `more than ${MAX_RAM_BLOCKS} RAM blocks`);
    const name = latin1(yield need((yield need(1, 'a RAM block name length'))[0]!, 'a RAM block name'));
    const length = u64(yield need(8, `the length of RAM block '${name}'`), `the length of '${name}'`);
    const addr = ignoreShared
      ? u64(yield need(8, `the address of RAM block '${name}'`), `the address of '${name}'`)
      : undefined;
    if (byName.has(name)) throw new StreamError(at, 'invalid', `RAM block '${name}' twice in the block list`);
    if (name.length === 0 || length === 0) {
      throw new StreamError(at, 'invalid', `RAM block '${name}' of ${length} bytes in the block list`);
    }
    if (length > remaining) {
      throw new StreamError(
        at,
        'invalid',
        `RAM block lengths exceed the block list's total of ${hex(total)} bytes`,
      );
    }
    const block: RamBlock = addr === undefined ? { name, length } : { name, length, addr };
    blocks.push(block);
    byName.set(name, block);
    remaining -= length;
  }
  return { blocks, byName };
}
