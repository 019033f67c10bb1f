import { describeDriverConformance } from '@cache/conformance';
import { SqliteDriver } from '../src/index.js';

describeDriverConformance({
  name: 'sqlite',
  create: (cacheDir) => new SqliteDriver({ cacheDir }),
  driverModule: new URL('./driver-module.mjs', import.meta.url),
});
