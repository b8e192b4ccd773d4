/**
 * Manual experiments in the network lab.
 *
 *   node dist/test/lab/run-in-lab.js --hosts 3 [--mtu 9000] [--subnet 10.77.0.0/24] [--in h1] -- cmd args…
 *
 * Creates a lab, runs the command in one host (default the first) with the terminal attached, removes
 * the lab and exits with the command's exit code. Without a command it prints the hosts and holds the
 * lab until Ctrl-C, so other terminals can `ip netns exec <namespace> …` into it.
 */
import { createLab, labAvailable } from '../../bench/harness/lab.js';

const USAGE =
  'usage: run-in-lab --hosts N|name,name,… [--mtu N] [--subnet A.B.C.D/P] [--in HOST] [-- command args…]';

interface Options {
  hosts: number | string[];
  mtu?: number;
  subnet?: string;
  in?: string;
  command: string[];
}

function parse(argv: readonly string[]): Options {
  const options: Options = { hosts: 2, command: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): string => {
      const next = argv[++i];
      if (next === undefined) throw new Error(`${arg} needs a value\n${USAGE}`);
      return next;
    };
    if (arg === '--') {
      options.command = argv.slice(i + 1);
      break;
    } else if (arg === '--hosts') {
      const text = value();
      options.hosts = /^\d+$/.test(text) ? Number(text) : text.split(',');
    } else if (arg === '--mtu') {
      options.mtu = Number(value());
    } else if (arg === '--subnet') {
      options.subnet = value();
    } else if (arg === '--in') {
      options.in = value();
    } else if (arg === '-h' || arg === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else {
      throw new Error(`unknown argument ${String(arg)}\n${USAGE}`);
    }
  }
  return options;
}

async function main(): Promise<number> {
  const options = parse(process.argv.slice(2));
  const availability = labAvailable();
  if (!availability.ok) throw new Error(availability.why);
  const lab = await createLab({
    hosts: options.hosts,
    ...(options.mtu === undefined ? {} : { mtu: options.mtu }),
    ...(options.subnet === undefined ? {} : { subnet: options.subnet }),
  });
  try {
    console.error(`lab ${lab.id}: ${lab.subnet}, mtu ${lab.mtu}, switch namespace ${lab.switchNamespace}`);
    for (const h of lab.hosts)
      console.error(`  ${h.name}\t${h.address}\t${h.namespace}\t(switch port ${h.veth})`);
    const [command, ...args] = options.command;
    if (command === undefined) {
      console.error('holding the lab; Ctrl-C removes it');
      await new Promise(() => setInterval(() => {}, 60_000));
      return 0;
    }
    const host = lab.host(
      options.in === undefined ? 0 : /^\d+$/.test(options.in) ? Number(options.in) : options.in,
    );
    const child = lab.spawn(host, command, args, { stdio: 'inherit' });
    return await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
    });
  } finally {
    await lab.destroy();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(`run-in-lab: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
