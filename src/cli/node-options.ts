/**
 * Node's options the `vmscatter` command runs with: its first line (`#!/usr/bin/env -S node ...`,
 * src/cli/main.ts) says them to the system, `npm start` and the spawns of the benchmarks that time a
 * job say these (test/unit/node-options.test.ts keeps the first two equal to this).
 *
 * `--initial-old-space-size`: a live scatter keeps a heap of 15-20 MiB of objects but passes a
 * gigabyte through it, and V8 sizes its old generation from that small heap, so it ran a full
 * collection every few MiB promoted: 20-30 per agent and 40 in the coordinator in one
 * `npm run bench:qemu -- --methods c`. Started at 256 MiB, 3-6 each, and the job took 10.4-10.6 s
 * against 11.3-13.1 s (docs/ARCHITECTURE.md). V8 reads it only at start-up (set from inside the
 * process, it changed nothing), hence the command line. Memory it lets accumulate as garbage
 * before a collection: up to 256 MiB per process.
 */
export const CLI_NODE_OPTIONS: readonly string[] = ['--initial-old-space-size=256'];
