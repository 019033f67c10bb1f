import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, rename, stat, truncate, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CacheError, ErrorCodes, ImageCache, type CacheWarning } from '@cache/core';
import { compareByRecency } from '@cache/core/driver';
import { CREATE_TABLE, SqliteDriver } from '../src/index.js';
import { describeRecovery } from '../src/sqlite-driver.js';
import { glanceCache, glanceConfigure, glanceList, glanceRead } from './glance.js';
import { readImage, writeImage } from '@cache/conformance';
import { tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
const open: SqliteDriver[] = [];

async function driver(options: Partial<ConstructorParameters<typeof SqliteDriver>[0]> = {}): Promise<SqliteDriver> {
  const d = new SqliteDriver({ cacheDir: dir, ...options });
  await d.configure();
  open.push(d);
  return d;
}

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('sqlite-driver'));
});

afterEach(async () => {
  for (const d of open.splice(0)) await d.close();
  await cleanup();
});

describe('schema', () => {
  it("configure() creates Glance's cached_images table, plus our file_id column and an LRU index, with Glance's rollback journal", async () => {
    await driver();
    const db = new Database(join(dir, 'cache.db'), { readonly: true });
    try {
      const columns = db.pragma('table_info(cached_images)') as { name: string; type: string; dflt_value: string | null; pk: number }[];
      expect(columns.map(({ name, type, dflt_value, pk }) => [name, type, dflt_value, pk])).toEqual([
        ['image_id', 'TEXT', null, 1],
        ['last_accessed', 'REAL', '0.0', 0],
        ['last_modified', 'REAL', '0.0', 0],
        ['size', 'INTEGER', '0', 0],
        ['hits', 'INTEGER', '0', 0],
        ['checksum', 'TEXT', null, 0],
        ['file_id', 'TEXT', null, 0],
      ]);
      const plan = db
        .prepare('EXPLAIN QUERY PLAN SELECT image_id FROM cached_images ORDER BY last_accessed, last_modified, image_id LIMIT 1')
        .all() as { detail: string }[];
      expect(plan.map((row) => row.detail).join(' ')).toMatch(/USING (COVERING )?INDEX cached_images_lru_idx/);
      expect(db.pragma('journal_mode', { simple: true })).toBe('delete');
    } finally {
      db.close();
    }
  });

  it('no journal file stays beside the database between operations; the database and its journal names are reserved ids', async () => {
    const d = await driver();
    expect(d.journalMode).toBe('delete');
    await writeImage(d, 'img', Buffer.from('data'));
    await readImage(d, 'img');
    // Glance counts every file in the directory but cache.db as an image: no -wal, -shm or -journal may wait there.
    expect((await readdir(dir)).sort()).toEqual(['cache.db', 'img', 'incomplete', 'invalid', 'queue']);
    expect((await d.getCachedImages()).map((i) => i.imageId)).toEqual(['img']);
    for (const name of ['cache.db', 'cache.db-wal', 'cache.db-shm', 'cache.db-journal']) {
      await expect(d.isCached(name), name).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    }
  });

  it("journalMode: 'wal' puts a database in the cache directory in WAL mode (for directories Glance never uses); other values are refused", async () => {
    const d = await driver({ journalMode: 'wal' });
    await writeImage(d, 'img', Buffer.from('data'));
    expect(existsSync(join(dir, 'cache.db-wal'))).toBe(true);
    expect(await d.getCacheSize()).toBe(4);
    expect(() => new SqliteDriver({ cacheDir: dir, journalMode: 'memory' as 'wal' })).toThrow(
      expect.objectContaining({ code: ErrorCodes.INVALID_ARGUMENT }),
    );
  });

  it('a custom dbPath name inside the cache directory becomes a reserved name too', async () => {
    const d = await driver({ dbPath: 'meta.sqlite' });
    await writeImage(d, 'img', Buffer.from('x'));
    expect(existsSync(join(dir, 'meta.sqlite'))).toBe(true);
    expect(await d.getCacheSize()).toBe(1);
    await expect(d.isCached('meta.sqlite-wal')).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
  });

  it('refuses a cached_images table that lacks columns, with BadDriverConfigurationError', async () => {
    const db = new Database(join(dir, 'cache.db'));
    db.exec('CREATE TABLE cached_images (image_id TEXT PRIMARY KEY, hits INTEGER)');
    db.close();
    const d = new SqliteDriver({ cacheDir: dir });
    await expect(d.configure()).rejects.toMatchObject({ code: ErrorCodes.BAD_DRIVER_CONFIGURATION });
  });
});

describe('compatibility with a cache directory written by Glance', () => {
  it('lists, reads, counts hits and prunes entries that Glance committed', async () => {
    glanceConfigure(dir);
    const t = Date.now() / 1000 - 100;
    glanceCache(dir, 'img-b', 'bbbb', t);
    glanceCache(dir, 'img-a', 'aa', t + 10);
    glanceCache(dir, 'img-c', 'cccccc', t + 20);
    const d = await driver();
    const images = await d.getCachedImages();
    expect(images.map((i) => [i.imageId, i.size, i.hits])).toEqual([
      ['img-a', 2, 0],
      ['img-b', 4, 0],
      ['img-c', 6, 0],
    ]);
    expect(images[1]?.lastAccessed).toBeCloseTo(t, 3);
    expect(await d.getLeastRecentlyAccessed()).toEqual({ imageId: 'img-b', size: 4 });
    expect((await readImage(d, 'img-b')).toString()).toBe('bbbb');
    expect(await d.getHitCount('img-b')).toBe(1);
    // The lock file Glance leaves in the directory is not an image.
    expect(existsSync(join(dir, 'image_cache_db_init'))).toBe(true);
    expect(await d.getCacheSize()).toBe(12);
    const cache = await ImageCache.open({ driver: d, maxSize: 6 });
    // img-b was just read: img-a then img-c go, until 4 bytes <= 6 remain.
    expect(await cache.prune()).toEqual({ files: 2, bytes: 8 });
    expect((await d.getCachedImages()).map((i) => i.imageId)).toEqual(['img-b']);
  });

  it('what we write reads back through Glance: rows, LRU query, hit updates and queue order', async () => {
    const d = await driver();
    await writeImage(d, 'one', Buffer.from('1'));
    await writeImage(d, 'two', Buffer.from('22'));
    await readImage(d, 'one');
    await readImage(d, 'one');
    await d.queueImage('zeta');
    await d.queueImage('alpha');
    await d.close();
    const seen = glanceList(dir);
    expect(seen.cached.map((r) => [r.image_id, r.size, r.hits])).toEqual([
      ['one', 1, 2],
      ['two', 2, 0],
    ]);
    expect(seen.lru).toBe('two');
    expect(seen.queued).toEqual(['zeta', 'alpha']);
    expect(glanceRead(dir, 'two')).toBe('22');
    const again = await driver();
    expect(await again.getHitCount('two')).toBe(1);
  });
});

describe('metadata stays true to the files', () => {
  it('re-caching an id replaces its row (upsert): new size, hits back to 0', async () => {
    const d = await driver();
    await writeImage(d, 'img', Buffer.from('old'));
    await readImage(d, 'img');
    await unlink(join(dir, 'img')); // deleted behind the driver's back; the row survives
    await writeImage(d, 'img', Buffer.from('newer!'));
    const [record] = await d.getCachedImages();
    expect(record).toMatchObject({ imageId: 'img', size: 6, hits: 0 });
  });

  it('clean() deletes rows without files and adopts files without rows', async () => {
    const d = await driver();
    await writeImage(d, 'kept', Buffer.from('k'));
    await writeImage(d, 'orphan-row', Buffer.from('o'));
    await unlink(join(dir, 'orphan-row'));
    await writeFile(join(dir, 'stray-file'), 'sss');
    // Listing already reflects the files: the orphan row is not listed, the stray file is (0 hits).
    expect((await d.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual([
      ['kept', 0],
      ['stray-file', 0],
    ]);
    const report = await d.clean();
    expect(report).toMatchObject({ orphanRecords: 1, adoptedFiles: 1 });
    const db = new Database(join(dir, 'cache.db'), { readonly: true });
    const rows = db.prepare('SELECT image_id, size FROM cached_images ORDER BY image_id').all();
    db.close();
    expect(rows).toEqual([
      { image_id: 'kept', size: 1 },
      { image_id: 'stray-file', size: 3 },
    ]);
    expect(await d.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
  });

  it('recordHits(id, n) adds n hits in one write (last access = its time, never earlier), keeps the stored checksum, and adopts a file without a row', async () => {
    const d = await driver();
    const cache = await ImageCache.open({ driver: d });
    const digest = '5d41402abc4b2a76b9719d911017c592'; // md5("hello")
    await cache.cacheImage('img', Readable.from([Buffer.from('hello')]), { checksum: digest });
    const stat = await cache.stat('img');
    const identity = stat?.identity as string;
    const time = (stat?.lastModified as number) + 100;
    expect(await d.recordHits('img', 40, { identity, time })).toBe(true);
    expect(await d.recordHits('img', 2, { identity, time: time - 50 })).toBe(true); // a late flush of older hits
    expect(await cache.stat('img')).toMatchObject({ hits: 42, lastAccessed: time, storedChecksum: digest });

    await writeFile(join(dir, 'stray'), 'sss'); // a file without a row (another process, a crash)
    const stray = await cache.stat('stray');
    expect(await d.recordHits('stray', 3, { identity: stray?.identity as string, time })).toBe(true);
    const db = new Database(join(dir, 'cache.db'), { readonly: true });
    const row = db.prepare('SELECT hits, size, last_accessed FROM cached_images WHERE image_id = ?').get('stray');
    db.close();
    expect(row).toEqual({ hits: 3, size: 3, last_accessed: time });
  });

  it('stores the verified checksum with the entry', async () => {
    const d = await driver();
    const cache = await ImageCache.open({ driver: d });
    const digest = '5d41402abc4b2a76b9719d911017c592'; // md5("hello")
    expect(await cache.cacheImage('hello', Readable.from([Buffer.from('hello')]), { checksum: digest })).toBe(true);
    expect(await d.getStoredChecksum('hello')).toBe(digest);
  });
});

describe('the LRU index answers getLeastRecentlyAccessed (docs/adr/0008)', () => {
  /** Sets a row's access time directly, as another process (or Glance) would. */
  function setAccess(id: string, lastAccessed: number): void {
    const db = new Database(join(dir, 'cache.db'));
    try {
      expect(db.prepare('UPDATE cached_images SET last_accessed = ? WHERE image_id = ?').run(lastAccessed, id).changes).toBe(1);
    } finally {
      db.close();
    }
  }

  it('skips rows without a file, ranks a file without a row by its mtime, and agrees with the order of a full listing', async () => {
    const d = await driver();
    for (const id of ['a', 'b', 'c', 'gone']) await writeImage(d, id, Buffer.from(id));
    setAccess('gone', 1_000);
    setAccess('b', 2_000);
    setAccess('a', 3_000);
    setAccess('c', 4_000);
    await unlink(join(dir, 'gone')); // its row stays, first in the index
    expect(await d.getLeastRecentlyAccessed()).toEqual({ imageId: 'b', size: 1 });
    // A file dropped in without a row, older than every access: it ranks by its mtime.
    await writeFile(join(dir, 'stray'), 'stray!');
    await utimes(join(dir, 'stray'), 1_500, 1_500);
    expect(await d.getLeastRecentlyAccessed()).toEqual({ imageId: 'stray', size: 6 });
    const listed = (await d.getCachedImages()).sort(compareByRecency);
    expect(listed.map((image) => image.imageId)).toEqual(['stray', 'b', 'a', 'c']);
    await unlink(join(dir, 'stray'));
    await unlink(join(dir, 'b'));
    expect(await d.getLeastRecentlyAccessed()).toEqual({ imageId: 'a', size: 1 });
    for (const id of ['a', 'c']) await d.deleteCachedImage(id);
    expect(await d.getLeastRecentlyAccessed()).toBeNull();
  });

  it('a file replaced under its id by another process is ranked by its own mtime, not by its old row', async () => {
    const d = await driver();
    await writeImage(d, 'old', Buffer.from('x'));
    await writeImage(d, 'newer', Buffer.from('y'));
    setAccess('old', 1_000);
    setAccess('newer', 2_000);
    // Replaced by a rename (a new inode, mtime now): its row (access 1000) describes the old file.
    await writeFile(join(dir, '.replacement'), 'replaced');
    await rename(join(dir, '.replacement'), join(dir, 'old'));
    expect(await d.getLeastRecentlyAccessed()).toEqual({ imageId: 'newer', size: 1 });
  });
});

describe('hit durability (syncHits)', () => {
  it('hits count with syncHits false (the default) and true, and survive a reopen; a non-boolean syncHits is refused', async () => {
    for (const syncHits of [false, true]) {
      const d = await driver({ syncHits });
      expect(d.syncHits).toBe(syncHits);
      await writeImage(d, `img-${syncHits}`, Buffer.from('bytes'));
      await readImage(d, `img-${syncHits}`);
      await readImage(d, `img-${syncHits}`);
      expect(await d.getHitCount(`img-${syncHits}`)).toBe(2);
      // A commit after the hits (back at NORMAL) still lands, and the count survives a reopen.
      await writeImage(d, `after-${syncHits}`, Buffer.from('more'));
      await d.close();
      const again = await driver({ syncHits });
      expect(await again.getHitCount(`img-${syncHits}`)).toBe(2);
      expect(await again.isCached(`after-${syncHits}`)).toBe(true);
      await again.close();
    }
    expect(() => new SqliteDriver({ cacheDir: dir, syncHits: 'yes' as unknown as boolean })).toThrow(/syncHits must be a boolean/);
  });
});

describe('relaxed commits: rows written without fsync, made durable at the sync point (docs/adr/0007)', () => {
  /** The database header's file change counter: SQLite adds one for every write transaction (rollback journal). */
  const changeCounter = async () => (await readFile(join(dir, 'cache.db'))).readUInt32BE(24);

  it('sync() runs one durable write transaction when rows were written since the last one, none otherwise, and keeps user_version', async () => {
    const outside = new Database(join(dir, 'cache.db'));
    outside.pragma('user_version = 7');
    outside.close();
    const d = await driver({ durability: 'relaxed', syncInterval: 0 });
    await writeImage(d, 'a', Buffer.from('first'));
    // A write under way keeps the journal of unsynced commits open, so every sync below reaches the database.
    const pending = await d.openForWrite('pending');
    const afterCommit = await changeCounter();
    await d.sync();
    expect(await changeCounter()).toBe(afterCommit + 1);
    // Nothing written since: no transaction.
    await d.sync();
    expect(await changeCounter()).toBe(afterCommit + 1);
    pending.destroy();
    await new Promise((resolve) => pending.once('close', resolve));
    // A hit and a commit: their own transactions, then one for the sync point.
    await readImage(d, 'a');
    await writeImage(d, 'b', Buffer.from('second'));
    await d.sync();
    expect(await changeCounter()).toBe(afterCommit + 4);
    const reader = new Database(join(dir, 'cache.db'), { readonly: true });
    try {
      expect(reader.pragma('user_version', { simple: true })).toBe(7);
      expect(reader.prepare('SELECT hits, size FROM cached_images WHERE image_id = ?').get('a')).toEqual({ hits: 1, size: 5 });
    } finally {
      reader.close();
    }
  });

  it('a strict driver writes no extra transaction (its commits are durable when they settle)', async () => {
    const d = await driver({ durability: 'strict' });
    await writeImage(d, 'a', Buffer.from('first'));
    const afterCommit = await changeCounter();
    await d.sync();
    await d.close();
    expect(await changeCounter()).toBe(afterCommit);
  });
});

describe('database failures are typed errors, never silent wrong answers', () => {
  it('a corrupt cache.db refuses configure() with BadDriverConfigurationError saying how to recover', async () => {
    await writeFile(join(dir, 'cache.db'), Buffer.alloc(8192, 'garbage!'));
    const d = new SqliteDriver({ cacheDir: dir });
    const error = await d.configure().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(CacheError.isCacheError(error, ErrorCodes.BAD_DRIVER_CONFIGURATION)).toBe(true);
    expect((error as Error).message).toMatch(/move .*cache\.db .*out of the cache directory/);
    await expect(d.getCachedImages()).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
  });

  it('a damaged page (header intact) refuses configure() before anything is written, and the file is left as it was', async () => {
    await (await driver()).close();
    const path = join(dir, 'cache.db');
    const db = new Database(path);
    const insert = db.prepare('INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits) VALUES (?, 1, 1, 100, 0)');
    db.transaction(() => {
      for (let i = 0; i < 2000; i++) insert.run(`image-${String(i).padStart(6, '0')}`);
    })();
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    db.close();
    // Page 5 of about 30: one page's bytes lost, as a power cut during an unsynced write can leave them.
    const bytes = await readFile(path);
    bytes.fill(0xa5, 4 * pageSize, 5 * pageSize);
    await writeFile(path, bytes);
    const damaged = new SqliteDriver({ cacheDir: dir });
    const error = await damaged.configure().then(
      () => {
        open.push(damaged);
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(CacheError.isCacheError(error, ErrorCodes.BAD_DRIVER_CONFIGURATION)).toBe(true);
    expect((error as Error).message).toMatch(/damaged \(PRAGMA quick_check: /);
    expect((error as Error).message).toMatch(/The database is corrupt\. .*\.recover/);
    expect(Buffer.compare(await readFile(path), bytes)).toBe(0);
    expect(existsSync(`${path}-journal`)).toBe(false);
  });

  it('a truncated cache.db is refused by configure(), not listed as empty', async () => {
    const d = await driver();
    for (let i = 0; i < 200; i++) await writeImage(d, `img-${i}`, Buffer.from('x'.repeat(100)));
    await d.close();
    const db = new Database(join(dir, 'cache.db'));
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const { size } = await stat(join(dir, 'cache.db'));
    await truncate(join(dir, 'cache.db'), Math.floor(size / 2));
    const reopened = new SqliteDriver({ cacheDir: dir });
    const outcome = await reopened.configure().then(
      async () => {
        open.push(reopened);
        return reopened.getCachedImages();
      },
    ).then(
      (images) => images,
      (e: unknown) => e,
    );
    expect(CacheError.isCacheError(outcome, ErrorCodes.BAD_DRIVER_CONFIGURATION)).toBe(true);
    expect((outcome as Error).message).toMatch(/The database is corrupt\./);
  });

  it('a table dropped behind the driver makes listings reject with CacheStorageError', async () => {
    const d = await driver();
    await writeImage(d, 'img', Buffer.from('x'));
    const other = new Database(join(dir, 'cache.db'));
    other.exec('DROP TABLE cached_images');
    other.close();
    await expect(d.getCachedImages()).rejects.toMatchObject({ code: ErrorCodes.STORAGE });
    await expect(d.getHitCount('img')).rejects.toMatchObject({ code: ErrorCodes.STORAGE });
  });

  it('a commit whose row cannot be written (database locked) is rolled back: no active file without a row', async () => {
    const d = await driver({ busyTimeout: 50 });
    const locker = new Database(join(dir, 'cache.db'));
    locker.exec('BEGIN EXCLUSIVE');
    try {
      const error = await writeImage(d, 'img', Buffer.from('data')).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toMatchObject({ code: ErrorCodes.STORAGE });
      expect((error as Error).message).toMatch(/busyTimeout/);
      expect(existsSync(join(dir, 'img'))).toBe(false);
      expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
    } finally {
      locker.exec('ROLLBACK');
      locker.close();
    }
    expect(await d.isCached('img')).toBe(false);
    await writeImage(d, 'img', Buffer.from('data'));
    expect(await d.isCached('img')).toBe(true);
  });

  it('a hit that cannot be recorded never breaks the read; it is reported as a warning', async () => {
    const warnings: CacheWarning[] = [];
    const d = await driver({ busyTimeout: 50, onWarning: (w) => warnings.push(w) });
    await writeImage(d, 'img', Buffer.from('payload'));
    const locker = new Database(join(dir, 'cache.db'));
    locker.exec('BEGIN EXCLUSIVE');
    try {
      expect((await readImage(d, 'img')).toString()).toBe('payload');
    } finally {
      locker.exec('ROLLBACK');
      locker.close();
    }
    expect(warnings.map((w) => w.code)).toEqual(['CACHE_HIT_NOT_RECORDED']);
    expect(await d.getHitCount('img')).toBe(0);
    await readImage(d, 'img');
    expect(await d.getHitCount('img')).toBe(1);
  });

  it('a database outside the cache directory works, in WAL mode, and the directory holds only images', async () => {
    const { dir: dbDir, cleanup: dbCleanup } = await tempDir('sqlite-db');
    try {
      const d = await driver({ dbPath: join(dbDir, 'meta.db') });
      expect(d.journalMode).toBe('wal');
      await writeImage(d, 'img', Buffer.from('abc'));
      expect(await readFile(join(dir, 'img'), 'utf8')).toBe('abc');
      expect((await readdir(dir)).sort()).toEqual(['img', 'incomplete', 'invalid', 'queue']);
      expect((await readdir(dbDir)).sort()).toEqual(['meta.db', 'meta.db-shm', 'meta.db-wal']);
      await d.close();
    } finally {
      await dbCleanup();
    }
  });
});

describe('a database an older version left in WAL mode', () => {
  it('is checkpointed and moved to the rollback journal at configure(): every row kept, -wal and -shm gone', async () => {
    // An older version (WAL) committed three entries and counted a hit, then was SIGKILLed before any checkpoint.
    const child = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { Readable } from 'node:stream';
         import { ImageCache } from '@cache/core';
         import { SqliteDriver } from './dist/index.js';
         const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir: process.argv[1], journalMode: 'wal' }) });
         for (const id of ['a', 'b', 'c']) await cache.cacheImage(id, Readable.from([Buffer.from(id.repeat(3))]));
         for await (const _ of await cache.openForRead('b'));
         process.kill(process.pid, 'SIGKILL');`,
        dir,
      ],
      { cwd: join(import.meta.dirname, '..'), encoding: 'utf8' },
    );
    expect(child.signal, child.stderr).toBe('SIGKILL');
    expect((await stat(join(dir, 'cache.db-wal'))).size, 'the rows are still in the log').toBeGreaterThan(0);
    expect(existsSync(join(dir, 'cache.db-shm'))).toBe(true);
    const d = await driver();
    expect((await readdir(dir)).filter((name) => name.startsWith('cache.db'))).toEqual(['cache.db']);
    expect((await d.getCachedImages()).map((i) => [i.imageId, i.size, i.hits])).toEqual([
      ['a', 3, 0],
      ['b', 3, 1],
      ['c', 3, 0],
    ]);
    const db = new Database(join(dir, 'cache.db'), { readonly: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('delete');
    } finally {
      db.close();
    }
  });

  it('configure() waits busyTimeout for another process that keeps it open in WAL mode, then refuses and says what to do', async () => {
    const other = new Database(join(dir, 'cache.db'));
    other.pragma('journal_mode = WAL');
    other.exec(CREATE_TABLE);
    try {
      const d = new SqliteDriver({ cacheDir: dir, busyTimeout: 200 });
      const error = await d.configure().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(CacheError.isCacheError(error, ErrorCodes.BAD_DRIVER_CONFIGURATION)).toBe(true);
      expect((error as Error).message).toMatch(/could not switch to the rollback journal \(journalMode 'delete'\) within 200 ms: another process keeps the database open in WAL mode/);
      expect((error as Error).message).toMatch(/Stop the other processes that use this cache directory and configure again/);
      expect(existsSync(join(dir, 'cache.db-wal')), "the other process's log is left alone").toBe(true);
    } finally {
      other.close();
    }
    const d = await driver();
    expect(d.journalMode).toBe('delete');
    expect((await readdir(dir)).filter((name) => name.startsWith('cache.db'))).toEqual(['cache.db']);
  });
});

describe('describeRecovery: honest advice (issue 13)', () => {
  const dbPath = '/var/cache/images/cache.db';
  it.each(['SQLITE_READONLY', 'SQLITE_READONLY_DIRECTORY', 'SQLITE_READONLY_DBMOVED', 'SQLITE_READONLY_CANTINIT', 'SQLITE_CANTOPEN', 'SQLITE_CANTOPEN_ISDIR', 'SQLITE_PERM', 'EACCES'])(
    '%s is a permissions problem with chown/chmod, not "move it aside"',
    (code) => {
      const advice = describeRecovery(Object.assign(new Error('attempt to write a readonly database'), { code }), dbPath);
      expect(advice).toMatch(/permissions problem, not damage/);
      expect(advice).toContain('`chown -R ');
      expect(advice).toContain(' /var/cache/images`');
      expect(advice).not.toMatch(/aside|clean\(\)/);
    },
  );

  it('an unknown failure advises checking, never moving the database (that loses hits and digests)', () => {
    const advice = describeRecovery(Object.assign(new Error('disk I/O'), { code: 'SQLITE_MISMATCH' }), dbPath);
    expect(advice).toMatch(/PRAGMA integrity_check/);
    expect(advice).not.toMatch(/\bmove\b|aside|clean/);
  });

  it('corruption: keep the files, try .recover, and `image-cache clean` rebuilds the table (saying what is lost)', () => {
    const advice = describeRecovery(Object.assign(new Error('file is not a database'), { code: 'SQLITE_NOTADB' }), dbPath);
    expect(advice).toMatch(/\.recover/);
    expect(advice).toMatch(/`image-cache clean`/);
    expect(advice).toMatch(/hit counts restart at 0 and stored digests are lost/);
    expect(advice).not.toMatch(/clean\(\)/);
  });
});
