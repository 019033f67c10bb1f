import type { ImageCache } from '@cache/core';
import type { Origin } from '@cache/origin';
import type { ClusterMember } from './cluster.js';
import type { EntryMemory } from './entry.js';
import type { ServerFills } from './fill.js';
import type { HitBatch } from './hit-batch.js';
import type { ServerMetrics } from './metrics.js';
import type { Readiness } from './readiness.js';
import type { ClusterStatusSource } from './status.js';
import type { PeriodicWorker, Serial } from './workers.js';

/** What the routes share with the server. */
export interface ServerContext {
  /**
   * The whole server's metrics (Prometheus text): this server's registry, or,
   * in a worker with `workerMetrics`, every worker's aggregated by the
   * primary (rejects with a 503 `METRICS_UNAVAILABLE` when they do not arrive).
   */
  wholeServerMetrics(): Promise<string>;
  /** Whether {@link wholeServerMetrics} comes from the primary (a worker of a server of several processes). */
  aggregatedMetrics: boolean;
  cache: ImageCache;
  origin: Origin | undefined;
  /** The fills of misses and prefetches (one per id), when there is an origin. */
  fills: ServerFills | undefined;
  metrics: ServerMetrics;
  /** This server as a node of a cluster (`options.cluster`), if it is one. */
  cluster: ClusterMember | undefined;
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
  /**
   * The nodes of the cluster this node belongs to, for the status page;
   * `undefined` when this server is on its own (the page shows this node only).
   */
  clusterNodes: ClusterStatusSource | undefined;
  /** Registers work that `close()` must wait for (request handlers, fills ending or being rolled back). */
  track(work: Promise<unknown>): void;
}
