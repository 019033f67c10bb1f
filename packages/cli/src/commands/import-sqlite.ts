import { isAbsolute, join } from 'node:path';
import type { Command } from 'commander';
import type { PostgresDriver } from '@cache/driver-postgres';
import { CliErrorCodes, usageError } from '../errors.js';
import type { RegisterCommand } from './types.js';

interface ImportOptions {
  db?: string;
  json?: boolean;
}

/**
 * `image-cache --driver postgres import-sqlite [--db cache.db]`: the one-shot
 * migration of a node from the sqlite driver (ours or Glance's `cache.db`) to
 * the central PostgreSQL tables, for the entries whose files are in the cache
 * directory. Idempotent: run it again and nothing is counted twice.
 */
export const registerImportSqlite: RegisterCommand = (program, ctx) => {
  program
    .command('import-sqlite')
    .description("postgres driver: import this node's sqlite cache.db (ours or Glance's) into the central tables; idempotent")
    .option('--db <file>', 'the sqlite database to read (default: <cache dir>/cache.db); it is only read')
    .option('--json', 'print the report as JSON')
    .action(async (options: ImportOptions, command: Command) => {
      const config = await ctx.config(command);
      if (config.driver !== 'postgres') {
        throw usageError(CliErrorCodes.USAGE, `import-sqlite moves a cache to the postgres driver: pass --driver postgres (the configured driver is ${config.driver})`);
      }
      const dbPath = options.db === undefined ? join(config.cacheDir, 'cache.db') : isAbsolute(options.db) ? options.db : join(ctx.io.cwd, options.db);
      await ctx.withCache(command, { mustExist: true, config }, async (cache) => {
        const report = await (cache.driver as PostgresDriver).importFromSqlite(dbPath);
        if (options.json === true) ctx.json(report);
        else {
          ctx.out(`import-sqlite: ${report.imported} of ${report.rows} row(s) of ${report.dbPath} imported`);
          if (report.missingFile.length > 0) ctx.out(`  skipped, file not in the cache: ${report.missingFile.join(', ')}`);
          if (report.invalidId.length > 0) ctx.out(`  skipped, not a valid image id: ${report.invalidId.join(', ')}`);
        }
      });
    });
};

