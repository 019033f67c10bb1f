// The whole conformance kit against TemplateDriver, on every test filesystem
// (CACHE_TEST_FILESYSTEMS, or the OS temp dir). `create` runs in this process
// (vitest loads the TypeScript source); `driverModule` is what the kit's child
// processes import to get a driver of their own (several processes on one
// directory, a process killed mid-write): plain node loads it, so it is the
// built JavaScript. Run `npm run build` before `npm test`.
import { describeDriverConformance } from '@cache/conformance';
import { TemplateDriver } from '../src/index.js';

describeDriverConformance({
  name: 'template',
  create: (cacheDir) => new TemplateDriver({ cacheDir }),
  driverModule: new URL('../dist/driver-module.js', import.meta.url),
});
