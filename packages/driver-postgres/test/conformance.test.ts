import { it } from 'vitest';
import { describeDriverConformance } from '@cache/conformance';
import { PostgresDriver } from '../src/index.js';
import { createDatabase, skipReason } from './helpers.js';

// One database for the whole kit; every case gets a fresh cache directory and,
// through the default node identity (host + cache directory), its own node rows.
if (skipReason === undefined) {
  const connectionString = await createDatabase('conformance');
  process.env.CACHE_CONFORMANCE_PG_URL = connectionString; // for the kit's child processes (driver-module.mjs)
  describeDriverConformance({
    name: 'postgres',
    create: (cacheDir) => new PostgresDriver({ cacheDir, connectionString }),
    driverModule: new URL('./driver-module.mjs', import.meta.url),
  });
} else {
  it.skip(`postgres driver conformance [skipped: ${skipReason}]`, () => undefined);
}
