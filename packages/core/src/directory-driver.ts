import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CacheDirectory, entryStatOf, fileIdentity, isErrnoError, sameFile, storageError, type EntryStat, type EntryStatus } from './cache-dir.js';
import { nowSeconds } from './clock.js';
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
} from './driver.js';
import { CacheError, CacheStorageError, DriverNotOpenError, ImageChangedError, ImageNotCachedError, InvalidArgumentError } from './errors.js';
import { assertImageId, type ImageId } from './image-id.js';
import { assertSatisfiable, normalizeQuarantineOptions, normalizeReadOptions } from './options.js';
import { CacheReadStream, CacheWriteStream } from './streams.js';

/** Default age (seconds) after which `clean()` deletes an incomplete file, as in Glance. */
export const DEFAULT_STALL_TIME = 86_400;

/** A problem a driver reports without failing the call (e.g. a hit it could not record). */
export interface CacheWarning {
  code: 'CACHE_HIT_NOT_RECORDED' | 'CACHE_ROLLBACK_INCOMPLETE' | 'CACHE_CLEAN_FAILED' | 'CACHE_QUARANTINE_INCOMPLETE';
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
        this.#state = 'open';
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
    if (wasOpen) await this.closeMetadata();
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

  async isCached(id: ImageId): Promise<boolean> {
    this.guard(id);
    return this.dir.exists(id, 'active');
  }

  async isBeingCached(id: ImageId): Promise<boolean> {
    this.guard(id);
    return this.dir.exists(id, 'incomplete');
  }

  async isCacheable(id: ImageId): Promise<boolean> {
    this.guard(id);
    return !(await this.dir.exists(id, 'active')) && !(await this.dir.exists(id, 'incomplete'));
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

  async getImageSize(id: ImageId): Promise<number> {
    this.guard(id);
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined) throw new ImageNotCachedError(id, this.dir.path(id));
    return entry.size;
  }

  async getHitCount(id: ImageId): Promise<number> {
    this.guard(id);
    const entry = await this.dir.statFile(id, 'active');
    if (entry === undefined) return 0;
    return this.readHitCount(entry);
  }

  async getLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null> {
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
    const handle = await openActive(id, path, this.noAtimeReads || !read.countHit);
    let file: EntryStat;
    try {
      const info = await handle.stat({ bigint: true }).catch((error: unknown) => {
        throw storageError('stat', path, error);
      });
      if (!info.isFile()) throw new ImageNotCachedError(id, path);
      file = entryStatOf(id, info);
      if (read.identity !== undefined && !sameFile(read.identity, file)) {
        throw new ImageChangedError(id, path, read.identity, fileIdentity(file));
      }
      assertSatisfiable(id, path, read, file.size);
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw error;
    }
    const onComplete = async () => {
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
    // The size lets the stream size its buffers and end without an extra read (see CacheReadStream).
    return new CacheReadStream(id, handle, {
      size: file.size,
      start: read.start,
      end: read.end,
      onComplete: read.countHit ? onComplete : undefined,
    });
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
    const handle = await this.dir.openIncomplete(id);
    return new CacheWriteStream(
      id,
      handle,
      {
        commit: (h, checksum) => this.#commit(id, h, checksum),
        rollback: (h, reason) => this.#rollback(id, h, reason),
      },
      this.dir.path(id, 'incomplete'),
    );
  }

  async #commit(id: ImageId, handle: FileHandle, checksum: string | undefined): Promise<void> {
    const incompletePath = this.dir.path(id, 'incomplete');
    let info: CommitInfo;
    try {
      const stat = await handle.stat({ bigint: true }).catch((error: unknown) => {
        throw storageError('stat', incompletePath, error);
      });
      const file = entryStatOf(id, stat);
      info = { size: file.size, time: nowSeconds(), checksum, identity: fileIdentity(file) };
      await this.prepareCommit(id, incompletePath, info).catch((error: unknown) => {
        throw CacheError.isCacheError(error) ? error : storageError('record metadata on', incompletePath, error);
      });
      await this.dir.promote(id, handle);
    } catch (error) {
      await this.#rollback(id, handle, error as Error);
      throw error;
    }
    await handle.close().catch(() => undefined);
    this.dir.releaseIncomplete(id);
    try {
      await this.recordCommit(id, info);
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
    await this.dir.remove(id, 'queue');
  }

  async #rollback(id: ImageId, handle: FileHandle, reason: Error): Promise<void> {
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

function defaultWarning(warning: CacheWarning): void {
  process.emitWarning(warning.message, { code: warning.code });
}

/** Opens an active file read-only without following a symlink; `noAtime` asks the kernel not to touch its atime (when allowed). */
async function openActive(id: ImageId, path: string, noAtime: boolean): Promise<FileHandle> {
  const flags = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW;
  const NOATIME = (fsConstants as { O_NOATIME?: number }).O_NOATIME;
  try {
    if (noAtime && NOATIME !== undefined) {
      try {
        return await open(path, flags | NOATIME);
      } catch (error) {
        // O_NOATIME needs the file's owner (or CAP_FOWNER): fall back to a plain open.
        if (!isErrnoError(error, 'EPERM')) throw error;
      }
    }
    return await open(path, flags);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT', 'ELOOP', 'ENOTDIR')) throw new ImageNotCachedError(id, path, error);
    throw storageError('open', path, error);
  }
}

