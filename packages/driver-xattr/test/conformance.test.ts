import { describeDriverConformance } from '@cache/conformance';
import { XattrDriver } from '../src/index.js';

describeDriverConformance({
  name: 'xattr',
  create: (cacheDir) => new XattrDriver({ cacheDir }),
  requires: { xattr: true, atime: false },
});
