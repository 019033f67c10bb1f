/**
 * `@cache/core/driver`: what a driver author builds on.
 *
 * - {@link DirectoryCacheDriver}: the base class. It owns the lifecycle, id
 *   validation and every file operation; a driver implements only the
 *   metadata hooks (`openMetadata`, `closeMetadata`, `recordCommit`,
 *   `recordHit`, `readMetadata`, `forgetImage`, `forgetAllImages`, and
 *   optionally `readHitCount`, `readStoredChecksum`, `prepareCommit`,
 *   `prepareRollback`, `reconcile`) and declares `supports`.
 * - {@link CacheDirectory}: the cache-directory logic (paths, exclusive
 *   create, durable commit, listings, queue, reaping) the base class composes.
 * - Small helpers a driver needs: {@link fileIdentity}, {@link metadataMatches},
 *   {@link isErrnoError}, {@link storageError}, {@link permissionAdvice}, {@link mapLimit},
 *   {@link nsToSeconds}, {@link nowSeconds}.
 *
 * The contract types are re-exported from here too, so a driver file needs
 * this one import.
 *
 * @packageDocumentation
 */
export {
  CacheDirectory,
  compareIds,
  entryStatOf,
  fileIdentity,
  isErrnoError,
  LIST_SLICE,
  mapLimit,
  nsToSeconds,
  permissionAdvice,
  sameFile,
  storageError,
  yieldToEventLoop,
  type EntryStat,
  type EntryStatus,
  type ReapResult,
} from './cache-dir.js';
export { nowSeconds } from './clock.js';
export {
  DEFAULT_DRIVER_SUPPORTS,
  DEFAULT_STALL_TIME,
  DirectoryCacheDriver,
  compareByRecency,
  metadataMatches,
  type CacheWarning,
  type CommitInfo,
  type DirectoryDriverOptions,
  type ImageMetadata,
} from './directory-driver.js';
export { CacheReadStream, CacheWriteStream, READ_CHUNK_SIZE, releaseReadChunk, type CacheReadStreamOptions, type WriteLifecycle } from './streams.js';
export { FdHandle, type WriteHandle } from './write-handle.js';
export type {
  CachedImage,
  CacheDriver,
  CacheFileStat,
  CacheWriter,
  CleanReport,
  DriverCapabilities,
  DriverSupports,
  ImageStat,
  LeastRecentlyAccessed,
  QuarantineOptions,
  ReadOptions,
} from './driver.js';
export {
  assertSatisfiable,
  normalizeQuarantineOptions,
  normalizeReadOptions,
  type NormalizedReadOptions,
} from './options.js';
export { assertImageId, isValidImageId, RESERVED_NAMES, type ImageId } from './image-id.js';
export {
  BadDriverConfigurationError,
  CacheError,
  CacheStorageError,
  ErrorCodes,
  ImageChangedError,
  ImageNotCachedError,
  InvalidArgumentError,
  RangeNotSatisfiableError,
} from './errors.js';
