/**
 * `@cache/core`: what an application uses: the `ImageCache` facade, the
 * `CacheDriver` contract it runs on, `MemoryDriver`, checksums and the typed
 * errors.
 *
 * Driver authors import `@cache/core/driver` as well: the
 * `DirectoryCacheDriver` base class with its hooks and the cache-directory
 * logic it composes.
 *
 * @packageDocumentation
 */
export * from './errors.js';
export {
  MAX_IMAGE_ID_BYTES,
  RESERVED_NAMES,
  assertImageId,
  imageIdProblem,
  isValidImageId,
  type ImageId,
} from './image-id.js';
export { SMALL_WRITE_BYTES, SUBDIRECTORIES, type EntryStatus } from './cache-dir.js';
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
  RecordHitsOptions,
  WriteSmallImageOptions,
} from './driver.js';
export { DEFAULT_STALL_TIME, compareByRecency, type CacheWarning } from './directory-driver.js';
export { DEFAULT_SYNC_INTERVAL_MS, STATE_DIRECTORY, type Durability } from './durability.js';
export { guardDriver } from './guard.js';
export {
  createChecksumHash,
  formatChecksum,
  normalizeChecksum,
  parseStoredChecksum,
  type Checksum,
  type ChecksumAlgorithm,
  type NormalizedChecksum,
} from './checksum.js';
export { DEFAULT_MAX_SIZE, ImageCache, type ImageCacheOptions, type PruneOptions, type PruneResult } from './image-cache.js';
export {
  DEFAULT_SPACE_INTERVAL_MS,
  diskSpace,
  noSpaceNeed,
  resolveThresholds,
  suggestedHeadroom,
  type BypassReason,
  type DiskSpace,
  type EvictionCause,
  type FreeSpaceOptions,
  type ImageCacheSpaceOptions,
  type ResolvedThreshold,
  type ResolvedThresholds,
  type SpaceEvent,
  type SpaceState,
  type SpaceStatus,
  type SpaceThreshold,
} from './space.js';
export { CachingStream, type CachingOutcome } from './caching-stream.js';
export type { CacheImageOptions, ImageSource } from './cache-write.js';
export type { FetchedImage, ReadThroughOptions, ReadThroughResult } from './read-through.js';
export { MemoryDriver } from './memory-driver.js';
export {
  Fill,
  PASS_THROUGH_BUFFER,
  type FetchedFill,
  type FillAnnouncement,
  type FillFetchContext,
  type FillOptions,
  type FillOutcome,
  type FillRole,
  type FillSource,
} from './fill/fill.js';
export { GrowingFileReader, type ReadRange } from './fill/reader.js';
