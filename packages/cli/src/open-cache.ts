import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageCache, SUBDIRECTORIES, type CacheDriver, type CacheWarning, type ImageId } from '@cache/core';
import type { ResolvedConfig } from './config.js';
import { CliErrorCodes, operationalError } from './errors.js';

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
  config: Pick<ResolvedConfig, 'driver' | 'cacheDir' | 'maxSize' | 'stallTime'> & Partial<Pick<ResolvedConfig, 'databaseUrl' | 'nodeId'>>,
  options: OpenCacheOptions = {},
): Promise<ImageCache> {
  if (options.mustExist === true) await assertCacheDirectory(config.cacheDir);
  const driver = await createDriver(config, options.onWarning);
  try {
    return await ImageCache.open({ driver, maxSize: config.maxSize, stallTime: config.stallTime });
  } catch (error) {
    await driver.close().catch(() => undefined);
    throw error;
  }
}

async function createDriver(
  config: Pick<ResolvedConfig, 'driver' | 'cacheDir'> & Partial<Pick<ResolvedConfig, 'databaseUrl' | 'nodeId'>>,
  onWarning: ((warning: CacheWarning) => void) | undefined,
): Promise<CacheDriver> {
  const options = { cacheDir: config.cacheDir, ...(onWarning === undefined ? {} : { onWarning }) };
  switch (config.driver) {
    case 'sqlite': {
      const { SqliteDriver } = await import('@cache/driver-sqlite');
      return new SqliteDriver(options);
    }
    case 'xattr': {
      const { XattrDriver } = await import('@cache/driver-xattr');
      return new XattrDriver(options);
    }
    case 'postgres': {
      const { PostgresDriver } = await import('@cache/driver-postgres');
      return new PostgresDriver({
        ...options,
        ...(config.databaseUrl === undefined ? {} : { connectionString: config.databaseUrl }),
        ...(config.nodeId === undefined ? {} : { nodeId: config.nodeId }),
      });
    }
  }
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

/**
 * The verified digest stored with an entry at commit (`sha256:<hex>` or md5
 * hex), `undefined` when the entry was cached without one, or `null` when the
 * driver cannot tell at all.
 */
export async function readStoredChecksum(cache: ImageCache, id: ImageId): Promise<string | undefined | null> {
  const driver = cache.driver;
  if (driver.getStoredChecksum === undefined) return null;
  return driver.getStoredChecksum(id);
}
