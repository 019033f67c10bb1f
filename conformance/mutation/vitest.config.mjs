// Vitest config of one mutation-suite run (see run.mjs): the journal driver's
// conformance file only, no shared JSON report (run.mjs passes its own
// --reporter/--outputFile), nothing written into $TEST_RESULTS_DIR.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('..', import.meta.url)),
    include: ['mutation/journal.conformance.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // One file: a single worker is all it needs, and two runs share the machine's 2 cores.
    maxWorkers: 1,
  },
});
