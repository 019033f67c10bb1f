/**
 * vitest globalSetup: makes Glance's code runnable once per run
 * ({@link ensureGlance}: installs python3-glance as root with apt-get, a no-op
 * when it is there) and hands the outcome to the test files as
 * `inject('glance')`. Use it from a package's vitest config:
 * `globalSetup: ['@cache/glance-testing/global-setup']`.
 */
import type { TestProject } from 'vitest/node';
import { ensureGlance } from './index.js';

export default async function setup(project: TestProject): Promise<void> {
  project.provide('glance', await ensureGlance());
}
