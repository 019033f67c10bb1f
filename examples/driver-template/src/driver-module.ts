/**
 * The module the conformance kit's child processes import (`driverModule` in
 * test/conformance.test.ts): plain `node` loads the built `dist/driver-module.js`
 * and calls `createDriver(cacheDir)` to get a driver of its own. Return it
 * unconfigured; the kit calls `configure()` and `close()`.
 */
import { TemplateDriver } from './index.js';

export function createDriver(cacheDir: string): TemplateDriver {
  return new TemplateDriver({ cacheDir });
}
