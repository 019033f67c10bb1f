import type { Writable } from 'node:stream';
import { CommanderError } from 'commander';
import type { RegisterCommand } from './commands/types.js';
import { CliContext } from './context.js';
import { CliErrorCodes, describeError, exitCodeOf, ExitCode } from './errors.js';
import { createProgram } from './program.js';

/** Where {@link runCli} reads and writes; every field defaults to the current process's. */
export interface RunCliOptions {
  /** Data output (tables, JSON, summaries). @default process.stdout */
  stdout?: Writable;
  /** Errors, warnings and progress. @default process.stderr */
  stderr?: Writable;
  /** Environment for `IMAGE_CACHE_*` and `DEBUG`. @default process.env */
  env?: Readonly<Record<string, string | undefined>>;
  /** Working directory for relative paths and the config file search. @default process.cwd() */
  cwd?: string;
  /** Interrupts a running command (prefetch stops and rolls back; exit code 130). */
  signal?: AbortSignal;
  /** Extra commands to register (e.g. `serve`), after the built-in ones. */
  commands?: readonly RegisterCommand[];
}

/**
 * Runs the `image-cache` command line in-process and resolves to its exit
 * code: 0 success, 1 an operation (or an item of a batch) failed, 2 a usage
 * or configuration error, 130 interrupted. Never calls `process.exit` and
 * never rejects: an error is printed to `stderr` as one line,
 * `image-cache: <message> [<code>]` (with the stack under `--debug` or `DEBUG`).
 *
 * @param argv - the arguments after the program name, e.g. `['list', '--json']`.
 *
 * @example
 * ```ts
 * const code = await runCli(['--cache-dir', dir, 'stats', '--json'], { stdout, stderr });
 * ```
 */
export async function runCli(argv: readonly string[], options: RunCliOptions = {}): Promise<number> {
  const env = options.env ?? process.env;
  const io = {
    stdout: options.stdout ?? process.stdout,
    stderr: options.stderr ?? process.stderr,
    env,
    cwd: options.cwd ?? process.cwd(),
    signal: options.signal,
  };
  const ctx = new CliContext(io, argv.includes('--debug') || isDebugEnv(env['DEBUG']));
  ctx.argv = [...argv];
  try {
    const program = createProgram(ctx, options.commands);
    await program.parseAsync([...argv], { from: 'user' });
    return ctx.exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.exitCode === 0) return ExitCode.OK; // --help, --version
      // `commander.help`: no command given; the help went to stderr already.
      if (error.code !== 'commander.help') ctx.err(`image-cache: ${error.message.replace(/^error:\s*/, '')} [${CliErrorCodes.USAGE}]`);
      return ExitCode.USAGE;
    }
    ctx.err(`image-cache: ${describeError(error)}`);
    if (ctx.debug) ctx.err(stackOf(error));
    return exitCodeOf(error);
  }
}

function isDebugEnv(value: string | undefined): boolean {
  return value !== undefined && value !== '' && value !== '0' && value.toLowerCase() !== 'false';
}

function stackOf(error: unknown): string {
  const lines: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current !== undefined && current !== null && depth < 5; depth++) {
    lines.push(depth === 0 ? '' : 'Caused by:', current instanceof Error ? (current.stack ?? current.message) : String(current));
    current = current instanceof Error ? current.cause : undefined;
  }
  return lines.filter((line) => line !== '').join('\n');
}
