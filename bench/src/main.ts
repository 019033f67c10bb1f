/**
 * `pnpm bench`: sets up the filesystems (see mounts.ts), runs the benchmarks
 * in a child process (dist/run.js) and tears everything down when the child
 * ends, fails, crashes, or this process is stopped with Ctrl-C / SIGTERM /
 * SIGHUP. Running the measurements in a child keeps the mounts removable
 * (no open file of ours holds them) and the teardown independent of how the
 * measurements ended.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { setUpWorkspace } from './mounts.js';
import { BENCH_DIR, parseOptions, USAGE, type BenchOptions } from './options.js';
import type { RunConfig } from './run.js';

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

const workspace = setUpWorkspace(options.fs);
// Every way out of this process goes through here (normal end, process.exit, uncaught error).
process.on('exit', () => workspace.teardown());
for (const warning of workspace.warnings) process.stderr.write(`bench: WARNING: ${warning}\n`);

const config: RunConfig = {
  quick: options.quick,
  out: options.out,
  only: [...options.only],
  targets: [...workspace.targets],
  warnings: [...workspace.warnings],
  startedAt,
};

const child = spawn(process.execPath, ['--expose-gc', join(BENCH_DIR, 'dist', 'run.js')], {
  stdio: ['ignore', 'inherit', 'inherit'],
  env: { ...process.env, CACHE_BENCH_CONFIG: JSON.stringify(config) },
});

let stopping: NodeJS.Signals | undefined;
const SIGNAL_NUMBERS: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    if (stopping !== undefined) return;
    stopping = signal;
    process.stderr.write(`\nbench: caught ${signal}: stopping the run and removing its filesystems\n`);
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    // A child that ignores the signal is killed after 10 s; the exit handler then tears down.
    setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
  });
}

const status = await new Promise<number>((resolve) => {
  child.on('error', (error) => {
    process.stderr.write(`bench: could not start the benchmark process: ${error.message}\n`);
    resolve(1);
  });
  child.on('close', (code, signal) => {
    if (signal !== null && stopping === undefined) process.stderr.write(`bench: the benchmark process died of ${signal}\n`);
    resolve(code ?? 1);
  });
});

workspace.teardown();
const seconds = (Date.now() - startedAt) / 1000;
process.stderr.write(`bench: whole run (setup, benchmarks, teardown) took ${seconds.toFixed(1)} s\n`);
process.exit(stopping !== undefined ? 128 + (SIGNAL_NUMBERS[stopping] ?? 0) : status);
