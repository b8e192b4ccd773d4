/** The defaults a topology file may leave out (documented at the top of ./load.ts). */
import type { MulticastRange, SyntheticModelSpec } from './model.js';

export const DEFAULT_AGENT_PORT = 7411;
export const DEFAULT_SITE = 'default';
export const DEFAULT_MULTICAST: MulticastRange = Object.freeze({
  base: '239.255.42.0',
  size: 16,
  port: 7420,
});
/** Shared by every VM that takes them, hence frozen. */
export const SYNTHETIC_DEFAULTS: Omit<SyntheticModelSpec, 'seed'> = Object.freeze({
  family: 'default',
  zeroShare: 0.3,
  osShare: 0.4,
  commonShare: 0.05,
  duplicateShare: 0.02,
});
