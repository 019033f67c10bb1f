/**
 * A damaged or locked cache.db (sqlite driver only), beyond what
 * packages/driver-sqlite/test/sqlite-driver.test.ts covers (a corrupt file at
 * configure, a truncated checkpointed db, a dropped table, an in-process lock):
 *
 * - cache.db overwritten with random bytes while the driver is open: the next
 *   listing, hit count and commit reject with a typed error, never a silent
 *   empty or wrong answer, and no commit leaves an active file without a row;
 * - a truncated or damaged WAL (what a crash can leave): the driver opens,
 *   lists every file, and clean() restores one row per file;
 * - a lock held by another process (python3's sqlite3, as Glance would hold
 *   it): a commit rejects with CACHE_STORAGE_ERROR naming busyTimeout and
 *   leaves nothing active without a row; reads still serve; a delete leaves
 *   an orphan row that is never listed and that clean() drops;
 * - the documented recovery, end to end: stop, move cache.db out of the cache directory, reopen,
 *   clean() rebuilds the table from the files (sizes right, hits 0), and
 *   listing, prune, reads and the queue work.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, link, mkdir, readFile, rename, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheError, ImageCache, type CacheWarning } from '@cache/core';
import { readImage, writeImage } from '@cache/conformance';
import { SqliteDriver } from '@cache/driver-sqlite';
import { makeContent, sha256Hex } from './fixtures/content.mjs';
import { activeFileIds, freshDir, namesIn, reliabilityTarget, removeDir, startProcess, type Fixture } from './helpers.js';

const target = await reliabilityTarget();

const pythonSkip = (() => {
  try {
    execFileSync('python3', ['-c', 'import sqlite3'], { stdio: 'ignore' });
    return undefined;
  } catch (error) {
    return `python3 with its sqlite3 module is needed to hold a lock from another process (${(error as Error).message})`;
  }
})();

/** Held by another process: BEGIN EXCLUSIVE until a line arrives on stdin. */
const LOCK_SCRIPT = `
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
con.execute('BEGIN EXCLUSIVE')
print('locked', flush=True)
sys.stdin.readline()
con.execute('ROLLBACK')
con.close()
print('released', flush=True)
`;

let work: string;
const drivers: SqliteDriver[] = [];
const processes: Fixture[] = [];

async function setUp(prefix: string): Promise<string> {
  work = await freshDir(target.fs.root, `sqlite-${prefix}`);
  return join(work, 'cache');
}

/**
 * This file is about the write-ahead log and what a crash leaves of it, so its
 * drivers run in WAL mode (`journalMode: 'wal'`), as a database outside the
 * cache directory does by default (ADR 0005). In the rollback-journal mode a
 * database in the cache directory gets, another process's exclusive lock also
 * blocks listings; that mode's own tests are in packages/driver-sqlite.
 */
const JOURNAL = { journalMode: 'wal' } as const;

async function open(cacheDir: string, options: { busyTimeout?: number; onWarning?: (w: CacheWarning) => void } = {}): Promise<SqliteDriver> {
  const driver = new SqliteDriver({ cacheDir, ...JOURNAL, ...options });
  await driver.configure();
  drivers.push(driver);
  return driver;
}

afterEach(async (context) => {
  for (const child of processes.splice(0)) if (child.child.exitCode === null) child.child.kill('SIGKILL');
  for (const driver of drivers.splice(0)) await driver.close();
  if (context.task.result?.state === 'fail') console.error(`[reliability] test failed: directory kept: ${work}`);
  else await removeDir(work);
});

/** `cached_images` rows, read through a connection of our own. */
function rows(cacheDir: string): { image_id: string; size: number; hits: number }[] {
  const db = new Database(join(cacheDir, 'cache.db'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT image_id, size, hits FROM cached_images ORDER BY image_id').all() as { image_id: string; size: number; hits: number }[];
  } finally {
    db.close();
  }
}

function checkpoint(cacheDir: string): void {
  const db = new Database(join(cacheDir, 'cache.db'));
  try {
    db.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    db.close();
  }
}

async function outcomeOf<T>(promise: Promise<T>): Promise<T | CacheError | Error> {
  return promise.then(
    (value) => value,
    (error: unknown) => error as Error,
  );
}

/** Writes `count` images `img-000...` of distinct sizes; reads the first `read` of them `hits` times. */
async function populate(driver: SqliteDriver, count: number, read = 0, hits = 1): Promise<Map<string, Buffer>> {
  const images = new Map<string, Buffer>();
  for (let i = 0; i < count; i++) {
    const id = `img-${String(i).padStart(3, '0')}`;
    const data = makeContent(id, 100 + i * 37);
    await writeImage(driver, id, data);
    images.set(id, data);
  }
  for (const id of [...images.keys()].slice(0, read)) for (let h = 0; h < hits; h++) await readImage(driver, id);
  return images;
}

function expectTypedStorageError(outcome: unknown, what: string): void {
  expect(CacheError.isCacheError(outcome), `${what} rejects with a typed CacheError, got ${String(outcome)}`).toBe(true);
  expect((outcome as CacheError).code, what).toBe('CACHE_STORAGE_ERROR');
  expect((outcome as CacheError).message, `${what}: the message says how to recover`).toMatch(/move .*cache\.db .*out of the cache directory/);
}

describe(`sqlite (WAL): a damaged or locked cache.db on ${target.fs.name} (${target.fs.root})`, () => {
  for (const variant of ['every byte', 'every byte after the 100-byte header'] as const) {
    it(`cache.db overwritten with random bytes (${variant}) while the driver is open: listing, hit count and commit reject with a typed error; no active file without a row`, async () => {
      const cacheDir = await setUp('overwrite');
      const driver = await open(cacheDir);
      const images = await populate(driver, 300, 10, 2);
      expect((await driver.getCachedImages()).length).toBe(300);
      // Move every page into cache.db (a checkpoint, as SQLite does on its own every 1000 pages),
      // so that the damage is to pages the driver must read. Pages still in the WAL are served from there.
      checkpoint(cacheDir);
      const dbPath = join(cacheDir, 'cache.db');
      const original = await readFile(dbPath);
      const damaged = variant === 'every byte' ? randomBytes(original.length) : Buffer.concat([original.subarray(0, 100), randomBytes(original.length - 100)]);
      await writeFile(dbPath, damaged);

      expectTypedStorageError(await outcomeOf(driver.getCachedImages()), 'getCachedImages()');
      expectTypedStorageError(await outcomeOf(driver.getHitCount('img-000')), 'getHitCount()');
      // Files are the truth: the size needs no metadata and stays right.
      expect(await driver.getCacheSize()).toBe([...images.values()].reduce((sum, data) => sum + data.length, 0));

      const commit = await outcomeOf(writeImage(driver, 'new-image', makeContent('new-image', 5000)));
      expectTypedStorageError(commit, 'a commit');
      expect(existsSync(join(cacheDir, 'new-image')), 'a commit whose row cannot be written leaves no active file').toBe(false);
      expect(await namesIn(join(cacheDir, 'invalid'))).toEqual(['new-image']);
      expect(await namesIn(join(cacheDir, 'incomplete'))).toEqual([]);
      expect(await activeFileIds(cacheDir), 'the active files are untouched').toEqual([...images.keys()]);

      // And a new driver refuses to configure, saying how to recover.
      await driver.close();
      const reopened = new SqliteDriver({ cacheDir, ...JOURNAL });
      const refusal = await outcomeOf(reopened.configure());
      expect((refusal as CacheError).code).toBe('CACHE_BAD_DRIVER_CONFIGURATION');
      expect((refusal as Error).message).toMatch(/move .*cache\.db .*out of the cache directory/);
    });
  }

  for (const damage of ['truncated mid-frame', 'truncated inside its header', 'a byte flipped in its last frames'] as const) {
    it(`a WAL ${damage} (a crash snapshot): the driver opens, lists every file with its size, and clean() gives every file a row`, async () => {
      const cacheDir = await setUp('wal');
      const driver = await open(cacheDir);
      const images = await populate(driver, 40, 20, 3);
      const before = new Map((await driver.getCachedImages()).map((image) => [image.imageId, image.hits]));
      const walSize = (await stat(join(cacheDir, 'cache.db-wal'))).size;
      expect(walSize, 'the rows are in the WAL, not yet checkpointed').toBeGreaterThan(32 + 4096 * 4);

      // What a crash leaves: the files, cache.db and its WAL as they were at one moment
      // (no -shm), copied while the driver is open; then the WAL is damaged.
      const crashed = join(work, 'crashed');
      for (const sub of ['', 'incomplete', 'invalid', 'queue']) await mkdir(join(crashed, sub), { recursive: true });
      // Hard links: after a real crash the files are the same files (same inode and mtime) the rows were written for.
      for (const id of images.keys()) await link(join(cacheDir, id), join(crashed, id));
      await copyFile(join(cacheDir, 'cache.db'), join(crashed, 'cache.db'));
      await copyFile(join(cacheDir, 'cache.db-wal'), join(crashed, 'cache.db-wal'));
      const wal = join(crashed, 'cache.db-wal');
      if (damage === 'truncated mid-frame') {
        await truncate(wal, Math.floor(walSize / 2) + 1234);
      } else if (damage === 'truncated inside its header') {
        await truncate(wal, 10);
      } else {
        const bytes = await readFile(wal);
        bytes[bytes.length - 3000] = (bytes[bytes.length - 3000] as number) ^ 0xff;
        await writeFile(wal, bytes);
      }

      const survivor = await open(crashed);
      const listed = await survivor.getCachedImages();
      expect(listed.map((image) => [image.imageId, image.size]), 'every file is listed, with its size').toEqual(
        [...images].map(([id, data]) => [id, data.length]),
      );
      for (const image of listed) {
        expect(image.hits, `hits of ${image.imageId}: what survived, never more`).toBeLessThanOrEqual(before.get(image.imageId) as number);
      }
      const survivingRows = rows(crashed);
      const report = await survivor.clean();
      expect(report.orphanRecords).toBe(0);
      expect(report.adoptedFiles, 'clean() adopts exactly the files whose rows were lost').toBe(images.size - survivingRows.length);
      expect(rows(crashed).map((row) => [row.image_id, row.size]), 'after clean(): one row per file, sizes right').toEqual(
        [...images].map(([id, data]) => [id, data.length]),
      );
      console.log(`[reliability] WAL ${damage}: ${survivingRows.length} of ${images.size} rows survived; clean() adopted ${report.adoptedFiles}`);

      // The cache works on: prune, reads, commits.
      const cache = await ImageCache.open({ driver: survivor, maxSize: 0 });
      await writeImage(survivor, 'after-crash', makeContent('after-crash', 777));
      expect(sha256Hex(await readImage(survivor, 'after-crash'))).toBe(sha256Hex(makeContent('after-crash', 777)));
      expect(await survivor.getHitCount('after-crash')).toBe(1);
      expect((await cache.prune()).files).toBe(images.size + 1);
      expect(await survivor.getCachedImages()).toEqual([]);
      expect(rows(crashed)).toEqual([]);
    });
  }

  describe('a lock held by another process', () => {
    async function lockFromPython(cacheDir: string): Promise<Fixture> {
      const locker = startProcess('python3', ['-c', LOCK_SCRIPT, join(cacheDir, 'cache.db')], 'python3 (BEGIN EXCLUSIVE)');
      processes.push(locker);
      expect(await locker.nextLine()).toBe('locked');
      return locker;
    }

    async function release(locker: Fixture): Promise<void> {
      locker.child.stdin?.write('\n');
      expect(await locker.nextLine()).toBe('released');
      expect((await locker.exited).code).toBe(0);
    }

    const suffix = pythonSkip === undefined ? '' : ` [skipped: ${pythonSkip}]`;

    it.skipIf(pythonSkip !== undefined)(
      `a commit rejects with CACHE_STORAGE_ERROR naming busyTimeout, nothing is active without a row; reads still serve (hit reported as not recorded); after the lock is released the commit works${suffix}`,
      async () => {
        const cacheDir = await setUp('lock');
        const warnings: CacheWarning[] = [];
        const driver = await open(cacheDir, { busyTimeout: 200, onWarning: (w) => warnings.push(w) });
        const images = await populate(driver, 3);
        const locker = await lockFromPython(cacheDir);

        const data = makeContent('locked-out', 64 * 1024);
        const error = await outcomeOf(writeImage(driver, 'locked-out', data));
        expect(CacheError.isCacheError(error, 'CACHE_STORAGE_ERROR'), `the commit rejects with CacheStorageError, got ${String(error)}`).toBe(true);
        expect((error as Error).message).toMatch(/busyTimeout/);
        expect(existsSync(join(cacheDir, 'locked-out')), 'no active file').toBe(false);
        expect(await namesIn(join(cacheDir, 'invalid'))).toEqual(['locked-out']);
        expect(await namesIn(join(cacheDir, 'incomplete'))).toEqual([]);
        // WAL readers are not blocked by a writer: listing and reads still work.
        expect((await driver.getCachedImages()).map((image) => image.imageId)).toEqual([...images.keys()]);
        expect(rows(cacheDir).map((row) => row.image_id), 'no active file without a row, no row without a file').toEqual(await activeFileIds(cacheDir));
        expect(sha256Hex(await readImage(driver, 'img-000'))).toBe(sha256Hex(images.get('img-000') as Buffer));
        expect(warnings.map((warning) => warning.code)).toEqual(['CACHE_HIT_NOT_RECORDED']);

        await release(locker);
        await writeImage(driver, 'locked-out', data);
        expect(sha256Hex(await readFile(join(cacheDir, 'locked-out')))).toBe(sha256Hex(data));
        expect(rows(cacheDir).map((row) => row.image_id)).toEqual(await activeFileIds(cacheDir));
      },
    );

    it.skipIf(pythonSkip !== undefined)(
      `a delete under the lock rejects with CACHE_STORAGE_ERROR; the file is gone, its orphan row is never listed, and clean() drops it once the lock is released${suffix}`,
      async () => {
        const cacheDir = await setUp('lock-delete');
        const driver = await open(cacheDir, { busyTimeout: 200 });
        const images = await populate(driver, 3, 1);
        const locker = await lockFromPython(cacheDir);
        const error = await outcomeOf(driver.deleteCachedImage('img-001'));
        expect(CacheError.isCacheError(error, 'CACHE_STORAGE_ERROR'), `the delete rejects with CacheStorageError, got ${String(error)}`).toBe(true);
        expect((error as Error).message).toMatch(/busyTimeout/);
        expect(existsSync(join(cacheDir, 'img-001'))).toBe(false);
        expect(await driver.isCached('img-001')).toBe(false);
        expect((await driver.getCachedImages()).map((image) => image.imageId), 'the orphan row is not listed').toEqual(['img-000', 'img-002']);
        await release(locker);
        expect(await driver.clean()).toMatchObject({ orphanRecords: 1, adoptedFiles: 0 });
        expect(rows(cacheDir).map((row) => row.image_id)).toEqual(['img-000', 'img-002']);
        expect(images.size).toBe(3);
      },
    );
  });

  it('the documented recovery works end to end: stop, move cache.db out of the cache directory, reopen, clean() rebuilds the table from the files; listing, prune, reads and the queue work', async () => {
    const cacheDir = await setUp('recovery');
    const driver = await open(cacheDir);
    const images = await populate(driver, 12, 6, 2);
    expect(await driver.queueImage('queued-later')).toBe(true);
    await driver.close();
    drivers.length = 0;

    // The damage: cache.db is garbage.
    checkpoint(cacheDir);
    await writeFile(join(cacheDir, 'cache.db'), randomBytes((await stat(join(cacheDir, 'cache.db'))).size));
    const refused = new SqliteDriver({ cacheDir, ...JOURNAL });
    const refusal = await outcomeOf(refused.configure());
    expect((refusal as CacheError).code).toBe('CACHE_BAD_DRIVER_CONFIGURATION');
    expect((refusal as Error).message).toMatch(/move .*cache\.db \(with its -wal\/-shm files\) out of the cache directory/);

    // The recovery the message describes: move cache.db (and -wal/-shm) out of the cache directory.
    const aside = join(work, 'aside');
    await mkdir(aside);
    for (const name of ['cache.db', 'cache.db-wal', 'cache.db-shm']) {
      if (existsSync(join(cacheDir, name))) await rename(join(cacheDir, name), join(aside, name));
    }
    const recovered = await open(cacheDir);
    const report = await recovered.clean();
    expect(report).toMatchObject({ orphanRecords: 0, adoptedFiles: images.size, invalid: 0, stalled: 0 });
    expect(rows(cacheDir), 'every file has a row, sizes right, hits 0').toEqual(
      [...images].map(([id, data]) => ({ image_id: id, size: data.length, hits: 0 })),
    );
    const listed = await recovered.getCachedImages();
    expect(listed.map((image) => [image.imageId, image.size, image.hits])).toEqual([...images].map(([id, data]) => [id, data.length, 0]));
    expect(await recovered.getQueuedImages(), 'the queue lives in files and survives').toEqual(['queued-later']);

    // Reads count again; prune evicts the least recently accessed (adopted entries: by file mtime, then id).
    expect(sha256Hex(await readImage(recovered, 'img-000'))).toBe(sha256Hex(images.get('img-000') as Buffer));
    expect(await recovered.getHitCount('img-000')).toBe(1);
    const byMtime = await Promise.all(
      [...images.keys()].filter((id) => id !== 'img-000').map(async (id) => ({ id, mtimeNs: (await stat(join(cacheDir, id), { bigint: true })).mtimeNs })),
    );
    byMtime.sort((a, b) => (a.mtimeNs < b.mtimeNs ? -1 : a.mtimeNs > b.mtimeNs ? 1 : a.id < b.id ? -1 : 1));
    const keep = 4;
    const victims = byMtime.slice(0, images.size - keep).map((entry) => entry.id);
    const budget = [...images].filter(([id]) => !victims.includes(id)).reduce((sum, [, data]) => sum + data.length, 0);
    const cache = await ImageCache.open({ driver: recovered, maxSize: budget });
    expect(await cache.prune()).toEqual({
      files: victims.length,
      bytes: victims.reduce((sum, id) => sum + (images.get(id) as Buffer).length, 0),
    });
    const left = (await recovered.getCachedImages()).map((image) => image.imageId);
    expect(left).toContain('img-000');
    expect(left).toHaveLength(keep);
    expect(rows(cacheDir).map((row) => row.image_id)).toEqual(left);
    expect(await cache.cacheImage('queued-later', Readable.from([Buffer.from('now cached')]))).toBe(true);
    expect(await recovered.getQueuedImages()).toEqual([]);
  });
});
