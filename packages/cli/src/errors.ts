import { CacheError } from '@cache/core';
import { permissionAdvice } from '@cache/core/driver';

/** Exit codes of `image-cache`. */
export const ExitCode = {
  /** Everything worked. */
  OK: 0,
  /** An operation failed, or some items of a batch did (a failed prefetch, a verify mismatch). */
  FAILURE: 1,
  /** The command line, environment or config file was wrong; nothing was done. */
  USAGE: 2,
  /** Interrupted (SIGINT) before the command finished. */
  INTERRUPTED: 130,
} as const;

/** One of the values of {@link ExitCode}. */
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** Stable codes of the errors the CLI itself raises (core errors keep their own `CACHE_*` codes). */
export const CliErrorCodes = {
  USAGE: 'CLI_USAGE',
  INVALID_SIZE: 'CLI_INVALID_SIZE',
  INVALID_DURATION: 'CLI_INVALID_DURATION',
  INVALID_NUMBER: 'CLI_INVALID_NUMBER',
  INVALID_DRIVER: 'CLI_INVALID_DRIVER',
  /** A `--durability` other than `strict` or `relaxed`. */
  INVALID_DURABILITY: 'CLI_INVALID_DURABILITY',
  INVALID_BOOLEAN: 'CLI_INVALID_BOOLEAN',
  /** A malformed origin header or origin token (the message never quotes the value). */
  INVALID_HEADER: 'CLI_INVALID_HEADER',
  /** The configured driver's package (an optional dependency) is not installed. */
  DRIVER_MISSING: 'CLI_DRIVER_MISSING',
  /** The configured driver's package is installed but does not load (e.g. its native addon is missing). */
  DRIVER_LOAD_FAILED: 'CLI_DRIVER_LOAD_FAILED',
  MISSING_CACHE_DIR: 'CLI_MISSING_CACHE_DIR',
  NOT_A_CACHE_DIR: 'CLI_NOT_A_CACHE_DIR',
  MISSING_ORIGIN: 'CLI_MISSING_ORIGIN',
  CONFIG: 'CLI_CONFIG',
  CHECKSUM_MANIFEST: 'CLI_CHECKSUM_MANIFEST',
  NOT_FOUND: 'CLI_NOT_FOUND',
  LISTEN: 'CLI_LISTEN',
  /** An empty, blank or otherwise unusable `--token` / `--metrics-token` (the message never quotes it). */
  INVALID_TOKEN: 'CLI_INVALID_TOKEN',
  /** `--tls-cert` without `--tls-key` or the other way round, or a certificate or key file that cannot be read. */
  TLS: 'CLI_TLS',
  /** `serve` without a token on an address other hosts can reach, without `--insecure-open-management-api`. */
  OPEN_MANAGEMENT_API: 'CLI_OPEN_MANAGEMENT_API',
} as const;

/** One of the values of {@link CliErrorCodes}. */
export type CliErrorCode = (typeof CliErrorCodes)[keyof typeof CliErrorCodes];

/**
 * An error the CLI reports as one line, `image-cache: <message> [<code>]`,
 * with its own exit code.
 */
export class CliError extends Error {
  /** Stable machine-readable code. */
  readonly code: CliErrorCode;
  /** The process exit code this error maps to. */
  readonly exitCode: number;

  constructor(code: CliErrorCode, message: string, options: { exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CliError';
    this.code = code;
    this.exitCode = options.exitCode ?? ExitCode.USAGE;
  }
}

/** A mistake in flags, environment or config file: exit code 2. */
export function usageError(code: CliErrorCode, message: string): CliError {
  return new CliError(code, message, { exitCode: ExitCode.USAGE });
}

/** A failure while doing the work: exit code 1. */
export function operationalError(code: CliErrorCode, message: string): CliError {
  return new CliError(code, message, { exitCode: ExitCode.FAILURE });
}

/** Core error codes that mean "the caller's input was wrong", so exit 2. */
const USAGE_CACHE_CODES: ReadonlySet<string> = new Set(['CACHE_INVALID_IMAGE_ID', 'CACHE_INVALID_ARGUMENT']);

/** The exit code for any error: a {@link CliError}'s own, 2 for invalid ids and arguments, 1 otherwise. */
export function exitCodeOf(error: unknown): number {
  if (error instanceof CliError) return error.exitCode;
  if (CacheError.isCacheError(error) && USAGE_CACHE_CODES.has(error.code)) return ExitCode.USAGE;
  return ExitCode.FAILURE;
}

/** The stable code of an error (`CLI_*`, `CACHE_*`, an errno code such as `EACCES`), or undefined. */
export function codeOf(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === 'string' && code !== '') return code;
  }
  return undefined;
}

/**
 * The one-line message for an error: its message on one line, plus `[code]`
 * when it has one. A bare permission error of the filesystem (`EACCES`,
 * `EPERM` with a path, not already explained by a cache error) gets the fix
 * (`chown`, `chmod`, or run as the owner).
 */
export function describeError(error: unknown): string {
  let message = error instanceof Error ? error.message : String(error);
  const path = (error as NodeJS.ErrnoException | null)?.path;
  const errno = codeOf(error);
  if ((errno === 'EACCES' || errno === 'EPERM') && typeof path === 'string' && !CacheError.isCacheError(error) && !(error instanceof CliError)) {
    message = `${message}. ${permissionAdvice(path)}`;
  }
  const oneLine = message.replace(/\s*\n\s*/g, ' ').trim();
  const code = codeOf(error);
  return code === undefined ? oneLine : `${oneLine} [${code}]`;
}
