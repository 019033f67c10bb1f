import type { ImageCache } from '@cache/core';
import type { Origin } from '@cache/origin';
import type { EntryMemory } from './entry.js';
import type { ServerFills } from './fill.js';
import type { HitBatch } from './hit-batch.js';
import type { ServerMetrics } from './metrics.js';
import type { Readiness } from './readiness.js';
import type { PeriodicWorker, Serial } from './workers.js';

/** What the routes share with the server. */
export interface ServerContext {
  cache: ImageCache;
  origin: Origin | undefined;
  /** The fills of misses and prefetches (one per id), when there is an origin. */
  fills: ServerFills | undefined;
  metrics: ServerMetrics;
  /** Active entries' sizes and validators by id, checked against the opened file before use (see {@link EntryMemory}). */
  entries: EntryMemory;
  /** Hits of cache reads, written to the driver in batches; `undefined` when the driver cannot (reads count their own hit). */
  hits: HitBatch | undefined;
  /** Recent failures, for `/readyz`. */
  readiness: Readiness;
  /** Orders prunes (worker and API). */
  pruneSerial: Serial;
  /** Orders cleans (worker and API). */
  cleanSerial: Serial;
  /** The prefetch worker, when there is an origin. */
  prefetcher: PeriodicWorker | undefined;
  /** Whether queueing an image through the API starts a prefetch run. */
  prefetchOnQueue: boolean;
  /** Aborts when `close()` gives up waiting: origin requests still opening (HEAD misses) fail fast. */
  shutdownSignal: AbortSignal;
  /** Aborts when `close()` begins: a request still before its status line stops waiting and is answered {@link shuttingDown}. */
  drainSignal: AbortSignal;
  /** The 503 `SHUTTING_DOWN` error (with `Retry-After`) for a request refused by shutdown. */
  shuttingDown(): Error;
  /** Registers work that `close()` must wait for (request handlers, fills ending or being rolled back). */
  track(work: Promise<unknown>): void;
}
