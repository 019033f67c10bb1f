/**
 * `@cache/cli`: the `image-cache` command line, and the pieces other tools
 * (the `serve` command of `@cache/server`) reuse: configuration resolution
 * (flags > environment > config file > defaults) and opening a cache from it.
 *
 * @packageDocumentation
 */
export { runCli, type RunCliOptions } from './run.js';
export {
  CONFIG_ENV,
  CONFIG_FILE_NAMES,
  DRIVERS,
  resolveConfig,
  type ConfigFlags,
  type ConfigSource,
  type DriverName,
  type ResolveConfigOptions,
  type ResolvedConfig,
  type SettingName,
} from './config.js';
export { openCacheFromConfig, type OpenCacheOptions } from './open-cache.js';
export { CliError, CliErrorCodes, ExitCode, type CliErrorCode } from './errors.js';
export { formatSize, formatSizeExact, parseDuration, parseSize } from './units.js';
export { createProgram, VERSION } from './program.js';
export { CliContext, type CliIO } from './context.js';
export { COMMANDS, type RegisterCommand } from './commands/index.js';
