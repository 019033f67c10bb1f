import { defineConfig } from 'vitest/config';
import { sharedTestConfig } from '../../vitest.shared.js';

// test/global-setup.ts starts a throwaway PostgreSQL server for the run (and stops it afterwards).
export default defineConfig({ test: { ...sharedTestConfig(import.meta.dirname), globalSetup: ['test/global-setup.ts'] } });
