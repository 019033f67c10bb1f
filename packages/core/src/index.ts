/**
 * `@cache/core`: the driver contract, the cache-directory logic every driver
 * composes, the `ImageCache` facade and the typed errors.
 *
 * @packageDocumentation
 */
export * from './errors.js';
export * from './image-id.js';
export { nowSeconds } from './clock.js';
export {
  CacheDirectory,
  SUBDIRECTORIES,
  compareIds,
  isErrnoError,
  mapLimit,
  nsToSeconds,
  storageError,
  type EntryStat,
  type EntryStatus,
  type ReapResult,
} from './cache-dir.js';
export type {
  CachedImage,
  CacheDriver,
  CacheWriter,
  CleanReport,
  DriverCapabilities,
  LeastRecentlyAccessed,
} from './driver.js';
export {
  DEFAULT_STALL_TIME,
  DirectoryCacheDriver,
  compareByRecency,
  type CacheWarning,
  type CommitInfo,
  type DirectoryDriverOptions,
  type ImageMetadata,
} from './directory-driver.js';
export {
  CacheReadStream,
  CacheWriteStream,
  EARLY_FLUSH_BYTES,
  READ_CHUNK_SIZE,
  WRITE_HIGH_WATER_MARK,
  type WriteLifecycle,
} from './streams.js';
export {
  createChecksumHash,
  formatChecksum,
  normalizeChecksum,
  parseStoredChecksum,
  type Checksum,
  type ChecksumAlgorithm,
  type NormalizedChecksum,
} from './checksum.js';
export {
  CachingStream,
  DEFAULT_MAX_SIZE,
  ImageCache,
  type CacheImageOptions,
  type CachingOutcome,
  type ImageCacheOptions,
  type ImageSource,
  type PruneResult,
  type ReadThroughOptions,
  type ReadThroughResult,
} from './image-cache.js';
export { MemoryDriver } from './memory-driver.js';
