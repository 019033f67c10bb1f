import { defineConfig } from 'vitest/config';
import { sharedTestConfig } from '../../vitest.shared.js';

// test/global-setup.ts installs Glance's own cache code (python3-glance) once per run, for the interop tests.
export default defineConfig({ test: { ...sharedTestConfig(import.meta.dirname), globalSetup: ['test/global-setup.ts'] } });
