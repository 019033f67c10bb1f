import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { SpaceThreshold } from '@cache/core';
import { redactUrl } from '@cache/origin';
import type { ConfigSource, DriverName, ResolvedConfig } from './config.js';
import { DRIVERS } from './config.js';

/**
 * The file in the cache directory where `image-cache serve` records the
 * settings it runs with, so that `stats` (and every other command on that
 * directory) can show and use them. A dot-file: ids never start with a dot,
 * so no driver lists, counts, adopts or deletes it (the conformance kit's
 * rule for a directory's own files).
 */
export const SETTINGS_FILE = '.image-cache-settings.json';

/** Where a recorded setting came from: as {@link ConfigSource}, or `demo` for what `serve --demo` filled in. */
export type RecordedSource = Exclude<ConfigSource, 'serve'> | 'demo';

/** One recorded setting. */
export interface RecordedSetting<T> {
  value: T;
  source: RecordedSource;
}

/** What `serve` writes to {@link SETTINGS_FILE} (JSON; no secrets: tokens and header values are never in it). */
export interface RecordedSettings {
  writtenBy: 'image-cache serve';
  version: 1;
  /** The serving process and its host (the file may be on shared storage). */
  pid: number;
  hostname: string;
  /** ISO-8601 time the server started listening. */
  startedAt: string;
  /** The bound address. */
  url: string;
  settings: {
    driver: RecordedSetting<DriverName>;
    /** Bytes. */
    maxSize: RecordedSetting<number>;
    /** Seconds. */
    stallTime: RecordedSetting<number>;
    host: RecordedSetting<string>;
    port: RecordedSetting<number>;
    /** The origin's description (credentials in a URL are cut out), or null without one. */
    origin: RecordedSetting<string | null>;
    /** Whether a management token is set (never its value). */
    token: RecordedSetting<boolean>;
    /** Whether a metrics token is set (never its value). */
    metricsToken: RecordedSetting<boolean>;
    insecureOpenManagementApi: RecordedSetting<boolean>;
    /** Seconds. */
    pruneInterval: RecordedSetting<number>;
    cleanInterval: RecordedSetting<number>;
    prefetchInterval: RecordedSetting<number>;
    concurrency: RecordedSetting<number>;
    shutdownTimeout: RecordedSetting<number>;
    readinessWindow: RecordedSetting<number>;
    allowUnverified: RecordedSetting<boolean>;
    /** The free-space thresholds (null: none); absent in files of earlier versions. */
    freeSpace?: RecordedSetting<{ run: SpaceThreshold; cull: SpaceThreshold; stop: SpaceThreshold } | null>;
    /** Whether every write reserves its space in the budget first (serve: always); absent in files of earlier versions. */
    writeBudget?: RecordedSetting<boolean>;
    /** How commits are made durable (`strict` or `relaxed`, ADR 0007); absent in files of earlier versions. */
    durability?: RecordedSetting<string>;
    /** Server processes sharing the port (`--workers`); absent in files of earlier versions. */
    workers?: RecordedSetting<number>;
    /**
     * The origin's timeouts (seconds; `total` null: no limit) and its retries before the first byte
     * (`retryDelay` seconds before the first); absent in files of earlier versions.
     */
    originTimeouts?: RecordedSetting<{ headers: number; idle: number; total: number | null; retries: number; retryDelay: number }>;
    /** Names of the headers sent to the origin (never their values; `X-Auth-Token` when `--origin-token` is set); absent in files of earlier versions. */
    originHeaderNames?: RecordedSetting<string[]>;
    /**
     * The cluster (serve on the postgres driver): the URL advertised to peers (null: the bound one),
     * heartbeat interval and expiry and peer timeout in seconds; null when the server is not a cluster node.
     * Absent in files of earlier versions.
     */
    cluster?: RecordedSetting<{ advertiseUrl: string | null; heartbeatInterval: number; heartbeatExpiry: number; peerTimeout: number } | null>;
  };
  /** The config file serve read, if any. */
  configFile: string | null;
}

/** A {@link RecordedSettings} as read back, with where it is and whether its server still runs. */
export interface RecordedServer {
  path: string;
  record: RecordedSettings;
  /**
   * Whether the recording process is alive: `true`/`false` on the host that
   * wrote it, `undefined` from another host (the cache directory is shared).
   * A pid may be reused after the server stopped: this is a hint.
   */
  running: boolean | undefined;
}

/** The settings of a `serve` as {@link RecordedSettings}. */
export function recordSettings(
  config: ResolvedConfig,
  details: { url: string; port: number; origin: string | undefined; demoDefaults: ReadonlySet<'maxSize'> },
): RecordedSettings {
  const source = (name: keyof ResolvedConfig['sources']): RecordedSource => {
    if (name === 'maxSize' && details.demoDefaults.has('maxSize')) return 'demo';
    const given = config.sources[name];
    return given === 'serve' ? 'default' : given;
  };
  const setting = <T>(name: keyof ResolvedConfig['sources'], value: T): RecordedSetting<T> => ({ value, source: source(name) });
  return {
    writtenBy: 'image-cache serve',
    version: 1,
    pid: process.pid,
    hostname: hostname(),
    startedAt: new Date().toISOString(),
    url: details.url,
    settings: {
      driver: setting('driver', config.driver),
      maxSize: setting('maxSize', config.maxSize),
      stallTime: setting('stallTime', config.stallTime),
      host: setting('host', config.host),
      port: { value: details.port, source: source('port') },
      origin: { value: details.origin === undefined ? null : redactUrl(details.origin), source: config.origin === undefined && details.origin !== undefined ? 'demo' : source('origin') },
      token: setting('token', config.token !== undefined),
      metricsToken: setting('metricsToken', config.metricsToken !== undefined),
      insecureOpenManagementApi: setting('insecureOpenManagementApi', config.insecureOpenManagementApi),
      pruneInterval: setting('pruneInterval', config.pruneInterval),
      cleanInterval: setting('cleanInterval', config.cleanInterval),
      prefetchInterval: setting('prefetchInterval', config.prefetchInterval),
      concurrency: setting('concurrency', config.concurrency),
      shutdownTimeout: setting('shutdownTimeout', config.shutdownTimeout),
      readinessWindow: setting('readinessWindow', config.readinessWindow),
      allowUnverified: setting('allowUnverified', config.allowUnverified),
      freeSpace:
        config.freeRun !== undefined && config.freeCull !== undefined && config.freeStop !== undefined
          ? setting('freeRun', { run: config.freeRun, cull: config.freeCull, stop: config.freeStop })
          : { value: null, source: 'default' },
      writeBudget: { value: true, source: 'default' },
      durability: setting('durability', config.durability),
      workers: setting('workers', config.workers),
      originTimeouts: setting('originHeadersTimeout', {
        headers: config.originHeadersTimeout,
        idle: config.originIdleTimeout,
        total: config.originTotalTimeout ?? null,
        retries: config.originRetries,
        retryDelay: config.originRetryDelay,
      }),
      originHeaderNames: setting('originHeaders', [...Object.keys(config.originHeaders), ...(config.originToken === undefined ? [] : ['X-Auth-Token'])]),
      cluster:
        config.driver === 'postgres'
          ? setting('advertiseUrl', {
              advertiseUrl: config.advertiseUrl === undefined ? null : redactUrl(config.advertiseUrl),
              heartbeatInterval: config.heartbeatInterval,
              heartbeatExpiry: config.heartbeatExpiry,
              peerTimeout: config.peerTimeout,
            })
          : { value: null, source: 'default' },
    },
    configFile: config.configFile ?? null,
  };
}


/** Writes {@link SETTINGS_FILE} in `cacheDir` atomically (a dot-named temp file, then a rename). */
export async function writeRecordedSettings(cacheDir: string, record: RecordedSettings): Promise<string> {
  const path = join(cacheDir, SETTINGS_FILE);
  const temp = join(cacheDir, `${SETTINGS_FILE}.${process.pid}.tmp`);
  try {
    await writeFile(temp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o644 });
    await rename(temp, path);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw error;
  }
  return path;
}

/** Reads {@link SETTINGS_FILE} from `cacheDir`; `undefined` when there is none or it is not one `serve` wrote. */
export async function readRecordedSettings(cacheDir: string): Promise<RecordedServer | undefined> {
  if (cacheDir === '') return undefined;
  const path = join(cacheDir, SETTINGS_FILE);
  let record: RecordedSettings;
  try {
    record = JSON.parse(await readFile(path, 'utf8')) as RecordedSettings;
  } catch {
    return undefined; // missing, unreadable, or being replaced: as if there were none
  }
  if (!isRecord(record)) return undefined;
  return { path, record, running: record.hostname === hostname() ? isAlive(record.pid) : undefined };
}

function isRecord(value: unknown): value is RecordedSettings {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Partial<RecordedSettings>;
  const settings = record.settings;
  return (
    record.writtenBy === 'image-cache serve' &&
    record.version === 1 &&
    typeof record.pid === 'number' &&
    typeof settings === 'object' &&
    settings !== null &&
    (DRIVERS as readonly unknown[]).includes(settings.driver?.value) &&
    Number.isSafeInteger(settings.maxSize?.value) &&
    (settings.maxSize?.value ?? -1) >= 0 &&
    typeof settings.stallTime?.value === 'number' &&
    settings.stallTime.value >= 0
  );
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // alive, someone else's
  }
}

/** The settings a recorded server supplies to other commands when they are not given: the ones that decide how a cache is opened, pruned and cleaned. */
export const RECORDED_FALLBACKS = ['driver', 'maxSize', 'stallTime'] as const;

/**
 * Fills in, from the settings `image-cache serve` recorded in the cache
 * directory, the {@link RECORDED_FALLBACKS} that were left at their defaults
 * (source `serve`), so that `stats`, `prune` or `clean` on a served directory
 * use the budget and driver the server runs with. Flags, environment and
 * config file still win. Sets `config.recorded`.
 */
export async function applyRecordedSettings(config: ResolvedConfig): Promise<void> {
  const recorded = await readRecordedSettings(config.cacheDir);
  if (recorded === undefined) return;
  config.recorded = recorded;
  const { settings } = recorded.record;
  if (config.sources.driver === 'default' && settings.driver.value !== config.driver) {
    config.driver = settings.driver.value;
    config.sources.driver = 'serve';
  }
  if (config.sources.maxSize === 'default') {
    config.maxSize = settings.maxSize.value;
    config.sources.maxSize = 'serve';
  }
  if (config.sources.stallTime === 'default') {
    config.stallTime = settings.stallTime.value;
    config.sources.stallTime = 'serve';
  }
}

/** Flag, variable and config-file key of each setting that {@link describeSource} names. */
const NAMES: Record<'driver' | 'maxSize' | 'stallTime', { flag: string; env: string }> = {
  driver: { flag: '--driver', env: 'IMAGE_CACHE_DRIVER' },
  maxSize: { flag: '--max-size', env: 'IMAGE_CACHE_MAX_SIZE' },
  stallTime: { flag: '--stall-time', env: 'IMAGE_CACHE_STALL_TIME' },
};

/** Where a setting in use came from, for people: `--max-size`, `IMAGE_CACHE_MAX_SIZE`, `the config file <path>`, `image-cache serve (pid 12, running; <file>)`, `the default`. */
export function describeSource(config: ResolvedConfig, name: 'driver' | 'maxSize' | 'stallTime'): string {
  switch (config.sources[name]) {
    case 'flag':
      return NAMES[name].flag;
    case 'env':
      return NAMES[name].env;
    case 'file':
      return `the config file ${config.configFile ?? ''}`;
    case 'serve':
      return config.recorded === undefined ? 'image-cache serve' : `image-cache serve, as recorded in ${config.recorded.path}`;
    default:
      return 'the default';
  }
}

/** How a recorded server is described: `pid 1234 on http://127.0.0.1:8080, started 2026-01-02T03:04:05Z (running)`. */
export function describeServer(recorded: RecordedServer): string {
  const { record, running } = recorded;
  const state = running === undefined ? `on host ${record.hostname}` : running ? 'running' : 'not running';
  return `pid ${record.pid} on ${record.url}, started ${record.startedAt.replace(/\.\d{3}Z$/, 'Z')} (${state})`;
}
