import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageCache, SUBDIRECTORIES, type CacheDriver, type CacheWarning, type ImageCacheOptions } from '@cache/core';
import type { PostgresConnectionEvent } from '@cache/driver-postgres';
import type { DriverName, ResolvedConfig } from './config.js';
import { CliError, CliErrorCodes, codeOf, ExitCode, operationalError } from './errors.js';

/** Options of {@link openCacheFromConfig}. */
export interface OpenCacheOptions {
  /**
   * Refuse, before creating anything, a cache directory that does not exist yet
   * or lacks `incomplete/`, `invalid/` and `queue/` (`CLI_NOT_A_CACHE_DIR`,
   * exit code 1). Guards read and delete commands against a mistyped path.
   * @default false
   */
  mustExist?: boolean;
  /** Receives the driver's non-fatal warnings. @default process.emitWarning */
  onWarning?: (warning: CacheWarning) => void;
  /**
   * postgres driver: open even while the database is unreachable, serving
   * the local files and reconnecting in the background (the driver's
   * `startWhileUnavailable`); each attempt is reported here. For `serve`.
   */
  onPostgresConnection?: (event: PostgresConnectionEvent) => void;
  /** The space policy (`serve`): the budget on the write path and free-space thresholds (see `ImageCacheSpaceOptions`). @default none */
  space?: Pick<ImageCacheOptions, 'writeBudget' | 'headroom' | 'freeSpace'>;
}

/**
 * Opens the cache a {@link ResolvedConfig} describes: builds the driver it
 * names (loading only that driver's package), configures it and wraps it in an
 * `ImageCache` with the configured budget and stall time. There is no
 * fallback to another driver: a driver that cannot work on the directory
 * rejects with `BadDriverConfigurationError`. Close the cache when done.
 *
 * @example
 * ```ts
 * const cache = await openCacheFromConfig(await resolveConfig({ flags: { cacheDir } }));
 * try { console.log(await cache.getCacheSize()); } finally { await cache.close(); }
 * ```
 */
export async function openCacheFromConfig(
  config: Pick<ResolvedConfig, 'driver' | 'cacheDir' | 'maxSize' | 'stallTime'> & Partial<Pick<ResolvedConfig, 'databaseUrl' | 'nodeId' | 'heartbeatExpiry' | 'durability'>>,
  options: OpenCacheOptions = {},
): Promise<ImageCache> {
  if (options.mustExist === true) await assertCacheDirectory(config.cacheDir);
  const driver = await createDriver(config, options.onWarning, options.onPostgresConnection);
  try {
    return await ImageCache.open({ driver, maxSize: config.maxSize, stallTime: config.stallTime, ...options.space });
  } catch (error) {
    await driver.close().catch(() => undefined);
    throw error;
  }
}

async function createDriver(
  config: Pick<ResolvedConfig, 'driver' | 'cacheDir'> & Partial<Pick<ResolvedConfig, 'databaseUrl' | 'nodeId' | 'heartbeatExpiry' | 'durability'>>,
  onWarning: ((warning: CacheWarning) => void) | undefined,
  onConnection: ((event: PostgresConnectionEvent) => void) | undefined,
): Promise<CacheDriver> {
  const options = {
    cacheDir: config.cacheDir,
    ...(onWarning === undefined ? {} : { onWarning }),
    ...(config.durability === undefined ? {} : { durability: config.durability }),
  };
  switch (config.driver) {
    case 'sqlite': {
      const { SqliteDriver } = await loadDriver('sqlite', () => import('@cache/driver-sqlite'));
      return new SqliteDriver(options);
    }
    case 'xattr': {
      const { XattrDriver } = await loadDriver('xattr', () => import('@cache/driver-xattr'));
      return new XattrDriver(options);
    }
    case 'postgres': {
      const { PostgresDriver } = await loadDriver('postgres', () => import('@cache/driver-postgres'));
      return new PostgresDriver({
        ...options,
        ...(config.databaseUrl === undefined ? {} : { connectionString: config.databaseUrl }),
        ...(config.nodeId === undefined ? {} : { nodeId: config.nodeId }),
        ...(config.heartbeatExpiry === undefined ? {} : { heartbeatExpiryMillis: Math.max(1, Math.round(config.heartbeatExpiry * 1000)) }),
        ...(onConnection === undefined ? {} : { startWhileUnavailable: true, onConnection }),
      });
    }
  }
}

/**
 * The npm package of each driver. They are optional dependencies of
 * `@cache/cli`: each is imported only when the configured driver needs it, so
 * an install without one (`npm install --omit=optional`, or a native addon
 * that did not build) still runs every other driver.
 */
export const DRIVER_PACKAGES = {
  sqlite: '@cache/driver-sqlite',
  xattr: '@cache/driver-xattr',
  postgres: '@cache/driver-postgres',
} as const satisfies Record<DriverName, string>;

/**
 * Imports a driver's package with `load`, turning a failure into one line:
 * `CLI_DRIVER_MISSING` when the package itself is not installed,
 * `CLI_DRIVER_LOAD_FAILED` when it is but it (or one of its own dependencies,
 * such as a native addon) does not load. Both exit with code 2: nothing was done.
 */
async function loadDriver<T>(driver: DriverName, load: () => Promise<T>): Promise<T> {
  const packageName = DRIVER_PACKAGES[driver];
  try {
    return await load();
  } catch (error) {
    if (isPackageNotFound(error, packageName)) {
      throw new CliError(CliErrorCodes.DRIVER_MISSING, `the ${driver} driver is not installed: npm install ${packageName}`, {
        exitCode: ExitCode.USAGE,
        cause: error,
      });
    }
    const reason = (error instanceof Error ? error.message : String(error)).split('\n')[0];
    throw new CliError(
      CliErrorCodes.DRIVER_LOAD_FAILED,
      `the ${driver} driver is installed but could not be loaded (${reason}): reinstall it with npm install ${packageName}`,
      { exitCode: ExitCode.USAGE, cause: error },
    );
  }
}

/**
 * Whether `error` is Node's "Cannot find package '<name>' imported from ..."
 * for `packageName` itself (not for a dependency of it, whose path may contain
 * the name unquoted).
 */
function isPackageNotFound(error: unknown, packageName: string): boolean {
  return codeOf(error) === 'ERR_MODULE_NOT_FOUND' && error instanceof Error && error.message.includes(`'${packageName}'`);
}

/** Throws `CLI_NOT_A_CACHE_DIR` unless `dir` exists with the cache's three sub-directories. */
export async function assertCacheDirectory(dir: string): Promise<void> {
  for (const sub of ['', ...SUBDIRECTORIES]) {
    const path = join(dir, sub);
    const info = await stat(path).catch(() => undefined);
    if (info?.isDirectory() !== true) {
      const problem = sub === '' ? (info === undefined ? 'does not exist' : 'is not a directory') : `has no ${sub}/ directory`;
      throw operationalError(
        CliErrorCodes.NOT_A_CACHE_DIR,
        `${dir} ${problem}, so it is not an image cache directory; check --cache-dir (\`image-cache queue\` or \`prefetch\` create one)`,
      );
    }
  }
}
