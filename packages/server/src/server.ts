import { setMaxListeners } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import rateLimit from '@fastify/rate-limit';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import { accessLogger, installAccessLog } from './access-log.js';
import { bearerGuard, metricsGuard } from './auth.js';
import type { ServerContext } from './context.js';
import { EntryMemory } from './entry.js';
import { HitBatch } from './hit-batch.js';
import { HttpError, answerFrameworkError, errorBody, errorHeaders, publicMessage, routeNotFound, statusFor } from './http-errors.js';
import { assertListenAllowed, boundUrl } from './listen.js';
import { ServerMetrics, errorLabel } from './metrics.js';
import { resolveOptions, type CacheServerOptions } from './options.js';
import { Readiness } from './readiness.js';
import { ClusterMember } from './cluster.js';
import { ServerFills } from './fill.js';
import { directHit, imageRoutes } from './routes/images.js';
import { managementRoutes } from './routes/management.js';
import { statusPageRoutes, statusRoutes } from './routes/status.js';
import { clusterStatusFromDirectory, clusterStatusFromDriver } from './status.js';
import { WorkerMetricsClient } from './worker-metrics.js';
import { PeriodicWorker, Serial, runClean, runPrefetch, runPrune } from './workers.js';

/** Options of {@link CacheServer.listen}. */
export interface ListenOptions {
  /** Interface to bind. @default '127.0.0.1' */
  host?: string;
  /** Port; 0 picks a free one. @default 0 */
  port?: number;
}

/** A running (or ready to listen) cache server. */
export interface CacheServer {
  /** The fastify instance (for `inject()`, extra routes before `listen()`, or its logger). */
  readonly app: FastifyInstance;
  /** This server's own Prometheus registry (what `/metrics` exposes; with `workerMetrics` in a cluster worker, aggregated with the other workers'). */
  readonly registry: Registry;
  /**
   * Starts listening; resolves to the URL of the bound address, e.g.
   * `http://127.0.0.1:41234` or `http://0.0.0.0:8080` (`https://` with the
   * `https` option). Rejects with
   * `InvalidArgumentError` for an address other hosts can reach while the
   * management API has no token (unless `insecureOpenManagementApi`).
   */
  listen(options?: ListenOptions): Promise<string>;
  /**
   * Stops the workers, stops accepting connections, and answers `503` with
   * `Retry-After` every request that has not sent its status line yet (a
   * miss waiting for the origin's headers) and every request that arrives
   * meanwhile on an open keep-alive connection. Fills nobody streams from
   * (their origin has not answered, or they have no reader: a prefetch, a
   * fill whose clients left) are aborted at once; responses already
   * streaming, and the fills they read, may finish for up to
   * `shutdownTimeout` ms, then the fills are aborted and the remaining
   * connections destroyed. Resolves once every fill has ended: committed,
   * or rolled back to `invalid/` (never left in `incomplete/`, never
   * active). Closes the `ImageCache` only with `closeCache: true`. Idempotent.
   */
  close(): Promise<void>;
}

/** Response headers that describe an image and must not survive on an error response. */
const IMAGE_HEADERS = ['etag', 'last-modified', 'accept-ranges', 'content-range', 'content-type'];

/**
 * The HTTP/1.1 server fastify would make for these (its own, resolved)
 * options, with `handler` in front of fastify's: plain HTTP or HTTPS, and
 * the keep-alive, request and connection timeouts and the requests per
 * socket fastify applies to a server it makes.
 */
function nodeServer(options: Record<string, unknown>, handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
  const https = options.https as object | true | undefined;
  const server: Server =
    https === undefined ? createHttpServer((options.http as object | undefined) ?? {}, handler) : createHttpsServer(https === true ? {} : https, handler);
  server.keepAliveTimeout = options.keepAliveTimeout as number;
  server.requestTimeout = options.requestTimeout as number;
  server.setTimeout(options.connectionTimeout as number);
  const perSocket = options.maxRequestsPerSocket as number;
  if (perSocket > 0) server.maxRequestsPerSocket = perSocket;
  return server;
}

/** Why the space policy did not cache an image, for the log. */
const SPACE_REASONS = {
  'too-large': 'the image is larger than the whole cache budget',
  'budget-full': 'the cache budget is held by images being read or written',
  'disk-low': 'free space on the cache filesystem is below the stop threshold',
} as const;

/**
 * Builds the HTTP read-through cache server: `GET`/`HEAD /images/:id`, the
 * Glance-shaped management API under `/v2` (bearer-token guarded when a
 * token is set), `/healthz` (liveness), `/readyz` (readiness), `/metrics`, the
 * status page (`/status`, its data at `/v2/status`), and the prune, clean and
 * prefetch workers (started at once; their timers do not keep the process
 * alive). Call `listen()` to accept connections.
 *
 * @throws InvalidArgumentError for invalid options.
 *
 * @example
 * ```ts
 * const server = await createCacheServer({ cache, origin: createOrigin('https://origin/images/{id}'), token });
 * const url = await server.listen({ port: 8080 });
 * ```
 */
export async function createCacheServer(options: CacheServerOptions): Promise<CacheServer> {
  const config = resolveOptions(options);
  const { cache, origin } = config;
  // With `https`, fastify builds an https.Server: the instance is typed as the plain one (the routes see the same request and reply).
  /** Set once the routes' context exists, when plain hits are answered below fastify ({@link CacheServerOptions.directHits}). */
  let directContext: ServerContext | undefined;
  const app = Fastify({
    ...(config.https === undefined ? {} : { https: config.https }),
    ...(config.directHits
      ? {
          serverFactory: (handler: (req: IncomingMessage, res: ServerResponse) => void, options: Record<string, unknown>) =>
            nodeServer(options, (req, res) => {
              if (directContext === undefined || !directHit(directContext, req, res, handler)) handler(req, res);
            }),
        }
      : {}),
    logger: config.logger,
    // Image ids may be up to 255 bytes (more once percent-encoded); longer ones get a 400, not a 404.
    routerOptions: { maxParamLength: 1024 },
    frameworkErrors: answerFrameworkError,
    // Requests arriving during shutdown (on an open keep-alive connection) get the 503 of the hook below, with Retry-After.
    return503OnClosing: false,
  }) as unknown as FastifyInstance;
  if (config.maxConnections !== undefined) app.server.maxConnections = config.maxConnections;
  const accessLog = config.accessLog === undefined ? undefined : accessLogger(config.accessLog);
  if (accessLog !== undefined) installAccessLog(app, accessLog.logger);
  const readiness = new Readiness(config.readinessWindow);
  const metrics = new ServerMetrics(
    cache,
    (error) => {
      metrics.countError(error);
      app.log.warn({ err: error }, 'a metrics gauge could not be read');
    },
    (error) => readiness.observe(error),
  );
  // The space policy's decisions in the log (ADR 0006); the metrics count them.
  const stopLogging = cache.addSpaceListener((event) => {
    readiness.spaceEvent(event);
    if (event.type === 'bypass') {
      app.log.warn({ imageId: event.imageId, reason: event.reason, size: event.size }, `not caching: ${SPACE_REASONS[event.reason]}; serving it uncached`);
    } else if (event.type === 'evict') {
      app.log.info({ imageId: event.imageId, bytes: event.bytes, cause: event.cause, from: event.from }, 'evicted by the space policy');
    } else if (event.type === 'state') {
      app.log.warn({ state: event.state, freeBytes: event.disk.freeBytes, freeFiles: event.disk.freeFiles }, `cache filesystem free space: ${event.state}`);
    } else {
      app.log.warn({ imageId: event.imageId, retried: event.retried }, event.retried ? 'disk full: evicted and retried the write' : 'disk full: the write rolled back');
    }
  });

  const pending = new Set<Promise<unknown>>();
  /** Aborts when `close()` begins: requests still before their status line are answered 503. */
  const draining = new AbortController();
  /** Aborts when `close()` gives up waiting: what is still running is cut. */
  const shutdown = new AbortController();
  // Every request waiting for its status line listens on both: no limit (the default warns at 11).
  setMaxListeners(0, draining.signal, shutdown.signal);
  // A client told to come back: by then this process has surely exited (and a restarted one may be listening).
  const retryAfter = Math.max(1, Math.ceil(config.shutdownTimeout / 1000));
  const shuttingDown = () => new HttpError(503, 'SHUTTING_DOWN', 'the server is shutting down; retry', { 'retry-after': String(retryAfter), connection: 'close' });
  const track = (work: Promise<unknown>) => {
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    pending.add(settled);
    void settled.then(() => pending.delete(settled));
  };
  const cluster = config.cluster === undefined ? undefined : new ClusterMember(config.cluster, app.log, metrics);
  const fills =
    origin === undefined
      ? undefined
      : new ServerFills({
          cache,
          origin,
          metrics,
          log: app.log,
          abandonAfter: config.fillAbandonAfter === undefined ? undefined : config.fillAbandonAfter / 1000,
          track,
          cluster,
        });
  // From the start of close(), any request that reaches the server (a keep-alive connection's next request) is refused
  // with the same 503 as the requests waiting then: Retry-After and Connection: close.
  // Callback style (no promise per request: this hook runs on every hit).
  app.addHook('onRequest', (_request, _reply, done) => {
    if (draining.signal.aborted) done(shuttingDown());
    else done();
  });

  const pruneSerial = new Serial();
  const cleanSerial = new Serial();
  const workerError = (name: string) => (error: unknown) => app.log.error({ err: error }, `${name} run failed`);
  const workers: PeriodicWorker[] = [
    new PeriodicWorker('prune', config.pruneInterval, async () => void (await runPrune(cache, pruneSerial, metrics)), metrics, workerError('prune')),
    new PeriodicWorker('clean', config.cleanInterval, async () => void (await runClean(cache, cleanSerial, metrics)), metrics, workerError('clean')),
  ];
  let prefetcher: PeriodicWorker | undefined;
  if (fills !== undefined) {
    const prefetchContext = {
      cache,
      fills,
      metrics,
      concurrency: config.prefetchConcurrency,
      onError: (error: unknown, imageId: string) => app.log.warn({ err: error, imageId }, 'prefetch failed; the image stays queued'),
    };
    prefetcher = new PeriodicWorker('prefetch', config.prefetchInterval, (signal) => runPrefetch(prefetchContext, signal), metrics, workerError('prefetch'));
    workers.push(prefetcher);
  }

  const hitBatch = cache.canRecordHits
    ? new HitBatch(cache, {
        // Hits served from a remembered entry while the metadata store fails: found out when they are written.
        onError: (error, id, count) => {
          metrics.hitsUnrecorded.inc(count);
          app.log.warn({ err: error, imageId: id }, `could not record ${count} hit(s)`);
        },
      })
    : undefined;
  // A worker of a server of several processes (`workerMetrics`): its primary aggregates every worker's registry.
  const workerMetrics = config.workerMetrics === undefined ? undefined : new WorkerMetricsClient(metrics.registry, config.workerMetrics.timeout);
  const context: ServerContext = {
    wholeServerMetrics: () => (workerMetrics === undefined ? metrics.registry.metrics() : workerMetrics.metrics()),
    aggregatedMetrics: workerMetrics !== undefined,
    cache,
    origin,
    fills,
    metrics,
    cluster,
    entries: new EntryMemory(),
    hits: hitBatch,
    readiness,
    pruneSerial,
    cleanSerial,
    prefetcher,
    prefetchOnQueue: config.prefetchOnQueue,
    clusterNodes: cluster === undefined ? clusterStatusFromDriver(cache.driver) : clusterStatusFromDirectory(cluster.directory),
    shutdownSignal: shutdown.signal,
    drainSignal: draining.signal,
    shuttingDown,
    track,
  };

  if (config.directHits) directContext = context;
  installErrorHandling(app, metrics);
  const guard = config.token === undefined ? undefined : bearerGuard(config.token);

  app.get('/healthz', async (request, reply) => {
    try {
      const size = await cache.getCacheSize();
      // Liveness: 200 while the process serves; `status` tells whether it is also ready (see /readyz, which probes).
      const { status } = await readiness.check();
      return { status, driver: cache.driver.name, size, max_size: cache.maxSize };
    } catch (error) {
      metrics.countError(error);
      request.log.error({ err: error }, 'healthz failed');
      return reply.code(503).send({ status: 'unavailable', code: errorLabel(error, 503), message: publicMessage(error, 503) });
    }
  });

  app.get('/readyz', async (_request, reply) => {
    const report = await readiness.check(cache);
    if (report.status === 'ok') return { status: 'ok' };
    return reply.code(503).send(report);
  });

  const metricsAuth = metricsGuard(config);
  app.get('/metrics', { onRequest: metricsAuth ?? [] }, async (_request, reply) => {
    // Which process answered (the metrics are the whole server's either way), on a 503 too.
    reply.header('x-image-cache-pid', String(process.pid));
    // A worker of a server of several processes answers the whole server's metrics (its primary aggregates them).
    const text = await context.wholeServerMetrics();
    return reply.type(metrics.registry.contentType).send(text);
  });

  // The status page's files (no data: it reads /v2/status with the management token), not rate limited.
  await statusPageRoutes(app);

  // After the probes, /metrics and the status page's files: the rate limit applies to the routes registered from here on (images, /v2).
  if (config.rateLimit !== undefined) {
    await app.register(rateLimit, {
      max: config.rateLimit.max,
      timeWindow: config.rateLimit.timeWindow,
      errorResponseBuilder: (_request, { after, ttl }) =>
        new HttpError(429, 'TOO_MANY_REQUESTS', `rate limit exceeded; retry in ${after}`, { 'retry-after': String(Math.max(1, Math.ceil(ttl / 1000))) }),
    });
  }
  await app.register(async (scope) => imageRoutes(scope, context));
  await app.register(
    async (scope) => {
      if (guard !== undefined) scope.addHook('onRequest', guard);
      await managementRoutes(scope, context);
      await statusRoutes(scope, context);
    },
    { prefix: '/v2' },
  );
  await app.ready();
  for (const worker of workers) worker.start();

  let closing: Promise<void> | undefined;
  return {
    app,
    registry: metrics.registry,
    async listen({ host = '127.0.0.1', port = 0 }: ListenOptions = {}) {
      await assertListenAllowed(host, config);
      await app.listen({ host, port });
      const url = boundUrl(app.server, config.https === undefined ? 'http' : 'https');
      await cluster?.start(url);
      return url;
    },
    close() {
      closing ??= (async () => {
        // Peers stop asking this node at once (a failure is logged: they skip it once its heartbeat expires).
        await Promise.all([...workers.map((worker) => worker.stop()), cluster?.stop()]);
        // Requests still waiting for their status line (a fill's origin headers) get a 503 now, new ones too.
        draining.abort(shuttingDown());
        // Nobody streams from these: stop them now (rolled back), so that their origin requests end too.
        fills?.abortUnread(shuttingDown());
        const force = setTimeout(() => {
          shutdown.abort(shuttingDown());
          // The fills still running are cut (their readers fail, so the responses reading them are cut too).
          fills?.abortAll(shuttingDown());
          app.server.closeAllConnections();
        }, config.shutdownTimeout);
        // A keep-alive connection whose response ends during the close is idle only from then on: close those as they come.
        const idle = setInterval(() => app.server.closeIdleConnections(), 50);
        try {
          await app.close();
        } finally {
          clearTimeout(force);
          clearInterval(idle);
        }
        shutdown.abort(shuttingDown());
        // No client is left: a fill still running is read by nobody (a client left, a ranged reader was cut).
        fills?.abortAll(shuttingDown());
        // Handlers still settling and fills ending: committing, or rolling back to invalid/ (never left in incomplete/).
        while (pending.size > 0) await Promise.all(pending);
        stopLogging();
        metrics.detach();
        workerMetrics?.close();
        await hitBatch?.close();
        if (config.closeCache) await cache.close();
        accessLog?.close();
      })();
      return closing;
    },
  };
}

/** JSON errors in one shape, the error counter, and the request-duration histogram. */
function installErrorHandling(app: FastifyInstance, metrics: ServerMetrics): void {
  const counted = new WeakSet<FastifyRequest>();

  app.setErrorHandler((error, request, reply) => {
    const status = statusFor(error);
    for (const name of IMAGE_HEADERS) reply.removeHeader(name);
    reply.headers(errorHeaders(error));
    const body = errorBody(error, status);
    // The body's message is short and says nothing internal (origin URLs, paths): the whole error goes to the log.
    if (status >= 500) request.log.error({ err: error }, 'request failed');
    else if (error instanceof Error && body.message !== error.message) request.log.info({ err: error }, 'request refused');
    counted.add(request);
    metrics.countError(error, status);
    return reply.code(status).send(body);
  });

  app.setNotFoundHandler(async (request) => {
    throw routeNotFound(request.method, request.url);
  });

  // Callback style (no promise per request: this hook runs on every hit).
  app.addHook('onResponse', (request, reply, done) => {
    const status = reply.statusCode;
    if (status >= 400 && !counted.has(request)) metrics.errors.inc({ code: errorLabel(undefined, status) });
    metrics.requestDuration.observe(
      { method: request.method, route: request.routeOptions.url ?? 'unmatched', status_code: String(status) },
      reply.elapsedTime / 1000,
    );
    done();
  });
}
