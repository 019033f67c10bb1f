import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { assertSource, type CacheImageOptions, type ImageSource } from './cache-write.js';
import type { ImageCache } from './image-cache.js';
import { CachingStream, type CachingOutcome } from './caching-stream.js';
import { normalizeChecksum, type Checksum } from './checksum.js';
import type { CacheDriver } from './driver.js';
import { ImageBeingCachedError, ImageNotCachedError, InvalidArgumentError } from './errors.js';
import type { Fill, FillOptions } from './fill/fill.js';
import { WriteLock } from './fill/owner.js';
import { assertImageId, type ImageId } from './image-id.js';

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

/** The fills of the facade ({@link ImageCache.fill}) that read-through joins instead of fetching. */
export interface ReadThroughFills {
  /** The fill of `id` running in this process, if any. */
  running(id: ImageId): Fill | undefined;
  /** Starts (or joins) the fill of `id` ({@link ImageCache.fill}). */
  fill(id: ImageId, options: FillOptions): Fill;
}

/**
 * The read-through single-flight behind {@link ImageCache.readThrough}: one
 * origin fetch per id at a time in this process; callers that miss the same
 * id meanwhile wait for it to commit and then read from the cache. Across
 * processes the leader takes the host's write lock of the id (ADR 0003) and
 * reads another process's fill instead of fetching.
 */
export class SingleFlightReads {
  readonly #driver: CacheDriver;
  readonly #fills: ReadThroughFills;
  readonly #onCacheError: ((error: Error, imageId: ImageId) => void) | undefined;
  /** Misses being fetched by this process: settles 'committed' or 'retry', or rejects with the source's error. */
  readonly #flights = new Map<ImageId, Promise<'committed' | 'retry'>>();

  /**
   * @param driver - the (guarded) driver cached reads come from and the leader caches into.
   * @param fills - the facade's fills, joined instead of fetching.
   * @param onCacheError - reporter of the leader's caching stream (`ImageCacheOptions.onCacheError`).
   */
  constructor(
    driver: CacheDriver,
    fills: ReadThroughFills,
    onCacheError?: (error: Error, imageId: ImageId) => void,
  ) {
    this.#driver = driver;
    this.#fills = fills;
    this.#onCacheError = onCacheError;
  }

  /**
   * Serves `id` from the cache, or leads or joins the fetch of a miss; see
   * {@link ImageCache.readThrough}.
   */
  async read(id: ImageId, options: ReadThroughOptions): Promise<ReadThroughResult> {
    assertImageId(id);
    normalizeChecksum(options?.checksum);
    if (typeof options?.fetch !== 'function') {
      throw new InvalidArgumentError('readThrough needs { fetch: () => ImageSource | FetchedImage | Promise<ImageSource | FetchedImage> }');
    }
    for (;;) {
      try {
        return { stream: await this.#driver.openForRead(id), from: 'cache' };
      } catch (error) {
        if (!ImageNotCachedError.isInstance(error)) throw error;
      }
      const fill = this.#fills.running(id);
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
      lock = await WriteLock.acquire(this.#driver, id);
      if (lock === undefined) {
        // Another process on this host (or a writer of this one) is caching the id: read its fill instead of fetching.
        // Taking over, this process fetches with the caller's fetch; the digest it announces is verified at the end
        // (and a response not to be cached is read, not committed).
        const fill = this.#fills.fill(id, {
          fetch: async () => unwrapFetched(await options.fetch()),
          checksum: options.checksum,
        });
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
        this.#driver,
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
