import { describeDriverConformance } from '@cache/conformance';
import { SqliteDriver } from '../src/index.js';

describeDriverConformance({
  name: 'sqlite',
  create: (cacheDir) => new SqliteDriver({ cacheDir }),
  requires: { xattr: false, atime: false },
});
