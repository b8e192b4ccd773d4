import { VmscatterError } from '../errors.js';

/**
 * The records of a QEMU 7.2 precopy migration stream (x86_64), as stream-parser.ts reads them and
 * stream-writer.ts writes them. Layout: docs in src/qemu/README.md; QEMU's migration/savevm.c and
 * migration/ram.c are the reference.
 */

/** "QEVM", the first four bytes of every stream. */
export const QEMU_VM_FILE_MAGIC = 0x5145564d;
/** The only stream version QEMU has written since 1.x (2 is refused by QEMU itself). */
export const QEMU_VM_FILE_VERSION = 3;
/** QEMU's target page on x86: the size of a RAM page record's data. */
export const STREAM_PAGE_SIZE = 4096;
/** The RAM flags live in the low 12 bits (TARGET_PAGE_BITS) of each be64 record head. */
export const RAM_FLAG_MASK = STREAM_PAGE_SIZE - 1;

/** Top-level section type bytes (savevm.h). */
export const SectionType = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags (ram.c, RAM_SAVE_FLAG_*). */
export const RamFlag = {
  FULL: 0x01,
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** QEMU_VM_COMMAND numbers (savevm.c, enum qemu_vm_cmd). */
export const MigCommand = {
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  PACKAGED: 7,
  ENABLE_COLO: 8,
  POSTCOPY_RESUME: 9,
  RECV_BITMAP: 10,
} as const;

/** The RAM section QEMU 7.2 registers: idstr "ram", instance 0, version 4. */
export const RAM_SECTION_IDSTR = 'ram';
export const RAM_SECTION_VERSION = 4;
/** The section id QEMU 7.2 gives "ram" on pc and q35 machines (any id works: QEMU maps by idstr). */
export const DEFAULT_RAM_SECTION_ID = 2;

/** Why a stream was refused: cut short, not understood by this codec, or not a valid stream at all. */
export type StreamErrorReason = 'truncated' | 'unsupported' | 'invalid' | 'usage';

/** A migration stream that cannot be read or written as asked: says what was met and at which byte. */
export class StreamError extends VmscatterError {
  constructor(
    /** Byte offset in the stream where the offending item starts (for the writer: bytes written so far). */
    readonly offset: number,
    readonly reason: StreamErrorReason,
    readonly problem: string,
  ) {
    super('VMS_STREAM', `migration stream, byte ${offset}: ${problem}`);
  }
}

/**
 * Bounds on what a stream may declare. Every length and count read from a stream is checked against
 * its bound (or its field's width) before anything is read or allocated for it; StreamParserOptions
 * may lower or raise them.
 */
export interface StreamLimits {
  /** The configuration section's machine name (QEMU's are under 32 bytes, e.g. `pc-i440fx-7.2`). */
  readonly maxMachineNameBytes: number;
  /** Capability names in `configuration/capabilities` (QEMU 7.2 knows one). */
  readonly maxCapabilities: number;
  /** Blocks in the RAM block list (a pc guest has about 10). */
  readonly maxRamBlocks: number;
  /** The VM description's JSON (QEMU 7.2: about 50 KB on q35, 110 KB on pc, more with many devices). */
  readonly maxDescriptionBytes: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = {
  maxMachineNameBytes: 256,
  maxCapabilities: 64,
  maxRamBlocks: 1024,
  maxDescriptionBytes: 64 * 2 ** 20,
};

/** A RAM block as the START section's MEM_SIZE list names it. */
export interface RamBlock {
  /** QEMU's idstr, e.g. `pc.ram` or `/rom@etc/acpi/tables` (at most 255 bytes). */
  readonly name: string;
  /** used_length in bytes. */
  readonly length: number;
  /** Guest-physical address of the block's memory region; present exactly when x-ignore-shared is on. */
  readonly addr?: number;
}

export type SectionKind = 'start' | 'part' | 'end';

/** The stream header: magic and version. */
export interface HeaderRecord {
  readonly kind: 'header';
  readonly version: number;
}

/** The configuration section, kept as the bytes received (type byte 0x07 included) plus what they say. */
export interface ConfigRecord {
  readonly kind: 'config';
  /** Machine type, e.g. `pc-i440fx-7.2`. */
  readonly machine: string;
  /** Capabilities the source asks the destination to check (7.2: only `x-ignore-shared`). */
  readonly capabilities: readonly string[];
  /** The VM's UUID (lowercase, dashed) when the source had -uuid and validate-uuid. */
  readonly uuid?: string;
  /** x-ignore-shared is on: every RAM block in the list carries its address. */
  readonly ignoreShared: boolean;
  readonly bytes: Uint8Array;
}

/** A QEMU_VM_COMMAND before the RAM section (7.2 precopy: only OPEN_RETURN_PATH and PING are accepted). */
export interface CommandRecord {
  readonly kind: 'command';
  readonly command: number;
  readonly data: Uint8Array;
}

/** A RAM section header: START carries idstr, instance and version; PART and END only the section id. */
export interface SectionBeginRecord {
  readonly kind: 'section-begin';
  readonly type: SectionKind;
  readonly sectionId: number;
  /** For PART and END: the values of the START they continue. */
  readonly idstr: string;
  readonly instanceId: number;
  readonly versionId: number;
}

/** The MEM_SIZE block list of the RAM START section. */
export interface RamBlocksRecord {
  readonly kind: 'ram-blocks';
  readonly blocks: readonly RamBlock[];
}

/** A full page: STREAM_PAGE_SIZE bytes at `offset` within RAM block `block`. */
export interface PageRecord {
  readonly kind: 'page';
  readonly block: string;
  readonly offset: number;
  /** May alias the chunk given to push(): copy it to keep it past that chunk's life. */
  readonly data: Uint8Array;
  /**
   * Parsed: the record used CONTINUE (no block name). Written: true or false keeps that form where it
   * is valid; absent lets the writer choose (CONTINUE exactly when the previous record had the block).
   */
  readonly continued?: boolean;
}

/** A page whose every byte is `fill` (QEMU sends 0; >= 8.2 refuses anything else). */
export interface ZeroRecord {
  readonly kind: 'zero';
  readonly block: string;
  readonly offset: number;
  readonly fill: number;
  readonly continued?: boolean;
}

/** End of a RAM section: the EOS record and the section footer. */
export interface SectionEndRecord {
  readonly kind: 'section-end';
  readonly type: SectionKind;
  readonly sectionId: number;
}

/**
 * Everything after the RAM END section, passed through opaque: device state (FULL sections), EOF and the
 * VM description. One record per pushed chunk; may alias that chunk.
 */
export interface TailRecord {
  readonly kind: 'tail';
  readonly bytes: Uint8Array;
}

export type StreamRecord =
  | HeaderRecord
  | ConfigRecord
  | CommandRecord
  | SectionBeginRecord
  | RamBlocksRecord
  | PageRecord
  | ZeroRecord
  | SectionEndRecord
  | TailRecord;

/** What a RAM flag set means, for refusals: names the feature that produces it. */
export function describeRamFlags(flags: number): string {
  const hex = `0x${flags.toString(16)}`;
  const base = flags & ~RamFlag.CONTINUE;
  if (base & RamFlag.XBZRLE) return `XBZRLE page (RAM flags ${hex}; the xbzrle capability)`;
  if (base & RamFlag.COMPRESS_PAGE) return `compressed page (RAM flags ${hex}; the compress capability)`;
  if (base & RamFlag.MULTIFD_FLUSH) return `MULTIFD_FLUSH (RAM flags ${hex}; multifd of QEMU >= 8.0)`;
  if (base & RamFlag.HOOK) return `RDMA hook (RAM flags ${hex}; rdma: migration)`;
  if (base === RamFlag.FULL) return `obsolete FULL RAM flag (RAM flags ${hex})`;
  return `unknown RAM flag combination ${hex}`;
}

/** Names of COMMAND numbers, for records and refusals. */
export function commandName(command: number): string {
  for (const [name, value] of Object.entries(MigCommand)) if (value === command) return name;
  return `command ${command}`;
}

/** UUID bytes as QEMU prints them. */
export function formatUuid(bytes: Uint8Array): string {
  const hex = Buffer.from(bytes).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
