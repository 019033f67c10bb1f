import type { Writable } from 'node:stream';
import { assertImageId, type CacheWarning, type ImageCache, type ImageId } from '@cache/core';
import type { Command } from 'commander';
import { resolveConfig, type ConfigFlags, type ResolvedConfig } from './config.js';
import { ExitCode } from './errors.js';
import { openCacheFromConfig } from './open-cache.js';
import { applyRecordedSettings } from './settings-file.js';

/** Where the CLI reads and writes: the process's streams in `bin/`, anything in tests. */
export interface CliIO {
  /** Data output: tables, JSON, summaries. */
  stdout: Writable;
  /** Errors, warnings and progress. Progress bars are drawn only when `stderr.isTTY` is true. */
  stderr: Writable;
  /** Environment (`IMAGE_CACHE_*`, `DEBUG`). */
  env: Readonly<Record<string, string | undefined>>;
  /** Working directory for relative paths and the config file search. */
  cwd: string;
  /** Aborts long-running commands (prefetch); `bin/` wires it to SIGINT/SIGTERM. */
  signal?: AbortSignal | undefined;
}

/** The state one CLI run shares with its commands. */
export class CliContext {
  readonly io: CliIO;
  /** Print stack traces (`--debug` or `DEBUG`). */
  debug: boolean;
  /** The arguments of this run (after the program name), as given to `runCli`: `serve --workers N` starts its workers with them. */
  argv: readonly string[] = [];
  /** The exit code the run ends with unless an error decides otherwise. */
  exitCode: number = ExitCode.OK;

  constructor(io: CliIO, debug: boolean) {
    this.io = io;
    this.debug = debug;
  }

  /** Writes one line of data output to stdout. */
  out(line = ''): void {
    this.io.stdout.write(`${line}\n`);
  }

  /** Writes a value as pretty JSON to stdout. */
  json(value: unknown): void {
    this.io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** Writes one line to stderr (progress, notes). */
  err(line: string): void {
    this.io.stderr.write(`${line}\n`);
  }

  /** Writes `image-cache: warning: <message>` to stderr. */
  warn(message: string): void {
    this.err(`image-cache: warning: ${message.replace(/\s*\n\s*/g, ' ')}`);
  }

  /** Marks the run as failed (exit code 1) without stopping it. */
  fail(code: number = ExitCode.FAILURE): void {
    if (this.exitCode === ExitCode.OK) this.exitCode = code;
  }

  /** True when stderr is a terminal, so progress bars can be drawn. */
  get stderrIsTTY(): boolean {
    return (this.io.stderr as Writable & { isTTY?: boolean }).isTTY === true;
  }

  /**
   * Resolves the configuration from a command's options (with the globals),
   * the environment and the config file; the driver, budget and stall time
   * left at their defaults come from the settings `image-cache serve`
   * recorded in the cache directory, when it did.
   */
  async config(command: Command): Promise<ResolvedConfig> {
    const config = await resolveConfig({ flags: command.optsWithGlobals<ConfigFlags>(), env: this.io.env, cwd: this.io.cwd });
    for (const warning of config.warnings) this.warn(warning);
    await applyRecordedSettings(config);
    return config;
  }

  /**
   * Validates `ids`, resolves the configuration (unless already resolved and
   * passed as `config`), opens the cache, runs `body` and closes the cache. Everything that can be refused (ids, flags, config)
   * is refused before anything on disk is created or opened.
   */
  async withCache<T>(
    command: Command,
    options: { mustExist: boolean; ids?: readonly string[]; config?: ResolvedConfig },
    body: (cache: ImageCache, config: ResolvedConfig) => Promise<T>,
  ): Promise<T> {
    for (const id of options.ids ?? []) assertImageId(id);
    const config = options.config ?? (await this.config(command));
    const cache = await openCacheFromConfig(config, {
      mustExist: options.mustExist,
      onWarning: (warning: CacheWarning) => this.warn(`${warning.message} [${warning.code}]`),
    });
    try {
      return await body(cache, config);
    } finally {
      await cache.close();
    }
  }
}

/** Validated ids, in order, without duplicates. */
export function uniqueIds(ids: readonly string[]): ImageId[] {
  for (const id of ids) assertImageId(id);
  return [...new Set(ids)];
}
