/** What a job reports as it goes: its phase and how far it got, in that phase's unit. */
export interface ScatterProgress {
  readonly phase: 'connect' | 'scan' | 'plan' | 'seed' | 'rebuild' | 'migrate';
  readonly done: number;
  readonly total: number;
  /** What done/total count. */
  readonly unit: 'targets' | 'pages' | 'bytes' | 'vms';
}
