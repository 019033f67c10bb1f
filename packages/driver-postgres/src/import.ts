import { PostgresDriver, type PostgresDriverOptions } from './postgres-driver.js';
import type { SqliteImportReport } from './sqlite-import.js';

/** Options of {@link importSqliteCache}. */
export interface ImportSqliteCacheOptions extends PostgresDriverOptions {
  /**
   * The sqlite cache database to read; a relative path resolves against `cacheDir`.
   * @default `cache.db`
   */
  dbPath?: string;
}

/**
 * One-shot migration of a node from the sqlite driver (ours or Glance's) to
 * the central database: configures a {@link PostgresDriver} for the node
 * (running the schema migrations and registering the node), upserts every row
 * of the sqlite `cached_images` table whose file exists in `cacheDir`, and
 * closes the driver. Idempotent: a second run changes nothing (hit counts and
 * times merge by maximum). The sqlite file is only read; delete it yourself
 * once every node runs on PostgreSQL.
 *
 * @example
 * ```ts
 * const report = await importSqliteCache({ cacheDir: '/var/cache/images', connectionString: process.env.DATABASE_URL });
 * console.log(`${report.imported} of ${report.rows} rows imported; no file for ${report.missingFile.length}`);
 * ```
 */
export async function importSqliteCache(options: ImportSqliteCacheOptions): Promise<SqliteImportReport> {
  const driver = new PostgresDriver(options);
  await driver.configure();
  try {
    return await driver.importFromSqlite(options.dbPath);
  } finally {
    await driver.close();
  }
}
