import { unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect } from 'vitest';
import { ErrorCodes } from '@cache/core';
import { readImage, writeImage } from '@cache/conformance';
import { SqliteDriver } from '@cache/driver-sqlite';
import { PostgresDriver, importSqliteCache } from '../src/index.js';
import { createDatabase, pgIt, skipReason, sql, tempDir } from './helpers.js';

let url: string;
let dir: string;
let cleanup: () => Promise<void>;

beforeEach(async () => {
  if (skipReason === undefined) url = await createDatabase('import');
  ({ dir, cleanup } = await tempDir('pg-import'));
});

afterEach(async () => {
  await cleanup();
});

async function rows(nodeId: string) {
  return sql<{ image_id: string; hits: string; size: string; checksum: string | null; la: string; lm: string }>(
    url,
    `SELECT image_id, hits, size, checksum,
            (EXTRACT(EPOCH FROM last_accessed) * 1000000)::bigint AS la, (EXTRACT(EPOCH FROM last_modified) * 1000000)::bigint AS lm
     FROM cached_images c JOIN node_reference n USING (node_reference_id) WHERE n.node_reference_url = $1 ORDER BY image_id`,
    [nodeId],
  );
}

describe('importSqliteCache', () => {
  pgIt("imports our sqlite driver's cache.db for the rows whose file exists, keeps hits and exact times, and is idempotent", async () => {
    const sqlite = new SqliteDriver({ cacheDir: dir });
    await sqlite.configure();
    for (const id of ['a', 'b', 'c']) await writeImage(sqlite, id, Buffer.from(`image ${id}`));
    await readImage(sqlite, 'a');
    await readImage(sqlite, 'a');
    const before = await sqlite.getCachedImages();
    await sqlite.close();
    await unlink(join(dir, 'c')); // its row stays in cache.db

    const options = { cacheDir: dir, connectionString: url, nodeId: 'node-1' };
    const report = await importSqliteCache(options);
    expect(report).toEqual({ dbPath: join(dir, 'cache.db'), rows: 3, imported: 2, missingFile: ['c'], invalidId: [] });

    const driver = new PostgresDriver(options);
    await driver.configure();
    try {
      const listed = await driver.getCachedImages();
      expect(listed).toEqual(before.filter((image) => image.imageId !== 'c'));
      const snapshot = await rows('node-1');
      expect(await importSqliteCache(options)).toEqual(report);
      expect(await rows('node-1')).toEqual(snapshot);
      // Reads counted centrally are not undone by a later import.
      await readImage(driver, 'a');
      await importSqliteCache(options);
      expect(await driver.getHitCount('a')).toBe(3);
      expect(await driver.getCachedNodes('a')).toEqual(['node-1']);
    } finally {
      await driver.close();
    }
  });

  pgIt("imports Glance's sqlite cached_images table: epoch floats, last_accessed 0 from old Glance, reserved names skipped", async () => {
    const db = new Database(join(dir, 'cache.db'));
    // Glance's DDL (glance/image_cache/drivers/sqlite.py) and its rows.
    db.exec(`CREATE TABLE IF NOT EXISTS cached_images (
      image_id TEXT PRIMARY KEY, last_accessed REAL DEFAULT 0.0, last_modified REAL DEFAULT 0.0,
      size INTEGER DEFAULT 0, hits INTEGER DEFAULT 0, checksum TEXT)`);
    const insert = db.prepare('INSERT INTO cached_images VALUES (?, ?, ?, ?, ?, ?)');
    const uuid = '6a9f6d2c-6f3e-4a59-9b8f-3c1f0a7f3e21';
    insert.run(uuid, 1764300000.123456, 1764200000.5, 999, 7, null);
    insert.run('old-glance', 0, 1700000000.25, 4, 1, 'd41d8cd98f00b204e9800998ecf8427e');
    insert.run('image_cache_db_init', 1764300000, 1764300000, 0, 0, null);
    db.close();
    await writeFile(join(dir, uuid), 'twelve bytes');
    await writeFile(join(dir, 'old-glance'), 'four');
    await writeFile(join(dir, 'image_cache_db_init'), '');

    const report = await importSqliteCache({ cacheDir: dir, connectionString: url, nodeId: 'glance-node' });
    expect(report).toMatchObject({ rows: 3, imported: 2, missingFile: [], invalidId: ['image_cache_db_init'] });
    expect((await rows('glance-node')).map(({ image_id, hits, size, checksum, la, lm }) => [image_id, Number(hits), Number(size), checksum, Number(la), Number(lm)])).toEqual([
      [uuid, 7, 12, null, 1764300000123456, 1764200000500000],
      ['old-glance', 1, 4, 'd41d8cd98f00b204e9800998ecf8427e', 1700000000250000, 1700000000250000],
    ]);
  });

  pgIt('a file that is not a sqlite cache database is refused with BadDriverConfigurationError', async () => {
    await writeFile(join(dir, 'not-a-db.sqlite'), 'hello, this is not sqlite');
    const error = await importSqliteCache({ cacheDir: dir, connectionString: url, dbPath: 'not-a-db.sqlite' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: ErrorCodes.BAD_DRIVER_CONFIGURATION });
    expect((error as Error).message).toMatch(/cannot import .*not-a-db\.sqlite/);
    const missing = await importSqliteCache({ cacheDir: dir, connectionString: url }).catch((e: unknown) => e);
    expect(missing).toMatchObject({ code: ErrorCodes.BAD_DRIVER_CONFIGURATION });
  });
});
