/** The vmscatter library: what the CLI is built from, for scripts that embed it. */
export * from './errors.js';
export type * from './topology/model.js';
export { loadTopology, parseTopology } from './topology/load.js';
export { formatBytes, formatRate, parseRate, parseSize } from './topology/units.js';
export { PAGE_SIZE, DIGEST_BYTES, ZERO_PAGE_ID, type VmPages } from './memory/page.js';
export { DigestTable } from './memory/digest-table.js';
export { deriveDigestKey, randomDigestKey } from './memory/page-digest.js';
export { fingerprintVms, type FingerprintInput, type FingerprintOptions } from './memory/fingerprint.js';
export { scanTopology } from './memory/scan.js';
export { buildPageIndex, rankTemplates, setSharingStats } from './plan/page-index.js';
export {
  buildScatterPlan,
  defaultPlanOptions,
  type PlanOptions,
  type ScatterPlan,
} from './plan/scatter-plan.js';
