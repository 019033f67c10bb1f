import { describeDriverConformance } from '@cache/conformance';
import { XattrDriver } from '../src/index.js';

describeDriverConformance({
  name: 'xattr',
  create: (cacheDir) => new XattrDriver({ cacheDir }),
  driverModule: new URL('./driver-module.mjs', import.meta.url),
});
