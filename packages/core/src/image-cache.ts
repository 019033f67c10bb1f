import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { CacheDirectory, fileIdentity, mapLimit, sameFile, SMALL_WRITE_BYTES, type EntryStat, type EntryStatus } from './cache-dir.js';
import { formatChecksum, normalizeChecksum } from './checksum.js';
import { assertSource, endWith, openWriterIfCacheable, pipeChain, toBuffer, VerifyingTransform, whenClosed, type CacheImageOptions, type ImageSource } from './cache-write.js';
import { CachingStream } from './caching-stream.js';
import { assertEntryStatus, compareByRecency, DEFAULT_STALL_TIME, DirectoryCacheDriver } from './directory-driver.js';
import { guardDriver } from './guard.js';
import type {
  CachedImage,
  CacheDriver,
  CacheFileStat,
  CacheWriter,
  CleanReport,
  ImageStat,
  LeastRecentlyAccessed,
  QuarantineOptions,
  ReadOptions,
  RecordHitsOptions,
} from './driver.js';
import { BadDriverConfigurationError, CacheStorageError, ChecksumMismatchError, ImageBeingCachedError, InvalidArgumentError } from './errors.js';
import { Fill, type FillOptions } from './fill/fill.js';
import { WriteLock } from './fill/owner.js';
import { assertImageId, type ImageId } from './image-id.js';
import { normalizeQuarantineOptions } from './options.js';
import { cacheFull, noSpaceNeed, SpacePolicy, type ImageCacheSpaceOptions, type SpaceEvent, type SpaceStatus } from './space.js';
import { SingleFlightReads, type ReadThroughOptions, type ReadThroughResult } from './read-through.js';

/** Deletes `prune()` keeps in flight. */
const PRUNE_CONCURRENCY = 8;

/** Digests {@link ImageCache.stat} remembers by file identity, for stats while the metadata store fails. */
const REMEMBERED_DIGESTS = 4096;

/** Glance's default cache budget: 10 GiB. */
export const DEFAULT_MAX_SIZE = 10 * 1024 ** 3;

/** Options of {@link ImageCache.open}. */
export interface ImageCacheOptions extends ImageCacheSpaceOptions {
  /** The metadata driver; `open` configures it. */
  driver: CacheDriver;
  /** Byte budget that `prune()` enforces, and every write too with {@link ImageCacheSpaceOptions.writeBudget}. @default 10 GiB */
  maxSize?: number;
  /** Seconds after which `clean()` deletes an incomplete file. @default 86400 */
  stallTime?: number;
  /** Called when caching failed but the client's stream went on (disk full, driver error). */
  onCacheError?: (error: Error, imageId: ImageId) => void;
}

/** What `prune()` evicted. */
export interface PruneResult {
  /** Active entries evicted. */
  files: number;
  /** Their bytes. */
  bytes: number;
  /** With {@link PruneOptions.includeInvalid}: the files deleted from `invalid/` (before any entry was evicted). */
  invalid?: { files: number; bytes: number };
}

/** Options of {@link ImageCache.prune}. */
export interface PruneOptions {
  /**
   * Count the files in `invalid/` (failed and quarantined writes, otherwise
   * kept until the next `clean()`) against the budget, and delete them,
   * oldest first, before evicting any entry. Glance's prune (the default)
   * counts active entries only. @default false
   */
  includeInvalid?: boolean;
}

/**
 * The cache as an application uses it: one driver, a size budget, LRU prune,
 * clean, the prefetch queue, and caching while streaming with verification.
 *
 * @example
 * ```ts
 * const cache = await ImageCache.open({ driver: new SqliteDriver({ cacheDir }), maxSize: 20 * 2 ** 30 });
 * await cache.cacheImage('image-1', '/srv/images/image-1.qcow2', { checksum: { algorithm: 'sha256', digest } });
 * const { files, bytes } = await cache.prune();
 * ```
 */
export class ImageCache {
  /**
   * The driver this cache runs on, behind the lifecycle and id guards of
   * {@link guardDriver} (the driver's own methods and fields pass through).
   */
  readonly driver: CacheDriver;
  /** Byte budget of `prune()`. */
  readonly maxSize: number;
  /** Default stall time of `clean()`, seconds. */
  readonly stallTime: number;
  readonly #onCacheError: ((error: Error, imageId: ImageId) => void) | undefined;
  /** Misses being fetched by this process (single-flight). */
  readonly #reads: SingleFlightReads;
  /** Fills of this process, one per id (see {@link fill}). */
  readonly #fills = new Map<ImageId, Fill>();
  /** The cache directory's files, for the calls that need no metadata. */
  readonly #files: CacheDirectory;
  /** Stored digests seen by {@link stat}, by file identity (bounded, least recently seen dropped first). */
  readonly #digests = new Map<string, string>();
  /** The space policy: reservations, eviction on the write path, free-space thresholds (ADR 0006). */
  readonly #space: SpacePolicy;
  /** Reads of this process open now, by id: their entries are never evicted by the space policy. */
  readonly #reading = new Map<ImageId, number>();
  /** Listeners added by {@link addSpaceListener}. */
  readonly #spaceListeners = new Set<(event: SpaceEvent) => void>();
  /** Fills that have ended but still have readers in this process. */
  readonly #endedFills = new Map<ImageId, Fill>();
  /**
   * What answers {@link isCached}, {@link getImageSize} and {@link getHitCount}:
   * the driver itself when it is a `DirectoryCacheDriver` with the base
   * class's own three methods (they validate the id, then the open state,
   * first, with the errors of {@link guardDriver}), so these calls pay
   * neither the guard's Proxy nor a second id check (about a tenth of an
   * `isCached`); otherwise the guarded driver.
   */
  readonly #queries: Pick<CacheDriver, 'isCached' | 'getImageSize' | 'getHitCount'>;

  private constructor(
    options: Required<Pick<ImageCacheOptions, 'driver' | 'maxSize' | 'stallTime'>> &
      Pick<ImageCacheOptions, 'onCacheError' | 'writeBudget' | 'onSpaceEvent' | 'headroom'> & { unguarded?: CacheDriver },
  ) {
    this.driver = options.driver;
    this.#queries = selfGuardedQueries(options.unguarded) ?? this.driver;
    this.maxSize = options.maxSize;
    this.stallTime = options.stallTime;
    this.#onCacheError = options.onCacheError;
    const reservedNames = Array.isArray(this.driver.reservedNames) ? this.driver.reservedNames : [];
    this.#files = new CacheDirectory(this.driver.cacheDir, { driverName: this.driver.name, reservedNames });
    this.#space = new SpacePolicy({
      driver: this.driver,
      files: this.#files,
      maxSize: this.maxSize,
      writeBudget: options.writeBudget === true,
      headroom: options.headroom ?? 0,
      isBusy: (id) => (this.#reading.get(id) ?? 0) > 0 || this.#fills.has(id) || this.#endedFills.has(id),
      onEvent: (event) => {
        options.onSpaceEvent?.(event);
        for (const listener of this.#spaceListeners) {
          try {
            listener(event);
          } catch {
            // A broken listener must not break a write.
          }
        }
      },
    });
    this.#reads = new SingleFlightReads(
      this.driver,
      { running: (id) => this.#fills.get(id), fill: (id, fillOptions) => this.fill(id, fillOptions) },
      this.#onCacheError,
    );
  }

  /** Validates the options, configures the driver and returns the cache. */
  static async open(options: ImageCacheOptions): Promise<ImageCache> {
    const { driver, maxSize = DEFAULT_MAX_SIZE, stallTime = DEFAULT_STALL_TIME, onCacheError, writeBudget, freeSpace, onSpaceEvent, headroom } = options ?? {};
    if (driver === undefined || driver === null || typeof driver.configure !== 'function') {
      throw new BadDriverConfigurationError('ImageCache', 'options.driver must be a CacheDriver instance');
    }
    for (const [name, value] of [['maxSize', maxSize], ['stallTime', stallTime]] as const) {
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
        throw new BadDriverConfigurationError(driver.name, `${name} must be a finite number >= 0, got ${String(value)}`);
      }
    }
    if (writeBudget !== undefined && typeof writeBudget !== 'boolean') {
      throw new InvalidArgumentError(`writeBudget must be a boolean, got ${String(writeBudget)}`);
    }
    if (headroom !== undefined && (!Number.isSafeInteger(headroom) || headroom < 0 || headroom > maxSize)) {
      throw new InvalidArgumentError(`headroom must be an integer number of bytes from 0 to maxSize, got ${String(headroom)}`);
    }
    if (onSpaceEvent !== undefined && typeof onSpaceEvent !== 'function') throw new InvalidArgumentError('onSpaceEvent must be a function');
    // The lifecycle and id guards apply to any driver, not only to subclasses of DirectoryCacheDriver.
    const guarded = guardDriver(driver);
    await guarded.configure();
    const cache = new ImageCache({ driver: guarded, unguarded: driver, maxSize, stallTime, onCacheError, writeBudget, onSpaceEvent, headroom });
    if (freeSpace !== undefined) {
      try {
        await cache.#space.watch(freeSpace);
      } catch (error) {
        await guarded.close().catch(() => undefined);
        throw error;
      }
    }
    return cache;
  }

  /** Stops the free-space watcher and closes the driver. */
  close(): Promise<void> {
    this.#space.stop();
    return this.driver.close();
  }

  // ---- space --------------------------------------------------------------------------

  /**
   * The space policy now (ADR 0006): the budget and what counts against it
   * (active, `incomplete/`, `invalid/`, this process's reservations), the
   * filesystem's free bytes and inodes (statfs), the free-space thresholds
   * and the watcher's state (`ok`, `culling`, `stopped`).
   */
  spaceStatus(): Promise<SpaceStatus> {
    return this.#space.status();
  }

  /**
   * Tells `listener` of every bypass, eviction, watcher state change and
   * ENOSPC of the space policy (as {@link ImageCacheSpaceOptions.onSpaceEvent});
   * returns the function that removes it. A server adds one for its metrics and logs.
   */
  addSpaceListener(listener: (event: SpaceEvent) => void): () => void {
    if (typeof listener !== 'function') throw new InvalidArgumentError('addSpaceListener needs a function');
    this.#spaceListeners.add(listener);
    return () => this.#spaceListeners.delete(listener);
  }

  // ---- passthroughs -----------------------------------------------------------------

  /** See {@link CacheDriver.isCached}. */
  isCached(id: ImageId): Promise<boolean> {
    return this.#queries.isCached(id);
  }
  /** See {@link CacheDriver.isBeingCached}. */
  isBeingCached(id: ImageId): Promise<boolean> {
    return this.driver.isBeingCached(id);
  }
  /** See {@link CacheDriver.isCacheable}. */
  isCacheable(id: ImageId): Promise<boolean> {
    return this.driver.isCacheable(id);
  }
  /** See {@link CacheDriver.isQueued}. */
  isQueued(id: ImageId): Promise<boolean> {
    return this.driver.isQueued(id);
  }
  /** See {@link CacheDriver.queueImage}. */
  queueImage(id: ImageId): Promise<boolean> {
    return this.driver.queueImage(id);
  }
  /** See {@link CacheDriver.getQueuedImages}. */
  getQueuedImages(): Promise<ImageId[]> {
    return this.driver.getQueuedImages();
  }
  /** See {@link CacheDriver.getCachedImages}. */
  getCachedImages(): Promise<CachedImage[]> {
    return this.driver.getCachedImages();
  }
  /** See {@link CacheDriver.getCacheSize}. */
  getCacheSize(): Promise<number> {
    return this.driver.getCacheSize();
  }
  /** See {@link CacheDriver.getImageSize}. */
  getImageSize(id: ImageId): Promise<number> {
    return this.#queries.getImageSize(id);
  }
  /** See {@link CacheDriver.getHitCount}. */
  getHitCount(id: ImageId): Promise<number> {
    return this.#queries.getHitCount(id);
  }
  /** See {@link CacheDriver.getLeastRecentlyAccessed}. */
  getLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null> {
    return this.driver.getLeastRecentlyAccessed();
  }
  /**
   * Reads an active entry, all of it or a byte range (`{ start, end }`,
   * `end` inclusive as in HTTP), counting a hit when the reader is handed the
   * image's last byte; `{ countHit: false }` reads without counting,
   * `{ identity }` reads only the file {@link stat} described. The rules and
   * errors are those of {@link CacheDriver.openForRead} and {@link ReadOptions}.
   */
  async openForRead(id: ImageId, options?: ReadOptions): Promise<Readable> {
    // An entry being read is never evicted by the space policy: its space would come back only at the reader's close.
    this.#reading.set(id, (this.#reading.get(id) ?? 0) + 1);
    let stream: Readable;
    try {
      stream = await this.driver.openForRead(id, options);
    } catch (error) {
      this.#doneReading(id);
      throw error;
    }
    if (stream.closed) this.#doneReading(id);
    else stream.once('close', () => this.#doneReading(id));
    return stream;
  }

  #doneReading(id: ImageId): void {
    const count = (this.#reading.get(id) ?? 1) - 1;
    if (count > 0) this.#reading.set(id, count);
    else this.#reading.delete(id);
  }
  /**
   * Whether the driver can record hits counted by the caller
   * ({@link recordHits}); without it, count hits with `openForRead`.
   */
  get canRecordHits(): boolean {
    return this.driver.recordHits !== undefined;
  }
  /**
   * Records `count` completed reads of the active file `options.identity`
   * that were opened with `{ countHit: false }` (see
   * {@link CacheDriver.recordHits}): `false` when that file is no longer
   * the active one, or the driver cannot ({@link canRecordHits}).
   */
  async recordHits(id: ImageId, count: number, options: RecordHitsOptions): Promise<boolean> {
    if (this.driver.recordHits === undefined) return false;
    return this.driver.recordHits(id, count, options);
  }
  /** See {@link CacheDriver.deleteCachedImage}. */
  deleteCachedImage(id: ImageId): Promise<void> {
    return this.driver.deleteCachedImage(id);
  }
  /** See {@link CacheDriver.deleteAllCachedImages}. */
  deleteAllCachedImages(): Promise<number> {
    return this.driver.deleteAllCachedImages();
  }
  /** See {@link CacheDriver.deleteQueuedImage}. */
  deleteQueuedImage(id: ImageId): Promise<void> {
    return this.driver.deleteQueuedImage(id);
  }
  /** See {@link CacheDriver.deleteAllQueuedImages}. */
  deleteAllQueuedImages(): Promise<number> {
    return this.driver.deleteAllQueuedImages();
  }
  /** See {@link CacheDriver.getImageFilepath}. */
  getImageFilepath(id: ImageId, status?: EntryStatus): string {
    return this.driver.getImageFilepath(id, status);
  }

  // ---- one entry, one file ----------------------------------------------------------

  /**
   * The file and the metadata of an active entry (size, mtime, identity,
   * hits, last access, commit time, stored digest) in one call, or `null`
   * when `id` is not cached. Serving code uses it for headers and validators,
   * then reads the same file with `openForRead(id, { identity })`.
   *
   * When the metadata store fails (`CacheStorageError`, e.g. its database is
   * down), it answers from the file alone and sets `degraded` to that error:
   * size, mtime and identity are the file's, `hits` is 0, both times are the
   * mtime, and `storedChecksum` is the digest an earlier successful stat saw
   * for this same file (remembered in memory by identity), else `undefined`.
   */
  async stat(id: ImageId): Promise<ImageStat | null> {
    let stat: ImageStat | null;
    try {
      stat = await this.#statWithMetadata(id);
    } catch (error) {
      if (!CacheStorageError.isInstance(error)) throw error;
      return this.#statDegraded(id, error);
    }
    if (stat?.storedChecksum !== undefined) {
      this.#digests.delete(stat.identity);
      this.#digests.set(stat.identity, stat.storedChecksum);
      if (this.#digests.size > REMEMBERED_DIGESTS) this.#digests.delete(this.#digests.keys().next().value as string);
    }
    return stat;
  }

  /**
   * The metadata store failed: what the file itself gives. The stored digest
   * is the one an earlier stat saw for this very file (same identity), if any.
   * When the file cannot be read either, the metadata failure is rethrown.
   */
  async #statDegraded(id: ImageId, failure: CacheStorageError): Promise<ImageStat | null> {
    assertImageId(id, this.#files.reservedNames);
    let file: EntryStat | undefined;
    try {
      file = await this.#files.statFile(id, 'active');
    } catch {
      throw failure;
    }
    if (file === undefined) return null;
    const identity = fileIdentity(file);
    return {
      imageId: id,
      size: file.size,
      mtime: file.mtime,
      identity,
      hits: 0,
      lastAccessed: file.mtime,
      lastModified: file.mtime,
      storedChecksum: this.#digests.get(identity),
      degraded: failure,
    };
  }

  async #statWithMetadata(id: ImageId): Promise<ImageStat | null> {
    if (this.driver.statImage !== undefined) return this.driver.statImage(id);
    // A driver without statImage: the file from core, the metadata from the listing.
    assertImageId(id, this.#files.reservedNames);
    const file = await this.#files.statFile(id, 'active');
    if (file === undefined) return null;
    const [images, storedChecksum] = await Promise.all([this.driver.getCachedImages(), this.driver.getStoredChecksum?.(id)]);
    const record = images.find((image) => image.imageId === id);
    return {
      imageId: id,
      size: file.size,
      mtime: file.mtime,
      identity: fileIdentity(file),
      hits: record?.hits ?? 0,
      lastAccessed: record?.lastAccessed ?? file.mtime,
      lastModified: record?.lastModified ?? file.mtime,
      storedChecksum,
    };
  }

  /**
   * The file of `id` in one part of the cache (`active`, `incomplete`,
   * `invalid` or `queue`), or `null` when there is no regular file there.
   * No metadata: see {@link stat} for an active entry's.
   */
  async statFile(id: ImageId, status: EntryStatus): Promise<CacheFileStat | null> {
    assertImageId(id, this.#files.reservedNames);
    assertEntryStatus(status);
    const file = await this.#files.statFile(id, status);
    return file === undefined ? null : toFileStat(file, status);
  }

  /**
   * Every file in one part of the cache, sorted by id: e.g. `incomplete`
   * (writes in progress or stalled) and `invalid` (failed writes and
   * quarantined entries, until the next `clean()`) with their sizes.
   */
  async listFiles(status: EntryStatus): Promise<CacheFileStat[]> {
    assertEntryStatus(status);
    return (await this.#files.list(status)).map((file) => toFileStat(file, status));
  }

  /**
   * Takes an active entry out of the cache for inspection: the file moves to
   * `invalid/<id>` (deleted by the next `clean()`), its metadata is forgotten,
   * and `reason` is recorded where the driver keeps notes on files. With
   * `identity`, only that file is moved (use the identity of the file you
   * checked, from {@link stat}). Resolves true when a file was moved, false
   * when the entry is not cached or another file is under the id now.
   */
  async quarantine(id: ImageId, options: QuarantineOptions): Promise<boolean> {
    if (this.driver.quarantineImage !== undefined) return this.driver.quarantineImage(id, options);
    // A driver without quarantineImage: move the file, then let the driver forget the entry it no longer has.
    assertImageId(id, this.#files.reservedNames);
    const { identity } = normalizeQuarantineOptions(options);
    const file = await this.#files.statFile(id, 'active');
    if (file === undefined || (identity !== undefined && !sameFile(identity, file))) return false;
    if (!(await this.#files.moveToInvalid(id, 'active'))) return false;
    if (!(await this.driver.isCached(id))) await this.driver.deleteCachedImage(id);
    return true;
  }

  // ---- maintenance ------------------------------------------------------------------

  /**
   * Evicts least recently accessed entries (ties: older commit, then id) until
   * the cache is within `maxSize`. One listing, one sort, one pass: it stops
   * when the budget is met or nothing is left, never loops. With
   * `includeInvalid`, `invalid/` counts too and its files go first.
   *
   * Entries this process is reading (`openForRead`, a fill's readers) or
   * filling are skipped, as the space policy's eviction skips them (one
   * "busy" test for both, ADR 0006): the next least recently used entry goes
   * instead, and when only busy entries are left the cache stays over
   * `maxSize` until they are closed.
   */
  async prune(options: PruneOptions = {}): Promise<PruneResult> {
    const includeInvalid = options?.includeInvalid === true;
    const [images, invalid] = await Promise.all([this.driver.getCachedImages(), includeInvalid ? this.#files.list('invalid') : []]);
    let size = images.reduce((sum, image) => sum + image.size, 0) + invalid.reduce((sum, file) => sum + file.size, 0);
    const result: PruneResult = includeInvalid ? { files: 0, bytes: 0, invalid: { files: 0, bytes: 0 } } : { files: 0, bytes: 0 };
    if (size <= this.maxSize) return result;
    // Failed and quarantined writes go first, oldest first: they are nobody's cache hits.
    invalid.sort((a, b) => (a.mtimeNs < b.mtimeNs ? -1 : a.mtimeNs > b.mtimeNs ? 1 : a.imageId < b.imageId ? -1 : 1));
    for (const file of invalid) {
      if (size <= this.maxSize) break;
      if (this.#space.isBusy(file.imageId)) continue; // a write of this process rolled back there, its reservation not yet released
      size -= file.size;
      if (await this.#files.remove(file.imageId, 'invalid')) {
        (result.invalid as { files: number; bytes: number }).files += 1;
        (result.invalid as { files: number; bytes: number }).bytes += file.size;
      }
    }
    if (size <= this.maxSize) return result;
    images.sort(compareByRecency);
    const victims: CachedImage[] = [];
    for (const image of images) {
      if (size <= this.maxSize) break;
      if (this.#space.isBusy(image.imageId)) continue;
      victims.push(image);
      size -= image.size;
    }
    // Deletes overlap (each is a stat, an unlink and a metadata write); the
    // victims were chosen above, so the order they finish in does not matter.
    let failure: unknown;
    await mapLimit(victims, PRUNE_CONCURRENCY, async (image) => {
      if (failure !== undefined) return;
      // Looked at again: a read or fill may have begun since the listing.
      if (this.#space.isBusy(image.imageId)) return;
      try {
        await this.driver.deleteCachedImage(image.imageId);
        result.files += 1;
        result.bytes += image.size;
      } catch (error) {
        failure ??= error;
      }
    });
    if (failure !== undefined) throw failure;
    return result;
  }


  /** Deletes invalid files and incomplete files older than `stallTime` (default: the cache's). */
  clean(stallTime: number = this.stallTime): Promise<CleanReport> {
    return this.driver.clean(stallTime);
  }

  // ---- writing ------------------------------------------------------------------------

  /**
   * Fills `id` from its origin (ADR 0003), or joins the fill of `id` that
   * is already running: one fill per id in this process, one owner per id
   * on this host. Returns at once; open any number of readers on the
   * returned {@link Fill} (`fill.openReader({ start, end })`), each served
   * as the bytes reach the file, at its own pace. A slow or departing reader
   * never slows or stops the fill. When `id` is cached, readers read the
   * cached file. Another process filling the same id is followed instead of
   * fetching twice, and taken over if it dies.
   *
   * A caller that joins a running fill shares it: its options are not used
   * (except for a takeover, which uses the first caller's).
   *
   * Throws `InvalidImageIdError` / `InvalidArgumentError` for bad arguments;
   * every other failure is in `fill.done` and reaches the readers that need
   * bytes the fill did not write.
   */
  fill(id: ImageId, options: FillOptions): Fill {
    assertImageId(id);
    if (typeof options?.fetch !== 'function') {
      throw new InvalidArgumentError('fill needs { fetch: ({ signal }) => ImageSource | Promise<ImageSource> }');
    }
    const running = this.#fills.get(id);
    if (running !== undefined) return running;
    const fill = new Fill(this.driver, id, options, this.#space);
    this.#fills.set(id, fill);
    // Its readers keep the entry from eviction after the fill has ended, until the last one closes.
    const onReaders = (count: number) => {
      if (fill.outcome === undefined) return;
      if (count > 0) this.#endedFills.set(id, fill);
      else if (this.#endedFills.get(id) === fill) {
        this.#endedFills.delete(id);
        fill.off('readers', onReaders);
      }
    };
    fill.on('readers', onReaders);
    // Stopped caching mid-way (ADR 0006): its readers get the rest, later callers start a fill of their own.
    fill.once('passThrough', () => {
      if (this.#fills.get(id) === fill) this.#fills.delete(id);
    });
    void fill.done.then(() => {
      if (this.#fills.get(id) === fill) this.#fills.delete(id);
      onReaders(fill.readers);
      if (fill.readers === 0) fill.off('readers', onReaders);
    });
    return fill;
  }

  /**
   * Caches an image from a stream, async iterable or file path. Resolves true
   * when the entry was committed, false when it was not cacheable (already
   * cached, or another writer has it; the source is then left unread).
   * Rejects with `ChecksumMismatchError` (nothing committed), with the
   * source's error, or with a `CacheStorageError`; in each case the partial
   * file is in `invalid/`. Rejects with `CacheFullError` when the space
   * policy refuses it (ADR 0006): before any byte (the disk is below the
   * `stop` threshold; the source is left unread), or once it outgrows what
   * the budget can make room for (the partial file is in `invalid/`).
   *
   * `source` may also be the image's bytes in memory (a `Buffer` or any
   * `Uint8Array`, not copied). Up to {@link SMALL_WRITE_BYTES} (64 KiB) they
   * are verified before anything is written (a mismatch rejects with
   * `ChecksumMismatchError` and leaves nothing on disk) and written with one
   * call, without a stream (docs/adr/0007, "Small commits from memory");
   * larger ones go through the stream path.
   */
  async cacheImage(id: ImageId, source: ImageSource | Uint8Array, options: CacheImageOptions = {}): Promise<boolean> {
    assertImageId(id);
    const expected = normalizeChecksum(options.checksum);
    let bytes: Buffer | undefined;
    if (source instanceof Uint8Array) {
      bytes = toBuffer(source);
      if (bytes.length > SMALL_WRITE_BYTES) {
        source = Readable.from([bytes]);
        bytes = undefined;
      } else if (expected !== undefined) {
        // A few µs for 64 KiB at most: on the event loop, before any file is touched.
        const actual = createHash(expected.algorithm).update(bytes).digest('hex');
        if (actual !== expected.digest) throw new ChecksumMismatchError(id, expected.algorithm, expected.digest, actual);
      }
    } else {
      assertSource(source);
    }
    // The host's write lock of the id (ADR 0003): a fill or writer of another process has it -> not cacheable now.
    const lock = await WriteLock.acquire(this.driver, id).catch((error: unknown) => {
      if (ImageBeingCachedError.isInstance(error)) return undefined;
      throw error;
    });
    if (lock === undefined) return false;
    const space = this.#space;
    // The space policy (ADR 0006): below the stop threshold or no room in the budget -> not cached.
    const bypass = await space.admit(id, undefined).catch((error: unknown) => {
      lock.release();
      throw error;
    });
    if (bypass !== undefined) {
      lock.release();
      throw cacheFull(id, bypass);
    }
    // The write budget is on for this write when the admission reserved room for it (reservedFor is then finite).
    const budget = Number.isFinite(space.reservedFor(id));
    if (bytes !== undefined && budget) {
      // Bytes in memory: the write budget's gate is a stream stage, so with the budget on they are streamed.
      source = Readable.from([bytes]);
      bytes = undefined;
    }
    // Bytes in memory and a driver that commits them without a stream.
    if (bytes !== undefined && typeof this.driver.writeSmallImage === 'function') {
      return this.#cacheSmall(id, bytes, expected === undefined ? undefined : formatChecksum(expected), lock);
    }
    let writer: CacheWriter | undefined;
    try {
      writer = await openWriterIfCacheable(this.driver, id);
      if (writer !== undefined) {
        lock.announce(expected === undefined ? {} : { checksum: formatChecksum(expected) });
        await lock.attach(writer, this.driver.getImageFilepath(id, 'incomplete'));
      }
    } catch (error) {
      space.release(id);
      writer?.destroy(error as Error);
      if (writer !== undefined) await whenClosed(writer);
      lock.failed(error as Error, false);
      throw error;
    }
    if (writer === undefined) {
      space.release(id);
      lock.release();
      return false;
    }
    const input = typeof source === 'string' ? createReadStream(source, { highWaterMark: 1024 * 1024 }) : (source as Readable | AsyncIterable<Uint8Array>);
    try {
      writer.setNoSpaceHandler?.((unwritten) => space.noSpace(id, noSpaceNeed(undefined, unwritten)));
      if (bytes !== undefined) {
        // Verified above: one write and the commit, no source stream, no pipe.
        if (expected !== undefined) writer.setChecksum(formatChecksum(expected));
        await endWith(writer, bytes);
      } else if (budget) {
        // The budget's gate only when the write budget is on: no extra stage otherwise.
        const gate = new SpaceGate(id, space);
        if (expected === undefined) await pipeChain(input, gate, writer);
        else await pipeChain(input, gate, new VerifyingTransform(id, expected, writer), writer);
      } else if (expected === undefined) await pipeChain(input, writer);
      else await pipeChain(input, new VerifyingTransform(id, expected, writer), writer);
    } catch (error) {
      // pipeChain rejects at the first error; wait until the rollback has moved the file to invalid/.
      if (!writer.destroyed) writer.destroy(error as Error);
      await whenClosed(writer);
      // Followers give up on a source failure; on a cache failure they take over.
      space.release(id);
      lock.failed(error as Error, !CacheStorageError.isInstance(error));
      throw error;
    }
    space.release(id);
    lock.committed(writer.bytesWritten, expected === undefined ? undefined : formatChecksum(expected));
    return true;
  }

  /**
   * {@link cacheImage} of verified bytes (at most {@link SMALL_WRITE_BYTES})
   * through the driver's `writeSmallImage`, under the write lock and the
   * space admission `cacheImage` took. Followers of the lock are told the
   * outcome; the file is not announced while it is written (it is written
   * at once).
   */
  async #cacheSmall(id: ImageId, bytes: Buffer, checksum: string | undefined, lock: WriteLock): Promise<boolean> {
    const space = this.#space;
    let committed: boolean;
    try {
      committed = await (this.driver.writeSmallImage as NonNullable<CacheDriver['writeSmallImage']>)(id, bytes, {
        checksum,
        onNoSpace: (unwritten) => space.noSpace(id, noSpaceNeed(undefined, unwritten)),
      });
    } catch (error) {
      space.release(id);
      // As the stream path: a cache failure lets followers take over.
      lock.failed(error as Error, !CacheStorageError.isInstance(error));
      throw error;
    }
    space.release(id);
    if (committed) lock.committed(bytes.length, checksum);
    else lock.release();
    return committed;
  }

  /**
   * Read-through with single-flight: serves `id` from the cache when it is
   * there; on a miss, the first caller fetches from the origin and streams it
   * while caching it (as {@link getCachingStream}), and every concurrent caller
   * that misses the same id in this process waits for that fetch to commit and
   * then reads from the cache, so the origin is read once.
   *
   * If the fetch fails at the source (an origin error or a checksum mismatch),
   * every waiter rejects with that error, and the next request tries again.
   * If caching fails for another reason (disk full, another process writing
   * the id, the leader's client stopping early), the waiters try again: one
   * of them leads a new fetch.
   *
   * Across processes (ADR 0003): the leader takes the host's write lock of
   * the id first. When a fill or writer of another process (or
   * {@link fill} in this one) holds it, the caller does not fetch: it reads
   * that fill as it grows (`from: 'origin'` with `fill` set; the fill is
   * followed, and taken over with this `fetch` if its owner dies).
   */
  readThrough(id: ImageId, options: ReadThroughOptions): Promise<ReadThroughResult> {
    return this.#reads.read(id, options);
  }

  /**
   * A `Readable` for the client that passes the source through while writing
   * it to the cache (Glance's caching iterator), with these rules:
   * - a cache failure (disk full, another writer, a driver error) never breaks
   *   the client's stream: it gets every byte, the entry is rolled back, and the
   *   failure is reported (`cacheError` event, `onCacheError`, `cacheOutcome`);
   * - a source failure always reaches the client as a stream error, and the
   *   entry is rolled back;
   * - a checksum mismatch is a source failure: the client gets all bytes and
   *   then a `ChecksumMismatchError`; the entry goes to `invalid/`.
   * The stream ends only after the entry is committed, so a client that read
   * to the end can read the image from the cache.
   *
   * Invalid ids and checksums throw synchronously.
   */
  getCachingStream(id: ImageId, source: ImageSource, options: CacheImageOptions = {}): CachingStream {
    assertImageId(id);
    const expected = normalizeChecksum(options.checksum);
    assertSource(source);
    return new CachingStream(this.driver, id, source, expected, this.#onCacheError, undefined, this.#space);
  }
}

/** Passes a write's bytes on once the space policy has reserved them (the reservation grows ahead, evicting as it goes). */
class SpaceGate extends Transform {
  #bytes = 0;
  #reserved: number;
  constructor(
    readonly imageId: ImageId,
    readonly space: SpacePolicy,
  ) {
    super();
    this.#reserved = space.reservedFor(imageId);
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#bytes += chunk.length;
    if (this.#bytes <= this.#reserved) {
      callback(null, chunk);
      return;
    }
    this.space.grow(this.imageId, this.#bytes).then((full) => {
      if (full !== undefined) {
        callback(full);
        return;
      }
      this.#reserved = this.space.reservedFor(this.imageId);
      callback(null, chunk);
    }, callback);
  }
}

function toFileStat(file: EntryStat, status: EntryStatus): CacheFileStat {
  return { imageId: file.imageId, status, size: file.size, mtime: file.mtime, identity: fileIdentity(file) };
}

/** `driver` when its `isCached`, `getImageSize` and `getHitCount` are `DirectoryCacheDriver`'s own (see `ImageCache.#queries`). */
function selfGuardedQueries(driver: CacheDriver | undefined): Pick<CacheDriver, 'isCached' | 'getImageSize' | 'getHitCount'> | undefined {
  if (!(driver instanceof DirectoryCacheDriver)) return undefined;
  const base = DirectoryCacheDriver.prototype;
  return driver.isCached === base.isCached && driver.getImageSize === base.getImageSize && driver.getHitCount === base.getHitCount ? driver : undefined;
}
