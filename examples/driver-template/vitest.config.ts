import { defineConfig } from 'vitest/config';

// The kit's cases touch real files, spawn child processes and probe filesystems: give them time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
