import { basename, join, resolve } from 'node:path';

/**
 * Test settings every package shares: the default console reporter plus a JSON
 * report in `<repo>/test-results/<package>.json`, which `scripts/test.mjs`
 * adds up into the closing `N passed, N failed, N skipped` line.
 */
export function sharedTestConfig(packageDir: string) {
  const resultsDir = process.env.TEST_RESULTS_DIR ?? resolve(import.meta.dirname, 'test-results');
  return {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', 'json'],
    outputFile: { json: join(resultsDir, `${basename(packageDir)}.json`) },
  };
}
