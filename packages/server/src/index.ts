/**
 * `@cache/server`: an HTTP read-through image cache on `@cache/core` and
 * fastify. `GET`/`HEAD /images/:id` with ETags, ranges and 304s, single-flight
 * misses streamed from an `@cache/origin` origin while they are cached, the
 * Glance cache management API under `/v2`, Prometheus metrics, health, and
 * background prune, clean and prefetch workers.
 *
 * @packageDocumentation
 */
export { createCacheServer, type CacheServer, type ListenOptions } from './server.js';
export { DEFAULTS, type CacheServerOptions, type HttpsOptions, type RateLimitOptions } from './options.js';
export { type AccessLogDestination, type AccessLogEntry, type CacheStatus } from './access-log.js';
export { WORKER_METRICS_TIMEOUT, serveWorkerMetrics } from './worker-metrics.js';
export { METRIC_NAMES, errorLabel, type ByteSource, type PrefetchOutcome, type WorkerName, type WorkerRunResult } from './metrics.js';
export { HttpError, MAX_ECHO, MAX_MESSAGE, errorBody, errorHeaders, publicMessage, statusFor, type ErrorBody } from './http-errors.js';
export { isLoopbackHost } from './listen.js';
export {
  STATUS_TOP_IMAGES,
  clusterStatusFromDriver,
  type ClusterNodeStatus,
  type ClusterStatusSource,
  type FillStatus,
  type NodeHealth,
  type SpaceReport,
  type StatusReport,
  type ThresholdStatus,
} from './status.js';
export {
  PEER_HEADER,
  defaultAdvertiseUrl,
  type ClusterDirectory,
  type ClusterOptions,
  type ClusterStatusInfo,
  type PeerCopyInfo,
} from './cluster.js';
export { toGlanceRecord, type GlanceCachedImage } from './routes/management.js';
