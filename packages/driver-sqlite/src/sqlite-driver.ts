import { basename, dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { BadDriverConfigurationError, CacheStorageError, InvalidArgumentError, type ImageId } from '@cache/core';
import {
  DirectoryCacheDriver,
  fileIdentity,
  permissionAdvice,
  type CommitInfo,
  type DirectoryDriverOptions,
  type DriverSupports,
  type EntryStat,
  type ImageMetadata,
} from '@cache/core/driver';
import { ADD_FILE_ID_COLUMN, CREATE_LRU_INDEX, CREATE_TABLE, REQUIRED_COLUMNS, SQL, type CachedImageRow } from './sqlite-schema.js';

/** Options of {@link SqliteDriver}. */
export interface SqliteDriverOptions extends DirectoryDriverOptions {
  /**
   * The SQLite database file. A relative path is resolved against `cacheDir`,
   * as Glance's `image_cache_sqlite_db` is.
   * @default `<cacheDir>/cache.db`
   */
  dbPath?: string;
  /**
   * How long (ms) a statement waits for another process's lock before failing
   * with a `CacheStorageError`.
   * @default 5000
   */
  busyTimeout?: number;
  /**
   * SQLite's journal. `delete` is the rollback journal Glance's sqlite driver
   * uses: `<db>-journal` exists only while a write transaction runs. `wal` is
   * faster for small writes (a hit costs no `fsync`) but keeps `<db>-wal` and
   * `<db>-shm` beside the database while it is open, which a Glance process
   * sharing the cache directory counts as images, prunes for and deletes.
   * Use `wal` in the cache directory only where Glance never runs on it.
   * @default `delete` when the database is in the cache directory, `wal` when it is elsewhere
   */
  journalMode?: SqliteJournalMode;
}

/** SQLite's journal mode, see {@link SqliteDriverOptions.journalMode}. */
export type SqliteJournalMode = 'delete' | 'wal';

type Statement = Database.Statement;

const DRIVER_NAME = 'sqlite';

/**
 * Metadata in SQLite, in Glance's `cached_images` table, so a cache directory
 * written by Glance's sqlite driver opens and lists here and the other way round.
 *
 * Fixes over the original: a busy timeout instead of a retry loop, an index
 * for the LRU query, prepared statements reused, upsert on commit (no stale
 * row after a re-cache), every database error surfaced as a typed error, and
 * `clean()` reconciling rows with files.
 *
 * **Journal.** Glance counts every regular file in the cache directory except
 * the database itself as an image (its size, its prune, its "delete all"), so
 * a database in the cache directory (the default, shared with Glance) keeps
 * SQLite's rollback journal, as Glance does: `cache.db-journal` exists only
 * while a write transaction runs, and no `-wal`/`-shm` file ever sits beside
 * it. A database outside the cache directory (`dbPath`) uses WAL, which is
 * several times faster for small writes on disks with slow `fsync`
 * (docs/adr/0005); `journalMode` overrides the choice. `configure()` puts an
 * existing database in that mode; leaving WAL checkpoints it and removes its
 * `-wal`/`-shm` files, and it refuses with `BadDriverConfigurationError` when
 * another process keeps the database open in WAL mode for longer than
 * `busyTimeout`.
 *
 * @example
 * ```ts
 * const driver = new SqliteDriver({ cacheDir: '/var/cache/images' });
 * const cache = await ImageCache.open({ driver });
 * ```
 */
export class SqliteDriver extends DirectoryCacheDriver {
  readonly name = DRIVER_NAME;
  /** Shared by every process on the directory; digests kept; hits are atomic `UPDATE`s, so none is lost. */
  override readonly supports: DriverSupports = { persistent: true, storedChecksum: true, crossProcessHits: 'exact', metadataStore: 'separate' };
  /** Absolute path of the database file. */
  readonly dbPath: string;
  /** The journal mode `configure()` puts the database in (see {@link SqliteDriverOptions.journalMode}). */
  readonly journalMode: SqliteJournalMode;
  readonly #busyTimeout: number;
  #db: Database.Database | undefined;
  #statements: Record<keyof typeof SQL, Statement> | undefined;

  constructor(options: SqliteDriverOptions) {
    const cacheDir = options?.cacheDir;
    const dbPath = resolve(cacheDir ?? '.', options?.dbPath ?? 'cache.db');
    const inCacheDir = typeof cacheDir === 'string' && dirname(dbPath) === resolve(cacheDir);
    const name = basename(dbPath);
    super(options, inCacheDir ? [name, `${name}-wal`, `${name}-shm`, `${name}-journal`] : []);
    this.dbPath = dbPath;
    this.journalMode = options.journalMode ?? (inCacheDir ? 'delete' : 'wal');
    if (this.journalMode !== 'delete' && this.journalMode !== 'wal') {
      throw new InvalidArgumentError(`journalMode must be 'delete' or 'wal', got ${JSON.stringify(options.journalMode)}`);
    }
    this.#busyTimeout = options.busyTimeout ?? 5000;
  }

  protected async openMetadata(): Promise<void> {
    let db: Database.Database | undefined;
    try {
      db = new Database(this.dbPath, { timeout: this.#busyTimeout });
      await setJournalMode(db, this.journalMode, this.#busyTimeout);
      db.pragma('synchronous = NORMAL');
      db.pragma('temp_store = MEMORY');
      db.transaction(() => {
        db!.exec(CREATE_TABLE);
        db!.exec(CREATE_LRU_INDEX);
      }).immediate();
      const readColumns = () =>
        new Set((db!.pragma('table_info(cached_images)') as { name: string }[]).map((column) => column.name));
      let columns = readColumns();
      if (!columns.has('file_id')) {
        // A table created by Glance (or an older version of this driver): add our identity column once.
        db.transaction(() => {
          if (!readColumns().has('file_id')) db!.exec(ADD_FILE_ID_COLUMN);
        }).immediate();
        columns = readColumns();
      }
      const missing = REQUIRED_COLUMNS.filter((column) => !columns.has(column));
      if (missing.length > 0) {
        throw new Error(`table cached_images lacks column(s) ${missing.join(', ')}`);
      }
      this.#statements = Object.fromEntries(
        Object.entries(SQL).map(([key, sql]) => [key, db!.prepare(sql)]),
      ) as Record<keyof typeof SQL, Statement>;
      this.#db = db;
    } catch (error) {
      db?.close();
      throw new BadDriverConfigurationError(
        this.name,
        `cannot open the metadata database ${this.dbPath}: ${(error as Error).message}. ` +
          describeRecovery(error, this.dbPath),
        { path: this.dbPath, cause: error },
      );
    }
  }

  protected async closeMetadata(): Promise<void> {
    this.#db?.close();
    this.#db = undefined;
    this.#statements = undefined;
  }

  /** Runs one database operation, turning any failure into a {@link CacheStorageError}. */
  #run<T>(operation: string, fn: (statements: Record<keyof typeof SQL, Statement>, db: Database.Database) => T): T {
    const statements = this.#statements;
    const db = this.#db;
    if (statements === undefined || db === undefined) {
      throw new CacheStorageError(`[${this.name}] ${operation}: the database is not open`, { path: this.dbPath });
    }
    try {
      return fn(statements, db);
    } catch (error) {
      throw new CacheStorageError(
        `[${this.name}] ${operation} failed on ${this.dbPath}: ${(error as Error).message}. ` +
          describeRecovery(error, this.dbPath),
        { path: this.dbPath, cause: error },
      );
    }
  }

  protected async recordCommit(id: ImageId, info: CommitInfo): Promise<void> {
    this.#run('record commit', (s) =>
      s.upsert.run({ id, time: info.time, size: info.size, checksum: info.checksum ?? null, fid: info.identity }),
    );
  }

  protected async recordHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    const fid = fileIdentity(file);
    const updated = this.#run('record hit', (s) => s.hit.run({ id, time, fid, mtime: file.mtime, size: file.size }).changes);
    if (updated > 0) return;
    // A file without a row (written before a crash, by hand, or by another process): adopt it with this hit,
    // unless it was deleted while it was being read (no row for a file that is gone).
    if (!(await this.dir.exists(id, 'active'))) return;
    this.#run('record hit', (s) =>
      s.insertIfMissing.run({ id, lastAccessed: time, lastModified: file.mtime, size: file.size, hits: 1, fid }),
    );
  }

  /** `count` hits in one statement (see {@link recordHit} for the rules). */
  protected override async recordHitCount(id: ImageId, time: number, file: EntryStat, count: number): Promise<void> {
    const fid = fileIdentity(file);
    const updated = this.#run('record hits', (s) => s.hits.run({ id, time, fid, mtime: file.mtime, size: file.size, count }).changes);
    if (updated > 0) return;
    if (!(await this.dir.exists(id, 'active'))) return;
    this.#run('record hits', (s) =>
      s.insertIfMissing.run({ id, lastAccessed: time, lastModified: file.mtime, size: file.size, hits: count, fid }),
    );
  }

  protected async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const rows =
      entries.length === 1
        ? this.#run('read metadata', (s) => s.selectOne.all((entries[0] as EntryStat).imageId) as CachedImageRow[])
        : this.#run('list metadata', (s) => s.selectAll.all() as CachedImageRow[]);
    const metadata = new Map<ImageId, ImageMetadata>();
    for (const row of rows) {
      metadata.set(row.image_id, {
        hits: row.hits ?? 0,
        lastAccessed: row.last_accessed ?? 0,
        lastModified: row.last_modified ?? 0,
        checksum: row.checksum ?? undefined,
        identity: row.file_id ?? undefined,
      });
    }
    return metadata;
  }

  protected override async readStoredChecksum(entry: EntryStat): Promise<Pick<ImageMetadata, 'checksum' | 'identity'> | undefined> {
    const row = this.#run('read checksum', (s) => s.selectChecksum.get(entry.imageId) as Pick<CachedImageRow, 'checksum' | 'file_id'> | undefined);
    return row === undefined ? undefined : { checksum: row.checksum ?? undefined, identity: row.file_id ?? undefined };
  }

  protected async forgetImage(id: ImageId): Promise<void> {
    this.#run('delete metadata', (s) => s.deleteOne.run(id));
  }

  protected async forgetAllImages(): Promise<void> {
    this.#run('delete all metadata', (s) => s.deleteAll.run());
  }

  /** Deletes rows whose file is gone, adds rows for files that have none, corrects stale sizes. */
  protected override async reconcile(
    entries: readonly EntryStat[],
  ): Promise<{ orphanRecords: number; adoptedFiles: number }> {
    return this.#run('reconcile', (s, db) =>
      db
        .transaction(() => {
          const files = new Map(entries.map((entry) => [entry.imageId, entry]));
          const rows = s.selectIds.all() as Pick<CachedImageRow, 'image_id' | 'size'>[];
          let orphanRecords = 0;
          let adoptedFiles = 0;
          const known = new Set<string>();
          for (const row of rows) {
            known.add(row.image_id);
            const file = files.get(row.image_id);
            if (file === undefined) {
              s.deleteOne.run(row.image_id);
              orphanRecords++;
            } else if (row.size !== file.size) {
              s.fixSize.run({ id: row.image_id, size: file.size });
            }
          }
          for (const entry of entries) {
            if (known.has(entry.imageId)) continue;
            s.insertIfMissing.run({
              id: entry.imageId,
              lastAccessed: entry.mtime,
              lastModified: entry.mtime,
              size: entry.size,
              hits: 0,
              fid: fileIdentity(entry),
            });
            adoptedFiles++;
          }
          return { orphanRecords, adoptedFiles };
        })
        .immediate(),
    );
  }
}

/**
 * Puts the database in `mode`. Leaving WAL checkpoints the log into the
 * database and deletes `-wal` and `-shm`; SQLite refuses it at once
 * (`SQLITE_BUSY`, without calling the busy handler) while another connection
 * has the database open in WAL mode, so it is retried every 50 ms for up to
 * `busyTimeout` ms, and then refused with an error that says what to do.
 */
async function setJournalMode(db: Database.Database, mode: SqliteJournalMode, busyTimeout: number): Promise<void> {
  const deadline = Date.now() + busyTimeout;
  for (;;) {
    let current: unknown;
    try {
      current = db.pragma(`journal_mode = ${mode.toUpperCase()}`, { simple: true });
    } catch (error) {
      if (!((error as { code?: string }).code ?? '').startsWith('SQLITE_BUSY')) throw error;
      if (Date.now() >= deadline) {
        throw Object.assign(
          new Error(
            `it could not switch to ${mode === 'delete' ? 'the rollback journal' : 'WAL'} (journalMode '${mode}') within ${busyTimeout} ms: ` +
              'another process keeps the database open in WAL mode (an older version of this driver, or a process that ' +
              'opened it while it was in WAL mode). Stop the other processes that use this cache directory and configure again',
          ),
          { code: 'SQLITE_BUSY' },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    if (current !== mode) throw new Error(`journal_mode = ${mode.toUpperCase()} left the database in ${String(current)} mode`);
    return;
  }
}

/**
 * What to do about a database error, for people. Permission problems (every
 * `SQLITE_READONLY*`, `SQLITE_CANTOPEN*`, `SQLITE_PERM`, `SQLITE_AUTH`, and
 * `EACCES`/`EPERM`) are named as such with the fix; nothing here advises
 * moving the database aside unless it is corrupt, since that loses every
 * hit count and stored digest. Remedies are commands an operator can run.
 */
export function describeRecovery(error: unknown, dbPath: string): string {
  const code = (error as { code?: string } | undefined)?.code ?? '';
  const directory = dirname(dbPath);
  if (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT')) {
    return (
      `The database is corrupt. Stop the cache; \`sqlite3 ${dbPath} .recover\` may save its rows. Otherwise move ${dbPath} ` +
      '(with its -wal/-shm files) out of the cache directory, keeping them, and run `image-cache clean`: it rebuilds the table ' +
      'from the cached files (hit counts restart at 0 and stored digests are lost; the images stay).'
    );
  }
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return 'Another process holds a lock on the database for longer than busyTimeout; retry, or raise busyTimeout.';
  }
  if (
    code.startsWith('SQLITE_READONLY') ||
    code.startsWith('SQLITE_CANTOPEN') ||
    code === 'SQLITE_PERM' ||
    code === 'SQLITE_AUTH' ||
    code === 'EACCES' ||
    code === 'EPERM'
  ) {
    return `${permissionAdvice(dbPath, directory)} (the database, its journal files (-journal, -wal, -shm) and ${directory} itself must be writable).`;
  }
  if (code === 'SQLITE_FULL' || code.startsWith('SQLITE_IOERR')) {
    return 'The filesystem failed or is full; free space and retry.';
  }
  return `Nothing was changed; retry, and if it happens again check ${dbPath} with \`sqlite3 ${dbPath} 'PRAGMA integrity_check'\` before touching it (the table holds every hit count and stored digest).`;
}
