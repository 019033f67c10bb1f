// A real throwaway server: started, queried with `pg`, a second server from the
// same template stopped crash-like and restarted, an attached copy from the
// JSON handle, and everything removed by stop(). Skipped, with the reason,
// when no PostgreSQL server can be found, installed or started here.
import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import {
  attachTestPostgres,
  DEFAULT_TEST_SETTINGS,
  startTestPostgres,
  TestPostgresUnavailableError,
  type TestPostgres,
} from '../src/index.js';

let postgres: TestPostgres | undefined;
let unavailable: string | undefined;
try {
  postgres = await startTestPostgres();
} catch (error) {
  if (!(error instanceof TestPostgresUnavailableError)) throw error;
  unavailable = error.reason;
}
afterAll(() => postgres?.stop());

/** `it`, or without a server a skipped test whose title ends with `[skipped: <reason>]`. */
function pgIt(name: string, fn: (postgres: TestPostgres) => Promise<void>): void {
  if (postgres === undefined) it.skip(`${name} [skipped: ${unavailable}]`, () => undefined);
  else {
    const server = postgres;
    it(name, () => fn(server));
  }
}

describe('startTestPostgres', () => {
  pgIt('starts a server on 127.0.0.1 that pg can query (SELECT 1), with the test settings', async (postgres) => {
    const client = new pg.Client({ connectionString: postgres.connectionString() });
    await client.connect();
    try {
      expect((await client.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect((await client.query<{ fsync: string }>('SHOW fsync')).rows[0]?.fsync).toBe(DEFAULT_TEST_SETTINGS['fsync']);
    } finally {
      await client.end();
    }
    expect(postgres.connectionString()).toBe(`postgresql://postgres@127.0.0.1:${postgres.port}/postgres`);
    expect(postgres.version).toMatch(/^\d+(\.\d+)*$/);
    expect(postgres.server.postmasterPid()).toBeGreaterThan(0);
  });

  pgIt('createDatabase / query / connect / dropDatabase', async (postgres) => {
    const url = await postgres.createDatabase('testing_selftest');
    expect(url).toBe(postgres.connectionString('testing_selftest'));
    await postgres.query('CREATE TABLE t (n int)', [], 'testing_selftest');
    const client = await postgres.connect('testing_selftest');
    try {
      expect((await client.query('INSERT INTO t VALUES ($1), ($2)', [1, 2])).rowCount).toBe(2);
      expect((await client.query<{ sum: string }>('SELECT sum(n) FROM t')).rows).toEqual([{ sum: '3' }]);
    } finally {
      await client.end();
    }
    await expect(postgres.createDatabase('testing_selftest')).rejects.toThrow(/already exists/);
    await postgres.dropDatabase('testing_selftest');
    expect(await postgres.query('SELECT 1 FROM pg_database WHERE datname = $1', ['testing_selftest'])).toEqual([]);
  });

  pgIt('another server from the template keeps its data across an immediate stop and a start on the same port', async (postgres) => {
    const other = await postgres.startServer('selftest-outage');
    expect(other.port).not.toBe(postgres.port);
    await other.query('CREATE TABLE kept (v text)');
    await other.query("INSERT INTO kept VALUES ('committed')");
    await other.stop({ mode: 'immediate' });
    expect(other.postmasterPid()).toBeUndefined();
    await expect(other.query('SELECT 1')).rejects.toThrow();
    await other.start();
    expect(await other.query('SELECT v FROM kept')).toEqual([{ v: 'committed' }]);
    // The first server never saw the other's table.
    expect(await postgres.query("SELECT 1 FROM pg_tables WHERE tablename = 'kept'")).toEqual([]);
  });

  pgIt('attachTestPostgres(handle) reaches the same server; its stop() leaves the owner running', async (postgres) => {
    const handle = JSON.parse(JSON.stringify(postgres.handle)) as typeof postgres.handle;
    const attached = attachTestPostgres(handle);
    expect(attached.owner).toBe(false);
    expect(await attached.query<{ port: string }>('SHOW port')).toEqual([{ port: String(postgres.port) }]);
    await attached.stop();
    expect(await postgres.query('SELECT 1 AS one')).toEqual([{ one: 1 }]);
  });

  pgIt('stop() of the owner stops every server and removes the directory', async () => {
    const own = await startTestPostgres();
    const extra = await own.startServer();
    expect(own.server.postmasterPid()).toBeGreaterThan(0);
    expect(extra.postmasterPid()).toBeGreaterThan(0);
    await own.stop();
    expect(existsSync(own.root)).toBe(false);
    // pg_ctl stop -w returned: neither server accepts connections any more.
    await expect(own.query('SELECT 1')).rejects.toThrow(/ECONNREFUSED/);
    await expect(extra.query('SELECT 1')).rejects.toThrow(/ECONNREFUSED/);
  });
});

describe('TestPostgresUnavailableError', () => {
  it('carries the reason', () => {
    const error = new TestPostgresUnavailableError('no binaries');
    expect(error.reason).toBe('no binaries');
    expect(error.message).toBe('no throwaway PostgreSQL server: no binaries');
    expect(error).toBeInstanceOf(Error);
  });
});
