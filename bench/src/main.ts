/**
 * `pnpm bench`: sets up the filesystems (see mounts.ts) and, for the
 * postgres figures, one throwaway PostgreSQL server
 * (`@cache/postgres-testing`), runs the benchmarks in a child process
 * (dist/run.js) and tears everything down when the child ends, fails,
 * crashes, or this process is stopped with Ctrl-C / SIGTERM / SIGHUP.
 * Running the measurements in a child keeps the mounts removable (no open
 * file of ours holds them) and the teardown independent of how the
 * measurements ended. The child leads a process group of its own, so the
 * teardown also kills whatever it started and left running (the HTTP
 * figures' servers, origin and clients) before unmounting.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  removeTestPostgresSync,
  startTestPostgres,
  TestPostgresUnavailableError,
  type TestPostgres,
} from '@cache/postgres-testing';
import { PG_PREFIX, setUpWorkspace } from './mounts.js';
import { BENCH_DIR, FIRST_FS_FIGURES, parseOptions, POSTGRES_FIGURES, USAGE, type BenchOptions } from './options.js';
import type { BenchPostgresConfig, RunConfig } from './run.js';

const startedAt = Date.now();

let options: BenchOptions | 'help';
try {
  options = parseOptions(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`bench: ${(error as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
if (options === 'help') {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const only = options.only;
const wanted = (n: number) => only.size === 0 || only.has(n);

// Figures that run on the first filesystem only need no tmpfs or loop ext4 of their own.
const firstFsOnly = only.size > 0 && [...only].every((n) => FIRST_FS_FIGURES.includes(n));
const workspace = setUpWorkspace(options.fs, { mount: !firstFsOnly });
/** The PostgreSQL server's directory (a sibling of the workspace: the server user must be able to reach it). */
let pgRoot: string | undefined;
let postgres: TestPostgres | undefined;
let child: ChildProcess | undefined;
/** Kills what is left of the benchmark process's group (its own processes end with it; this catches those of a child that died). */
const killMeasuringGroup = () => {
  if (child?.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // ESRCH: nothing left in the group
  }
};
const teardown = () => {
  killMeasuringGroup();
  if (pgRoot !== undefined) removeTestPostgresSync(pgRoot);
  workspace.teardown();
};
// Every way out of this process goes through here (normal end, process.exit, uncaught error).
process.on('exit', teardown);
for (const warning of workspace.warnings) process.stderr.write(`bench: WARNING: ${warning}\n`);

let stopping: NodeJS.Signals | undefined;
const SIGNAL_NUMBERS: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    if (stopping !== undefined) {
      // A second signal while PostgreSQL is still starting: give up waiting for it (the exit handler removes what it made).
      if (child === undefined) process.exit(128 + (SIGNAL_NUMBERS[signal] ?? 0));
      return;
    }
    stopping = signal;
    process.stderr.write(`\nbench: caught ${signal}: stopping the run and removing its filesystems and PostgreSQL server\n`);
    if (child === undefined) {
      process.stderr.write('bench: waiting for the PostgreSQL start in progress to end (again to stop at once)\n');
      return;
    }
    const running = child;
    if (running.exitCode === null && running.signalCode === null) running.kill(signal);
    // A child that ignores the signal is killed after 10 s; the exit handler then tears down.
    setTimeout(() => running.kill('SIGKILL'), 10_000).unref();
  });
}

// One PostgreSQL server for the run, when a postgres figure is wanted.
let postgresConfig: BenchPostgresConfig | undefined;
if (POSTGRES_FIGURES.some(wanted)) {
  pgRoot = mkdtempSync(join(tmpdir(), PG_PREFIX));
  // Like the workspace: a run killed with SIGKILL leaves it behind, and the next run's sweep stops its server and removes it.
  writeFileSync(join(pgRoot, '.owner'), `${process.pid}\n`);
  process.stderr.write('bench: starting a throwaway PostgreSQL server for the postgres figures\n');
  try {
    postgres = await startTestPostgres({
      root: pgRoot,
      // PostgreSQL's default durability (the test default turns fsync off), a default-sized buffer cache.
      settings: { fsync: 'on', full_page_writes: 'on', shared_buffers: '128MB', max_connections: 100 },
      cleanupOnExit: false,
    });
    postgresConfig = { available: true, handle: postgres.handle, postmasterPid: postgres.server.postmasterPid() };
  } catch (error) {
    if (!(error instanceof TestPostgresUnavailableError)) throw error;
    postgresConfig = { available: false, reason: error.reason };
    process.stderr.write(`bench: WARNING: the postgres figures are skipped: ${error.reason}\n`);
  }
}

if (stopping !== undefined) process.exit(128 + (SIGNAL_NUMBERS[stopping] ?? 0));

const config: RunConfig = {
  quick: options.quick,
  out: options.out,
  only: [...options.only],
  targets: [...workspace.targets],
  warnings: [...workspace.warnings],
  startedAt,
  ...(postgresConfig === undefined ? {} : { postgres: postgresConfig }),
};

const measuring = spawn(process.execPath, ['--expose-gc', join(BENCH_DIR, 'dist', 'run.js')], {
  stdio: ['ignore', 'inherit', 'inherit'],
  // A process group of its own (see killMeasuringGroup); signals reach it through the handlers above.
  detached: true,
  // libuv's threadpool as the `image-cache` binary sets it (16 unless set): the figures measure what `serve` runs,
  // and 32 concurrent strict commits' fsyncs are not queued behind 4 threads (docs/adr/0007). Ours and the raw
  // baselines run in this one process, so both get the same pool.
  env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16', CACHE_BENCH_CONFIG: JSON.stringify(config) },
});
child = measuring;

const status = await new Promise<number>((resolve) => {
  measuring.on('error', (error) => {
    process.stderr.write(`bench: could not start the benchmark process: ${error.message}\n`);
    resolve(1);
  });
  measuring.on('close', (code, signal) => {
    if (signal !== null && stopping === undefined) process.stderr.write(`bench: the benchmark process died of ${signal}\n`);
    resolve(code ?? 1);
  });
});

// A clean shutdown of the server first (the exit handler would stop it the hard way).
if (postgres !== undefined) await postgres.stop().catch(() => undefined);
teardown();
const seconds = (Date.now() - startedAt) / 1000;
process.stderr.write(`bench: whole run (setup, benchmarks, teardown) took ${seconds.toFixed(1)} s\n`);
process.exit(stopping !== undefined ? 128 + (SIGNAL_NUMBERS[stopping] ?? 0) : status);
