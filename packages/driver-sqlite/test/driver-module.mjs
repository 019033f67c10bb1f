// The driver as other processes load it: the conformance kit imports this
// module in child processes (plain node, so the built output).
import { SqliteDriver } from '../dist/index.js';

/** @param {string} cacheDir */
export function createDriver(cacheDir) {
  return new SqliteDriver({ cacheDir });
}
