import pRetry from 'p-retry';
import { CacheError, ChecksumMismatchError, OriginError, type ImageCache, type ImageId, type NormalizedChecksum } from '@cache/core';
import { mapLimit } from '@cache/core/driver';
import { expectedChecksum, type Origin } from '@cache/origin';
import { codeOf } from '../errors.js';
import type { ProgressReporter } from './progress.js';

/** How one image's prefetch ended. */
export interface PrefetchResult {
  imageId: ImageId;
  /**
   * - `fetched`: fetched from the origin and committed (verified when a checksum was given);
   * - `already-cached`: nothing to do (its stale queue marker was removed);
   * - `skipped`: another writer is caching it right now (the marker stays);
   * - `failed`: every attempt failed, or a failure that is not retried (404, checksum mismatch); the marker stays;
   * - `cancelled`: interrupted before it finished.
   */
  status: 'fetched' | 'already-cached' | 'skipped' | 'failed' | 'cancelled';
  /** Fetch attempts made (0 when none was needed). */
  attempts: number;
  /** Bytes received in the last attempt. */
  bytes: number;
  /** Seconds spent on this image, retries and back-off included. */
  seconds: number;
  /** Why it failed. */
  error?: { message: string; code: string | undefined; status: number | undefined };
}

/** Options of {@link prefetchImages}. */
export interface PrefetchOptions {
  cache: ImageCache;
  origin: Origin;
  ids: readonly ImageId[];
  /** Images fetched at once. */
  concurrency: number;
  /** Retries after a failed attempt. */
  retries: number;
  /** Seconds before the first retry; doubled for each further one. */
  retryDelay: number;
  /** Expected digests by id. */
  checksums: ReadonlyMap<ImageId, NormalizedChecksum>;
  reporter: ProgressReporter;
  signal?: AbortSignal | undefined;
}

/**
 * Whether a failed attempt is worth another: not when the origin lacks the
 * image or refuses it (4xx other than 408 and 429), not for a checksum
 * mismatch (the origin serves wrong bytes), not for local cache or argument
 * errors; yes for 5xx, 408, 429, network failures and broken-off transfers.
 */
export function isRetryable(error: unknown): boolean {
  if (error instanceof UnverifiableImageError) return false;
  if (OriginError.isInstance(error)) {
    const status = error.status;
    return status === undefined || status >= 500 || status === 408 || status === 429;
  }
  if (ChecksumMismatchError.isInstance(error)) return false;
  return !CacheError.isCacheError(error);
}

/** The origin's body cannot be verified (close-delimited, no length or digest) and the origin does not allow unverified fills. */
class UnverifiableImageError extends OriginError {
  constructor(id: ImageId) {
    super(
      id,
      'not cached: the origin announced no length or digest and its body is close-delimited, so a cut connection could not be told from the end (give the origin a checksum manifest with --manifest, or pass --allow-unverified)',
    );
  }
}

/**
 * Caches `ids` from `origin`, at most `concurrency` at a time, retrying each
 * with exponential back-off (p-retry). One image failing never stops the
 * others. Results come back in the order of `ids`.
 */
export async function prefetchImages(options: PrefetchOptions): Promise<PrefetchResult[]> {
  const { reporter, signal } = options;
  reporter.begin(options.ids.length);
  try {
    return await mapLimit(options.ids, options.concurrency, async (id) => {
      const result = await prefetchOne(options, id);
      reporter.finished(result);
      return result;
    });
  } finally {
    reporter.end();
  }
}

async function prefetchOne(options: PrefetchOptions, id: ImageId): Promise<PrefetchResult> {
  const { cache, origin, reporter, signal } = options;
  const startedAt = performance.now();
  let attempts = 0;
  let bytes = 0;
  const result = (status: PrefetchResult['status'], error?: unknown): PrefetchResult => ({
    imageId: id,
    status,
    attempts,
    bytes,
    seconds: (performance.now() - startedAt) / 1000,
    ...(error === undefined ? {} : { error: describe(error) }),
  });
  if (isAborted(signal)) return result('cancelled');
  try {
    if (await cache.isCached(id)) {
      await cache.deleteQueuedImage(id);
      return result('already-cached');
    }
    if (await cache.isBeingCached(id)) return result('skipped');
    const committed = await pRetry(
      async (attempt) => {
        attempts = attempt;
        bytes = 0;
        const image = await origin.open(id, signal === undefined ? {} : { signal });
        if (image.cacheable === false) {
          image.stream.destroy();
          throw new UnverifiableImageError(id);
        }
        reporter.started(id, attempt, image.size);
        async function* counted(): AsyncGenerator<Uint8Array> {
          for await (const chunk of image.stream as AsyncIterable<Uint8Array>) {
            bytes += chunk.byteLength;
            reporter.advanced(id, chunk.byteLength);
            yield chunk;
          }
        }
        // A digest from --checksums wins; else the one the origin announced (headers, manifest, Glance).
        const checksum = options.checksums.get(id) ?? expectedChecksum(image);
        try {
          const done = await cache.cacheImage(id, counted(), checksum === undefined ? {} : { checksum });
          if (!done) image.stream.destroy();
          return done;
        } catch (error) {
          image.stream.destroy();
          throw error;
        }
      },
      {
        retries: options.retries,
        factor: 2,
        minTimeout: options.retryDelay * 1000,
        maxTimeout: Math.max(options.retryDelay * 1000, 60_000),
        unref: true,
        ...(signal === undefined ? {} : { signal }),
        shouldRetry: ({ error }) => !isAborted(signal) && isRetryable(error),
        onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
          if (retriesLeft > 0 && !isAborted(signal) && isRetryable(error)) reporter.retrying(id, attemptNumber, error);
        },
      },
    );
    return result(committed ? 'fetched' : 'skipped');
  } catch (error) {
    return result(isAborted(signal) ? 'cancelled' : 'failed', error);
  }
}

/** Read through a call so that narrowing does not assume the signal stays as it was. */
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function describe(error: unknown): NonNullable<PrefetchResult['error']> {
  return {
    message: error instanceof Error ? error.message.replace(/\s*\n\s*/g, ' ') : String(error),
    code: codeOf(error),
    status: OriginError.isInstance(error) ? error.status : undefined,
  };
}
