import { defineConfig } from 'vitest/config';
import { sharedTestConfig } from '../../vitest.shared.js';

export default defineConfig({
  test: {
    ...sharedTestConfig(import.meta.dirname),
    // curl, wget and aria2c for test/real-clients.test.ts (scripts/test-tools.sh).
    globalSetup: ['test/global-setup.ts'],
  },
});
