import { availableParallelism } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { lilconfig } from 'lilconfig';
import { DEFAULT_MAX_SIZE, DEFAULT_STALL_TIME, type Durability, type SpaceThreshold } from '@cache/core';
import { HTTP_ORIGIN_DEFAULTS } from '@cache/origin';
import { CliErrorCodes, usageError } from './errors.js';
import { parseOriginHeaders, parseOriginToken } from './origin-options.js';
import type { RecordedServer } from './settings-file.js';
import { parseBoolean, parseDuration, parseInteger, parseSize, parseThreshold } from './units.js';

/** The metadata drivers the CLI can open. */
export const DRIVERS = ['sqlite', 'xattr', 'postgres'] as const;

/** One of {@link DRIVERS}. */
export type DriverName = (typeof DRIVERS)[number];

/** File names searched for, from the working directory upwards, when no config file is named. */
export const CONFIG_FILE_NAMES: readonly string[] = ['image-cache.config.json', '.image-cacherc.json'];

/**
 * Where a resolved setting came from: a flag, an environment variable, the
 * config file, the default, or (`serve`) the settings the last
 * `image-cache serve` on the cache directory recorded (see `settings-file.ts`).
 */
export type ConfigSource = 'flag' | 'env' | 'file' | 'default' | 'serve';

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
  metricsToken?: string | undefined;
  /** `--insecure-open-management-api` (a switch). */
  insecureOpenManagementApi?: boolean | string | undefined;
  pruneInterval?: string | undefined;
  cleanInterval?: string | undefined;
  prefetchInterval?: string | undefined;
  shutdownTimeout?: string | undefined;
  readinessWindow?: string | undefined;
  fillAbandonAfter?: string | undefined;
  /** `--access-log [path]`: `true` when given without a path. */
  accessLog?: boolean | string | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  maxConnections?: string | undefined;
  workers?: string | undefined;
  rateLimit?: string | undefined;
  freeRun?: string | undefined;
  freeCull?: string | undefined;
  freeStop?: string | undefined;
  databaseUrl?: string | undefined;
  nodeId?: string | undefined;
  advertiseUrl?: string | undefined;
  heartbeatInterval?: string | undefined;
  heartbeatExpiry?: string | undefined;
  peerTimeout?: string | undefined;
  durability?: string | undefined;
  /** `--origin-header`, repeatable: `Name: value` each. */
  originHeader?: string[] | undefined;
  originToken?: string | undefined;
  manifest?: string | undefined;
  /** `--allow-unverified` (a switch). */
  allowUnverified?: boolean | string | undefined;
  originHeadersTimeout?: string | undefined;
  originIdleTimeout?: string | undefined;
  originTotalTimeout?: string | undefined;
  originRetries?: string | undefined;
  originRetryDelay?: string | undefined;
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
  /**
   * `serve`: bearer token guarding the management API; none leaves it open
   * (on loopback only, unless {@link insecureOpenManagementApi}). Kept as given,
   * even empty: `serve` refuses an empty or blank one.
   */
  token: string | undefined;
  /** `serve`: bearer token of `/metrics` (it also takes {@link token}); none leaves `/metrics` open. Kept as given, as {@link token}. */
  metricsToken: string | undefined;
  /** `serve`: allow an open management API (no token) on an address other hosts can reach. @default false */
  insecureOpenManagementApi: boolean;
  /** `serve`: seconds between prune runs (0 disables). @default 300 */
  pruneInterval: number;
  /** `serve`: seconds between clean runs (0 disables). @default 3600 */
  cleanInterval: number;
  /** `serve`: seconds between prefetch runs over the queue (0 disables the timer). @default 60 */
  prefetchInterval: number;
  /** `serve`: seconds a shutdown lets responses already streaming run before cutting them. @default 10 */
  shutdownTimeout: number;
  /** `serve`: seconds a failure (metadata store, full disk, origin) keeps `/readyz` at 503. @default 30 */
  readinessWindow: number;
  /**
   * `serve`: seconds without any reader after which a download (fill) is
   * stopped and rolled back; `undefined`: never, a fill always finishes.
   */
  fillAbandonAfter: number | undefined;
  /** `serve`: the access log: `true` for stdout, else an absolute file path; `undefined`: none. */
  accessLog: true | string | undefined;
  /** `serve`: PEM certificate file for HTTPS (absolute); with {@link tlsKey} or not at all. */
  tlsCert: string | undefined;
  /** `serve`: PEM private key file for HTTPS (absolute). */
  tlsKey: string | undefined;
  /** `serve`: connections accepted at once; `undefined`: no limit. */
  maxConnections: number | undefined;
  /**
   * `serve`: free-space thresholds of the cache filesystem (cachefiles'
   * brun/bcull/bstop): culling stops once `freeRun` is free, starts below
   * `freeCull`; below `freeStop` nothing new is cached. All three or none. @default none
   */
  freeRun: SpaceThreshold | undefined;
  freeCull: SpaceThreshold | undefined;
  freeStop: SpaceThreshold | undefined;
  /**
   * `serve`: server processes on the cache directory and port (node:cluster);
   * 1 is a single process. @default the number of cores (`os.availableParallelism()`)
   */
  workers: number;
  /** `serve`: requests per client IP per window (`window` in seconds); `undefined`: no limit. */
  rateLimit: RateLimit | undefined;
  /**
   * Headers sent with every origin request (the image, Glance's image record, an `http(s)` manifest),
   * by name as given. Secret: never printed (only the names are). @default {}
   */
  originHeaders: Record<string, string>;
  /** Sent to the origin as `X-Auth-Token` (a Keystone token for a Glance origin), over one in {@link originHeaders}. Secret: never printed. */
  originToken: string | undefined;
  /** The origin's checksum manifest (`sha256sum` format): a path (absolute here) or an `http(s)` URL, read at every origin request. */
  manifest: string | undefined;
  /** Cache close-delimited origin bodies that announce no length or digest (nothing can tell a cut from the end). @default false */
  allowUnverified: boolean;
  /** Seconds an HTTP origin gets to send the response headers of each request (for a Glance record or a manifest, the whole answer). @default 30 */
  originHeadersTimeout: number;
  /** Seconds without any body byte from an HTTP origin after which the download fails (0: off). @default 30 */
  originIdleTimeout: number;
  /** Seconds for a whole origin request, retries and body included (0 or `undefined`: no limit). @default undefined */
  originTotalTimeout: number | undefined;
  /**
   * Retries of an HTTP origin request that failed before any byte of the image
   * (no connection, headers timeout, 5xx, 429); never a 404, never once bytes
   * flowed. Per request, inside each of `prefetch`'s whole-image attempts ({@link retries}). @default 2
   */
  originRetries: number;
  /** Seconds before the first origin retry, doubled per further one with jitter (capped at 10 s, or this). @default 0.25 */
  originRetryDelay: number;
  /** `postgres` driver: connection string; without one the driver reads `DATABASE_URL`. */
  databaseUrl: string | undefined;
  /** `postgres` driver: this node's identity; the driver's default is `<hostname>:<cache dir>`. */
  nodeId: string | undefined;
  /**
   * `serve` on the postgres driver: the URL peers fetch this node's images from (`<url>/images/<id>`).
   * @default the bound URL; on a wildcard address (0.0.0.0, ::) `http(s)://<hostname>:<port>`
   */
  advertiseUrl: string | undefined;
  /** `serve` on the postgres driver: seconds between heartbeats. @default 10 */
  heartbeatInterval: number;
  /** postgres driver: seconds after its last heartbeat a node counts as dead (skipped by peers, listed `dead`). @default 30 */
  heartbeatExpiry: number;
  /** `serve` on the postgres driver: seconds a peer gets to send its response headers before the next peer or the origin is tried. @default 5 */
  peerTimeout: number;
  /**
   * How commits are made durable (`--durability`, docs/adr/0007): `strict`
   * fsyncs every commit before it counts; `relaxed` does not (as Glance) and
   * re-verifies unsynced entries after an unclean shutdown. @default 'strict'
   */
  durability: Durability;
  /** The config file that was read, if any. */
  configFile: string | undefined;
  /**
   * The settings `image-cache serve` recorded in the cache directory, when a
   * command other than `serve` found them (see `applyRecordedSettings`).
   */
  recorded?: RecordedServer;
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
  | 'metricsToken'
  | 'insecureOpenManagementApi'
  | 'pruneInterval'
  | 'cleanInterval'
  | 'prefetchInterval'
  | 'shutdownTimeout'
  | 'readinessWindow'
  | 'fillAbandonAfter'
  | 'accessLog'
  | 'tlsCert'
  | 'tlsKey'
  | 'maxConnections'
  | 'workers'
  | 'rateLimit'
  | 'freeRun'
  | 'freeCull'
  | 'freeStop'
  | 'databaseUrl'
  | 'nodeId'
  | 'advertiseUrl'
  | 'heartbeatInterval'
  | 'heartbeatExpiry'
  | 'peerTimeout'
  | 'durability'
  | 'originHeaders'
  | 'originToken'
  | 'manifest'
  | 'allowUnverified'
  | 'originHeadersTimeout'
  | 'originIdleTimeout'
  | 'originTotalTimeout'
  | 'originRetries'
  | 'originRetryDelay';

/**
 * A setting's value before parsing: a flag's or variable's text, a config
 * file's string or number; a list of `--origin-header`s; a switch's `true`;
 * a config file's boolean, array or object (for the settings that take them).
 */
export type RawValue = string | number | boolean | readonly string[] | Readonly<Record<string, unknown>>;

/** Which JSON values a setting takes in a config file (besides null, which means "not given"). */
type FileKind = 'scalar' | 'boolean' | 'headers';

interface Setting<T> {
  env: string;
  flag: string;
  /** The {@link ConfigFlags} key, when it is not the setting's name. */
  flagKey?: keyof ConfigFlags;
  parse: (value: RawValue, what: string) => T;
  fallback: T;
  /** Paths resolve against the cwd (flag, env) or the config file's directory. */
  path?: boolean;
  /** @default 'scalar': a string or a number */
  file?: FileKind;
  /** An empty value counts as given (a token: `--token ''` must not mean "no token"). */
  keepEmpty?: boolean;
}

/** A parser of strings and numbers as a parser of any {@link RawValue} (the file check keeps the others away). */
function scalar<T>(parse: (value: string | number, what: string) => T): (value: RawValue, what: string) => T {
  return (value, what) => parse(typeof value === 'string' || typeof value === 'number' ? value : String(value), what);
}

const SETTINGS: { [K in SettingName]: Setting<ResolvedConfig[K]> } = {
  driver: { env: 'IMAGE_CACHE_DRIVER', flag: '--driver', parse: scalar(parseDriver), fallback: 'sqlite' },
  cacheDir: { env: 'IMAGE_CACHE_DIR', flag: '--cache-dir', parse: scalar(parseText), fallback: '', path: true },
  maxSize: { env: 'IMAGE_CACHE_MAX_SIZE', flag: '--max-size', parse: scalar(parseSize), fallback: DEFAULT_MAX_SIZE },
  stallTime: { env: 'IMAGE_CACHE_STALL_TIME', flag: '--stall-time', parse: scalar(parseDuration), fallback: DEFAULT_STALL_TIME },
  origin: { env: 'IMAGE_CACHE_ORIGIN', flag: '--origin', parse: scalar(parseText), fallback: undefined, path: true },
  concurrency: { env: 'IMAGE_CACHE_CONCURRENCY', flag: '--concurrency', parse: scalar((v, w) => parseInteger(v, w, 1, 256)), fallback: 4 },
  retries: { env: 'IMAGE_CACHE_RETRIES', flag: '--retries', parse: scalar((v, w) => parseInteger(v, w, 0, 100)), fallback: 3 },
  retryDelay: { env: 'IMAGE_CACHE_RETRY_DELAY', flag: '--retry-delay', parse: scalar(parseDuration), fallback: 1 },
  host: { env: 'IMAGE_CACHE_HOST', flag: '--host', parse: scalar(parseText), fallback: '127.0.0.1' },
  port: { env: 'IMAGE_CACHE_PORT', flag: '--port', parse: scalar((v, w) => parseInteger(v, w, 0, 65535)), fallback: 8080 },
  token: { env: 'IMAGE_CACHE_TOKEN', flag: '--token', parse: scalar(parseText), fallback: undefined, keepEmpty: true },
  metricsToken: { env: 'IMAGE_CACHE_METRICS_TOKEN', flag: '--metrics-token', parse: scalar(parseText), fallback: undefined, keepEmpty: true },
  insecureOpenManagementApi: {
    env: 'IMAGE_CACHE_INSECURE_OPEN_MANAGEMENT_API',
    flag: '--insecure-open-management-api',
    parse: parseBoolean,
    fallback: false,
    file: 'boolean',
  },
  pruneInterval: { env: 'IMAGE_CACHE_PRUNE_INTERVAL', flag: '--prune-interval', parse: scalar(parseDuration), fallback: 300 },
  cleanInterval: { env: 'IMAGE_CACHE_CLEAN_INTERVAL', flag: '--clean-interval', parse: scalar(parseDuration), fallback: 3600 },
  prefetchInterval: { env: 'IMAGE_CACHE_PREFETCH_INTERVAL', flag: '--prefetch-interval', parse: scalar(parseDuration), fallback: 60 },
  shutdownTimeout: { env: 'IMAGE_CACHE_SHUTDOWN_TIMEOUT', flag: '--shutdown-timeout', parse: scalar(parseDuration), fallback: 10 },
  readinessWindow: { env: 'IMAGE_CACHE_READINESS_WINDOW', flag: '--readiness-window', parse: scalar(parseDuration), fallback: 30 },
  fillAbandonAfter: { env: 'IMAGE_CACHE_FILL_ABANDON_AFTER', flag: '--fill-abandon-after', parse: scalar(parseDuration), fallback: undefined },
  accessLog: { env: 'IMAGE_CACHE_ACCESS_LOG', flag: '--access-log', parse: parseAccessLog, fallback: undefined, path: true, file: 'boolean' },
  tlsCert: { env: 'IMAGE_CACHE_TLS_CERT', flag: '--tls-cert', parse: scalar(parseText), fallback: undefined, path: true },
  tlsKey: { env: 'IMAGE_CACHE_TLS_KEY', flag: '--tls-key', parse: scalar(parseText), fallback: undefined, path: true },
  workers: { env: 'IMAGE_CACHE_WORKERS', flag: '--workers', parse: scalar((v, w) => parseInteger(v, w, 1, 1024)), fallback: availableParallelism() },
  maxConnections: { env: 'IMAGE_CACHE_MAX_CONNECTIONS', flag: '--max-connections', parse: scalar((v, w) => parseInteger(v, w, 1, 1_000_000)), fallback: undefined },
  rateLimit: { env: 'IMAGE_CACHE_RATE_LIMIT', flag: '--rate-limit', parse: scalar(parseRateLimit), fallback: undefined },
  freeRun: { env: 'IMAGE_CACHE_FREE_RUN', flag: '--free-run', parse: scalar(parseThreshold), fallback: undefined },
  freeCull: { env: 'IMAGE_CACHE_FREE_CULL', flag: '--free-cull', parse: scalar(parseThreshold), fallback: undefined },
  freeStop: { env: 'IMAGE_CACHE_FREE_STOP', flag: '--free-stop', parse: scalar(parseThreshold), fallback: undefined },
  databaseUrl: { env: 'IMAGE_CACHE_DATABASE_URL', flag: '--database-url', parse: scalar(parseText), fallback: undefined },
  nodeId: { env: 'IMAGE_CACHE_NODE_ID', flag: '--node-id', parse: scalar(parseText), fallback: undefined },
  advertiseUrl: { env: 'IMAGE_CACHE_ADVERTISE_URL', flag: '--advertise-url', parse: scalar(parseHttpUrl), fallback: undefined },
  heartbeatInterval: { env: 'IMAGE_CACHE_HEARTBEAT_INTERVAL', flag: '--heartbeat-interval', parse: scalar((v, w) => parseTimeout(v, w, false) ?? 0), fallback: 10 },
  heartbeatExpiry: { env: 'IMAGE_CACHE_HEARTBEAT_EXPIRY', flag: '--heartbeat-expiry', parse: scalar((v, w) => parseTimeout(v, w, false) ?? 0), fallback: 30 },
  peerTimeout: { env: 'IMAGE_CACHE_PEER_TIMEOUT', flag: '--peer-timeout', parse: scalar((v, w) => parseTimeout(v, w, false) ?? 0), fallback: 5 },
  durability: { env: 'IMAGE_CACHE_DURABILITY', flag: '--durability', parse: scalar(parseDurability), fallback: 'strict' },
  originHeaders: { env: 'IMAGE_CACHE_ORIGIN_HEADERS', flag: '--origin-header', flagKey: 'originHeader', parse: parseOriginHeaders, fallback: Object.freeze({}), file: 'headers' },
  originToken: { env: 'IMAGE_CACHE_ORIGIN_TOKEN', flag: '--origin-token', parse: scalar(parseOriginToken), fallback: undefined },
  manifest: { env: 'IMAGE_CACHE_MANIFEST', flag: '--manifest', parse: scalar(parseText), fallback: undefined, path: true },
  allowUnverified: { env: 'IMAGE_CACHE_ALLOW_UNVERIFIED', flag: '--allow-unverified', parse: parseBoolean, fallback: false, file: 'boolean' },
  originHeadersTimeout: {
    env: 'IMAGE_CACHE_ORIGIN_HEADERS_TIMEOUT',
    flag: '--origin-headers-timeout',
    parse: scalar((v, w) => parseTimeout(v, w, false) ?? 0),
    fallback: HTTP_ORIGIN_DEFAULTS.headersTimeout / 1000,
  },
  originIdleTimeout: {
    env: 'IMAGE_CACHE_ORIGIN_IDLE_TIMEOUT',
    flag: '--origin-idle-timeout',
    parse: scalar((v, w) => parseTimeout(v, w, true) ?? 0),
    fallback: HTTP_ORIGIN_DEFAULTS.bodyIdleTimeout / 1000,
  },
  originTotalTimeout: { env: 'IMAGE_CACHE_ORIGIN_TOTAL_TIMEOUT', flag: '--origin-total-timeout', parse: scalar((v, w) => parseTimeout(v, w, true)), fallback: undefined },
  originRetries: { env: 'IMAGE_CACHE_ORIGIN_RETRIES', flag: '--origin-retries', parse: scalar((v, w) => parseInteger(v, w, 0, 100)), fallback: HTTP_ORIGIN_DEFAULTS.retries },
  originRetryDelay: {
    env: 'IMAGE_CACHE_ORIGIN_RETRY_DELAY',
    flag: '--origin-retry-delay',
    parse: scalar((v, w) => parseTimeout(v, w, true) ?? 0),
    fallback: HTTP_ORIGIN_DEFAULTS.retryDelay / 1000,
  },
};

/** An http(s) URL with a host (`--advertise-url`), without a trailing slash. */
function parseHttpUrl(value: string | number, what: string): string {
  const text = String(value).trim();
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '') {
    throw usageError(CliErrorCodes.USAGE, `invalid ${what} ${JSON.stringify(text.slice(0, 64))}: use an http(s) URL other nodes can reach, such as http://node-a.example:8080`);
  }
  return text.replace(/\/+$/, '');
}

/** Longest origin timeout or delay a timer can hold, in seconds (about 24.8 days). */
const MAX_ORIGIN_SECONDS = (2 ** 31 - 1) / 1000;

/**
 * An origin timeout or delay in seconds, as {@link parseDuration} reads it, at
 * most 24 days; 0 means off (`undefined`) when `zeroOff`, and is refused otherwise.
 */
function parseTimeout(value: string | number, what: string, zeroOff: boolean): number | undefined {
  const seconds = parseDuration(value, what);
  if ((seconds === 0 && !zeroOff) || seconds > MAX_ORIGIN_SECONDS || (seconds > 0 && seconds < 0.001)) {
    throw usageError(
      CliErrorCodes.INVALID_DURATION,
      `invalid ${what} ${JSON.stringify(String(value))}: use a duration from 1ms${zeroOff ? ' (or 0 for none)' : ''} to 24 days, such as 500ms, 30s, 5m`,
    );
  }
  return seconds === 0 ? undefined : seconds;
}

/** Environment variable naming the config file (after `--config`, before the search). */
export const CONFIG_ENV = 'IMAGE_CACHE_CONFIG';

/**
 * Resolves the CLI's settings. For each one the first of these wins:
 * command-line flag, environment variable (`IMAGE_CACHE_DRIVER`,
 * `IMAGE_CACHE_DIR`, `IMAGE_CACHE_MAX_SIZE`, `IMAGE_CACHE_STALL_TIME`,
 * `IMAGE_CACHE_ORIGIN`, `IMAGE_CACHE_CONCURRENCY`, `IMAGE_CACHE_RETRIES`,
 * `IMAGE_CACHE_RETRY_DELAY`, and for `serve` `IMAGE_CACHE_HOST`, `IMAGE_CACHE_PORT`,
 * `IMAGE_CACHE_TOKEN`, `IMAGE_CACHE_METRICS_TOKEN`, `IMAGE_CACHE_INSECURE_OPEN_MANAGEMENT_API`, `IMAGE_CACHE_{PRUNE,CLEAN,PREFETCH}_INTERVAL`, `IMAGE_CACHE_SHUTDOWN_TIMEOUT`,
 * `IMAGE_CACHE_READINESS_WINDOW`, `IMAGE_CACHE_ACCESS_LOG`, `IMAGE_CACHE_TLS_{CERT,KEY}`, `IMAGE_CACHE_MAX_CONNECTIONS`,
 * `IMAGE_CACHE_RATE_LIMIT`, for the origin `IMAGE_CACHE_ORIGIN_HEADERS`, `IMAGE_CACHE_ORIGIN_TOKEN`,
 * `IMAGE_CACHE_MANIFEST`, `IMAGE_CACHE_ALLOW_UNVERIFIED`, `IMAGE_CACHE_ORIGIN_{HEADERS,IDLE,TOTAL}_TIMEOUT`,
 * `IMAGE_CACHE_ORIGIN_RETRIES`, `IMAGE_CACHE_ORIGIN_RETRY_DELAY`, and for the
 * postgres driver `IMAGE_CACHE_DATABASE_URL`, `IMAGE_CACHE_NODE_ID`), config file, default. A setting
 * comes whole from one place: `--origin-header`s replace the headers of the environment and the file. The config file is
 * `flags.config`, else `$IMAGE_CACHE_CONFIG`, else the first
 * `image-cache.config.json` or `.image-cacherc.json` found from `cwd` upwards.
 *
 * Sizes accept `bytes` syntax (`20GiB`, `500MB`; every unit is a power of
 * 1024), durations `ms` syntax or plain seconds. Relative paths resolve
 * against `cwd`, or, in a config file, against the file's directory. Nothing
 * is created or opened besides reading the config file.
 *
 * Origin headers and the origin token are secrets: no error message quotes them.
 *
 * @throws CliError with exit code 2: `CLI_MISSING_CACHE_DIR`, `CLI_INVALID_SIZE`,
 *   `CLI_INVALID_DURATION`, `CLI_INVALID_NUMBER`, `CLI_INVALID_DRIVER`, `CLI_INVALID_BOOLEAN`,
 *   `CLI_INVALID_HEADER`, `CLI_CONFIG`.
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
    const candidates: [ConfigSource, RawValue | undefined, string, string][] = [
      ['flag', given(flags[setting.flagKey ?? (name as keyof ConfigFlags)], setting.keepEmpty), setting.flag, cwd],
      ['env', setting.keepEmpty === true ? env[setting.env] : nonEmpty(env[setting.env]), setting.env, cwd],
      ['file', fileValue(file, name, setting.file ?? 'scalar', setting.keepEmpty), `${name} in ${file?.path ?? ''}`, file === undefined ? cwd : dirname(file.path)],
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
    metricsToken: resolveOne('metricsToken'),
    insecureOpenManagementApi: resolveOne('insecureOpenManagementApi'),
    pruneInterval: resolveOne('pruneInterval'),
    cleanInterval: resolveOne('cleanInterval'),
    prefetchInterval: resolveOne('prefetchInterval'),
    shutdownTimeout: resolveOne('shutdownTimeout'),
    readinessWindow: resolveOne('readinessWindow'),
    fillAbandonAfter: resolveOne('fillAbandonAfter'),
    accessLog: resolveOne('accessLog'),
    tlsCert: resolveOne('tlsCert'),
    tlsKey: resolveOne('tlsKey'),
    maxConnections: resolveOne('maxConnections'),
    workers: resolveOne('workers'),
    rateLimit: resolveOne('rateLimit'),
    freeRun: resolveOne('freeRun'),
    freeCull: resolveOne('freeCull'),
    freeStop: resolveOne('freeStop'),
    databaseUrl: resolveOne('databaseUrl') ?? nonEmpty(env['DATABASE_URL']), // the libpq-style fallback
    nodeId: resolveOne('nodeId'),
    advertiseUrl: resolveOne('advertiseUrl'),
    heartbeatInterval: resolveOne('heartbeatInterval'),
    heartbeatExpiry: resolveOne('heartbeatExpiry'),
    peerTimeout: resolveOne('peerTimeout'),
    durability: resolveOne('durability'),
    originHeaders: resolveOne('originHeaders'),
    originToken: resolveOne('originToken'),
    manifest: resolveOne('manifest'),
    allowUnverified: resolveOne('allowUnverified'),
    originHeadersTimeout: resolveOne('originHeadersTimeout'),
    originIdleTimeout: resolveOne('originIdleTimeout'),
    originTotalTimeout: resolveOne('originTotalTimeout'),
    originRetries: resolveOne('originRetries'),
    originRetryDelay: resolveOne('originRetryDelay'),
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
    // V8's JSON errors may quote the text around the mistake, and the file may hold secrets (origin headers, tokens).
    const reason = code === 'ENOENT' ? 'no such file' : (error as Error).message.replace(/,\s*(?:\.\.\.)?"[^]*" is not valid JSON/, ' (not valid JSON)');
    throw usageError(CliErrorCodes.CONFIG, `cannot read config file ${where}: ${reason}`);
  }
  if (result === null) return undefined;
  const config: unknown = result.config ?? {};
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw usageError(CliErrorCodes.CONFIG, `config file ${result.filepath} must hold a JSON object`);
  }
  return { path: result.filepath, config: config as Record<string, unknown> };
}

function fileValue(file: LoadedFile | undefined, name: SettingName, kind: FileKind, keepEmpty = false): RawValue | undefined {
  const value = file?.config[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return keepEmpty ? value : nonEmpty(value);
  if (typeof value === 'number') return value;
  if (kind === 'boolean' && typeof value === 'boolean') return value;
  if (kind === 'headers' && typeof value === 'object') {
    if (!Array.isArray(value)) return value as Record<string, unknown>;
    if (value.every((item) => typeof item === 'string')) return value.length === 0 ? undefined : (value as string[]);
  }
  const expected = {
    scalar: 'a string or a number',
    boolean: 'true, false, or a string or number saying so',
    headers: 'an object of header names and values, an array of "Name: value" strings, or a string',
  }[kind];
  throw usageError(CliErrorCodes.CONFIG, `${name} in ${file?.path ?? ''} must be ${expected}, got ${Array.isArray(value) ? 'an array of other things' : typeof value}`);
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value;
}

/** A flag's value, or undefined when it was not given (an empty string or list counts as not given, unless `keepEmpty`). */
function given(value: ConfigFlags[keyof ConfigFlags], keepEmpty = false): RawValue | undefined {
  if (Array.isArray(value)) return value.length === 0 ? undefined : value;
  if (typeof value === 'string') return keepEmpty ? value : nonEmpty(value);
  return value ?? undefined;
}

function parseText(value: string | number): string {
  return String(value);
}

function parseDurability(value: string | number, what: string): Durability {
  const mode = String(value).trim().toLowerCase();
  if (mode === 'strict' || mode === 'relaxed') return mode;
  throw usageError(CliErrorCodes.INVALID_DURABILITY, `invalid ${what} ${JSON.stringify(String(value))}: use strict or relaxed`);
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

/** A per-client rate limit: `max` requests per `window` seconds. */
export interface RateLimit {
  max: number;
  window: number;
}

/** `--rate-limit <n>/<duration>`: `100/1m`, `10/1s`, `5/30` (seconds). */
function parseRateLimit(value: string | number, what: string): RateLimit {
  const match = /^\s*(\d+)\s*\/\s*(\S+)\s*$/.exec(String(value));
  if (match === null) {
    throw usageError(CliErrorCodes.INVALID_NUMBER, `invalid ${what} ${JSON.stringify(String(value))}: use <requests>/<duration>, e.g. 100/1m`);
  }
  const max = parseInteger(match[1] as string, `${what} request count`, 1, 1_000_000_000);
  const window = parseDuration(match[2] as string, `${what} window`);
  if (window < 0.001 || window > (2 ** 31 - 1) / 1000) {
    throw usageError(CliErrorCodes.INVALID_DURATION, `invalid ${what} window ${JSON.stringify(match[2])}: from 1ms to 24 days`);
  }
  return { max, window };
}

/** `--access-log [path]`: a switch (stdout) or a path; `-` or `stdout` is stdout too, a false word turns it off. */
function parseAccessLog(value: RawValue, what: string): true | string | undefined {
  if (value === true) return true;
  if (value === false) return undefined;
  const text = String(value).trim();
  if (text === '-' || text.toLowerCase() === 'stdout' || /^(true|1|yes|on)$/i.test(text)) return true;
  if (/^(false|0|no|off)$/i.test(text)) return undefined;
  if (text === '') throw usageError(CliErrorCodes.USAGE, `invalid ${what}: give a file path, or nothing for stdout`);
  return text;
}
