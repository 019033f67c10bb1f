import type { Readable, Writable } from 'node:stream';
import type { EntryStatus } from './cache-dir.js';
import type { ImageId } from './image-id.js';

/** One cached image, as every driver lists it. Times are epoch seconds (float). */
export interface CachedImage {
  imageId: ImageId;
  /** Completed reads since the entry was committed. */
  hits: number;
  /** Last completed read, or the commit time if never read. */
  lastAccessed: number;
  /** Commit time. */
  lastModified: number;
  /** Bytes on disk. */
  size: number;
}

/** Options of {@link CacheDriver.recordHits}. */
export interface RecordHitsOptions {
  /** The `ImageStat.identity` of the file that was read. */
  identity: string;
  /** When the last of the reads completed, epoch seconds. @default now */
  time?: number;
}

/**
 * Options of {@link CacheDriver.openForRead}: a byte range, whether the read
 * may count a hit, and which file it must be.
 *
 * The range is inclusive at both ends, as in an HTTP `Range: bytes=start-end`
 * header and `fs.createReadStream`: `{ start: 0, end: 99 }` reads 100 bytes.
 * `start` and `end` must be integers >= 0 with `end >= start`
 * (`InvalidArgumentError` otherwise, before any I/O). An `end` at or past the
 * last byte reads to the end. A `start` at or past the size rejects with
 * `RangeNotSatisfiableError` (HTTP 416), except `start: 0`, which is always
 * satisfiable (an empty image reads as an empty stream).
 *
 * The hit rule: a read counts one hit, and moves the entry's last access,
 * when the reader has been handed the image's last byte, i.e. every byte of a
 * range that reaches the end of the image (a full read, or a range such as
 * `bytes=1000-` or a resumed download) has been delivered. It counts when that
 * byte is delivered, not when `end` is read, so a reader that stops right
 * after the last byte (an HTTP client closing on reaching `Content-Length`)
 * still counts; the count is recorded before the stream emits `end` or
 * `close`. A range that stops before the last byte, and a read abandoned
 * before it, count none. An empty image counts when its end is read.
 */
export interface ReadOptions {
  /** First byte to read, 0-based. @default 0 */
  start?: number;
  /** Last byte to read, inclusive. @default the image's last byte */
  end?: number;
  /**
   * `false` for a read that is not a use of the image (verification, a copy):
   * it records no hit and leaves the last access (the LRU order) as it is.
   * @default true
   */
  countHit?: boolean;
  /**
   * Read only this file: the {@link ImageStat.identity} of the entry as the
   * caller saw it. When another file is under the id now (replaced since),
   * the read rejects with `ImageChangedError` (when none is, with
   * `ImageNotCachedError`), so a caller never serves bytes of one file with
   * headers (size, validators) of another.
   */
  identity?: string;
}

/** What the cache knows about one active entry: its file and its metadata ({@link CacheDriver.statImage}). */
export interface ImageStat {
  imageId: ImageId;
  /** Bytes on disk. */
  size: number;
  /** The file's modification time (when its last byte was written, just before the commit), epoch seconds (float). */
  mtime: number;
  /**
   * Tells this file from any other under the same id (inode, size, mtime; see
   * `fileIdentity`): pass it to `openForRead(id, { identity })` or
   * `quarantine(id, { identity })` to act on this file only. Opaque text.
   */
  identity: string;
  /** Completed reads since the commit (see {@link ReadOptions} for what counts). */
  hits: number;
  /** Last completed read, or the commit time if never read; epoch seconds. */
  lastAccessed: number;
  /** Commit time, epoch seconds. */
  lastModified: number;
  /** The verified digest stored at commit (`sha256:<hex>`, or md5 hex), or `undefined` (none stored, or the driver stores none). */
  storedChecksum: string | undefined;
  /**
   * Set by `ImageCache.stat` only (drivers leave it out): the metadata store
   * failed with this `CacheStorageError`, and the stat is the file's alone
   * (see `ImageCache.stat`).
   */
  degraded?: Error;
}

/** A file in one part of the cache directory, as one `lstat` sees it. */
export interface CacheFileStat {
  imageId: ImageId;
  /** Which part of the cache the file is in. */
  status: EntryStatus;
  /** Bytes. */
  size: number;
  /** Modification time, epoch seconds (float). */
  mtime: number;
  /** See {@link ImageStat.identity}. */
  identity: string;
}

/** Options of {@link CacheDriver.quarantineImage}. */
export interface QuarantineOptions {
  /** Why the entry is taken out (e.g. a digest mismatch); drivers that keep notes on files record it (xattr: `user.image_cache.error`). */
  reason: string;
  /** Quarantine only this file ({@link ImageStat.identity}): when another file is under the id now, nothing is moved. */
  identity?: string;
}

/** The least recently accessed entry: the next one prune evicts. */
export interface LeastRecentlyAccessed {
  imageId: ImageId;
  size: number;
}

/** What `clean()` did. */
export interface CleanReport {
  /** Files deleted from `invalid/`. */
  invalid: number;
  /** Files deleted from `incomplete/` (stalled writes). */
  stalled: number;
  /** Metadata records deleted because their file was gone. */
  orphanRecords: number;
  /** Metadata records created for files that had none. */
  adoptedFiles: number;
  /** Queue markers removed because their image is already cached (a crash between commit and marker removal). */
  staleQueueMarkers: number;
  /** Files that could not be deleted (the clean goes on past each one). */
  errors: Error[];
}

/** What a filesystem must offer for a driver to work. */
export interface DriverCapabilities {
  /** The driver stores metadata in `user.*` extended attributes. */
  xattr: boolean;
  /** The driver relies on every read updating atime (strictatime). */
  atime: boolean;
}

/**
 * What a driver promises, declared on the driver itself (`driver.supports`)
 * so that users and the conformance kit read the same manifest. The kit
 * gates its cases on it and checks that every declared feature really works.
 */
export interface DriverSupports {
  /**
   * Metadata survives `close()` and is shared by every driver instance and
   * every process on one cache directory (false for a per-instance store
   * such as `MemoryDriver`).
   */
  readonly persistent: boolean;
  /**
   * A verified digest given at commit ({@link CacheWriter.setChecksum}) is
   * stored and returned by {@link CacheDriver.getStoredChecksum} until the
   * entry is deleted or replaced.
   */
  readonly storedChecksum: boolean;
  /**
   * Hits recorded by several processes at once:
   * - `'exact'`: none is lost (an atomic increment in a database);
   * - `'best-effort'`: an increment may be lost under a race (a
   *   read-modify-write, as Glance's xattr driver does), but a count is never
   *   more than the true number of completed reads and never negative.
   */
  readonly crossProcessHits: 'exact' | 'best-effort';
  /**
   * Where metadata lives:
   * - `'separate'`: in a store apart from the files (a database, a journal,
   *   memory), so a file deleted behind the driver's back leaves a record
   *   that `clean()` must remove and count in `orphanRecords`;
   * - `'files'`: on the cache files themselves (extended attributes), so
   *   deleting a file deletes its metadata and there are no orphan records.
   */
  readonly metadataStore: 'separate' | 'files';
}

/** Options of {@link CacheDriver.writeSmallImage}. */
export interface WriteSmallImageOptions {
  /** The digest to store with the entry, in its stored form (as `CacheWriter.setChecksum`). */
  checksum?: string;
  /**
   * Asked, when the write fails with ENOSPC or EDQUOT, whether to retry
   * (with the bytes still unwritten), as `CacheWriter.setNoSpaceHandler`.
   */
  onNoSpace?: (unwritten: number) => Promise<boolean>;
}

/**
 * The writable end of a cache write, from {@link CacheDriver.openForWrite}.
 * Finishing it commits the entry; an error or `destroy(err)` rolls it back.
 */
export interface CacheWriter extends Writable {
  /** The image being written. */
  readonly imageId: ImageId;
  /** Bytes accepted so far. */
  readonly bytesWritten: number;
  /**
   * Optional: bytes from offset 0 that are in the file (their writes to the
   * file descriptor have completed), announced by a `progress` event with
   * the new count each time it grows. Fills report this to their readers;
   * a writer without it is read only once committed. The writer of
   * `DirectoryCacheDriver` (`CacheWriteStream`) has it.
   */
  readonly bytesInFile?: number;
  /**
   * Records a verified digest (e.g. `sha256:<hex>`, or a bare md5 hex for Glance)
   * to store with the entry at commit. Call before `end()`.
   */
  setChecksum(checksum: string): void;
  /**
   * Optional: makes `end()` roll back with `reason` instead of committing,
   * after writing every byte accepted before it, so the file in `invalid/`
   * is the whole download (`destroy()` drops what is still buffered). Core
   * uses it when a write fails verification at its end (a checksum
   * mismatch) or its source fails; without it, it destroys the writer.
   * `CacheWriteStream` has it.
   */
  abortOnEnd?(reason: Error): void;
  /**
   * Optional: called when a write fails with ENOSPC (or EDQUOT), with the
   * bytes of that write still unwritten; resolving true retries the write
   * once (the space policy evicted enough), false fails it as before.
   * `CacheWriteStream` has it.
   */
  setNoSpaceHandler?(handler: (unwritten: number) => Promise<boolean>): void;
}

/**
 * The contract every metadata driver implements: Glance's driver methods in
 * camelCase, all async. Ids are validated by every method; an invalid id
 * rejects with `InvalidImageIdError` and touches nothing on disk.
 */
export interface CacheDriver {
  /** Short driver name, used in messages (e.g. `sqlite`). */
  readonly name: string;
  /** The cache directory. */
  readonly cacheDir: string;
  /** Filesystem capabilities this driver needs. */
  readonly capabilities: DriverCapabilities;
  /** What the driver promises (persistence, stored digests, cross-process hit accounting). */
  readonly supports: DriverSupports;
  /**
   * Optional: file names in the cache directory that belong to the driver
   * (its database, journal, lock files). They are never listed as images and
   * never accepted as ids. Names starting with `.` need not be listed: ids
   * never start with a dot, so dot-files are always the driver's own.
   */
  readonly reservedNames?: readonly string[];

  /** Creates the directories, opens the metadata store, probes the filesystem. Throws `BadDriverConfigurationError`. */
  configure(): Promise<void>;
  /** Releases handles. Idempotent. */
  close(): Promise<void>;

  /** An active entry exists. */
  isCached(id: ImageId): Promise<boolean>;
  /** An `incomplete/` file exists. */
  isBeingCached(id: ImageId): Promise<boolean>;
  /** Neither cached nor being cached (a check only: nothing is reserved). */
  isCacheable(id: ImageId): Promise<boolean>;
  /** A queue marker exists. */
  isQueued(id: ImageId): Promise<boolean>;
  /** Queues the id for prefetch; false when cached, being cached or already queued. */
  queueImage(id: ImageId): Promise<boolean>;
  /** Queued ids, oldest first. */
  getQueuedImages(): Promise<ImageId[]>;
  /** Every active entry, sorted by id. */
  getCachedImages(): Promise<CachedImage[]>;
  /** Sum of the sizes of the active entries, in bytes. */
  getCacheSize(): Promise<number>;
  /** Size of an active entry; `ImageNotCachedError` when there is none. */
  getImageSize(id: ImageId): Promise<number>;
  /** Completed reads of an active entry; 0 when not cached. */
  getHitCount(id: ImageId): Promise<number>;
  /** The entry prune evicts next (oldest access, then oldest commit, then id), or null when empty. */
  getLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null>;
  /** Opens an exclusive writer; see {@link CacheWriter}. `ImageBeingCachedError` when another writer has the id. */
  openForWrite(id: ImageId): Promise<CacheWriter>;
  /**
   * Optional: commits `bytes` (at most `SMALL_WRITE_BYTES`, 64 KiB) as the
   * whole content of `id`, as `openForWrite` and `end(bytes)` would, with the
   * same durability, but without a stream (docs/adr/0007, "Small commits
   * from memory"). Resolves true once committed, false when nothing was
   * written because `id` is cached or another writer has it. A failure
   * rolls back as a failed writer does (the partial file moves to
   * `invalid/`) and rejects with a `CacheStorageError`. The caller verifies
   * the bytes and passes the stored form of their digest.
   */
  writeSmallImage?(id: ImageId, bytes: Uint8Array, options?: WriteSmallImageOptions): Promise<boolean>;
  /**
   * Opens an active entry for reading, all of it or a byte range, and counts
   * a hit when the reader has been handed the image's last byte (the rule and
   * the range checks are in {@link ReadOptions}). `ImageNotCachedError` when
   * absent, `ImageChangedError` when `options.identity` names another file,
   * `RangeNotSatisfiableError` for a start past the end.
   */
  openForRead(id: ImageId, options?: ReadOptions): Promise<Readable>;
  /**
   * Optional. Records `count` completed reads of the active file
   * `options.identity` (reads opened with `{ countHit: false }` whose caller
   * counted them itself, e.g. a server that batches the hits of many
   * requests), the last of them at `options.time` (epoch seconds): the same
   * metadata as `count` hits counted by {@link openForRead} would leave.
   * Resolves `false`, recording nothing, when `id` has no active file or it
   * is another file than `identity` (the hits belonged to a file that is
   * gone). A driver without it is read with per-read hit counting.
   */
  recordHits?(id: ImageId, count: number, options: RecordHitsOptions): Promise<boolean>;
  /** Deletes an active entry and its metadata; no-op when absent. */
  deleteCachedImage(id: ImageId): Promise<void>;
  /** Deletes every active entry; returns how many files were deleted. */
  deleteAllCachedImages(): Promise<number>;
  /** Removes a queue marker; no-op when absent. */
  deleteQueuedImage(id: ImageId): Promise<void>;
  /** Removes every queue marker; returns how many. */
  deleteAllQueuedImages(): Promise<number>;
  /** Deletes invalid files and incomplete files older than `stallTimeSeconds`, and reconciles metadata with files. */
  clean(stallTimeSeconds?: number): Promise<CleanReport>;
  /** The path of an id's file in one part of the cache (no I/O). */
  getImageFilepath(id: ImageId, status?: EntryStatus): string;
  /**
   * Optional: the verified digest stored with an active entry at commit
   * (`<algorithm>:<hex>`, or bare hex for md5; see `formatChecksum`), or
   * `undefined` when it was cached without one, when the entry is absent, or
   * when the file was replaced since (another file under the same id never
   * inherits a digest). Servers use it as a strong ETag, `image-cache verify`
   * re-checks it. Drivers with `supports.storedChecksum: false` may leave it
   * out or always answer `undefined`.
   */
  getStoredChecksum?(id: ImageId): Promise<string | undefined>;
  /**
   * Optional: the file and the metadata of an active entry in one call, or
   * `null` when it is not cached. Metadata recorded for another file (one
   * since replaced) is not reported: the entry then has 0 hits, its mtime as
   * access and commit time, and no digest. `DirectoryCacheDriver` implements
   * it; `ImageCache.stat` composes it from the other calls for drivers that do not.
   */
  statImage?(id: ImageId): Promise<ImageStat | null>;
  /**
   * Optional: takes an active entry out of the cache for inspection: its file
   * moves to `invalid/<id>` (replacing an older one there; the next `clean()`
   * deletes it) and its metadata is forgotten. Resolves true when it moved the
   * file, false when the entry is not cached or `options.identity` names
   * another file. `DirectoryCacheDriver` implements it; `ImageCache.quarantine`
   * falls back to a rename and `deleteCachedImage` for drivers that do not.
   */
  quarantineImage?(id: ImageId, options: QuarantineOptions): Promise<boolean>;
}
