/**
 * vitest globalSetup: one throwaway PostgreSQL server for the whole run
 * (`@cache/postgres-testing`; each test file creates its own database
 * on it), stopped and removed afterwards, also when the run fails or is
 * interrupted. When no server can be found or started, test files get the
 * reason and register their tests as skipped.
 */
import type { TestProject } from 'vitest/node';
import { startTestPostgres, TestPostgresUnavailableError, type TestPostgres, type TestPostgresHandle } from '@cache/postgres-testing';

/** What test files get through `inject('pg')`. */
export type PgSetup = { available: true; handle: TestPostgresHandle } | { available: false; reason: string };

declare module 'vitest' {
  export interface ProvidedContext {
    pg: PgSetup;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let server: TestPostgres;
  try {
    server = await startTestPostgres();
  } catch (error) {
    if (!(error instanceof TestPostgresUnavailableError)) throw error;
    project.provide('pg', { available: false, reason: error.reason });
    return async () => undefined;
  }
  project.provide('pg', { available: true, handle: server.handle });
  return () => server.stop();
}
