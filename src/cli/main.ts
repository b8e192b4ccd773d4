#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { defaultPlanOptions } from '../plan/scatter-plan.js';
import { inspectCommand } from './inspect-command.js';
import { planCommand } from './plan-command.js';
import { parseWholeNumber, runAction } from './run-action.js';

const root = new URL('../../../', import.meta.url);
const version = (JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { version: string })
  .version;
/** The embedded default topology: loopback, synthetic VMs, no root needed. */
export const defaultTopology = fileURLToPath(new URL('topologies/local.yaml', root));

const program = new Command('vmscatter')
  .description('Live-migrate many VMs from one host to many: shared pages merged, sent once by multicast.')
  .version(version)
  .showHelpAfterError();

program
  .command('inspect')
  .description('fingerprint raw guest-memory images and report what they share')
  .argument('<image...>', 'raw memory image files (a whole number of 4 KiB pages each)')
  .option('--json', 'print the report as JSON')
  .option('--templates <count>', 'template pages to list', parseWholeNumber(0, 100000), 10)
  .action(runAction(inspectCommand));

program
  .command('plan')
  .description('scan the VMs of a topology, place them on targets and schedule multicast; moves nothing')
  .addOption(
    new Option('--topology <file>', 'topology and job file (YAML)').default(
      defaultTopology,
      'topologies/local.yaml',
    ),
  )
  .option(
    '--max-groups <count>',
    'most multicast groups',
    parseWholeNumber(1, 65535),
    defaultPlanOptions.maxGroups,
  )
  .option(
    '--seed <number>',
    'placement seed (plans are reproducible)',
    parseWholeNumber(0, 2 ** 31),
    defaultPlanOptions.seed,
  )
  .option('--json', 'print the plan as JSON')
  .action(runAction(planCommand));

await program.parseAsync(process.argv);
