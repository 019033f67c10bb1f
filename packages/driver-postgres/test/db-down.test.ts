import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, vi } from 'vitest';
import { CacheError, ErrorCodes, type CacheWarning } from '@cache/core';
import { readImage, writeImage } from '@cache/conformance';
import { PostgresDriver } from '../src/index.js';
import type { TestPostgresServer } from '@cache/postgres-testing';
import { createDatabase, pgIt, skipReason, sql, tempDir, testPostgres } from './helpers.js';

// This file stops and restarts its database server, so it runs its own
// server (a copy of the template cluster) and never touches the shared one.

let server: TestPostgresServer | undefined;
let url: string;

beforeAll(async () => {
  if (testPostgres === undefined) return;
  server = await testPostgres.startServer(`down-${randomBytes(3).toString('hex')}`);
  url = await createDatabase('down', server);
}, 120_000);

afterAll(async () => {
  if (server !== undefined) await server.stop({ mode: 'immediate' }).catch(() => undefined);
  await testPostgres?.stop();
});

async function stop(): Promise<void> {
  if (server === undefined) throw new Error('no server');
  await server.stop({ mode: 'immediate' });
}

async function start(): Promise<void> {
  if (server === undefined) throw new Error('no server');
  await server.start();
}

const activeFiles = async (dir: string) =>
  (await readdir(dir, { withFileTypes: true })).filter((d) => d.isFile()).map((d) => d.name).sort();

function expectStorageError(error: unknown, context: string): void {
  expect(CacheError.isCacheError(error), `${context}: ${String(error)}`).toBe(true);
  expect((error as CacheError).code, context).toBe(ErrorCodes.STORAGE);
}

describe('the database goes down (pg_ctl stop -m immediate) and comes back', () => {
  pgIt('mid-operation: every failure is a typed error, cached reads keep working, hits are dropped with a warning; after the restart clean() makes everything consistent', async () => {
    const { dir, cleanup } = await tempDir('pg-down');
    const warnings: CacheWarning[] = [];
    const d = new PostgresDriver({
      cacheDir: dir,
      connectionString: url,
      connectionTimeoutMillis: 1000,
      statementTimeoutMillis: 2000,
      unavailableBackoffMillis: 300,
      onWarning: (w) => warnings.push(w),
    });
    try {
      await d.configure();
      for (const id of ['a', 'b', 'c']) await writeImage(d, id, Buffer.alloc(1000, id));
      await readImage(d, 'a');

      // A stream of writes and reads; the server is killed after the 10th write. The stream goes on while
      // pg_ctl stops it (however long that takes) and for 5 more rounds once it is down, so some writes fail.
      let reads = 0;
      const failures: unknown[] = [];
      let down = false;
      let stopped: Promise<void> | undefined;
      let roundsWhileDown = 0;
      for (let i = 0; roundsWhileDown < 5; i++) {
        if (i === 10) {
          stopped = stop().finally(() => void (down = true)); // rethrown by the await below if pg_ctl failed
          stopped.catch(() => undefined);
        }
        const wasDown = down;
        await writeImage(d, `w${i}`, Buffer.alloc(500, i % 256)).catch((error: unknown) => failures.push(error));
        expect((await readImage(d, 'a')).length).toBe(1000);
        reads++;
        if (wasDown) roundsWhileDown++;
      }
      await stopped;
      expect(failures.length).toBeGreaterThan(0);
      for (const failure of failures) expectStorageError(failure, 'a write while the database is down');

      // Down for sure now.
      const writeError = await writeImage(d, 'new', Buffer.from('new')).catch((e: unknown) => e);
      expectStorageError(writeError, 'commit while down');
      expect((writeError as Error).message).toMatch(/is unreachable: start it or fix the connection string.*Cached files are still served/);
      expect(existsSync(join(dir, 'new'))).toBe(false);
      expect(existsSync(join(dir, 'invalid', 'new'))).toBe(true);

      const before = warnings.length;
      expect((await readImage(d, 'b')).equals(Buffer.alloc(1000, 'b'))).toBe(true);
      // Reported at once, or from the background write a moment later.
      await vi.waitFor(() => expect(warnings.slice(before)).toMatchObject([{ code: 'CACHE_HIT_NOT_RECORDED', imageId: 'b' }]));
      expect(await d.isCached('a')).toBe(true);
      expect(await d.getImageSize('a')).toBe(1000);
      expect(await d.getCacheSize()).toBeGreaterThan(0);
      expectStorageError(await d.getCachedImages().catch((e: unknown) => e), 'listing while down');
      expectStorageError(await d.getCachedNodes('a').catch((e: unknown) => e), 'getCachedNodes while down');
      // The file goes, the row cannot: clean() removes it later.
      expectStorageError(await d.deleteCachedImage('c').catch((e: unknown) => e), 'delete while down');
      expect(existsSync(join(dir, 'c'))).toBe(false);

      await start();
      // The same driver instance recovers without a new configure().
      const report = await d.clean();
      expect(report.orphanRecords).toBeGreaterThanOrEqual(1);
      const files = await activeFiles(dir);
      expect(files).toContain('a');
      expect(files).not.toContain('c');
      expect((await d.getCachedImages()).map((image) => image.imageId)).toEqual(files);
      const rows = await sql<{ image_id: string }>(
        url,
        'SELECT image_id FROM cached_images c JOIN node_reference n USING (node_reference_id) WHERE n.node_reference_url = $1 ORDER BY image_id COLLATE "C"',
        [d.nodeId],
      );
      expect(rows.map((r) => r.image_id)).toEqual(files);
      // Every read of 'a' counted except the ones dropped with a warning.
      const droppedA = warnings.filter((w) => w.code === 'CACHE_HIT_NOT_RECORDED' && w.imageId === 'a').length;
      expect(droppedA).toBeGreaterThan(0);
      // (At most one more: a hit the server committed just as it was killed, before the client heard back.)
      const hits = await d.getHitCount('a');
      expect(hits).toBeGreaterThanOrEqual(1 + reads - droppedA);
      expect(hits).toBeLessThanOrEqual(2 + reads - droppedA);
      // And it works as before.
      await writeImage(d, 'after', Buffer.from('after'));
      await readImage(d, 'after');
      expect(await d.getHitCount('after')).toBe(1);
      expect(await d.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
    } finally {
      await d.close();
      await cleanup();
    }
  });

  pgIt('a node that starts while the database is down gets a CacheStorageError from configure() and configures once it is back', async () => {
    const { dir, cleanup } = await tempDir('pg-down-start');
    const d = new PostgresDriver({ cacheDir: dir, connectionString: url, connectionTimeoutMillis: 1000 });
    try {
      await stop();
      const error = await d.configure().catch((e: unknown) => e);
      expectStorageError(error, 'configure while down');
      expect((error as Error).message).toMatch(/unreachable/);
      await start();
      await d.configure();
      await writeImage(d, 'x', Buffer.from('x'));
      expect(await d.getCachedNodes('x')).toEqual([d.nodeId]);
    } finally {
      await d.close();
      await cleanup();
    }
  });
});
