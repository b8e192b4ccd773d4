#!/usr/bin/env -S node --initial-old-space-size=256
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import { defaultPlanOptions } from '../plan/scatter-plan.js';
import { agentCommand } from './agent-command.js';
import { evacuateCommand } from './evacuate-command.js';
import { inspectCommand } from './inspect-command.js';
import { planCommand } from './plan-command.js';
import { failureJson, parseWholeNumber, runAction, wantsJson } from './run-action.js';
import { scatterCommand } from './scatter-command.js';

const root = new URL('../../../', import.meta.url);
const version = (JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { version: string })
  .version;
/** The embedded default topology: loopback, synthetic VMs, no root needed. */
export const defaultTopology = fileURLToPath(new URL('topologies/local.yaml', root));

/** Options several commands share, defined once. */
const topologyOption = () =>
  new Option('--topology <file>', 'topology and job file (YAML)').default(
    defaultTopology,
    'topologies/local.yaml',
  );
const maxGroupsOption = () =>
  new Option('--max-groups <count>', 'most multicast groups')
    .argParser(parseWholeNumber(1, 65535))
    .default(defaultPlanOptions.maxGroups);
const seedOption = () =>
  new Option('--seed <number>', 'placement seed (plans are reproducible)')
    .argParser(parseWholeNumber(0, 2 ** 31))
    .default(defaultPlanOptions.seed);
const secretFileOption = () =>
  new Option(
    '--secret-file <file>',
    'deployment secret, the same file on every host (env VMSCATTER_SECRET_FILE)',
  );

/**
 * A bad option or argument is a usage error: it exits `code` (commander's own is 1), and with --json
 * prints a JSON object on stdout like every other failure.
 */
const usageExit =
  (code: number) =>
  (error: CommanderError): never => {
    if (error.exitCode === 0) process.exit(0); // --help, --version
    if (wantsJson(process.argv))
      process.stdout.write(
        `${JSON.stringify(failureJson('VMS_USAGE', code, error.message.replace(/^error: /, '')))}\n`,
      );
    process.exit(code);
  };

const program = new Command('vmscatter')
  .description('Live-migrate many VMs from one host to many: shared pages merged, sent once by multicast.')
  .version(version)
  .showHelpAfterError()
  // Exit 2 as the README says; subcommands inherit this.
  .exitOverride(usageExit(2));

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
  .addOption(topologyOption())
  .addOption(maxGroupsOption())
  .addOption(seedOption())
  .option('--json', 'print the plan as JSON')
  .action(runAction(planCommand));

program
  .command('scatter')
  .description(
    'move the VMs of a topology to their targets: scan, plan, multicast, rebuild and verify each image',
  )
  .addOption(topologyOption())
  .addOption(maxGroupsOption())
  .addOption(seedOption())
  .option(
    '--mtu <bytes>',
    'path MTU of the multicast network (default 1500; 9000 on loopback)',
    parseWholeNumber(576, 65535),
  )
  .option(
    '--round-pages <count>',
    'unique pages per multicast round (bounds the source memory in use and what a lost agent loses)',
    parseWholeNumber(64, 2 ** 24),
    16384,
  )
  .option(
    '--unicast-below-ms <ms>',
    'a round that unicast sends to its targets in less link time than this goes by unicast, not by a multicast session of its own (0: every round by multicast)',
    parseWholeNumber(0, 60_000),
    50,
  )
  .addOption(
    new Option(
      '--compression <mode>',
      'page compression: adaptive decides from measured codec and link rates',
    )
      .choices(['adaptive', 'on', 'off'])
      .default('adaptive'),
  )
  .option(
    '--downtime-limit <ms>',
    'longest a running VM may be stopped for its switch-over (milliseconds; default 300; QEMU gets half for its final pass)',
    parseWholeNumber(1, 600_000),
  )
  .option('--dry-run', 'scan, plan and run the pre-flight checks; move nothing')
  .option('--resume', 'leave VMs already verified at their target alone; send only what agents lack')
  .addOption(secretFileOption())
  .option(
    '--work-dir <dir>',
    'where local state lives: generated images, local agents, the loopback secret',
    '.vmscatter',
  )
  .option('--insecure-plaintext', 'send guest memory over multicast UNENCRYPTED (trusted test networks only)')
  .option('--json', 'print the final report as JSON')
  .action(runAction(scatterCommand));

program
  .command('evacuate')
  .description(
    'move every VM off a host onto the others (before maintenance); exit 0 all moved, 2 partial, 1 error',
  )
  .requiredOption('--host <name>', 'the host to empty (its VMs are those of the topology)')
  .addOption(topologyOption())
  .option('--exclude-host <name...>', 'hosts that must not take VMs')
  .option('--dry-run', 'plan and run the pre-flight checks only; nothing moves')
  .option('--max-parallel <count>', 'running VMs migrated at once', parseWholeNumber(1, 64), 1)
  .option('--bandwidth <rate>', "cap on the evacuated host's link, with units (e.g. 800Mbit)")
  .option(
    '--downtime-limit <ms>',
    'longest a running VM may be stopped for its switch-over (milliseconds; QEMU gets half for its final pass)',
    parseWholeNumber(1, 600_000),
    300,
  )
  .option('--timeout-per-gib <seconds>', 'time allowed per GiB of guest memory', parseWholeNumber(1, 86_400))
  .addOption(
    new Option('--on-timeout <action>', 'when the timeout expires')
      .choices(['abort', 'stop-and-copy'])
      .default('abort'),
  )
  .option('--yes', 'do not ask for confirmation (scripts)')
  .addOption(secretFileOption())
  .option('--work-dir <dir>', 'where local state lives', '.vmscatter')
  .option('--mtu <bytes>', 'path MTU of the multicast network', parseWholeNumber(576, 65535))
  .option('--json', 'print which VMs moved, which stayed and why, as JSON')
  // For evacuate 2 means some VMs moved and some stayed, which its scripts retry: a typo in an option
  // is an error before anything moved, 1 like the others.
  .exitOverride(usageExit(1))
  .action(runAction(evacuateCommand));

program
  .command('agent')
  .description('serve scatter jobs as one target host of a topology, until stopped')
  .requiredOption('--host <name>', "this host's name in the topology")
  .addOption(topologyOption())
  .option('--dir <dir>', 'state directory: content store and rebuilt images (default .vmscatter/agents/HOST)')
  .option(
    '--allow-emulator <path...>',
    'emulators a destination may run (default: every qemu-system-* on PATH); nothing else is started',
  )
  .option('--insecure-plaintext', 'accept guest memory sent UNENCRYPTED by a coordinator that asks for it')
  .addOption(secretFileOption())
  .addOption(
    // For coordinators that start agents themselves (local agents): the agent never outlives them.
    new Option('--exit-on-stdin-close', 'stop when stdin closes').hideHelp(),
  )
  .action(runAction(agentCommand));

await program.parseAsync(process.argv);
