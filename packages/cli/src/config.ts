import { dirname, isAbsolute, resolve } from 'node:path';
import { lilconfig } from 'lilconfig';
import { DEFAULT_MAX_SIZE, DEFAULT_STALL_TIME } from '@cache/core';
import { CliErrorCodes, usageError } from './errors.js';
import { parseDuration, parseInteger, parseSize } from './units.js';

/** The metadata drivers the CLI can open. */
export const DRIVERS = ['sqlite', 'xattr', 'postgres'] as const;

/** One of {@link DRIVERS}. */
export type DriverName = (typeof DRIVERS)[number];

/** File names searched for, from the working directory upwards, when no config file is named. */
export const CONFIG_FILE_NAMES: readonly string[] = ['image-cache.config.json', '.image-cacherc.json'];

/** Where a resolved setting came from. */
export type ConfigSource = 'flag' | 'env' | 'file' | 'default';

/**
 * Settings as given on the command line, unparsed (what commander hands over).
 * Every field is optional; `undefined` means "not given".
 */
export interface ConfigFlags {
  driver?: string | undefined;
  cacheDir?: string | undefined;
  /** Path of the config file (`--config`). */
  config?: string | undefined;
  maxSize?: string | undefined;
  stallTime?: string | undefined;
  origin?: string | undefined;
  concurrency?: string | undefined;
  retries?: string | undefined;
  retryDelay?: string | undefined;
  host?: string | undefined;
  port?: string | undefined;
  token?: string | undefined;
  pruneInterval?: string | undefined;
  cleanInterval?: string | undefined;
  prefetchInterval?: string | undefined;
  shutdownTimeout?: string | undefined;
  databaseUrl?: string | undefined;
  nodeId?: string | undefined;
}

/** Options of {@link resolveConfig}. */
export interface ResolveConfigOptions {
  /** Command-line values; they win over everything else. */
  flags?: ConfigFlags;
  /** Environment to read `IMAGE_CACHE_*` from. @default process.env */
  env?: Readonly<Record<string, string | undefined>>;
  /** Directory relative paths (flags, environment) resolve against and the config search starts from. @default process.cwd() */
  cwd?: string;
  /** Throw `CLI_MISSING_CACHE_DIR` when no cache directory is configured. @default true */
  requireCacheDir?: boolean;
}

/** The settings every command (and the server) runs with, parsed and validated. */
export interface ResolvedConfig {
  /** Metadata driver. @default 'sqlite' */
  driver: DriverName;
  /** Absolute cache directory. Empty only when `requireCacheDir` was false and none was given. */
  cacheDir: string;
  /** Byte budget of `prune`. @default 10 GiB */
  maxSize: number;
  /** Seconds after which `clean` deletes an incomplete file. @default 86400 */
  stallTime: number;
  /** Origin for `prefetch`: an http(s) URL template with `{id}`, or an absolute directory path. */
  origin: string | undefined;
  /** Images fetched at once by `prefetch`. @default 4 */
  concurrency: number;
  /** Retries after a failed fetch of one image (so `retries + 1` attempts). @default 3 */
  retries: number;
  /** Seconds before the first retry; each further retry waits twice as long. @default 1 */
  retryDelay: number;
  /** `serve`: address to listen on. @default '127.0.0.1' */
  host: string;
  /** `serve`: port to listen on (0: any free port). @default 8080 */
  port: number;
  /** `serve`: bearer token guarding the management API; none leaves it open. */
  token: string | undefined;
  /** `serve`: seconds between prune runs (0 disables). @default 300 */
  pruneInterval: number;
  /** `serve`: seconds between clean runs (0 disables). @default 3600 */
  cleanInterval: number;
  /** `serve`: seconds between prefetch runs over the queue (0 disables the timer). @default 60 */
  prefetchInterval: number;
  /** `serve`: seconds a shutdown lets responses already streaming run before cutting them. @default 10 */
  shutdownTimeout: number;
  /** `postgres` driver: connection string; without one the driver reads `DATABASE_URL`. */
  databaseUrl: string | undefined;
  /** `postgres` driver: this node's identity; the driver's default is `<hostname>:<cache dir>`. */
  nodeId: string | undefined;
  /** The config file that was read, if any. */
  configFile: string | undefined;
  /** Where each setting came from. */
  sources: Record<SettingName, ConfigSource>;
  /** Problems that did not stop resolution (unknown keys in the config file). */
  warnings: string[];
}

/** Names of the settings in {@link ResolvedConfig} that can come from flags, environment or file. */
export type SettingName =
  | 'driver'
  | 'cacheDir'
  | 'maxSize'
  | 'stallTime'
  | 'origin'
  | 'concurrency'
  | 'retries'
  | 'retryDelay'
  | 'host'
  | 'port'
  | 'token'
  | 'pruneInterval'
  | 'cleanInterval'
  | 'prefetchInterval'
  | 'shutdownTimeout'
  | 'databaseUrl'
  | 'nodeId';

interface Setting<T> {
  env: string;
  flag: string;
  parse: (value: string | number, what: string) => T;
  fallback: T;
  /** Paths resolve against the cwd (flag, env) or the config file's directory. */
  path?: boolean;
}

const SETTINGS: { [K in SettingName]: Setting<ResolvedConfig[K]> } = {
  driver: { env: 'IMAGE_CACHE_DRIVER', flag: '--driver', parse: parseDriver, fallback: 'sqlite' },
  cacheDir: { env: 'IMAGE_CACHE_DIR', flag: '--cache-dir', parse: parseText, fallback: '', path: true },
  maxSize: { env: 'IMAGE_CACHE_MAX_SIZE', flag: '--max-size', parse: parseSize, fallback: DEFAULT_MAX_SIZE },
  stallTime: { env: 'IMAGE_CACHE_STALL_TIME', flag: '--stall-time', parse: parseDuration, fallback: DEFAULT_STALL_TIME },
  origin: { env: 'IMAGE_CACHE_ORIGIN', flag: '--origin', parse: parseText, fallback: undefined, path: true },
  concurrency: { env: 'IMAGE_CACHE_CONCURRENCY', flag: '--concurrency', parse: (v, w) => parseInteger(v, w, 1, 256), fallback: 4 },
  retries: { env: 'IMAGE_CACHE_RETRIES', flag: '--retries', parse: (v, w) => parseInteger(v, w, 0, 100), fallback: 3 },
  retryDelay: { env: 'IMAGE_CACHE_RETRY_DELAY', flag: '--retry-delay', parse: parseDuration, fallback: 1 },
  host: { env: 'IMAGE_CACHE_HOST', flag: '--host', parse: parseText, fallback: '127.0.0.1' },
  port: { env: 'IMAGE_CACHE_PORT', flag: '--port', parse: (v, w) => parseInteger(v, w, 0, 65535), fallback: 8080 },
  token: { env: 'IMAGE_CACHE_TOKEN', flag: '--token', parse: parseText, fallback: undefined },
  pruneInterval: { env: 'IMAGE_CACHE_PRUNE_INTERVAL', flag: '--prune-interval', parse: parseDuration, fallback: 300 },
  cleanInterval: { env: 'IMAGE_CACHE_CLEAN_INTERVAL', flag: '--clean-interval', parse: parseDuration, fallback: 3600 },
  prefetchInterval: { env: 'IMAGE_CACHE_PREFETCH_INTERVAL', flag: '--prefetch-interval', parse: parseDuration, fallback: 60 },
  shutdownTimeout: { env: 'IMAGE_CACHE_SHUTDOWN_TIMEOUT', flag: '--shutdown-timeout', parse: parseDuration, fallback: 10 },
  databaseUrl: { env: 'IMAGE_CACHE_DATABASE_URL', flag: '--database-url', parse: parseText, fallback: undefined },
  nodeId: { env: 'IMAGE_CACHE_NODE_ID', flag: '--node-id', parse: parseText, fallback: undefined },
};

/** Environment variable naming the config file (after `--config`, before the search). */
export const CONFIG_ENV = 'IMAGE_CACHE_CONFIG';

/**
 * Resolves the CLI's settings. For each one the first of these wins:
 * command-line flag, environment variable (`IMAGE_CACHE_DRIVER`,
 * `IMAGE_CACHE_DIR`, `IMAGE_CACHE_MAX_SIZE`, `IMAGE_CACHE_STALL_TIME`,
 * `IMAGE_CACHE_ORIGIN`, `IMAGE_CACHE_CONCURRENCY`, `IMAGE_CACHE_RETRIES`,
 * `IMAGE_CACHE_RETRY_DELAY`, and for `serve` `IMAGE_CACHE_HOST`, `IMAGE_CACHE_PORT`,
 * `IMAGE_CACHE_TOKEN`, `IMAGE_CACHE_{PRUNE,CLEAN,PREFETCH}_INTERVAL`, `IMAGE_CACHE_SHUTDOWN_TIMEOUT`, and for the
 * postgres driver `IMAGE_CACHE_DATABASE_URL`, `IMAGE_CACHE_NODE_ID`), config file, default. The config file is
 * `flags.config`, else `$IMAGE_CACHE_CONFIG`, else the first
 * `image-cache.config.json` or `.image-cacherc.json` found from `cwd` upwards.
 *
 * Sizes accept `bytes` syntax (`20GiB`, `500MB`; every unit is a power of
 * 1024), durations `ms` syntax or plain seconds. Relative paths resolve
 * against `cwd`, or, in a config file, against the file's directory. Nothing
 * is created or opened besides reading the config file.
 *
 * @throws CliError with exit code 2: `CLI_MISSING_CACHE_DIR`, `CLI_INVALID_SIZE`,
 *   `CLI_INVALID_DURATION`, `CLI_INVALID_NUMBER`, `CLI_INVALID_DRIVER`, `CLI_CONFIG`.
 *
 * @example
 * ```ts
 * const config = await resolveConfig({ flags: { cacheDir: '/var/cache/images' } });
 * const cache = await openCacheFromConfig(config);
 * ```
 */
export async function resolveConfig(options: ResolveConfigOptions = {}): Promise<ResolvedConfig> {
  const flags = options.flags ?? {};
  const env = options.env ?? process.env;
  const cwd = resolve(options.cwd ?? process.cwd());
  const file = await loadConfigFile(flags.config ?? nonEmpty(env[CONFIG_ENV]), cwd);
  const warnings: string[] = [];
  if (file !== undefined) {
    for (const key of Object.keys(file.config)) {
      if (!Object.hasOwn(SETTINGS, key)) {
        warnings.push(`${file.path}: unknown key ${JSON.stringify(key)} ignored (known: ${Object.keys(SETTINGS).join(', ')})`);
      }
    }
  }
  const sources = {} as Record<SettingName, ConfigSource>;
  const resolveOne = <K extends SettingName>(name: K): ResolvedConfig[K] => {
    const setting = SETTINGS[name] as Setting<ResolvedConfig[K]>;
    const candidates: [ConfigSource, string | number | undefined, string, string][] = [
      ['flag', nonEmpty(flags[name]), setting.flag, cwd],
      ['env', nonEmpty(env[setting.env]), setting.env, cwd],
      ['file', fileValue(file, name), `${name} in ${file?.path ?? ''}`, file === undefined ? cwd : dirname(file.path)],
    ];
    for (const [source, raw, what, base] of candidates) {
      if (raw === undefined) continue;
      sources[name] = source;
      const value = setting.parse(raw, what);
      return (setting.path === true && typeof value === 'string' ? resolvePath(value, base) : value) as ResolvedConfig[K];
    }
    sources[name] = 'default';
    return setting.fallback;
  };
  const config: ResolvedConfig = {
    driver: resolveOne('driver'),
    cacheDir: resolveOne('cacheDir'),
    maxSize: resolveOne('maxSize'),
    stallTime: resolveOne('stallTime'),
    origin: resolveOne('origin'),
    concurrency: resolveOne('concurrency'),
    retries: resolveOne('retries'),
    retryDelay: resolveOne('retryDelay'),
    host: resolveOne('host'),
    port: resolveOne('port'),
    token: resolveOne('token'),
    pruneInterval: resolveOne('pruneInterval'),
    cleanInterval: resolveOne('cleanInterval'),
    prefetchInterval: resolveOne('prefetchInterval'),
    shutdownTimeout: resolveOne('shutdownTimeout'),
    databaseUrl: resolveOne('databaseUrl') ?? nonEmpty(env['DATABASE_URL']), // the libpq-style fallback
    nodeId: resolveOne('nodeId'),
    configFile: file?.path,
    sources,
    warnings,
  };
  if (config.cacheDir === '' && options.requireCacheDir !== false) {
    throw usageError(
      CliErrorCodes.MISSING_CACHE_DIR,
      `no cache directory: pass --cache-dir <dir>, set IMAGE_CACHE_DIR, or put "cacheDir" in ${CONFIG_FILE_NAMES[0]}`,
    );
  }
  return config;
}

interface LoadedFile {
  path: string;
  config: Record<string, unknown>;
}

async function loadConfigFile(explicit: string | undefined, cwd: string): Promise<LoadedFile | undefined> {
  const explorer = lilconfig('image-cache', { searchPlaces: [...CONFIG_FILE_NAMES], cache: false });
  let result;
  const where = explicit === undefined ? `${CONFIG_FILE_NAMES.join(' or ')} above ${cwd}` : resolve(cwd, explicit);
  try {
    result = explicit === undefined ? await explorer.search(cwd) : await explorer.load(resolve(cwd, explicit));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'no such file' : (error as Error).message;
    throw usageError(CliErrorCodes.CONFIG, `cannot read config file ${where}: ${reason}`);
  }
  if (result === null) return undefined;
  const config: unknown = result.config ?? {};
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw usageError(CliErrorCodes.CONFIG, `config file ${result.filepath} must hold a JSON object`);
  }
  return { path: result.filepath, config: config as Record<string, unknown> };
}

function fileValue(file: LoadedFile | undefined, name: SettingName): string | number | undefined {
  const value = file?.config[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return nonEmpty(value);
  if (typeof value === 'number') return value;
  throw usageError(CliErrorCodes.CONFIG, `${name} in ${file?.path ?? ''} must be a string or a number, got ${typeof value}`);
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value;
}

function parseText(value: string | number): string {
  return String(value);
}

function parseDriver(value: string | number, what: string): DriverName {
  const name = String(value).trim().toLowerCase();
  if ((DRIVERS as readonly string[]).includes(name)) return name as DriverName;
  throw usageError(CliErrorCodes.INVALID_DRIVER, `invalid ${what} ${JSON.stringify(String(value))}: use ${DRIVERS.slice(0, -1).join(', ')} or ${DRIVERS.at(-1)}`);
}

/** Resolves a path against `base`; leaves URLs (`http://...`, `file://...`) alone. */
function resolvePath(value: string, base: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return value;
  return isAbsolute(value) ? value : resolve(base, value);
}
