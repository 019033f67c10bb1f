import { basename, dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { BadDriverConfigurationError, CacheStorageError, InvalidArgumentError, type ImageId } from '@cache/core';
import {
  compareByRecency,
  DirectoryCacheDriver,
  fileIdentity,
  permissionAdvice,
  sameFile,
  type CachedImage,
  type CommitInfo,
  type DirectoryDriverOptions,
  type DriverSupports,
  type EntryStat,
  type ImageMetadata,
  type LeastRecentlyAccessed,
} from '@cache/core/driver';
import { ADD_FILE_ID_COLUMN, CREATE_LRU_INDEX, CREATE_TABLE, REQUIRED_COLUMNS, SQL, type CachedImageRow, type ListingRow } from './sqlite-schema.js';

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
  /**
   * Whether recording a hit (and deleting the row of a file already gone)
   * waits for the disk (`PRAGMA synchronous = NORMAL`, as strict commits
   * do). By default a hit's `UPDATE` runs with `synchronous = OFF`: SQLite hands its writes to the kernel
   * and returns without `fsync`, which is safe when the process crashes
   * (the journal protocol still runs; the kernel has every byte), but a
   * power loss or kernel crash before the kernel writes them back (the
   * next commit's `fsync`, or writeback within about 30 s) can lose recent
   * hits or, rarely, leave the database inconsistent (docs/adr/0008). Set
   * `true` where hit counts must survive power loss: every counted read
   * then pays the journal's and the database's `fsync` (about 4× slower
   * with the rollback journal).
   * @default false
   */
  syncHits?: boolean;
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
 * **Damage.** Before it writes anything, `configure()` runs SQLite's
 * `quick_check` (every page read once, about 20 ms per 100,000 rows) and
 * refuses a damaged or truncated database with `BadDriverConfigurationError`
 * and the recovery advice (see the README), so damage is found at start, not
 * by a request.
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
  /** See {@link SqliteDriverOptions.syncHits}. */
  readonly syncHits: boolean;
  readonly #busyTimeout: number;
  #db: Database.Database | undefined;
  #statements: Record<keyof typeof SQL, Statement> | undefined;
  /** Rows were written with `synchronous = OFF` since the last {@link syncMetadata}. */
  #unsyncedWrites = false;

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
    if (options.syncHits !== undefined && typeof options.syncHits !== 'boolean') {
      throw new InvalidArgumentError(`syncHits must be a boolean, got ${JSON.stringify(options.syncHits)}`);
    }
    this.syncHits = options.syncHits ?? false;
  }

  protected async openMetadata(): Promise<void> {
    let db: Database.Database | undefined;
    try {
      db = new Database(this.dbPath, { timeout: this.#busyTimeout });
      checkPages(db);
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

  /**
   * A commit's row. Strict mode: `synchronous = NORMAL`, durable before the
   * commit settles. Relaxed mode: `synchronous = OFF`, as the file itself is
   * written without `fsync`; {@link syncMetadata} makes it durable at the
   * next sync point (docs/adr/0007).
   */
  protected async recordCommit(id: ImageId, info: CommitInfo): Promise<void> {
    this.#run('record commit', (s) =>
      this.#withSync(s, this.durability !== 'relaxed', () =>
        s.upsert.run({ id, time: info.time, size: info.size, checksum: info.checksum ?? null, fid: info.identity }),
      ),
    );
  }

  /** The commits of one group in one transaction: one journal write and its fsyncs for all of them. */
  protected override async recordCommits(commits: readonly { id: ImageId; info: CommitInfo }[]): Promise<void> {
    const [only] = commits;
    if (commits.length === 1 && only !== undefined) return this.recordCommit(only.id, only.info);
    this.#run('record commits', (s, db) =>
      this.#withSync(s, this.durability !== 'relaxed', () =>
        db.transaction(() => {
          for (const { id, info } of commits) {
            s.upsert.run({ id, time: info.time, size: info.size, checksum: info.checksum ?? null, fid: info.identity });
          }
        })(),
      ),
    );
  }

  protected async recordHit(id: ImageId, time: number, file: EntryStat): Promise<void> {
    const fid = fileIdentity(file);
    const params = { id, time, fid, mtime: file.mtime, size: file.size };
    const updated = this.#run('record hit', (s) => this.#unsynced(s, () => s.hit.run(params).changes));
    if (updated > 0) return;
    // A file without a row (written before a crash, by hand, or by another process): adopt it with this hit,
    // unless it was deleted while it was being read (no row for a file that is gone).
    if (!this.dir.existsSync(id, 'active')) return;
    this.#run('record hit', (s) =>
      this.#unsynced(s, () => s.insertIfMissing.run({ id, lastAccessed: time, lastModified: file.mtime, size: file.size, hits: 1, fid })),
    );
  }

  /** `count` hits in one statement (see {@link recordHit} for the rules; batched by the server, `ImageCache.recordHits`). */
  protected override async recordHitCount(id: ImageId, time: number, file: EntryStat, count: number): Promise<void> {
    const fid = fileIdentity(file);
    const updated = this.#run('record hits', (s) => this.#unsynced(s, () => s.hits.run({ id, time, fid, mtime: file.mtime, size: file.size, count }).changes));
    if (updated > 0) return;
    if (!this.dir.existsSync(id, 'active')) return;
    this.#run('record hits', (s) =>
      this.#unsynced(s, () => s.insertIfMissing.run({ id, lastAccessed: time, lastModified: file.mtime, size: file.size, hits: count, fid })),
    );
  }

  /** Runs `fn` with `synchronous = OFF` unless {@link syncHits} (see the option), then back to `NORMAL`; for hits and row deletes. */
  #unsynced<T>(s: Record<keyof typeof SQL, Statement>, fn: () => T): T {
    return this.#withSync(s, this.syncHits, fn);
  }

  /**
   * Runs `fn` as it is (`synchronous = NORMAL`) when `sync`, else with
   * `synchronous = OFF` and then back to `NORMAL`, noting that the database
   * has writes the next {@link syncMetadata} makes durable.
   */
  #withSync<T>(s: Record<keyof typeof SQL, Statement>, sync: boolean, fn: () => T): T {
    if (sync) return fn();
    this.#unsyncedWrites = true;
    s.syncOff.run();
    try {
      return fn();
    } finally {
      s.syncNormal.run();
    }
  }

  /**
   * The relaxed sync point's share (see `DirectoryCacheDriver.syncMetadata`):
   * when rows were written with `synchronous = OFF` since the last one, one
   * small write transaction with `synchronous = FULL` (the database header's
   * `user_version` rewritten to its own value) makes SQLite `fsync` its
   * journal or WAL and the database, and with them every earlier write.
   */
  protected override async syncMetadata(): Promise<void> {
    if (!this.#unsyncedWrites) return;
    this.#run('sync metadata', (s, db) => {
      s.syncFull.run();
      try {
        db.transaction(() => {
          const version = db.pragma('user_version', { simple: true }) as number;
          db.pragma(`user_version = ${Math.trunc(version)}`);
        }).immediate();
      } finally {
        s.syncNormal.run();
      }
    });
    this.#unsyncedWrites = false;
  }

  /** `hits` and the identity it belongs to, from the primary key: one row, two columns. */
  protected override async readHitCount(entry: EntryStat): Promise<number> {
    const row = this.#run('read hit count', (s) => s.selectHits.get(entry.imageId) as Pick<CachedImageRow, 'hits' | 'file_id'> | undefined);
    if (row === undefined || (row.file_id !== null && !sameFile(row.file_id, entry))) return 0;
    return row.hits ?? 0;
  }

  /**
   * Walks the LRU index from its head instead of listing: one `readdir`
   * (which files exist), the ids of every row (which files have none), then
   * rows in eviction order, each checked against its file with one `lstat`,
   * until the first that describes the file under its id. Files without a
   * row, and files whose row describes another file (replaced under their
   * id), are ranked by their mtime, as a listing ranks them; rows without a
   * file are skipped. See docs/adr/0008 for what this trusts.
   */
  protected override async findLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null> {
    const names = new Set(await this.dir.listNames('active'));
    const candidates: CachedImage[] = [];
    this.#run('find the least recently accessed', (s) => {
      const withRow = new Set(s.selectIdList.pluck().all() as string[]);
      const asFile = (entry: EntryStat): CachedImage => ({
        imageId: entry.imageId,
        hits: 0,
        lastAccessed: entry.mtime,
        lastModified: entry.mtime,
        size: entry.size,
      });
      for (const name of names) {
        if (withRow.has(name)) continue;
        const entry = this.dir.statFileSync(name, 'active');
        if (entry !== undefined) candidates.push(asFile(entry));
      }
      for (const row of s.selectByRecency.iterate() as IterableIterator<Pick<CachedImageRow, 'image_id' | 'last_accessed' | 'last_modified' | 'file_id'>>) {
        if (!names.has(row.image_id)) continue;
        const entry = this.dir.statFileSync(row.image_id, 'active');
        if (entry === undefined) continue;
        if (row.file_id !== null && !sameFile(row.file_id, entry)) {
          candidates.push(asFile(entry));
          continue;
        }
        candidates.push({
          imageId: row.image_id,
          hits: 0,
          lastAccessed: row.last_accessed ?? 0,
          lastModified: row.last_modified ?? 0,
          size: entry.size,
        });
        break;
      }
    });
    let least: CachedImage | undefined;
    for (const image of candidates) if (least === undefined || compareByRecency(image, least) < 0) least = image;
    return least === undefined ? null : { imageId: least.imageId, size: least.size };
  }

  protected async readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>> {
    const metadata = new Map<ImageId, ImageMetadata>();
    if (entries.length === 1) {
      const rows = this.#run('read metadata', (s) => s.selectOne.all((entries[0] as EntryStat).imageId) as CachedImageRow[]);
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
    // A listing: every row once, without the digest (listings do not show it), as arrays.
    const rows = this.#run('list metadata', (s) => s.selectListing.raw().all() as ListingRow[]);
    for (const [id, hits, lastAccessed, lastModified, fileId] of rows) {
      metadata.set(id, { hits: hits ?? 0, lastAccessed: lastAccessed ?? 0, lastModified: lastModified ?? 0, identity: fileId ?? undefined });
    }
    return metadata;
  }

  protected override async readStoredChecksum(entry: EntryStat): Promise<Pick<ImageMetadata, 'checksum' | 'identity'> | undefined> {
    const row = this.#run('read checksum', (s) => s.selectChecksum.get(entry.imageId) as Pick<CachedImageRow, 'checksum' | 'file_id'> | undefined);
    return row === undefined ? undefined : { checksum: row.checksum ?? undefined, identity: row.file_id ?? undefined };
  }

  /**
   * Runs after the file is gone, with `synchronous = OFF` like a hit (unless
   * `syncHits`): a delete lost to a power cut leaves a row without a file,
   * which no listing shows and `clean()` removes (docs/adr/0008).
   */
  protected async forgetImage(id: ImageId): Promise<void> {
    this.#run('delete metadata', (s) => this.#unsynced(s, () => s.deleteOne.run(id)));
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
 * Refuses a damaged database before anything is written to it: SQLite's
 * `quick_check` reads every page (about 20 ms per 100,000 rows), so damage
 * left by a power cut during a write that ran with `synchronous = OFF` (a
 * hit, a relaxed commit's row) is reported by `configure()`, with the
 * recovery advice, instead of by whichever request first reads that page.
 * Throws an error whose `code` is `SQLITE_CORRUPT`.
 */
function checkPages(db: Database.Database): void {
  const result: unknown = db.pragma('quick_check(1)', { simple: true });
  if (result !== 'ok') {
    throw Object.assign(new Error(`the database is damaged (PRAGMA quick_check: ${String(result)})`), { code: 'SQLITE_CORRUPT' });
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
