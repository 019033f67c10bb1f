import { closeSync, constants as fsConstants, fstatSync, openSync, readSync, unlinkSync, writeSync, type BigIntStats } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CacheDirectory, entryStatOf, fileIdentity, isErrnoError, sameFile, SMALL_WRITE_BYTES, storageError, syncDirectory, type EntryStat, type EntryStatus } from './cache-dir.js';
import { nowSeconds } from './clock.js';
import {
  claimAbandonedJournals,
  CommitGroup,
  fileMatchesDigest,
  normalizeDurability,
  normalizeSyncInterval,
  RelaxedWindow,
  releaseClaim,
  STATE_DIRECTORY,
  syncPath,
  type AbandonedJournal,
  type Durability,
} from './durability.js';
import type {
  CachedImage,
  CacheDriver,
  CacheWriter,
  CleanReport,
  DriverCapabilities,
  DriverSupports,
  ImageStat,
  QuarantineOptions,
  LeastRecentlyAccessed,
  ReadOptions,
  RecordHitsOptions,
  WriteSmallImageOptions,
} from './driver.js';
import { CacheError, CacheStorageError, DriverNotOpenError, ImageBeingCachedError, ImageChangedError, ImageNotCachedError, InvalidArgumentError } from './errors.js';
import { assertImageId, isValidImageId, type ImageId } from './image-id.js';
import { assertSatisfiable, normalizeQuarantineOptions, normalizeReadOptions } from './options.js';
import { CacheReadStream, CacheWriteStream, MAX_NO_SPACE_RETRIES, READ_CHUNK_SIZE, readBuffer } from './streams.js';
import type { FdHandle, WriteHandle } from './write-handle.js';

/**
 * Reads of up to this many bytes (one read chunk, 1 MiB: a whole entry of
 * at most that size, or a range of at most that length) are read when
 * opened, with one synchronous `read`, instead of streamed: a thread-pool
 * round trip costs more than the copy (a 1 MiB read from the page cache in
 * a pool thread cost 2.5 times the CPU of the same read on the event loop,
 * ADR 0008). Above 64 KiB the bytes go into a pooled buffer
 * (`releaseReadChunk`). A read from a cold page cache then blocks the event
 * loop for one disk read of at most this size.
 */
export const READ_AT_OPEN_BYTES = READ_CHUNK_SIZE;

/** Default age (seconds) after which `clean()` deletes an incomplete file, as in Glance. */
export const DEFAULT_STALL_TIME = 86_400;

/** A problem a driver reports without failing the call (e.g. a hit it could not record). */
export interface CacheWarning {
  code:
    | 'CACHE_HIT_NOT_RECORDED'
    | 'CACHE_ROLLBACK_INCOMPLETE'
    | 'CACHE_CLEAN_FAILED'
    | 'CACHE_QUARANTINE_INCOMPLETE'
    | 'CACHE_UNSYNCED_RECOVERED'
    | 'CACHE_SYNC_FAILED';
  message: string;
  imageId?: ImageId;
  cause?: unknown;
}

/** Options every directory-based driver takes. */
export interface DirectoryDriverOptions {
  /** The cache directory; created by `configure()` if missing. */
  cacheDir: string;
  /**
   * Receives non-fatal problems (a hit that could not be recorded, a rollback
   * that left a file behind).
   * @default process.emitWarning
   */
  onWarning?: (warning: CacheWarning) => void;
  /**
   * How commits are made durable (docs/adr/0007-durability-modes.md).
   * `strict`: fsync of the file, rename into place, fsync of the directory,
   * metadata recorded, all before the write reports success; concurrent
   * commits share one directory fsync and one metadata transaction.
   * `relaxed`: no fsync, as Glance: the file is renamed into place once its
   * bytes are written and becomes durable at the next sync point (every
   * `syncInterval` ms, {@link DirectoryCacheDriver.sync}, `close()`), and so
   * does metadata the driver writes without waiting for the disk (the
   * sqlite driver's rows; see `syncMetadata`). After an
   * unclean shutdown, entries committed since the last sync point are
   * re-verified against their stored digest or moved to `invalid/`, so a torn
   * file is never served.
   * @default 'strict'
   */
  durability?: Durability;
  /**
   * `relaxed` only: how often (ms) the commits made since the last sync point
   * are fsynced in the background and their journal cleared; 0 syncs only on
   * `sync()` and `close()`.
   * @default 5000
   */
  syncInterval?: number;
}

/** One commit waiting for its group (see {@link CommitGroup}). */
interface PendingCommit {
  id: ImageId;
  info: CommitInfo;
}

/** Per-entry metadata a driver keeps; sizes always come from the file itself. */
export interface ImageMetadata {
  /** Completed reads since the commit. */
  hits: number;
  /** Last completed read (or the commit), epoch seconds. */
  lastAccessed: number;
  /** Commit time, epoch seconds. */
  lastModified: number;
  /** The verified digest stored at commit, if any (drivers with `supports.storedChecksum`). */
  checksum?: string | undefined;
  /**
   * The {@link fileIdentity} of the file the metadata was recorded for
   * ({@link CommitInfo.identity}, or the file a hit was recorded on). When
   * given and it differs from the file now under the id, the base class
   * ignores the record: a replaced file starts at 0 hits with no digest.
   * Leave it out only when the metadata lives on the file itself.
   */
  identity?: string | undefined;
}

/** What a driver records when an entry is committed. */
export interface CommitInfo {
  /** Bytes of the committed file. */
  size: number;
  /** Commit time, epoch seconds; also the first `lastAccessed`. */
  time: number;
  /** Verified digest, when the writer was given one (`sha256:<hex>`, or md5 hex). */
  checksum: string | undefined;
  /** {@link fileIdentity} of the committed file (the rename keeps it): store it to tell a replaced file apart. */
  identity: string;
}

/** The default manifest of a directory driver: persistent, separate store, no stored digests, best-effort cross-process hits. */
export const DEFAULT_DRIVER_SUPPORTS: DriverSupports = Object.freeze({
  persistent: true,
  storedChecksum: false,
  crossProcessHits: 'best-effort',
  metadataStore: 'separate',
});

/** True when a driver's record may be used for the file `entry` (no identity, or the same one). */
export function metadataMatches(metadata: Pick<ImageMetadata, 'identity'>, entry: EntryStat): boolean {
  return metadata.identity === undefined || sameFile(metadata.identity, entry);
}

const STATUSES: readonly EntryStatus[] = ['active', 'incomplete', 'invalid', 'queue'];

/** Throws `InvalidArgumentError` unless `status` is one of the four parts of a cache. */
export function assertEntryStatus(status: unknown): asserts status is EntryStatus {
  if (!STATUSES.includes(status as EntryStatus)) {
    throw new InvalidArgumentError(`unknown cache status '${String(status)}': use one of ${STATUSES.join(', ')}`);
  }
}

/**
 * Orders entries for eviction: least recently accessed first; ties broken by
 * older commit, then by id. Every driver and the facade use this one rule.
 */
export function compareByRecency(
  a: Pick<CachedImage, 'imageId' | 'lastAccessed' | 'lastModified'>,
  b: Pick<CachedImage, 'imageId' | 'lastAccessed' | 'lastModified'>,
): number {
  return (
    a.lastAccessed - b.lastAccessed ||
    a.lastModified - b.lastModified ||
    (a.imageId < b.imageId ? -1 : a.imageId > b.imageId ? 1 : 0)
  );
}

/**
 * The shared implementation of {@link CacheDriver}: lifecycle guard, id
 * validation at every public call, and all file handling through
 * {@link CacheDirectory}. A concrete driver adds only where metadata lives, by
 * implementing the protected hooks.
 *
 * Files are the truth: an entry exists when its active file does. Listings
 * come from one directory scan merged with the driver's metadata; a file with
 * no metadata is listed with 0 hits and its mtime as access time, metadata
 * with no file is not listed (and `clean()` reconciles both).
 */
export abstract class DirectoryCacheDriver implements CacheDriver {
  abstract readonly name: string;
  readonly capabilities: DriverCapabilities = { xattr: false, atime: false };
  /** What the driver promises; override in a concrete driver (see {@link DriverSupports}). */
  readonly supports: DriverSupports = DEFAULT_DRIVER_SUPPORTS;
  /**
   * Open every read with `O_NOATIME` (where the process may: it owns the file
   * or has CAP_FOWNER), not only raw reads (`countHit: false`). A driver that
   * ranks by atime and sets it itself when a read completes turns this on, so
   * that reads which count nothing (a range that stops early, an abandoned
   * read) do not move atime either.
   */
  protected readonly noAtimeReads: boolean = false;
  /** The cache-directory logic this driver composes. */
  protected readonly dir: CacheDirectory;
  readonly #onWarning: (warning: CacheWarning) => void;
  #state: 'new' | 'open' | 'closed' = 'new';
  #configuring: Promise<void> | undefined;
  /** How commits are made durable (see {@link DirectoryDriverOptions.durability}). */
  readonly durability: Durability;
  readonly #syncInterval: number;
  readonly #commits = new CommitGroup<PendingCommit>((batch) => this.#flushCommits(batch));
  /** The base directory, open for its group fsyncs (strict). */
  #baseHandle: FileHandle | undefined;
  /** The relaxed window open now, its opening, and the relaxed writers not yet settled. */
  #window: RelaxedWindow | undefined;
  #opening: Promise<RelaxedWindow> | undefined;
  #relaxedWriters = 0;
  #syncing: Promise<void> | undefined;
  #syncTimer: NodeJS.Timeout | undefined;

  /**
   * @param options - the cache directory and warning sink.
   * @param reservedNames - file names in the cache directory that belong to the driver (e.g. its database).
   */
  constructor(options: DirectoryDriverOptions, reservedNames: readonly string[] = []) {
    if (typeof options?.cacheDir !== 'string' || options.cacheDir.length === 0) {
      throw new InvalidArgumentError('cacheDir is required: pass { cacheDir: "/path/to/cache" }');
    }
    this.dir = new CacheDirectory(options.cacheDir, { driverName: new.target.name, reservedNames });
    this.#onWarning = options.onWarning ?? defaultWarning;
    this.durability = normalizeDurability(options.durability);
    this.#syncInterval = normalizeSyncInterval(options.syncInterval);
  }

  get cacheDir(): string {
    return this.dir.baseDir;
  }

  /** File names in the cache directory that belong to this driver (never ids, never listed). */
  get reservedNames(): readonly string[] {
    return this.dir.reservedNames;
  }

  // ---- hooks for concrete drivers -------------------------------------------------

  /** Opens the metadata store and probes what it needs; throw `BadDriverConfigurationError` to refuse. */
  protected abstract openMetadata(): Promise<void>;
  /** Releases the metadata store. */
  protected abstract closeMetadata(): Promise<void>;
  /** Records a committed entry (after the file is durable and active). Throwing rolls the commit back. */
  protected abstract recordCommit(id: ImageId, info: CommitInfo): Promise<void>;
  /**
   * Records the commits of one group (concurrent commits in this directory,
   * see docs/adr/0007). By default one {@link recordCommit} after the other; a
   * driver whose store has transactions records them in one. Throwing fails
   * the group: each commit is then recorded on its own, so only those that
   * fail again are rolled back. In strict mode it runs while the directory
   * fsync of the group is in flight.
   */
  protected async recordCommits(commits: readonly { id: ImageId; info: CommitInfo }[]): Promise<void> {
    for (const commit of commits) await this.recordCommit(commit.id, commit.info);
  }
  /**
   * Records a completed read: one more hit, last access `time`. `file` is the
   * stat of the file that was read; a driver that stores identities resets
   * the count (to 1) when the record belongs to another file, and creates a
   * record when there is none (a file committed by another process).
   */
  protected abstract recordHit(id: ImageId, time: number, file: EntryStat): Promise<void>;
  /**
   * Records `count` completed reads of `file`, the last at `time`: by
   * default {@link recordHit} `count` times; a driver whose store can add
   * `count` at once overrides it with one write.
   */
  protected async recordHitCount(id: ImageId, time: number, file: EntryStat, count: number): Promise<void> {
    for (let i = 0; i < count; i++) await this.recordHit(id, time, file);
  }
  /** Metadata for the given entries (missing ones are treated as 0 hits, mtime access). */
  protected abstract readMetadata(entries: readonly EntryStat[]): Promise<Map<ImageId, ImageMetadata>>;
  /**
   * Completed reads of one entry (0 without metadata). By default taken from
   * {@link readMetadata}; a driver may read only the hit count.
   */
  protected async readHitCount(entry: EntryStat): Promise<number> {
    const metadata = (await this.readMetadata([entry])).get(entry.imageId);
    return metadata !== undefined && metadataMatches(metadata, entry) ? metadata.hits : 0;
  }
  /**
   * The digest stored with one entry, with the identity it was recorded for.
   * By default taken from {@link readMetadata}; a driver may read only the digest.
   */
  protected async readStoredChecksum(entry: EntryStat): Promise<Pick<ImageMetadata, 'checksum' | 'identity'> | undefined> {
    return (await this.readMetadata([entry])).get(entry.imageId);
  }
  /** Forgets one entry's metadata (delete, rollback). */
  protected abstract forgetImage(id: ImageId): Promise<void>;
  /** Forgets every entry's metadata. */
  protected abstract forgetAllImages(): Promise<void>;
  /** Runs on the incomplete file just before it is made durable and active (e.g. set attributes on it). */
  protected async prepareCommit(_id: ImageId, _incompletePath: string, _info: CommitInfo): Promise<void> {}
  /**
   * Runs on the incomplete file before it moves to `invalid/`. By default it
   * forgets stale metadata of the id when no committed file exists; a failed
   * rewrite of a cached id leaves the committed entry and its metadata intact.
   */
  protected async prepareRollback(id: ImageId, _incompletePath: string, _reason: Error): Promise<void> {
    if (!(await this.dir.exists(id, 'active'))) await this.forgetImage(id);
  }
  /**
   * Runs on a quarantined file after it moved to `invalid/` (see
   * {@link quarantineImage}), e.g. to record `reason` on it. A failure is
   * reported as a warning; the file stays quarantined.
   */
  protected async noteQuarantine(_id: ImageId, _invalidPath: string, _reason: string): Promise<void> {}
  /** Makes metadata agree with the active files (during `clean()`). */
  protected async reconcile(_entries: readonly EntryStat[]): Promise<{ orphanRecords: number; adoptedFiles: number }> {
    return { orphanRecords: 0, adoptedFiles: 0 };
  }

  /** Reports a non-fatal problem. */
  protected warn(warning: CacheWarning): void {
    try {
      this.#onWarning(warning);
    } catch {
      // A broken warning sink must not break the cache.
    }
  }

  // ---- lifecycle ------------------------------------------------------------------

  async configure(): Promise<void> {
    if (this.#state === 'open') return;
    if (this.#state === 'closed') throw new DriverNotOpenError(this.name, 'closed');
    this.#configuring ??= (async () => {
      try {
        await this.dir.create();
        await this.openMetadata();
        try {
          await this.#recoverUnsynced();
          if (this.durability === 'strict') this.#baseHandle = await open(this.dir.baseDir, 'r');
        } catch (error) {
          await this.closeMetadata().catch(() => undefined);
          throw error;
        }
        this.#state = 'open';
        if (this.durability === 'relaxed' && this.#syncInterval > 0) {
          this.#syncTimer = setInterval(() => {
            this.sync().catch((error: unknown) =>
              this.warn({ code: 'CACHE_SYNC_FAILED', message: `[${this.name}] background sync failed: ${(error as Error).message}`, cause: error }),
            );
          }, this.#syncInterval);
          this.#syncTimer.unref();
        }
      } finally {
        this.#configuring = undefined;
      }
    })();
    return this.#configuring;
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    const wasOpen = this.#state === 'open';
    this.#state = 'closed';
    if (this.#syncTimer !== undefined) clearInterval(this.#syncTimer);
    this.#syncTimer = undefined;
    try {
      if (wasOpen) await this.#syncNow();
    } finally {
      await this.#baseHandle?.close().catch(() => undefined);
      this.#baseHandle = undefined;
      if (wasOpen) await this.closeMetadata();
    }
  }

  /**
   * Makes every commit so far durable. Strict mode: nothing to do (each
   * commit was durable before it settled). Relaxed mode: fsyncs the files
   * committed since the last sync point and the directory, then, unless a
   * write is still under way, clears the journal of unsynced commits. Runs on
   * its own every `syncInterval` ms and in `close()`.
   */
  async sync(): Promise<void> {
    this.guardOpen();
    await this.#syncNow();
  }

  #syncNow(): Promise<void> {
    if (this.durability === 'strict') return Promise.resolve();
    // One sync at a time; a call during one waits for it and then runs its own (it may have new commits).
    const previous = this.#syncing ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(() => this.#syncWindow());
    this.#syncing = next;
    return next.finally(() => {
      if (this.#syncing === next) this.#syncing = undefined;
    });
  }

  async #syncWindow(): Promise<void> {
    const window = this.#window;
    if (window === undefined) return;
    const notes = window.notes;
    await window.syncCommitted();
    await syncDirectory(this.dir.baseDir);
    await this.syncMetadata();
    // A writer under way keeps the window (its file's mtime may precede a new window's start).
    if (this.#window !== window || this.#relaxedWriters > 0 || window.notes !== notes) return;
    this.#window = undefined;
    await window.close(this.#stateDir);
  }

  /**
   * Relaxed mode: makes the metadata the driver wrote without waiting for
   * the disk since the last sync point durable. Called at every sync point
   * after the files and the directory are fsynced and before the journal of
   * unsynced commits is cleared, so a clean point covers files and metadata
   * alike. The default does nothing (metadata written durably, or none).
   */
  protected async syncMetadata(): Promise<void> {}

  get #stateDir(): string {
    return join(this.dir.baseDir, STATE_DIRECTORY);
  }

  /** The relaxed window to commit in, opened (its journal durable) when there is none. */
  async #relaxedWindow(): Promise<RelaxedWindow> {
    if (this.#window !== undefined) return this.#window;
    this.#opening ??= RelaxedWindow.open(this.#stateDir).then(
      (window) => {
        this.#window = window;
        this.#opening = undefined;
        return window;
      },
      (error: unknown) => {
        this.#opening = undefined;
        throw error;
      },
    );
    return this.#opening;
  }

  /**
   * Re-verifies the entries of relaxed windows whose process is gone (see
   * docs/adr/0007): an entry whose stored digest matches its bytes stays
   * (and is fsynced), any other moves to `invalid/`.
   */
  async #recoverUnsynced(): Promise<void> {
    const journals = await claimAbandonedJournals(this.#stateDir);
    try {
      for (const journal of journals) await this.#recoverJournal(journal);
    } finally {
      for (const journal of journals) releaseClaim(journal.path);
    }
  }

  async #recoverJournal(journal: AbandonedJournal): Promise<void> {
    const suspects = new Set<ImageId>();
    for (const id of journal.ids) if (isValidImageId(id, this.dir.reservedNames)) suspects.add(id);
    if (journal.rebooted) {
      for (const entry of await this.dir.list('active')) if (entry.mtimeNs >= journal.since) suspects.add(entry.imageId);
    }
    const dropped: ImageId[] = [];
    let kept = 0;
    for (const id of [...suspects].sort()) {
      const entry = await this.dir.statFile(id, 'active');
      if (entry === undefined) continue;
      const path = this.dir.path(id, 'active');
      const stored = await this.readStoredChecksum(entry).catch(() => undefined);
      const digest = stored !== undefined && metadataMatches(stored, entry) ? stored.checksum : undefined;
      if (digest !== undefined && (await fileMatchesDigest(path, digest))) {
        await syncPath(path);
        kept++;
        continue;
      }
      if (!(await this.dir.moveToInvalid(id, 'active'))) continue;
      dropped.push(id);
      if (!(await this.dir.exists(id, 'active'))) await this.forgetImage(id).catch(() => undefined);
      const reason = digest === undefined ? 'committed without fsync (relaxed) before an unclean shutdown, no digest to verify it' : 'committed without fsync (relaxed) before an unclean shutdown, its bytes do not match its digest';
      await this.noteQuarantine(id, this.dir.path(id, 'invalid'), reason).catch(() => undefined);
    }
    await syncDirectory(this.dir.baseDir);
    await unlink(journal.path).catch((error: unknown) => {
      if (!isErrnoError(error, 'ENOENT')) throw storageError('delete', journal.path, error);
    });
    await syncDirectory(this.#stateDir);
    if (suspects.size > 0) {
      this.warn({
        code: 'CACHE_UNSYNCED_RECOVERED',
        message:
          `[${this.name}] recovered from an unclean shutdown of a relaxed-durability writer: ${kept} entr${kept === 1 ? 'y' : 'ies'} verified, ` +
          `${dropped.length} moved to invalid/${dropped.length > 0 ? ` (${dropped.join(', ')})` : ''}`,
      });
    }
  }

  /** Validates the id (`InvalidImageIdError`), then that the driver is open (`DriverNotOpenError`). */
  protected guard(id: unknown): asserts id is ImageId {
    assertImageId(id, this.dir.reservedNames);
    this.guardOpen();
  }

  /** Throws `DriverNotOpenError` unless `configure()` has completed and `close()` has not been called. */
  protected guardOpen(): void {
    if (this.#state !== 'open') throw new DriverNotOpenError(this.name, this.#state === 'closed' ? 'closed' : 'new');
  }

  // ---- queries --------------------------------------------------------------------

  isCached(id: ImageId): Promise<boolean> {
    // Not `async` (one syscall; no await): a resolved promise, or a rejection for a bad id, a closed driver, a failed lstat.
    try {
      const path = this.dir.checkedActivePath(id);
      this.guardOpen();
      return Promise.resolve(this.dir.existsAtSync(path));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  async isBeingCached(id: ImageId): Promise<boolean> {
    this.guard(id);
    return this.dir.exists(id, 'incomplete');
  }

  async isCacheable(id: ImageId): Promise<boolean> {
    this.guard(id);
    // Both checks at once: one round trip to the threadpool instead of two in a row.
    const [active, incomplete] = await Promise.all([this.dir.exists(id, 'active'), this.dir.exists(id, 'incomplete')]);
    return !active && !incomplete;
  }

  async isQueued(id: ImageId): Promise<boolean> {
    this.guard(id);
    return this.dir.exists(id, 'queue');
  }

  async getCachedImages(): Promise<CachedImage[]> {
    this.guardOpen();
    const entries = await this.dir.list('active');
    const metadata = await this.readMetadata(entries);
    return entries.map((entry) => toRecord(entry, metadata.get(entry.imageId)));
  }

  async getStoredChecksum(id: ImageId): Promise<string | undefined> {
    this.guard(id);
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined) return undefined;
    const stored = await this.readStoredChecksum(entry);
    return stored !== undefined && metadataMatches(stored, entry) ? (stored.checksum ?? undefined) : undefined;
  }

  async getCacheSize(): Promise<number> {
    this.guardOpen();
    const entries = await this.dir.list('active');
    return entries.reduce((sum, entry) => sum + entry.size, 0);
  }

  getImageSize(id: ImageId): Promise<number> {
    // Not `async`, as isCached.
    try {
      const path = this.dir.checkedActivePath(id);
      this.guardOpen();
      const size = this.dir.sizeAtSync(path);
      if (size === undefined) throw new ImageNotCachedError(id, path);
      return Promise.resolve(size);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  async getHitCount(id: ImageId): Promise<number> {
    this.guard(id);
    const entry = this.dir.statFileSync(id, 'active');
    if (entry === undefined) return 0;
    return this.readHitCount(entry);
  }

  async getLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null> {
    this.guardOpen();
    return this.findLeastRecentlyAccessed();
  }

  /**
   * The entry prune evicts next, for {@link getLeastRecentlyAccessed} (the
   * driver is open). By default the minimum of a full listing by
   * {@link compareByRecency}; a driver with an index on the recency order
   * overrides it with a query that reads only the head of that order.
   */
  protected async findLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null> {
    const images = await this.getCachedImages();
    let least: CachedImage | undefined;
    for (const image of images) if (least === undefined || compareByRecency(image, least) < 0) least = image;
    return least === undefined ? null : { imageId: least.imageId, size: least.size };
  }

  getImageFilepath(id: ImageId, status: EntryStatus = 'active'): string {
    assertImageId(id, this.dir.reservedNames);
    assertEntryStatus(status);
    return this.dir.path(id, status);
  }

  // ---- queue ----------------------------------------------------------------------

  async queueImage(id: ImageId): Promise<boolean> {
    this.guard(id);
    if ((await this.dir.exists(id, 'active')) || (await this.dir.exists(id, 'incomplete'))) return false;
    return this.dir.createQueueMarker(id);
  }

  async getQueuedImages(): Promise<ImageId[]> {
    this.guardOpen();
    return this.dir.listQueue();
  }

  async deleteQueuedImage(id: ImageId): Promise<void> {
    this.guard(id);
    await this.dir.remove(id, 'queue');
  }

  async deleteAllQueuedImages(): Promise<number> {
    this.guardOpen();
    return this.dir.removeAll('queue');
  }

  // ---- deletes and clean ----------------------------------------------------------

  async deleteCachedImage(id: ImageId): Promise<void> {
    this.guard(id);
    await this.dir.remove(id, 'active');
    await this.forgetImage(id);
  }

  async deleteAllCachedImages(): Promise<number> {
    this.guardOpen();
    const removed = await this.dir.removeAll('active');
    await this.forgetAllImages();
    return removed;
  }

  async clean(stallTimeSeconds: number = DEFAULT_STALL_TIME): Promise<CleanReport> {
    this.guardOpen();
    if (typeof stallTimeSeconds !== 'number' || !(stallTimeSeconds >= 0)) {
      throw new InvalidArgumentError(`stall time must be a number of seconds >= 0, got ${String(stallTimeSeconds)}`);
    }
    const invalid = await this.dir.reapInvalid();
    const stalled = await this.dir.reapStalled(stallTimeSeconds);
    const active = await this.dir.list('active');
    // Records of files that were replaced under their id are orphans too: forget them, then reconcile adopts the new file.
    const metadata = await this.readMetadata(active);
    let replaced = 0;
    for (const entry of active) {
      const record = metadata.get(entry.imageId);
      if (record !== undefined && !metadataMatches(record, entry)) {
        await this.forgetImage(entry.imageId);
        replaced++;
      }
    }
    const reconciled = await this.reconcile(active);
    const orphanRecords = reconciled.orphanRecords + replaced;
    const adoptedFiles = reconciled.adoptedFiles;
    const cached = new Set(active.map((entry) => entry.imageId));
    let staleQueueMarkers = 0;
    for (const id of await this.dir.listQueue()) {
      if (cached.has(id) && (await this.dir.remove(id, 'queue'))) staleQueueMarkers++;
    }
    const errors = [...invalid.errors, ...stalled.errors];
    for (const error of errors) this.warn({ code: 'CACHE_CLEAN_FAILED', message: error.message, cause: error });
    return {
      invalid: invalid.removed.length,
      stalled: stalled.removed.length,
      orphanRecords,
      adoptedFiles,
      staleQueueMarkers,
      errors,
    };
  }

  // ---- reads and writes -----------------------------------------------------------

  async openForRead(id: ImageId, options?: ReadOptions): Promise<Readable> {
    this.guard(id);
    const read = normalizeReadOptions(options);
    const path = this.dir.path(id, 'active');
    const noAtime = this.noAtimeReads || !read.countHit;
    return this.#openRead(id, path, read, noAtime);
  }

  /**
   * Opens an entry for reading with synchronous `open` and `fstat` (a few µs
   * each, where each asynchronous call is a thread-pool round trip). A read
   * of at most {@link READ_AT_OPEN_BYTES} (the whole entry or the range) is
   * read and closed right here (synchronous `read` and `close`); a larger
   * one streams from the same descriptor, which the stream owns (callback
   * `fs.read` in 1 MiB chunks). Refusals (missing, changed, unsatisfiable
   * range) are thrown before anything is read.
   */
  #openRead(id: ImageId, path: string, read: ReturnType<typeof normalizeReadOptions>, noAtime: boolean): Readable {
    const fd = openActiveSync(id, path, noAtime);
    let owned = false;
    try {
      let info: BigIntStats;
      try {
        info = fstatSync(fd, { bigint: true });
      } catch (error) {
        throw storageError('stat', path, error);
      }
      const file = this.#checkOpened(id, path, read, info);
      const stop = read.end === undefined ? file.size : Math.min(file.size, read.end + 1);
      const length = Math.max(0, stop - read.start);
      if (length > READ_AT_OPEN_BYTES) {
        // The size lets the stream size its buffers and end without an extra read (see CacheReadStream).
        const stream = new CacheReadStream(id, fd, {
          size: file.size,
          start: read.start,
          end: read.end,
          onComplete: read.countHit ? this.#hitRecorder(id, file) : undefined,
        });
        owned = true;
        return stream;
      }
      const data = readBuffer(length);
      let got = 0;
      try {
        while (got < data.length) {
          const n = readSync(fd, data, got, data.length - got, read.start + got);
          if (n === 0) break;
          got += n;
        }
      } catch (error) {
        throw storageError('read', path, error);
      }
      return new CacheReadStream(id, null, {
        size: file.size,
        start: read.start,
        end: read.end,
        data: got === data.length ? data : data.subarray(0, got),
        onComplete: read.countHit ? this.#hitRecorder(id, file) : undefined,
      });
    } finally {
      if (!owned) {
        try {
          closeSync(fd);
        } catch {
          // A read-only descriptor: nothing is lost if close reports an error.
        }
      }
    }
  }

  /** Checks an opened active file against the read's options; its {@link EntryStat}. */
  #checkOpened(id: ImageId, path: string, read: ReturnType<typeof normalizeReadOptions>, info: BigIntStats): EntryStat {
    if (!info.isFile()) throw new ImageNotCachedError(id, path);
    const file = entryStatOf(id, info);
    if (read.identity !== undefined && !sameFile(read.identity, file)) {
      throw new ImageChangedError(id, path, read.identity, fileIdentity(file));
    }
    assertSatisfiable(id, path, read, file.size);
    return file;
  }

  /** What a completed read runs: records the hit, reporting (never throwing) a failure. */
  #hitRecorder(id: ImageId, file: EntryStat): () => Promise<void> {
    return async () => {
      try {
        await this.recordHit(id, nowSeconds(), file);
      } catch (error) {
        this.warn({
          code: 'CACHE_HIT_NOT_RECORDED',
          message: `[${this.name}] could not record a hit for '${id}': ${(error as Error).message}`,
          imageId: id,
          cause: error,
        });
      }
    };
  }

  async recordHits(id: ImageId, count: number, options: RecordHitsOptions): Promise<boolean> {
    this.guard(id);
    if (!Number.isSafeInteger(count) || count < 0) throw new InvalidArgumentError(`recordHits: count must be a whole number of hits, not ${String(count)}`);
    if (typeof options?.identity !== 'string') throw new InvalidArgumentError('recordHits: options.identity must be the ImageStat.identity of the file that was read');
    if (count === 0) return false;
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined || !sameFile(options.identity, entry)) return false;
    await this.recordHitCount(id, options.time ?? nowSeconds(), entry, count);
    return true;
  }

  async statImage(id: ImageId): Promise<ImageStat | null> {
    this.guard(id);
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined) return null;
    const record = toRecord(entry, (await this.readMetadata([entry])).get(id));
    const stored = this.supports.storedChecksum ? await this.readStoredChecksum(entry) : undefined;
    return {
      imageId: id,
      size: entry.size,
      mtime: entry.mtime,
      identity: fileIdentity(entry),
      hits: record.hits,
      lastAccessed: record.lastAccessed,
      lastModified: record.lastModified,
      storedChecksum: stored !== undefined && metadataMatches(stored, entry) ? (stored.checksum ?? undefined) : undefined,
    };
  }

  async quarantineImage(id: ImageId, options: QuarantineOptions): Promise<boolean> {
    this.guard(id);
    const { reason, identity } = normalizeQuarantineOptions(options);
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined) return false;
    if (identity !== undefined && !sameFile(identity, entry)) return false;
    if (!(await this.dir.moveToInvalid(id, 'active'))) return false;
    // A commit that landed since the move has its own, fresh metadata: forget only when no file is active.
    if (!(await this.dir.exists(id, 'active'))) await this.forgetImage(id);
    try {
      await this.noteQuarantine(id, this.dir.path(id, 'invalid'), reason);
    } catch (error) {
      this.warn({
        code: 'CACHE_QUARANTINE_INCOMPLETE',
        message: `[${this.name}] could not record why '${id}' was quarantined: ${(error as Error).message}`,
        imageId: id,
        cause: error,
      });
    }
    return true;
  }

  async openForWrite(id: ImageId): Promise<CacheWriter> {
    this.guard(id);
    const { handle, settle } = await this.#openWriter(id);
    return new CacheWriteStream(
      id,
      handle,
      {
        commit: (_h, checksum) => this.#commit(id, handle, checksum).finally(settle),
        rollback: (h, reason) => this.#rollback(id, h, reason).finally(settle),
      },
      this.dir.path(id, 'incomplete'),
    );
  }

  /**
   * Creates `id`'s incomplete file for a writer (`ImageBeingCachedError` when
   * another writer has it). In relaxed mode the writer is counted first, so no
   * sync closes the window while it opens: the window's journal is durable
   * before the first byte of a write in it (its start bounds their mtimes).
   * `settle` uncounts it once its commit or rollback has ended (once, however
   * often it is called).
   */
  async #openWriter(id: ImageId): Promise<{ handle: FdHandle; settle: () => void }> {
    const relaxed = this.durability === 'relaxed';
    if (!relaxed) return { handle: await this.dir.openIncomplete(id), settle: () => undefined };
    this.#relaxedWriters++;
    let settled = false;
    const settle = () => {
      if (!settled) this.#relaxedWriters--;
      settled = true;
    };
    try {
      await this.#relaxedWindow();
      return { handle: await this.dir.openIncomplete(id), settle };
    } catch (error) {
      settle();
      throw error;
    }
  }

  /**
   * Commits `bytes` (at most {@link SMALL_WRITE_BYTES}) as {@link openForWrite}
   * and `end(bytes)` would, without a stream: the exclusive create, one
   * positional write, then the same commit (see
   * {@link CacheDriver.writeSmallImage}). Resolves false, with nothing left on
   * disk, when `id` is cached (before or just after the create) or being
   * cached.
   */
  async writeSmallImage(id: ImageId, bytes: Uint8Array, options: WriteSmallImageOptions = {}): Promise<boolean> {
    this.guard(id);
    if (!(bytes instanceof Uint8Array) || bytes.length > SMALL_WRITE_BYTES) {
      throw new InvalidArgumentError(`writeSmallImage takes a Uint8Array of at most ${SMALL_WRITE_BYTES} bytes; stream larger images through openForWrite`);
    }
    if (this.dir.existsSync(id, 'active')) return false;
    let handle: FdHandle;
    let settle: () => void;
    try {
      ({ handle, settle } = await this.#openWriter(id));
    } catch (error) {
      if (ImageBeingCachedError.isInstance(error)) return false;
      throw error;
    }
    const incompletePath = this.dir.path(id, 'incomplete');
    if (this.dir.existsSync(id, 'active')) {
      // Committed by another process between the check and the create: give the empty file back.
      closeNow(handle);
      try {
        unlinkSync(incompletePath);
      } catch {
        // Left for clean(): an empty incomplete file of no live writer.
      }
      this.dir.releaseIncomplete(id);
      settle();
      return false;
    }
    try {
      const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      let at = 0;
      let retries = 0;
      while (at < data.length) {
        try {
          // Into the page cache: a few µs on the event loop (see SMALL_WRITE_BYTES).
          at += writeSync(handle.fd, data, at, data.length - at, at);
        } catch (error) {
          const onNoSpace = options.onNoSpace;
          if (retries >= MAX_NO_SPACE_RETRIES || onNoSpace === undefined || !isErrnoError(error, 'ENOSPC', 'EDQUOT')) throw storageError('write', incompletePath, error);
          retries++;
          if (!(await onNoSpace(data.length - at).catch(() => false))) throw storageError('write', incompletePath, error);
        }
      }
    } catch (error) {
      await this.#rollback(id, handle, error as Error).finally(settle);
      throw error;
    }
    await this.#commit(id, handle, options.checksum).finally(settle);
    return true;
  }

  async #commit(id: ImageId, handle: FdHandle, checksum: string | undefined): Promise<void> {
    const incompletePath = this.dir.path(id, 'incomplete');
    let info: CommitInfo;
    try {
      // An fstat is a few µs: synchronous instead of a threadpool round trip.
      let stat: BigIntStats;
      try {
        stat = fstatSync(handle.fd, { bigint: true });
      } catch (error) {
        throw storageError('stat', incompletePath, error);
      }
      const file = entryStatOf(id, stat);
      info = { size: file.size, time: nowSeconds(), checksum, identity: fileIdentity(file) };
      await this.prepareCommit(id, incompletePath, info).catch((error: unknown) => {
        throw CacheError.isCacheError(error) ? error : storageError('record metadata on', incompletePath, error);
      });
      if (this.durability === 'strict') {
        await handle.sync().catch((error: unknown) => {
          throw storageError('fsync', incompletePath, error);
        });
      } else {
        // Listed before the rename, so a crash that keeps the rename keeps the id in the journal.
        (await this.#relaxedWindow()).note(id, this.dir.path(id, 'active'));
      }
      await this.dir.activate(id, info.size);
    } catch (error) {
      await this.#rollback(id, handle, error as Error);
      throw error;
    }
    // The file is in place: a small file's handle closes at once (see SMALL_WRITE_BYTES), a larger one's while the group runs.
    const closed = info.size <= SMALL_WRITE_BYTES ? closeNow(handle) : handle.close().catch(() => undefined);
    this.dir.releaseIncomplete(id);
    try {
      // Strict: the group's directory fsync (the rename durable) and metadata; relaxed: the metadata.
      await Promise.all([this.#commits.add({ id, info }), closed]);
    } catch (error) {
      // No active file without its metadata: take the file back out.
      await this.dir.moveToInvalid(id, 'active').catch(() => undefined);
      await this.forgetImage(id).catch(() => undefined);
      throw CacheError.isCacheError(error)
        ? error
        : new CacheStorageError(`[${this.name}] could not record the commit of '${id}': ${(error as Error).message}`, {
            cause: error,
          });
    }
    await this.dir.removeQueueMarker(id);
  }

  /** One commit group: the directory fsync (strict) while the metadata of every commit in it is recorded. */
  async #flushCommits(batch: readonly PendingCommit[]): Promise<(Error | undefined)[]> {
    const dirSync = this.durability === 'strict' ? this.#syncBaseDir() : Promise.resolve();
    // Started before the metadata: a synchronous store (SQLite) records while the fsync runs on the threadpool.
    dirSync.catch(() => undefined);
    const errors: (Error | undefined)[] = batch.map(() => undefined);
    try {
      await this.recordCommits(batch);
    } catch (error) {
      if (batch.length === 1) errors[0] = error as Error;
      else {
        for (const [i, commit] of batch.entries()) {
          try {
            await this.recordCommit(commit.id, commit.info);
          } catch (single) {
            errors[i] = single as Error;
          }
        }
      }
    }
    try {
      await dirSync;
    } catch (error) {
      return batch.map(() => error as Error);
    }
    return errors;
  }

  async #syncBaseDir(): Promise<void> {
    const handle = this.#baseHandle;
    if (handle === undefined) return syncDirectory(this.dir.baseDir);
    try {
      await handle.sync();
    } catch (error) {
      if (!isErrnoError(error, 'EINVAL', 'EISDIR', 'ENOTSUP', 'EOPNOTSUPP')) throw storageError('fsync', this.dir.baseDir, error);
    }
  }

  async #rollback(id: ImageId, handle: WriteHandle, reason: Error): Promise<void> {
    await handle.close().catch(() => undefined);
    const incompletePath = this.dir.path(id, 'incomplete');
    try {
      await this.prepareRollback(id, incompletePath, reason);
    } catch (error) {
      this.warn({
        code: 'CACHE_ROLLBACK_INCOMPLETE',
        message: `[${this.name}] rollback of '${id}' could not update metadata: ${(error as Error).message}`,
        imageId: id,
        cause: error,
      });
    }
    try {
      await this.dir.moveToInvalid(id, 'incomplete');
    } finally {
      this.dir.releaseIncomplete(id);
    }
  }
}

function toRecord(entry: EntryStat, record: ImageMetadata | undefined): CachedImage {
  const metadata = record !== undefined && metadataMatches(record, entry) ? record : undefined;
  return {
    imageId: entry.imageId,
    hits: metadata?.hits ?? 0,
    lastAccessed: metadata?.lastAccessed ?? entry.mtime,
    lastModified: metadata?.lastModified ?? entry.mtime,
    size: entry.size,
  };
}

/** Closes a committed file's descriptor on the event loop; its data is in place, so a failed close loses nothing. */
function closeNow(handle: FdHandle): Promise<void> {
  try {
    handle.closeNow();
  } catch {
    // The committed file is complete whatever close says.
  }
  return Promise.resolve();
}

function defaultWarning(warning: CacheWarning): void {
  process.emitWarning(warning.message, { code: warning.code });
}

/** {@link openActive} with a synchronous `open`: a file descriptor. */
function openActiveSync(id: ImageId, path: string, noAtime: boolean): number {
  const flags = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW;
  const NOATIME = (fsConstants as { O_NOATIME?: number }).O_NOATIME;
  try {
    if (noAtime && NOATIME !== undefined) {
      try {
        return openSync(path, flags | NOATIME);
      } catch (error) {
        // O_NOATIME needs the file's owner (or CAP_FOWNER): fall back to a plain open.
        if (!isErrnoError(error, 'EPERM')) throw error;
      }
    }
    return openSync(path, flags);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT', 'ELOOP', 'ENOTDIR')) throw new ImageNotCachedError(id, path, error);
    throw storageError('open', path, error);
  }
}
