import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject, it } from 'vitest';
import { attachTestPostgres, type TestPostgres } from '@cache/postgres-testing';
import type { PgSetup } from './global-setup.js';

/** The server the global setup started, or why there is none. */
export const pgSetup: PgSetup = inject('pg');

/** The global setup's cluster, attached in this test file's process (undefined without a server). */
export const testPostgres: TestPostgres | undefined = pgSetup.available ? attachTestPostgres(pgSetup.handle) : undefined;

/** Why the PostgreSQL tests are skipped, or undefined when they run. */
export const skipReason: string | undefined = pgSetup.available ? undefined : pgSetup.reason;

/**
 * `it`, or, without a PostgreSQL server, a skipped test whose title ends with
 * `[skipped: <reason>]` (where the repository's test summary looks for reasons).
 */
export function pgIt(name: string, fn: () => Promise<void> | void, timeout?: number): void {
  if (skipReason === undefined) it(name, fn, timeout);
  else it.skip(`${name} [skipped: ${skipReason}]`, () => undefined);
}

/**
 * Creates a fresh database named `<prefix>_<random>` on the given server
 * (default: the shared one) and returns its connection string. Each test
 * file uses its own database, so files running in parallel never see each
 * other's rows.
 */
export async function createDatabase(prefix: string, server: Pick<TestPostgres, 'createDatabase'> | undefined = testPostgres): Promise<string> {
  if (server === undefined) throw new Error(`no PostgreSQL: ${skipReason ?? 'no server'}`);
  return server.createDatabase(`${prefix.replace(/[^a-z0-9_]/gi, '_').toLowerCase()}_${randomBytes(4).toString('hex')}`);
}

/** Runs SQL on a database with a short-lived client (for assertions on the raw tables). */
export async function sql<R extends pg.QueryResultRow = pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(text, values)).rows;
  } finally {
    await client.end();
  }
}

/** A fresh directory on the OS temp filesystem; removed by the returned cleanup. */
export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** The built entry point the child processes import. */
export const DIST = join(import.meta.dirname, '..', 'dist', 'index.js');
const WORKER = join(import.meta.dirname, 'fixtures', 'node-worker.mjs');

/** One step of a child-process script (see fixtures/node-worker.mjs). */
export type WorkerStep =
  | { op: 'cache'; ids: string[]; size?: number }
  | { op: 'read'; id: string; times?: number }
  | { op: 'list' }
  | { op: 'prune'; maxSize: number }
  | { op: 'delete'; id: string }
  | { op: 'deleteAll' }
  | { op: 'nodes'; id: string }
  | { op: 'cluster' }
  | { op: 'clean' };

/** Runs steps in a separate Node process against the built dist; resolves with each step's result. */
export function runWorker(options: { cacheDir: string; connectionString: string; nodeId?: string; steps: WorkerStep[] }): Promise<unknown[]> {
  if (!existsSync(DIST)) {
    return Promise.reject(new Error(`${DIST} is missing: build the package first (pnpm turbo run build --filter=@cache/driver-postgres...)`));
  }
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [WORKER, JSON.stringify(options)], { timeout: 60_000, maxBuffer: 16 * 2 ** 20 }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`worker failed: ${error.message}\n${stderr}`));
        return;
      }
      try {
        resolve(JSON.parse(stdout) as unknown[]);
      } catch {
        reject(new Error(`worker printed no JSON: ${stdout}\n${stderr}`));
      }
    });
  });
}

/** A TCP proxy in front of a server that can be switched to swallow all traffic (a silent network partition). */
export interface BlackholeProxy {
  port: number;
  /** From now on nothing passes in either direction, and new connections are accepted but never answered. */
  blackhole(): void;
  close(): Promise<void>;
}

/** Starts a {@link BlackholeProxy} on a free loopback port, forwarding to `127.0.0.1:targetPort`. */
export async function startProxy(targetPort: number): Promise<BlackholeProxy> {
  const { createServer, connect } = await import('node:net');
  const sockets = new Set<import('node:net').Socket>();
  let holed = false;
  const swallow = () => undefined;
  const server = createServer((client) => {
    sockets.add(client);
    client.on('error', swallow);
    if (holed) {
      client.on('data', swallow);
      return;
    }
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(upstream);
    upstream.on('error', swallow);
    client.on('data', (chunk) => {
      if (!holed) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!holed) client.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('proxy has no port');
  return {
    port: address.port,
    blackhole() {
      holed = true;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
