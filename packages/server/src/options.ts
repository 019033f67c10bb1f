import cluster from 'node:cluster';
import { InvalidArgumentError, type ImageCache } from '@cache/core';
import type { Origin } from '@cache/origin';
import type { FastifyServerOptions } from 'fastify';
import type { AccessLogDestination } from './access-log.js';
import { resolveCluster, type ClusterOptions, type ResolvedCluster } from './cluster.js';
import { WORKER_METRICS_TIMEOUT, type serveWorkerMetrics } from './worker-metrics.js';

/** TLS material of {@link CacheServerOptions.https} (PEM), as `node:https` takes it. */
export interface HttpsOptions {
  /** The certificate chain (PEM). */
  cert: string | Buffer;
  /** The private key (PEM). */
  key: string | Buffer;
}

/** A per-client rate limit ({@link CacheServerOptions.rateLimit}). */
export interface RateLimitOptions {
  /** Requests a client (an IP address) may make per window. */
  max: number;
  /** The window, in milliseconds. */
  timeWindow: number;
}

/** Options of {@link createCacheServer}. Intervals and timeouts are milliseconds. */
export interface CacheServerOptions {
  /**
   * The cache to serve. The server does not close it on `close()` unless
   * {@link CacheServerOptions.closeCache} is true: the caller opened it and owns it.
   */
  cache: ImageCache;
  /**
   * Where misses and prefetches read from. Without one, a miss is a 404 and
   * the prefetch worker does not run.
   */
  origin?: Origin;
  /**
   * Bearer token guarding the management API (`/v2/...`). Without one the
   * management API is open, and `listen()` accepts only loopback addresses
   * (see {@link insecureOpenManagementApi}).
   */
  token?: string;
  /** Also require the token on `/metrics`. @default false */
  protectMetrics?: boolean;
  /**
   * Bearer token of `/metrics` (for a Prometheus scraper): `/metrics` then
   * takes this token or the management token. Without it, `/metrics` is open
   * (or needs the management token, with {@link protectMetrics}).
   */
  metricsToken?: string;
  /**
   * Allow `listen()` on an address other hosts can reach (not loopback)
   * without a `token`, leaving the management API open to them: anyone who
   * can connect can delete every cached image. Without it, `listen()`
   * refuses. @default false
   */
  insecureOpenManagementApi?: boolean;
  /** How often the pruner runs; 0 disables it. @default 300000 (5 min) */
  pruneInterval?: number;
  /** How often the cleaner runs (with the cache's stall time); 0 disables it. @default 3600000 (1 h) */
  cleanInterval?: number;
  /** How often the prefetch worker looks at the queue; 0 disables the timer. @default 60000 */
  prefetchInterval?: number;
  /** Queued images fetched at the same time by one prefetch run. @default 4 */
  prefetchConcurrency?: number;
  /**
   * Start a prefetch run as soon as `PUT /v2/cache/{id}` queues an image (as
   * Glance hands it to its cache worker at once), even when the timer is
   * disabled. Needs an origin. @default true
   */
  prefetchOnQueue?: boolean;
  /**
   * How long `close()` lets in-flight responses and the fills they read
   * finish before it aborts the fills (rolled back to `invalid/`) and
   * destroys the remaining connections.
   * @default 10000
   */
  shutdownTimeout?: number;
  /**
   * Milliseconds a miss's fill goes on fetching without any reader (every
   * client left, in this process and in processes following it) before it
   * is stopped and rolled back (core's `FillOptions.abandonAfter`). A client
   * waiting for the origin's headers counts as a reader.
   * @default undefined: never; a fill whose clients left finishes and is cached (the next request is likely to come)
   */
  fillAbandonAfter?: number;
  /**
   * How long a failure keeps `/readyz` at 503: a metadata store failure
   * (unless a probe finds the store answering again), a full disk (ENOSPC),
   * an origin error other than a 404. @default 30000
   */
  readinessWindow?: number;
  /** Close the `ImageCache` (and so its driver) at the end of `close()`. @default false */
  closeCache?: boolean;
  /** Fastify's logger: `true`, `false` or pino options. @default false */
  logger?: FastifyServerOptions['logger'];
  /**
   * Answer a plain hit directly on `node:http`, below fastify's routing: a
   * `GET /images/<id>` (an id of letters, digits, `.`, `_` and `-`; no
   * query, no `Range`, no conditional, no request body) of an entry this
   * process has served before, of at most 1 MiB, with a driver that takes
   * batched hits. It gets exactly what the route sends (status, headers,
   * body, hit, metrics); any other request, and one whose entry fails to
   * open, goes through fastify. Off whenever something must see every
   * request: `logger`, `accessLog` or `rateLimit`. @default true
   */
  directHits?: boolean;
  /**
   * An access log: one pino JSON line per request when its response ends
   * (`id`, `cache`: HIT / MISS / FILL-WAIT, `status`, `bytes`, `range`, `ms`,
   * `method`, `client`, `url`, `complete`). `true` writes to stdout, a string
   * appends to that file, a pino destination gets the lines.
   * @default undefined: none
   */
  accessLog?: AccessLogDestination | false | undefined;
  /** Serve HTTPS with this certificate and key (passed to fastify's `https`). @default undefined: plain HTTP */
  https?: HttpsOptions | undefined;
  /** Connections accepted at once (`server.maxConnections`); more are closed at once. @default undefined: no limit */
  maxConnections?: number | undefined;
  /**
   * Per-client (IP) rate limit of `/images` and the management API
   * (@fastify/rate-limit): over it, 429 with `Retry-After`. `/healthz`,
   * `/readyz` and `/metrics` are not limited. @default undefined: off
   */
  rateLimit?: RateLimitOptions | undefined;
  /**
   * Make this server one node of a cluster that shares its images (with
   * `@cache/driver-postgres`: `{ directory: cache.driver }`). The node
   * advertises its URL and a heartbeat in the shared database; a miss is
   * fetched from a live peer that holds the image (verified by the digest
   * that peer recorded) before the origin; `GET /v2/cache/cluster` lists
   * every node and which images each holds. Requests carrying the peer
   * header (`x-image-cache-peer`) are answered from this node's files only.
   * @default undefined: a standalone server
   */
  cluster?: ClusterOptions | undefined;
  /**
   * For a server run in each worker of a node:cluster primary that calls
   * {@link serveWorkerMetrics} (as `image-cache serve --workers N` does):
   * every scrape of `/metrics`, on any worker, answers the whole server's
   * metrics, which the primary aggregates from every worker's registry
   * (prom-client's `AggregatorRegistry`), and the request figures of
   * `/v2/status` are the whole server's too. `timeout` (ms) bounds the wait
   * for the primary: a scrape without the whole server's metrics by then is
   * a `503` `METRICS_UNAVAILABLE` with `Retry-After` (never one process's
   * counters), as is one a worker did not answer within prom-client's 5 s.
   * No effect outside a cluster worker (a server on its own exposes its own
   * registry). One server per process: prom-client's worker side is global.
   * @default false
   */
  workerMetrics?: boolean | { timeout?: number } | undefined;
}

/** {@link CacheServerOptions} with every default applied. */
export interface ResolvedOptions {
  cache: ImageCache;
  origin: Origin | undefined;
  token: string | undefined;
  protectMetrics: boolean;
  metricsToken: string | undefined;
  insecureOpenManagementApi: boolean;
  pruneInterval: number;
  cleanInterval: number;
  prefetchInterval: number;
  prefetchConcurrency: number;
  prefetchOnQueue: boolean;
  shutdownTimeout: number;
  fillAbandonAfter: number | undefined;
  readinessWindow: number;
  closeCache: boolean;
  logger: FastifyServerOptions['logger'];
  /** {@link CacheServerOptions.directHits}, already off when the logger, the access log or the rate limit is on. */
  directHits: boolean;
  accessLog: AccessLogDestination | undefined;
  https: HttpsOptions | undefined;
  maxConnections: number | undefined;
  rateLimit: RateLimitOptions | undefined;
  cluster: ResolvedCluster | undefined;
  /** The primary's wait in ms, when `workerMetrics` is on and this process is a cluster worker. */
  workerMetrics: { timeout: number } | undefined;
}

/** The defaults of {@link CacheServerOptions}. */
export const DEFAULTS = {
  pruneInterval: 300_000,
  cleanInterval: 3_600_000,
  prefetchInterval: 60_000,
  prefetchConcurrency: 4,
  shutdownTimeout: 10_000,
  readinessWindow: 30_000,
} as const;

/** Longest interval `setInterval` accepts (about 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;

/** Validates the options and applies defaults; throws `InvalidArgumentError` naming the bad option. */
export function resolveOptions(options: CacheServerOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidArgumentError('createCacheServer needs an options object: { cache, origin?, token?, ... }');
  }
  const { cache, origin, token } = options;
  // Duck-typed rather than instanceof, so an app with its own copy of @cache/core works.
  if (typeof cache !== 'object' || cache === null || typeof cache.fill !== 'function' || typeof cache.prune !== 'function') {
    throw new InvalidArgumentError('options.cache must be an ImageCache (from ImageCache.open())');
  }
  if (origin !== undefined && (typeof origin !== 'object' || origin === null || typeof origin.open !== 'function')) {
    throw new InvalidArgumentError('options.origin must be an Origin (e.g. from createOrigin()) with an open(id) method');
  }
  for (const name of ['token', 'metricsToken'] as const) {
    const value = options[name];
    if (value !== undefined && (typeof value !== 'string' || !/^[\x21-\x7e]+$/.test(value))) {
      throw new InvalidArgumentError(`options.${name} must be a non-empty string of visible ASCII characters (no spaces)`);
    }
  }
  const logger = options.logger ?? false;
  const accessLog = accessLogOption(options.accessLog);
  const rateLimit = rateLimitOption(options.rateLimit);
  return {
    cache,
    origin,
    token,
    protectMetrics: flag(options, 'protectMetrics', false),
    metricsToken: options.metricsToken,
    insecureOpenManagementApi: flag(options, 'insecureOpenManagementApi', false),
    pruneInterval: milliseconds(options, 'pruneInterval', DEFAULTS.pruneInterval, true),
    cleanInterval: milliseconds(options, 'cleanInterval', DEFAULTS.cleanInterval, true),
    prefetchInterval: milliseconds(options, 'prefetchInterval', DEFAULTS.prefetchInterval, true),
    prefetchConcurrency: positiveInteger(options, 'prefetchConcurrency', DEFAULTS.prefetchConcurrency),
    prefetchOnQueue: flag(options, 'prefetchOnQueue', true),
    shutdownTimeout: milliseconds(options, 'shutdownTimeout', DEFAULTS.shutdownTimeout, false),
    fillAbandonAfter: abandonAfter(options.fillAbandonAfter),
    readinessWindow: milliseconds(options, 'readinessWindow', DEFAULTS.readinessWindow, false),
    closeCache: flag(options, 'closeCache', false),
    logger,
    directHits: flag(options, 'directHits', true) && logger === false && accessLog === undefined && rateLimit === undefined,
    accessLog,
    https: httpsOption(options.https),
    maxConnections: options.maxConnections === undefined ? undefined : positiveInteger(options, 'maxConnections', 1),
    rateLimit,
    cluster: resolveCluster(options.cluster),
    workerMetrics: workerMetricsOption(options.workerMetrics),
  };
}

function workerMetricsOption(value: unknown): { timeout: number } | undefined {
  if (value === undefined || value === false) return undefined;
  const timeout = value === true ? WORKER_METRICS_TIMEOUT : (value as { timeout?: unknown } | null)?.timeout ?? WORKER_METRICS_TIMEOUT;
  if ((value !== true && (typeof value !== 'object' || value === null)) || typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 1 || timeout > MAX_TIMER) {
    throw new InvalidArgumentError(`options.workerMetrics must be a boolean or { timeout: milliseconds >= 1 and <= ${MAX_TIMER} }, got ${JSON.stringify(value)}`);
  }
  // Outside a cluster worker there is no primary to ask: the server's own registry is the whole server's.
  return cluster.isWorker ? { timeout } : undefined;
}

function accessLogOption(value: unknown): AccessLogDestination | undefined {
  if (value === undefined || value === false) return undefined;
  if (value === true || (typeof value === 'string' && value !== '')) return value;
  if (typeof value === 'object' && value !== null && typeof (value as { write?: unknown }).write === 'function') return value as AccessLogDestination;
  throw new InvalidArgumentError(`options.accessLog must be true (stdout), a file path, or a stream with write(), got ${String(value)}`);
}

function httpsOption(value: unknown): HttpsOptions | undefined {
  if (value === undefined) return undefined;
  const pem = (part: unknown) => (typeof part === 'string' && part !== '') || (Buffer.isBuffer(part) && part.length > 0);
  if (typeof value !== 'object' || value === null || !pem((value as HttpsOptions).cert) || !pem((value as HttpsOptions).key)) {
    throw new InvalidArgumentError('options.https must be { cert, key }: both PEM strings or Buffers');
  }
  return { cert: (value as HttpsOptions).cert, key: (value as HttpsOptions).key };
}

function rateLimitOption(value: unknown): RateLimitOptions | undefined {
  if (value === undefined) return undefined;
  const { max, timeWindow } = (value ?? {}) as Partial<RateLimitOptions>;
  if (typeof max !== 'number' || !Number.isInteger(max) || max < 1 || typeof timeWindow !== 'number' || !Number.isInteger(timeWindow) || timeWindow < 1 || timeWindow > MAX_TIMER) {
    throw new InvalidArgumentError(`options.rateLimit must be { max: integer >= 1, timeWindow: milliseconds >= 1 and <= ${MAX_TIMER} }`);
  }
  return { max, timeWindow };
}

function milliseconds(options: CacheServerOptions, name: keyof CacheServerOptions, fallback: number, timer: boolean): number {
  const value = options[name] ?? fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || (timer && value > MAX_TIMER)) {
    throw new InvalidArgumentError(
      `options.${name} must be an integer number of milliseconds >= 0${timer ? ` and <= ${MAX_TIMER} (0 disables)` : ''}, got ${String(value)}`,
    );
  }
  return value;
}

function abandonAfter(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_TIMER) {
    throw new InvalidArgumentError(`options.fillAbandonAfter must be an integer number of milliseconds >= 0 and <= ${MAX_TIMER}, or undefined (never), got ${String(value)}`);
  }
  return value;
}

function positiveInteger(options: CacheServerOptions, name: keyof CacheServerOptions, fallback: number): number {
  const value = options[name] ?? fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new InvalidArgumentError(`options.${name} must be an integer >= 1, got ${String(value)}`);
  }
  return value;
}

function flag(options: CacheServerOptions, name: keyof CacheServerOptions, fallback: boolean): boolean {
  const value = options[name] ?? fallback;
  if (typeof value !== 'boolean') throw new InvalidArgumentError(`options.${name} must be a boolean, got ${String(value)}`);
  return value;
}
