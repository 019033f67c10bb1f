import { createReadStream } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { mapLimit, type EntryStatus } from './cache-dir.js';
import {
  formatChecksum,
  normalizeChecksum,
  type Checksum,
  type NormalizedChecksum,
} from './checksum.js';
import { compareByRecency, DEFAULT_STALL_TIME } from './directory-driver.js';
import { guardDriver } from './guard.js';
import { ParallelHash } from './parallel-hash.js';
import type { CachedImage, CacheDriver, CacheWriter, CleanReport, LeastRecentlyAccessed } from './driver.js';
import {
  BadDriverConfigurationError,
  CacheStorageError,
  ChecksumMismatchError,
  ImageBeingCachedError,
  ImageNotCachedError,
  InvalidArgumentError,
} from './errors.js';
import { assertImageId, type ImageId } from './image-id.js';
import { Fill, type FillOptions } from './fill/fill.js';
import { WriteLock } from './fill/owner.js';

/**
 * How long a caching stream whose client stopped reading waits for the source
 * to report its end (the client then had every byte, and the entry is committed).
 */
const END_GRACE_MS = 250;

/** Deletes `prune()` keeps in flight. */
const PRUNE_CONCURRENCY = 8;

/** Glance's default cache budget: 10 GiB. */
export const DEFAULT_MAX_SIZE = 10 * 1024 ** 3;

/** Where image bytes come from: a stream, any async iterable of bytes, or a file path. */
export type ImageSource = Readable | AsyncIterable<Uint8Array> | string;

/** Options of {@link ImageCache.open}. */
export interface ImageCacheOptions {
  /** The metadata driver; `open` configures it. */
  driver: CacheDriver;
  /** Byte budget that `prune()` enforces. @default 10 GiB */
  maxSize?: number;
  /** Seconds after which `clean()` deletes an incomplete file. @default 86400 */
  stallTime?: number;
  /** Called when caching failed but the client's stream went on (disk full, driver error). */
  onCacheError?: (error: Error, imageId: ImageId) => void;
}

/** Options for writing an image into the cache. */
export interface CacheImageOptions {
  /** Expected digest; a mismatch rejects with `ChecksumMismatchError` and nothing is committed. */
  checksum?: Checksum;
}

/** What `prune()` evicted. */
export interface PruneResult {
  files: number;
  bytes: number;
}

/** How a caching stream's cache write ended. */
export interface CachingOutcome {
  /**
   * - `committed`: the entry is active and verified.
   * - `skipped`: not written (already cached, or another writer has it).
   * - `failed`: the cache failed (the client still got every byte); see `error`.
   * - `aborted`: the source failed, the checksum did not match, or the client stopped; rolled back.
   */
  status: 'committed' | 'skipped' | 'failed' | 'aborted';
  /** For `aborted`: whether the source (including a checksum mismatch) or the client ended the stream. */
  abortedBy?: 'source' | 'client';
  error?: Error;
}

/**
 * What a {@link ReadThroughOptions.fetch} may resolve to instead of a bare
 * source: the source together with what the origin announced about it, which
 * is only known once the origin has answered (a digest in its response
 * headers, in a manifest, in the image's metadata).
 */
export interface FetchedImage {
  /** The image bytes. */
  source: ImageSource;
  /**
   * Expected digest, verified as {@link CacheImageOptions.checksum} (and
   * stored with the entry when it matches). Used when
   * {@link ReadThroughOptions.checksum} is not given; that one wins.
   */
  checksum?: Checksum;
  /**
   * `false`: pass the source through to this caller without caching it (for
   * bytes whose completeness cannot be verified). The stream is then not a
   * `CachingStream`; callers waiting on this fetch do not wait for it, each
   * fetches for itself. @default true
   */
  cache?: boolean;
}

/** Options of {@link ImageCache.readThrough}. */
export interface ReadThroughOptions {
  /**
   * Opens the image at its origin. Called only on a miss, and only by the one
   * caller that leads the fetch when several miss the same id at once. It may
   * resolve to a {@link FetchedImage} to pass what the origin announced (a
   * checksum) or to refuse caching.
   */
  fetch: () => ImageSource | FetchedImage | Promise<ImageSource | FetchedImage>;
  /** Expected digest of the image; see {@link CacheImageOptions.checksum}. */
  checksum?: Checksum;
}

/** What {@link ImageCache.readThrough} serves. */
export interface ReadThroughResult {
  /** The image bytes. Consume or destroy it: callers waiting on this fetch wait for it to end. */
  stream: Readable;
  /**
   * `cache` when served from the cache; `origin` when the bytes come from
   * the origin as they are cached: through this caller's caching stream (a
   * `CachingStream`), or, when {@link fill} is set, as a reader of a fill
   * that another process on this host (or {@link ImageCache.fill} in this
   * one) runs.
   */
  from: 'cache' | 'origin';
  /**
   * Set when the stream reads a running fill instead of fetching: the
   * origin is read once per host. Its `done` tells how the fill ended.
   */
  fill?: Fill;
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
  /** Misses being fetched by this process: settles 'committed' or 'retry', or rejects with the source's error. */
  readonly #flights = new Map<ImageId, Promise<'committed' | 'retry'>>();
  /** Fills of this process, one per id (see {@link fill}). */
  readonly #fills = new Map<ImageId, Fill>();

  private constructor(options: Required<Omit<ImageCacheOptions, 'onCacheError'>> & Pick<ImageCacheOptions, 'onCacheError'>) {
    this.driver = options.driver;
    this.maxSize = options.maxSize;
    this.stallTime = options.stallTime;
    this.#onCacheError = options.onCacheError;
  }

  /** Validates the options, configures the driver and returns the cache. */
  static async open(options: ImageCacheOptions): Promise<ImageCache> {
    const { driver, maxSize = DEFAULT_MAX_SIZE, stallTime = DEFAULT_STALL_TIME, onCacheError } = options ?? {};
    if (driver === undefined || driver === null || typeof driver.configure !== 'function') {
      throw new BadDriverConfigurationError('ImageCache', 'options.driver must be a CacheDriver instance');
    }
    for (const [name, value] of [['maxSize', maxSize], ['stallTime', stallTime]] as const) {
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
        throw new BadDriverConfigurationError(driver.name, `${name} must be a finite number >= 0, got ${String(value)}`);
      }
    }
    // The lifecycle and id guards apply to any driver, not only to subclasses of DirectoryCacheDriver.
    const guarded = guardDriver(driver);
    await guarded.configure();
    return new ImageCache({ driver: guarded, maxSize, stallTime, onCacheError });
  }

  /** Closes the driver. */
  close(): Promise<void> {
    return this.driver.close();
  }

  // ---- passthroughs -----------------------------------------------------------------

  /** See {@link CacheDriver.isCached}. */
  isCached(id: ImageId): Promise<boolean> {
    return this.driver.isCached(id);
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
    return this.driver.getImageSize(id);
  }
  /** See {@link CacheDriver.getHitCount}. */
  getHitCount(id: ImageId): Promise<number> {
    return this.driver.getHitCount(id);
  }
  /** See {@link CacheDriver.getLeastRecentlyAccessed}. */
  getLeastRecentlyAccessed(): Promise<LeastRecentlyAccessed | null> {
    return this.driver.getLeastRecentlyAccessed();
  }
  /** See {@link CacheDriver.openForRead}. */
  openForRead(id: ImageId): Promise<Readable> {
    return this.driver.openForRead(id);
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

  // ---- maintenance ------------------------------------------------------------------

  /**
   * Evicts least recently accessed entries (ties: older commit, then id) until
   * the cache is within `maxSize`. One listing, one sort, one pass: it stops
   * when the budget is met or nothing is left, never loops.
   */
  async prune(): Promise<PruneResult> {
    const images = await this.driver.getCachedImages();
    let size = images.reduce((sum, image) => sum + image.size, 0);
    const result: PruneResult = { files: 0, bytes: 0 };
    if (size <= this.maxSize) return result;
    images.sort(compareByRecency);
    const victims: CachedImage[] = [];
    for (const image of images) {
      if (size <= this.maxSize) break;
      victims.push(image);
      size -= image.size;
    }
    // Deletes overlap (each is a stat, an unlink and a metadata write); the
    // victims were chosen above, so the order they finish in does not matter.
    let failure: unknown;
    await mapLimit(victims, PRUNE_CONCURRENCY, async (image) => {
      if (failure !== undefined) return;
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
    const fill = new Fill(this.driver, id, options);
    this.#fills.set(id, fill);
    void fill.done.then(() => {
      if (this.#fills.get(id) === fill) this.#fills.delete(id);
    });
    return fill;
  }

  /**
   * Caches an image from a stream, async iterable or file path. Resolves true
   * when the entry was committed, false when it was not cacheable (already
   * cached, or another writer has it; the source is then left unread).
   * Rejects with `ChecksumMismatchError` (nothing committed), with the
   * source's error, or with a `CacheStorageError`; in each case the partial
   * file is in `invalid/`.
   */
  async cacheImage(id: ImageId, source: ImageSource, options: CacheImageOptions = {}): Promise<boolean> {
    assertImageId(id);
    const expected = normalizeChecksum(options.checksum);
    assertSource(source);
    // The host's write lock of the id (ADR 0003): a fill or writer of another process has it -> not cacheable now.
    const lock = await WriteLock.acquire(this.driver, id).catch((error: unknown) => {
      if (ImageBeingCachedError.isInstance(error)) return undefined;
      throw error;
    });
    if (lock === undefined) return false;
    let writer: CacheWriter | undefined;
    try {
      writer = await openWriterIfCacheable(this.driver, id);
      if (writer !== undefined) await lock.attach(writer, this.driver.getImageFilepath(id, 'incomplete'));
    } catch (error) {
      writer?.destroy(error as Error);
      if (writer !== undefined) await whenClosed(writer);
      lock.failed(error as Error, false);
      throw error;
    }
    if (writer === undefined) {
      lock.release();
      return false;
    }
    const input = typeof source === 'string' ? createReadStream(source, { highWaterMark: 1024 * 1024 }) : source;
    try {
      if (expected === undefined) await pipeline(input, writer);
      else await pipeline(input, new VerifyingTransform(id, expected, writer), writer);
    } catch (error) {
      // pipeline rejects at the first error; wait until the rollback has moved the file to invalid/.
      if (!writer.destroyed) writer.destroy(error as Error);
      await whenClosed(writer);
      // Followers give up on a source failure; on a cache failure they take over.
      lock.failed(error as Error, !CacheStorageError.isInstance(error));
      throw error;
    }
    lock.committed(writer.bytesWritten, expected === undefined ? undefined : formatChecksum(expected));
    return true;
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
  async readThrough(id: ImageId, options: ReadThroughOptions): Promise<ReadThroughResult> {
    assertImageId(id);
    normalizeChecksum(options?.checksum);
    if (typeof options?.fetch !== 'function') {
      throw new InvalidArgumentError('readThrough needs { fetch: () => ImageSource | FetchedImage | Promise<ImageSource | FetchedImage> }');
    }
    for (;;) {
      try {
        return { stream: await this.driver.openForRead(id), from: 'cache' };
      } catch (error) {
        if (!ImageNotCachedError.isInstance(error)) throw error;
      }
      const fill = this.#fills.get(id);
      if (fill !== undefined) return { stream: fill.openReader(), from: 'origin', fill };
      const flight = this.#flights.get(id);
      if (flight !== undefined) {
        await flight; // rejects with the source's error
        continue;
      }
      return this.#lead(id, options);
    }
  }

  async #lead(id: ImageId, options: ReadThroughOptions): Promise<ReadThroughResult> {
    let resolve!: (value: 'committed' | 'retry') => void;
    let reject!: (error: Error) => void;
    const flight = new Promise<'committed' | 'retry'>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    flight.catch(() => undefined); // waiters see the rejection; nobody else must
    this.#flights.set(id, flight);
    const done = () => {
      if (this.#flights.get(id) === flight) this.#flights.delete(id);
    };
    let lock: WriteLock | undefined;
    try {
      lock = await WriteLock.acquire(this.driver, id);
      if (lock === undefined) {
        // Another process on this host (or a writer of this one) is caching the id: read its fill instead of fetching.
        // Taking over, this process fetches with the caller's fetch; the digest it announces is verified at the end.
        const fill = this.fill(id, { fetch: async () => unwrapFetched(await options.fetch()).source, checksum: options.checksum });
        done();
        resolve('retry'); // the waiters find the fill
        return { stream: fill.openReader(), from: 'origin', fill };
      }
    } catch (error) {
      // A writer of this process without the lock (a direct driver.openForWrite): the caching stream skips caching.
      if (!ImageBeingCachedError.isInstance(error)) {
        done();
        reject(error as Error);
        throw error;
      }
    }
    let stream: CachingStream;
    try {
      const fetched = unwrapFetched(await options.fetch());
      if (fetched.cache === false) {
        // Not to be cached: this caller streams the source as it is; the waiters (and other processes) fetch for themselves.
        assertSource(fetched.source);
        lock?.failed(new Error('the origin response is not to be cached'), false);
        done();
        resolve('retry');
        return { stream: toReadable(fetched.source), from: 'origin' };
      }
      assertSource(fetched.source);
      stream = new CachingStream(
        this.driver,
        id,
        fetched.source,
        normalizeChecksum(options.checksum ?? fetched.checksum),
        this.#onCacheError,
        lock,
      );
    } catch (error) {
      lock?.failed(error as Error, true);
      done();
      reject(error as Error);
      throw error;
    }
    void stream.cacheOutcome.then((outcome) => {
      done();
      settleFlight(outcome, resolve, reject);
    });
    return { stream, from: 'origin' };
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
    return new CachingStream(this.driver, id, source, expected, this.#onCacheError);
  }
}

/**
 * Opens an exclusive writer for `id` unless it is cached or being cached.
 * The cached check is repeated once the writer holds `incomplete/<id>`: a
 * writer of another process may have committed between the first check and
 * the exclusive create, and the image must not be fetched and written twice.
 */
async function openWriterIfCacheable(driver: CacheDriver, id: ImageId): Promise<CacheWriter | undefined> {
  if (!(await driver.isCacheable(id))) return undefined;
  let writer: CacheWriter;
  try {
    writer = await driver.openForWrite(id);
  } catch (error) {
    if (ImageBeingCachedError.isInstance(error)) return undefined;
    throw error;
  }
  if (await driver.isCached(id).catch(() => false)) {
    // Nothing was written: give the empty file back instead of leaving it in invalid/.
    writer.on('error', () => undefined);
    writer.destroy();
    await whenClosed(writer);
    await unlink(driver.getImageFilepath(id, 'invalid')).catch(() => undefined);
    return undefined;
  }
  return writer;
}

function settleFlight(
  outcome: CachingOutcome,
  resolve: (value: 'committed' | 'retry') => void,
  reject: (error: Error) => void,
): void {
  if (outcome.status === 'committed') resolve('committed');
  else if (outcome.status === 'aborted' && outcome.abortedBy === 'source' && outcome.error !== undefined) reject(outcome.error);
  else resolve('retry'); // skipped, cache-side failure, or the leader's client stopped: try again
}

/** A fetch result as a {@link FetchedImage} (a bare source is one with nothing announced). */
function unwrapFetched(fetched: ImageSource | FetchedImage): FetchedImage {
  const isFetchedImage =
    typeof fetched === 'object' && fetched !== null && !(Symbol.asyncIterator in fetched) && 'source' in fetched;
  return isFetchedImage ? fetched : { source: fetched };
}

function toReadable(source: ImageSource): Readable {
  if (typeof source === 'string') return createReadStream(source, { highWaterMark: 1024 * 1024 });
  return source instanceof Readable ? source : Readable.from(source, { objectMode: false });
}

function assertSource(source: unknown): asserts source is ImageSource {
  const ok =
    typeof source === 'string'
      ? source.length > 0
      : typeof source === 'object' && source !== null && Symbol.asyncIterator in source;
  if (!ok) {
    throw new InvalidArgumentError('source must be a Readable, an AsyncIterable<Uint8Array> or a file path');
  }
}

/** Resolves once the stream has emitted `close` (its destroy work, e.g. a rollback, is done). */
function whenClosed(stream: Readable | CacheWriter): Promise<void> {
  if (stream.closed) return Promise.resolve();
  return new Promise((resolve) => stream.once('close', () => resolve()));
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new InvalidArgumentError(`source yielded a ${typeof chunk}, expected Uint8Array chunks`);
}

/**
 * Hashes what passes (on a worker thread for large images, see `ParallelHash`);
 * on flush either records the digest on the writer or fails with `ChecksumMismatchError`.
 */
class VerifyingTransform extends Transform {
  readonly #hash: ParallelHash;
  constructor(
    readonly imageId: ImageId,
    readonly expected: NormalizedChecksum,
    readonly writer: CacheWriter,
  ) {
    super();
    this.#hash = new ParallelHash(expected.algorithm);
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    let wait: Promise<void> | undefined;
    try {
      wait = this.#hash.update(chunk);
    } catch (error) {
      callback(error as Error);
      return;
    }
    if (wait === undefined) callback(null, chunk);
    else wait.then(() => callback(null, chunk), callback);
  }
  override _flush(callback: TransformCallback): void {
    this.#hash.digest().then((actual) => {
      if (actual !== this.expected.digest) {
        callback(new ChecksumMismatchError(this.imageId, this.expected.algorithm, this.expected.digest, actual));
        return;
      }
      this.writer.setChecksum(formatChecksum(this.expected));
      callback();
    }, callback);
  }
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#hash.dispose();
    callback(error);
  }
}

/**
 * The client's stream from {@link ImageCache.getCachingStream}. Emits
 * `cacheError` when the cache write fails (never `error` for that);
 * `cacheOutcome` tells how the cache write ended.
 */
export class CachingStream extends Readable {
  /** The image being streamed. */
  readonly imageId: ImageId;
  /** Settles (never rejects) once the cache write has committed, been skipped, failed or been rolled back. */
  readonly cacheOutcome: Promise<CachingOutcome>;
  readonly #driver: CacheDriver;
  readonly #source: ImageSource;
  readonly #expected: NormalizedChecksum | undefined;
  readonly #hash: ParallelHash | undefined;
  readonly #onCacheError: ((error: Error, imageId: ImageId) => void) | undefined;
  #iterator: AsyncIterator<unknown> | undefined;
  #writer: CacheWriter | undefined;
  #pumping = false;
  /** The source has ended: every byte has been pushed, only verification and the commit are left. */
  #sourceEnded = false;
  /** The source read in progress, if any. */
  #pendingStep: Promise<IteratorResult<unknown>> | undefined;
  #settle!: (outcome: CachingOutcome) => void;
  #settled = false;
  /** The host's write lock of the id, held from `_construct` until the outcome. */
  #lock: WriteLock | undefined;
  /** The writer of the cache write, kept to wait for its rollback before the lock is given back. */
  #lastWriter: CacheWriter | undefined;
  /** Bytes handed to the cache writer. */
  #cachedBytes = 0;

  /**
   * @param lock - @internal the host's write lock of `id`, when the caller already holds it.
   */
  constructor(
    driver: CacheDriver,
    id: ImageId,
    source: ImageSource,
    expected: NormalizedChecksum | undefined,
    onCacheError?: (error: Error, imageId: ImageId) => void,
    lock?: WriteLock,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.imageId = id;
    this.#driver = driver;
    this.#source = source;
    this.#expected = expected;
    this.#hash = expected === undefined ? undefined : new ParallelHash(expected.algorithm);
    this.#onCacheError = onCacheError;
    this.#lock = lock;
    this.cacheOutcome = new Promise((resolve) => (this.#settle = resolve));
  }

  #finishOutcome(outcome: CachingOutcome): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#settle(outcome);
    const lock = this.#lock;
    this.#lock = undefined;
    if (lock === undefined) return;
    // Followers (fills of other processes) learn the outcome once the file is where it ends up.
    const writer = this.#lastWriter;
    const moved = writer === undefined ? Promise.resolve() : whenClosed(writer);
    void moved.then(() => {
      if (outcome.status === 'committed') {
        lock.committed(this.#cachedBytes, this.#expected === undefined ? undefined : formatChecksum(this.#expected));
      } else if (outcome.status === 'skipped' || outcome.error === undefined) {
        lock.release();
      } else {
        lock.failed(outcome.error, outcome.status === 'aborted' && outcome.abortedBy === 'source');
      }
    });
  }

  /** A cache-side failure: report it, roll back, keep serving the client. */
  #cacheFailed(error: Error): void {
    const writer = this.#writer;
    this.#writer = undefined;
    writer?.destroy(error);
    this.#finishOutcome({ status: 'failed', error });
    this.emit('cacheError', error);
    try {
      this.#onCacheError?.(error, this.imageId);
    } catch {
      // A broken reporter must not break the client.
    }
  }

  /** Rolls the cache write back because of a source-side failure and waits until the file is in `invalid/`. */
  async #abortCache(error: Error, abortedBy: 'source' | 'client'): Promise<void> {
    const writer = this.#writer;
    this.#writer = undefined;
    if (writer !== undefined) {
      writer.destroy(error);
      await whenClosed(writer);
    }
    this.#finishOutcome({ status: 'aborted', abortedBy, error });
  }

  override _construct(callback: (error?: Error | null) => void): void {
    this.#open().then(() => callback(), callback);
  }

  async #open(): Promise<void> {
    const source = this.#source;
    const iterable: AsyncIterable<unknown> =
      typeof source === 'string' ? createReadStream(source, { highWaterMark: 1024 * 1024 }) : source;
    this.#iterator = iterable[Symbol.asyncIterator]();
    try {
      // The host's write lock of the id (ADR 0003): held by a fill or writer elsewhere -> pass through without caching.
      this.#lock ??= await WriteLock.acquire(this.#driver, this.imageId);
      if (this.#lock === undefined) {
        this.#finishOutcome({ status: 'skipped' });
        return;
      }
      const writer = await openWriterIfCacheable(this.#driver, this.imageId);
      if (writer === undefined) {
        this.#finishOutcome({ status: 'skipped' });
        return;
      }
      writer.on('error', (error: Error) => {
        if (this.#writer === writer) this.#cacheFailed(error);
      });
      this.#writer = writer;
      this.#lastWriter = writer;
      await this.#lock.attach(writer, this.#driver.getImageFilepath(this.imageId, 'incomplete'));
    } catch (error) {
      if (ImageBeingCachedError.isInstance(error)) this.#finishOutcome({ status: 'skipped', error });
      else this.#cacheFailed(error as Error);
    }
  }

  override _read(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    this.#pump().catch((error: Error) => this.destroy(error));
  }

  async #pump(): Promise<void> {
    const iterator = this.#iterator as AsyncIterator<unknown>;
    for (;;) {
      let step: IteratorResult<unknown>;
      let chunk: Buffer;
      try {
        this.#pendingStep = iterator.next();
        step = await this.#pendingStep;
        this.#pendingStep = undefined;
        if (this.destroyed) return;
        if (step.done === true) {
          this.#sourceEnded = true;
          break;
        }
        chunk = toBuffer(step.value);
        const hashing = this.#hash?.update(chunk);
        if (hashing !== undefined) await hashing;
      } catch (error) {
        await this.#abortCache(error as Error, 'source');
        this.destroy(error as Error);
        return;
      }
      await this.#writeToCache(chunk);
      if (this.destroyed) return;
      if (!this.push(chunk)) {
        this.#pumping = false;
        return;
      }
    }
    await this.#endOfSource();
  }

  async #writeToCache(chunk: Buffer): Promise<void> {
    const writer = this.#writer;
    if (writer === undefined || chunk.length === 0) return;
    this.#cachedBytes += chunk.length;
    if (writer.write(chunk)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        writer.off('drain', done);
        writer.off('close', done);
        resolve();
      };
      writer.on('drain', done);
      writer.on('close', done);
    });
  }

  async #endOfSource(): Promise<void> {
    if (this.#expected !== undefined && this.#hash !== undefined) {
      let actual: string;
      try {
        actual = await this.#hash.digest();
      } catch (error) {
        await this.#abortCache(error as Error, 'source');
        this.destroy(error as Error);
        return;
      }
      if (actual !== this.#expected.digest) {
        const error = new ChecksumMismatchError(this.imageId, this.#expected.algorithm, this.#expected.digest, actual);
        await this.#abortCache(error, 'source');
        this.destroy(error);
        return;
      }
    }
    const writer = this.#writer;
    if (writer !== undefined) {
      if (this.#expected !== undefined) writer.setChecksum(formatChecksum(this.#expected));
      writer.end();
      try {
        await finished(writer);
        if (this.#writer === writer) this.#finishOutcome({ status: 'committed' });
      } catch (error) {
        if (this.#writer === writer) this.#cacheFailed(error as Error);
      }
      this.#writer = undefined;
    }
    this.push(null);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#sourceEnded && this.#writer !== undefined) {
      // The client had every byte and went away while the entry was being
      // verified and committed: let the commit finish (cacheOutcome tells how it ended).
      callback(error);
      return;
    }
    const iterator = this.#iterator;
    if (error === null && this.#writer !== undefined && iterator !== undefined) {
      // The client stopped reading. It had every byte exactly when the source has
      // nothing more: an HTTP client closing the connection on reaching
      // Content-Length does this, just before the source reports its end. Ask
      // the source (briefly): at its end, commit; otherwise roll back.
      const next = this.#pendingStep ?? iterator.next();
      let timer: NodeJS.Timeout | undefined;
      const tooLate = new Promise<'more'>((resolve) => (timer = setTimeout(() => resolve('more'), END_GRACE_MS)));
      Promise.race([next.then((step) => (step.done === true ? 'ended' : 'more')), tooLate])
        .catch(() => 'more' as const)
        .then((verdict) => {
          clearTimeout(timer);
          if (verdict === 'ended' && this.#writer !== undefined) {
            this.#sourceEnded = true;
            void this.#endOfSource();
            callback(null);
          } else {
            this.#rollBack(null, iterator, callback);
          }
        });
      return;
    }
    this.#rollBack(error, iterator, callback);
  }

  /** Rolls the cache write back (the client stopped, or `error` ended the stream) and finishes the destroy. */
  #rollBack(error: Error | null, iterator: AsyncIterator<unknown> | undefined, callback: (error?: Error | null) => void): void {
    this.#hash?.dispose();
    this.#abortCache(error ?? new Error('client stopped reading before the end of the image'), 'client')
      .then(() => iterator?.return?.())
      .then(
        () => callback(error),
        () => callback(error),
      );
  }



}
