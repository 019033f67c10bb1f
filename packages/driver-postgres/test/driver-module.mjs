// The driver as other processes load it: the conformance kit imports this
// module in child processes (plain node, so the built output). The test sets
// CACHE_CONFORMANCE_PG_URL before the kit starts them.
import { PostgresDriver } from '../dist/index.js';

/** @param {string} cacheDir */
export function createDriver(cacheDir) {
  const connectionString = process.env.CACHE_CONFORMANCE_PG_URL;
  if (!connectionString) throw new Error('CACHE_CONFORMANCE_PG_URL is not set');
  return new PostgresDriver({ cacheDir, connectionString });
}
