import cluster, { type Worker } from 'node:cluster';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import type { Origin } from '@cache/origin';
import { diskSpace, InvalidArgumentError, resolveThresholds, suggestedHeadroom, type DiskSpace, type FreeSpaceOptions } from '@cache/core';
import { createCacheServer, defaultAdvertiseUrl, isLoopbackHost, serveWorkerMetrics, type ClusterDirectory } from '@cache/server';
import { resolveConfig, type ConfigFlags, type ResolvedConfig } from '../config.js';
import { DEMO_IMAGES, startDemoOrigin, type DemoOrigin } from '../demo/origin.js';
import { CliErrorCodes, ExitCode, operationalError, usageError } from '../errors.js';
import { openCacheFromConfig } from '../open-cache.js';
import { addOriginOptions, describeOriginOptions, openOrigin } from '../origin-options.js';
import { recordSettings, writeRecordedSettings } from '../settings-file.js';
import { formatDuration, formatSize, formatSizeExact, formatThreshold } from '../units.js';
import type { RegisterCommand } from './types.js';

interface ServeOptions {
  demo?: boolean;
  log?: boolean;
  /** False with `--no-direct-hits`. */
  directHits?: boolean;
}

/** Cache directory of `serve --demo` when none is configured, relative to the working directory. */
export const DEMO_CACHE_DIR = '.image-cache-demo';
/** Longest shutdown timeout a timer can hold (about 24.8 days), in ms. */
const MAX_SHUTDOWN_TIMEOUT = 2 ** 31 - 1;

/** Budget of `serve --demo` when none is configured: small enough that prune has work to show. */
const DEMO_MAX_SIZE = 512 * 1024 * 1024;

/**
 * `image-cache serve`: the HTTP read-through cache server (`@cache/server`)
 * on the configured cache, until SIGINT/SIGTERM, then a graceful shutdown.
 * `--demo` fills in what is not configured: a cache directory
 * ({@link DEMO_CACHE_DIR}), a 512 MiB budget, and a small demo origin on
 * 127.0.0.1 serving generated images; it prints URLs to try.
 */
export const registerServe: RegisterCommand = (program, ctx) => {
  const cmd = program
    .command('serve')
    .description('run the HTTP read-through cache server (images, management API, /metrics) until interrupted')
    .option('--host <address>', 'address to listen on (env IMAGE_CACHE_HOST; default 127.0.0.1)')
    .option('--port <port>', 'port to listen on, 0 for any free port (env IMAGE_CACHE_PORT; default 8080)')
    .option('--origin <url-or-dir>', 'where misses are fetched from: URL template with {id}, glance+https://host:9292, or a directory (env IMAGE_CACHE_ORIGIN)');
  addOriginOptions(cmd)
    .option('--token <token>', 'bearer token required by the management API /v2 (env IMAGE_CACHE_TOKEN; without one the API is open, so serve then listens on loopback only)')
    .option('--metrics-token <token>', 'bearer token required by /metrics, e.g. for a Prometheus scraper; /metrics also takes --token (env IMAGE_CACHE_METRICS_TOKEN; default: open)')
    .option(
      '--insecure-open-management-api',
      'allow serving the management API without a token on an address other hosts can reach: anyone who can connect may delete the cache (env IMAGE_CACHE_INSECURE_OPEN_MANAGEMENT_API)',
    )
    .option('--stall-time <duration>', 'age at which the cleaner deletes an incomplete file (default 1d)')
    .option('--durability <mode>', 'strict: every commit is fsynced before it counts (default); relaxed: no fsync, as Glance; entries not yet synced are re-verified or dropped after a crash (env IMAGE_CACHE_DURABILITY)')
    .option('--prune-interval <duration>', 'time between prune runs, 0 disables (default 5m)')
    .option('--clean-interval <duration>', 'time between clean runs, 0 disables (default 1h)')
    .option('--prefetch-interval <duration>', 'time between prefetch runs over the queue, 0 disables the timer (default 1m)')
    .option('--shutdown-timeout <duration>', 'on SIGINT/SIGTERM, how long responses already streaming may run before they are cut (default 10s)')
    .option('--readiness-window <duration>', 'how long a failure (metadata store, full disk, origin) keeps /readyz at 503 (env IMAGE_CACHE_READINESS_WINDOW; default 30s)')
    .option('--fill-abandon-after <duration>', 'stop and roll back a download nobody has read for this long (env IMAGE_CACHE_FILL_ABANDON_AFTER; default: never, a download always finishes)')
    .option('--advertise-url <url>', 'postgres driver: the URL other nodes fetch this node\'s images from (env IMAGE_CACHE_ADVERTISE_URL; default the bound address, a wildcard one replaced by the host name)')
    .option('--heartbeat-interval <duration>', 'postgres driver: how often this node tells the cluster it is alive (env IMAGE_CACHE_HEARTBEAT_INTERVAL; default 10s; keep it well under --heartbeat-expiry)')
    .option('--peer-timeout <duration>', 'postgres driver: how long a peer gets to start answering before the next peer or the origin is tried (env IMAGE_CACHE_PEER_TIMEOUT; default 5s)')
    .option('--concurrency <n>', 'queued images the prefetch worker fetches at once (default 4)')
    .option('--free-run <percent-or-size>', 'free space on the cache filesystem at which culling stops, e.g. 10% or 20GiB (env IMAGE_CACHE_FREE_RUN; with --free-cull and --free-stop; default: no thresholds)')
    .option('--free-cull <percent-or-size>', 'below this free space, least recently used entries are evicted until --free-run is free, e.g. 7% (env IMAGE_CACHE_FREE_CULL)')
    .option('--free-stop <percent-or-size>', 'below this free space nothing new is cached: misses are served uncached, e.g. 3% (env IMAGE_CACHE_FREE_STOP)')
    .option('--demo', `try it out: start a demo origin, cache into ./${DEMO_CACHE_DIR} unless a cache dir is configured`)
    .option('--log', 'log every request (JSON lines on stdout)')
    .option('--no-direct-hits', 'send every request through the HTTP framework; by default a plain GET hit of up to 1 MiB is answered on node:http directly, with the same response and metrics (off anyway with --log, --access-log or --rate-limit)')
    .option('--access-log [path]', 'access log: one JSON line per request (image id, HIT/MISS/FILL-WAIT, status, bytes, range, ms) to the file, or stdout without one (env IMAGE_CACHE_ACCESS_LOG)')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (chain); needs --tls-key (env IMAGE_CACHE_TLS_CERT)')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert (env IMAGE_CACHE_TLS_KEY)')
    .option('--max-connections <n>', 'connections accepted at once per process; more are closed at once (env IMAGE_CACHE_MAX_CONNECTIONS; default: no limit)')
    .option('--workers <n>', 'server processes on the cache directory and port; prune, clean and prefetch timers run in the first only (env IMAGE_CACHE_WORKERS; default: the number of cores; 1: a single process)')
    .option('--rate-limit <n/duration>', 'per client IP: at most n requests to /images and /v2 per duration, e.g. 100/1m; over it 429 with Retry-After (env IMAGE_CACHE_RATE_LIMIT; default off)')
    .action(async (options: ServeOptions, command: Command) => {
      const demo = options.demo === true;
      const config = await resolveConfig({
        flags: command.optsWithGlobals<ConfigFlags>(),
        env: ctx.io.env,
        cwd: ctx.io.cwd,
        requireCacheDir: !demo,
      });
      // A worker of `serve --workers N` resolved the same settings as its primary, which printed their warnings.
      if (!cluster.isWorker) for (const warning of config.warnings) ctx.warn(warning);
      assertTokens(config);
      // Refused before anything is opened: an open management API lets anyone who can connect delete the cache.
      const loopback = await isLoopbackHost(config.host);
      if (config.token === undefined && !config.insecureOpenManagementApi && !loopback) {
        throw usageError(
          CliErrorCodes.OPEN_MANAGEMENT_API,
          `refusing to serve on ${config.host} without a token: the management API (/v2: delete, prune, queue) would be open to every host ` +
            'that can reach it. Set --token (IMAGE_CACHE_TOKEN), listen on loopback (--host 127.0.0.1), or, on a network you trust, ' +
            'pass --insecure-open-management-api',
        );
      }
      if (config.cacheDir === '') config.cacheDir = join(ctx.io.cwd, DEMO_CACHE_DIR);
      const demoDefaults = new Set<'maxSize'>();
      if (demo && config.sources.maxSize === 'default') {
        config.maxSize = DEMO_MAX_SIZE;
        demoDefaults.add('maxSize');
      }
      const shutdownTimeout = Math.round(config.shutdownTimeout * 1000);
      if (shutdownTimeout > MAX_SHUTDOWN_TIMEOUT) {
        throw usageError(CliErrorCodes.INVALID_DURATION, `invalid shutdown timeout ${formatDuration(config.shutdownTimeout)}: at most 24 days`);
      }

      const readinessWindow = Math.round(config.readinessWindow * 1000);
      const fillAbandonAfter = config.fillAbandonAfter === undefined ? undefined : Math.round(config.fillAbandonAfter * 1000);
      if (fillAbandonAfter !== undefined && fillAbandonAfter > MAX_SHUTDOWN_TIMEOUT) {
        throw usageError(CliErrorCodes.INVALID_DURATION, `invalid fill abandon time ${formatDuration(config.fillAbandonAfter ?? 0)}: at most 24 days`);
      }

      const https = await readTls(config);
      const clustered = config.driver === 'postgres';
      if (clustered && config.heartbeatExpiry <= config.heartbeatInterval) {
        throw usageError(
          CliErrorCodes.INVALID_DURATION,
          `--heartbeat-expiry (${formatDuration(config.heartbeatExpiry)}) must be longer than --heartbeat-interval (${formatDuration(config.heartbeatInterval)}), ` +
            'or live nodes count as dead between two heartbeats; about 3 intervals is right',
        );
      }
      const freeSpace = freeSpaceOf(config);
      // Their order is checked on the filesystem the cache is (or will be) on, before anything is created.
      if (freeSpace !== undefined) await checkThresholds(freeSpace, config.cacheDir === '' ? join(ctx.io.cwd, DEMO_CACHE_DIR) : config.cacheDir);

      const workerIndex = cluster.isWorker ? Number(process.env[WORKER_ENV] ?? NaN) : undefined;
      if (workerIndex === undefined && config.workers > 1) {
        await runPrimary(ctx, config, { demo, loopback });
        return;
      }
      // A worker's first (index 0) runs the periodic jobs; the others serve requests only.
      const timers = workerIndex === undefined || workerIndex === 0;

      let demoOrigin: DemoOrigin | undefined;
      let origin: Origin | undefined;
      // A worker's warnings were printed by the primary already (it opened the same origin).
      const warn = (message: string) => (workerIndex === undefined ? ctx.warn(message) : undefined);
      const demoTemplate = workerIndex === undefined ? undefined : process.env[DEMO_ORIGIN_ENV];
      if (config.origin !== undefined) origin = openOrigin(config.origin, config, warn);
      else if (demoTemplate !== undefined && demoTemplate !== '') origin = openOrigin(demoTemplate, config, warn);
      else if (demo) {
        demoOrigin = await startDemoOrigin();
        try {
          origin = openOrigin(demoOrigin.template, config, warn);
        } catch (error) {
          await demoOrigin.close();
          throw error;
        }
      }
      // The budget holds at every moment: each fill reserves its space first, evicting idle LRU entries (ADR 0006).
      let cache;
      try {
        cache = await openCacheFromConfig(config, {
          onWarning: (warning) => ctx.warn(`${warning.message} [${warning.code}]`),
          space: { writeBudget: true, headroom: suggestedHeadroom(config.maxSize), ...(freeSpace === undefined ? {} : { freeSpace }) },
          // postgres: a node starts while its database is down, serves its local files, and reconnects with backoff.
          ...(clustered
            ? {
                onPostgresConnection: (event) => {
                  if (event.state === 'connected') ctx.err(`image-cache: PostgreSQL answers again: node registered (attempt ${event.attempt}); sharing with the cluster`);
                  else {
                    ctx.err(
                      `image-cache: PostgreSQL unreachable (attempt ${event.attempt}): ${event.error.message.split('. ')[0]}; serving the local cache ` +
                        `(hits from its files, misses from the origin without caching them) and retrying in ${formatDuration(event.retryInMillis / 1000)}`,
                    );
                  }
                },
              }
            : {}),
        });
      } catch (error) {
        await demoOrigin?.close();
        if (InvalidArgumentError.isInstance(error)) throw usageError(CliErrorCodes.INVALID_SIZE, `invalid free-space thresholds: ${error.message}`);
        throw error;
      }
      const seconds = (s: number) => Math.round(s * 1000);
      let server;
      try {
        server = await createCacheServer({
          cache,
          ...(origin === undefined ? {} : { origin }),
          ...(config.token === undefined ? {} : { token: config.token }),
          ...(config.metricsToken === undefined ? {} : { metricsToken: config.metricsToken }),
          insecureOpenManagementApi: config.insecureOpenManagementApi,
          pruneInterval: timers ? seconds(config.pruneInterval) : 0,
          cleanInterval: timers ? seconds(config.cleanInterval) : 0,
          prefetchInterval: timers ? seconds(config.prefetchInterval) : 0,
          prefetchConcurrency: config.concurrency,
          shutdownTimeout,
          readinessWindow,
          ...(fillAbandonAfter === undefined ? {} : { fillAbandonAfter }),
          closeCache: true,
          logger: options.log === true,
          directHits: options.directHits !== false,
          ...(config.accessLog === undefined ? {} : { accessLog: config.accessLog }),
          ...(https === undefined ? {} : { https }),
          ...(config.maxConnections === undefined ? {} : { maxConnections: config.maxConnections }),
          ...(clustered
            ? {
                cluster: {
                  directory: cache.driver as unknown as ClusterDirectory,
                  ...(config.advertiseUrl === undefined ? {} : { advertiseUrl: config.advertiseUrl }),
                  heartbeatInterval: Math.max(1, seconds(config.heartbeatInterval)),
                  peerTimeout: Math.max(1, seconds(config.peerTimeout)),
                  allowUnverified: config.allowUnverified,
                },
              }
            : {}),
          // A worker of `serve --workers N`: every scrape of /metrics answers the whole server's (the primary aggregates them).
          ...(workerIndex === undefined ? {} : { workerMetrics: true }),
          ...(config.rateLimit === undefined ? {} : { rateLimit: { max: config.rateLimit.max, timeWindow: Math.max(1, Math.round(config.rateLimit.window * 1000)) } }),
        });
      } catch (error) {
        await cache.close().catch(() => undefined);
        await demoOrigin?.close();
        // Files that are not a PEM certificate and key, or a key that is not the certificate's: OpenSSL's reason.
        if (https !== undefined && /^ERR_OSSL/.test(String((error as NodeJS.ErrnoException).code))) {
          throw operationalError(CliErrorCodes.TLS, `cannot use the TLS certificate ${config.tlsCert ?? ''} with the key ${config.tlsKey ?? ''}: ${(error as Error).message}`);
        }
        throw error;
      }
      let url: string;
      try {
        url = await server.listen({ host: config.host, port: config.port });
      } catch (error) {
        await server.close().catch(() => undefined);
        await demoOrigin?.close();
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
          throw operationalError(
            CliErrorCodes.LISTEN,
            `cannot listen on ${config.host}:${config.port} (${code}): pick another with --port or IMAGE_CACHE_PORT (0 takes any free port)`,
          );
        }
        throw error;
      }
      if (workerIndex !== undefined) {
        // A worker of `serve --workers N`: the primary prints the startup lines once every worker listens.
        process.send?.({ type: READY, url, nodeId: clusterNodeId(cache) } satisfies WorkerMessage);
        await untilStopped(ctx, true);
        await server.close();
        return;
      }
      await printStartup(ctx, config, { url, demo, loopback, origin: origin?.description, demoDefaults, nodeId: clusterNodeId(cache) });
      await untilStopped(ctx, false);
      ctx.err(
        `image-cache: shutting down: requests still waiting get 503, responses already streaming get up to ${formatDuration(config.shutdownTimeout)} to finish`,
      );
      await server.close();
      await demoOrigin?.close();
      ctx.err('image-cache: stopped');
      ctx.exitCode = ExitCode.OK;
    });
};

/** The environment variable the primary of `serve --workers N` gives each worker: its index, 0..N-1. */
const WORKER_ENV = 'IMAGE_CACHE_SERVE_WORKER';
/** The demo origin's URL template the primary of `serve --demo --workers N` started, for its workers. */
const DEMO_ORIGIN_ENV = 'IMAGE_CACHE_SERVE_DEMO_ORIGIN';
/** The `image-cache` binary the workers run. */
const BIN = fileURLToPath(new URL('../../bin/image-cache.js', import.meta.url));
const READY = 'image-cache:ready';
const SHUTDOWN = 'image-cache:shutdown';
type WorkerMessage = { type: typeof READY; url: string; nodeId: string | undefined } | { type: typeof SHUTDOWN };

/**
 * Resolves when the process is asked to stop: SIGINT/SIGTERM (`ctx.io.signal`)
 * or, in a worker, the primary's shutdown message (or the primary gone).
 */
function untilStopped(ctx: { io: { signal?: AbortSignal | undefined } }, worker: boolean): Promise<void> {
  return new Promise<void>((resolve) => {
    const signal = ctx.io.signal;
    if (signal?.aborted === true) return resolve();
    signal?.addEventListener('abort', () => resolve(), { once: true });
    if (worker) {
      process.on('message', (message: WorkerMessage) => {
        if (message?.type === SHUTDOWN) resolve();
      });
    }
    // In-process without a signal (and not a worker): runs until the process ends.
  });
}

interface StartupFacts {
  url: string;
  demo: boolean;
  loopback: boolean;
  origin: string | undefined;
  demoDefaults: Set<'maxSize'>;
  /** `serve --workers N`: the workers' pids. */
  pids?: readonly number[];
  /** A cluster node's identity (`serve` on the postgres driver), else `undefined`. */
  nodeId: string | undefined;
}

/** The node identity of a cache whose driver is a cluster directory (postgres), else `undefined`. */
function clusterNodeId(cache: { driver: unknown }): string | undefined {
  const driver = cache.driver as Partial<ClusterDirectory>;
  return typeof driver.nodeId === 'string' && typeof driver.heartbeat === 'function' ? driver.nodeId : undefined;
}

/** Records the server's settings in the cache directory, then prints the startup lines (stderr) and `listening on <url>` or the demo's commands (stdout). */
async function printStartup(ctx: Parameters<RegisterCommand>[1], config: ResolvedConfig, facts: StartupFacts): Promise<void> {
  const { url, demo, loopback, origin, demoDefaults } = facts;
  const auth = config.token === undefined ? '' : ` -H 'authorization: Bearer ${config.token}'`;
  const metricsAuth = config.metricsToken === undefined ? auth : ` -H 'authorization: Bearer ${config.metricsToken}'`;
  // Recorded before the startup lines: once they are out, `image-cache stats` shows the settings.
  try {
    const port = Number(new URL(url).port);
    await writeRecordedSettings(config.cacheDir, recordSettings(config, { url, port, origin, demoDefaults }));
  } catch (error) {
    ctx.warn(`could not record the server's settings in ${config.cacheDir}: ${(error as Error).message}; \`image-cache stats\` will not show them`);
  }
  if (config.token === undefined) {
    ctx.warn(
      loopback
        ? 'the management API (/v2: delete, prune, queue) has no token: any user or process on this host can use it; set --token (IMAGE_CACHE_TOKEN) to guard it'
        : `the management API (/v2: delete, prune, queue) has no token and is open to every host that can reach ${url} (--insecure-open-management-api)`,
    );
  }
  if (facts.pids !== undefined) ctx.err(`image-cache: ${facts.pids.length} worker processes (pids ${facts.pids.join(' ')}) share the port`);
  // The bound address (`--host 0.0.0.0` is reported as such, not as 127.0.0.1).
  const freeSpace = freeSpaceOf(config);
  const thresholds = freeSpace === undefined ? '' : `, free space run ${formatThreshold(freeSpace.run)} cull ${formatThreshold(freeSpace.cull)} stop ${formatThreshold(freeSpace.stop)}`;
  ctx.err(`image-cache: serving ${config.cacheDir} (${config.driver}, budget ${formatSizeExact(config.maxSize)}${thresholds}) on ${url}`);
  // Before the origin line, which ends the startup lines.
  if (facts.nodeId !== undefined) {
    ctx.err(
      `image-cache: cluster node ${facts.nodeId}, advertised as ${config.advertiseUrl ?? defaultAdvertiseUrl(url)} ` +
        `(heartbeat every ${formatDuration(config.heartbeatInterval)}, dead after ${formatDuration(config.heartbeatExpiry)}); misses are fetched from live peers holding the image before the origin`,
    );
  }
  ctx.err(`image-cache: status page ${url}/status, metrics ${url}/metrics`);
  // Header names only: their values (tokens) are never printed.
  ctx.err(`image-cache: origin ${origin === undefined ? '(none: misses are 404)' : `${origin}${describeOriginOptions(config)}`}`);
  if (demo) {
    const ids = Object.keys(DEMO_IMAGES);
    const first = ids[0] ?? '';
    ctx.out(`Demo images: ${ids.map((id) => `${id} (${formatSize(DEMO_IMAGES[id] ?? 0)})`).join(', ')}`);
    ctx.out('Try:');
    // A certificate of one's own (self-signed, most likely, for a demo) is not in curl's trust store.
    const curl = url.startsWith('https:') ? 'curl -k' : 'curl';
    ctx.out(`  ${curl} -o /dev/null -w '%{http_code} %{size_download} bytes in %{time_total}s\\n' ${url}/images/${first}   # miss: from the origin, cached on the way`);
    ctx.out(`  ${curl} -o /dev/null -w '%{http_code} %{size_download} bytes in %{time_total}s\\n' ${url}/images/${first}   # hit: from the cache`);
    ctx.out(`  ${curl} -s -r 0-15 ${url}/images/${first} | od -A d -t x1             # a range`);
    ctx.out(`  ${curl} -s${auth} ${url}/v2/cache | head -c 600; echo                 # management API: cached and queued`);
    ctx.out(`  ${curl} -s -X PUT${auth} ${url}/v2/cache/${ids[2] ?? first}            # queue one for the prefetcher`);
    ctx.out(`  ${curl} -s${config.metricsToken === undefined ? '' : metricsAuth} ${url}/metrics | grep '^image_cache_'                        # Prometheus metrics`);
    ctx.out(`  ${curl} -s ${url}/healthz`);
    ctx.out(`Status page: ${url}/status (in a browser${config.token === undefined ? '' : '; it asks for the management token'})`);
    ctx.out(`Press Ctrl-C to stop (downloads already streaming get up to ${formatDuration(config.shutdownTimeout)} to finish).`);
  } else {
    ctx.out(`listening on ${url}`);
  }
}

/**
 * `serve --workers N` (N > 1): this process forks N workers (node:cluster;
 * each runs `image-cache` with the same arguments and serves the cache
 * directory on the one shared port, connections handed out round-robin),
 * prints the startup lines once every worker listens, and on SIGINT/SIGTERM
 * asks each to shut down gracefully and waits for them. A worker that exits
 * on its own stops the others: the exit code is then 1 (or the worker's own
 * code when it failed before listening, e.g. a port in use). Prune, clean
 * and prefetch timers run in worker 0 only; fills of one id across workers
 * meet through the directory's locks (ADR 0003). A scrape of `/metrics` on
 * any worker is answered with the whole server's metrics: the worker asks
 * this process, which aggregates every worker's registry
 * (`serveWorkerMetrics()`, prom-client's `AggregatorRegistry`).
 */
async function runPrimary(ctx: Parameters<RegisterCommand>[1], config: ResolvedConfig, options: { demo: boolean; loopback: boolean }): Promise<void> {
  let demoOrigin: DemoOrigin | undefined;
  let origin: string | undefined;
  const demoDefaults = new Set<'maxSize'>();
  if (options.demo && config.sources.maxSize === 'default') demoDefaults.add('maxSize');
  const warn = (message: string) => ctx.warn(message);
  if (config.origin !== undefined) origin = openOrigin(config.origin, config, warn).description;
  else if (options.demo) {
    demoOrigin = await startDemoOrigin();
    origin = openOrigin(demoOrigin.template, config, warn).description;
  }
  cluster.setupPrimary({ exec: BIN, args: [...ctx.argv] });
  // A worker that gets a scrape asks this process, which aggregates every worker's metrics (prom-client's AggregatorRegistry).
  const stopMetrics = serveWorkerMetrics();
  const workers: Worker[] = [];
  const exits: Promise<number>[] = [];
  let stopping = false;
  /** Settles with the first worker that exits before shutdown was asked for (its code). */
  let onUnexpectedExit!: (failure: { index: number; pid: number | undefined; code: number | null; signal: string | null }) => void;
  const unexpected = new Promise<{ index: number; pid: number | undefined; code: number | null; signal: string | null }>((resolve) => (onUnexpectedExit = resolve));
  const urls: Promise<{ url: string; nodeId: string | undefined }>[] = [];
  const fork = (index: number) => {
    const worker = cluster.fork({ [WORKER_ENV]: String(index), [DEMO_ORIGIN_ENV]: demoOrigin?.template ?? '' });
    workers.push(worker);
    urls.push(
      new Promise<{ url: string; nodeId: string | undefined }>((resolve) => {
        worker.on('message', (message: WorkerMessage) => {
          if (message?.type === READY) resolve({ url: message.url, nodeId: message.nodeId });
        });
      }),
    );
    exits.push(
      new Promise<number>((resolve) => {
        worker.once('exit', (code, signal) => {
          if (!stopping) onUnexpectedExit({ index, pid: worker.process.pid, code, signal });
          resolve(code ?? 1);
        });
      }),
    );
  };
  const stopAll = async () => {
    stopping = true;
    for (const worker of workers) {
      if (worker.isConnected()) worker.send({ type: SHUTDOWN } satisfies WorkerMessage, () => undefined);
    }
    const codes = await Promise.all(exits);
    stopMetrics();
    return codes;
  };
  const listening = () =>
    Promise.race([Promise.all(urls).then((all) => all[0] as { url: string; nodeId: string | undefined }), unexpected.then((failure) => ({ failure }))]);
  // Worker 0 first: what stops it (a port in use, a cache that does not open) is said once, by it, before any other starts.
  fork(0);
  let started = await listening();
  if (!('failure' in started)) {
    for (let index = 1; index < config.workers; index++) fork(index);
    started = await listening();
  }
  if ('failure' in started) {
    // A worker failed before listening (its error is on stderr already): stop the others, exit with its code.
    await stopAll();
    await demoOrigin?.close();
    ctx.exitCode = started.failure.code !== null && started.failure.code !== 0 ? started.failure.code : ExitCode.FAILURE;
    return;
  }
  const pids = workers.map((worker) => worker.process.pid ?? 0);
  await printStartup(ctx, config, { url: started.url, demo: options.demo, loopback: options.loopback, origin, demoDefaults, pids, nodeId: started.nodeId });
  const outcome = await Promise.race([untilStopped(ctx, false).then(() => 'stop' as const), unexpected]);
  if (outcome === 'stop') {
    ctx.err(
      `image-cache: shutting down ${workers.length} worker processes: requests still waiting get 503, responses already streaming get up to ${formatDuration(config.shutdownTimeout)} to finish`,
    );
    const codes = await stopAll();
    await demoOrigin?.close();
    ctx.err('image-cache: stopped');
    ctx.exitCode = codes.every((code) => code === 0) ? ExitCode.OK : ExitCode.FAILURE;
    return;
  }
  ctx.err(
    `image-cache: worker ${outcome.index} (pid ${outcome.pid ?? '?'}) exited (${outcome.signal ?? `code ${outcome.code ?? '?'}`}); stopping the other worker processes`,
  );
  await stopAll();
  await demoOrigin?.close();
  ctx.exitCode = ExitCode.FAILURE;
}

/**
 * The free-space thresholds of `--free-run`, `--free-cull`, `--free-stop`:
 * all three or none (a `CLI_INVALID_SIZE` usage error otherwise); their
 * order (stop < cull < run) is checked against the filesystem when the cache opens.
 */
function freeSpaceOf(config: ResolvedConfig): FreeSpaceOptions | undefined {
  const { freeRun: run, freeCull: cull, freeStop: stop } = config;
  if (run === undefined && cull === undefined && stop === undefined) return undefined;
  if (run === undefined || cull === undefined || stop === undefined) {
    const missing = [run === undefined ? '--free-run' : '', cull === undefined ? '--free-cull' : '', stop === undefined ? '--free-stop' : ''].filter(Boolean);
    throw usageError(CliErrorCodes.INVALID_SIZE, `free-space thresholds come as three: ${missing.join(' and ')} missing (e.g. --free-run 10% --free-cull 7% --free-stop 3%)`);
  }
  return { run, cull, stop };
}

/** Resolves the thresholds against the filesystem of `dir` (or of its nearest existing parent); a `CLI_INVALID_SIZE` usage error when they do not fit it. */
async function checkThresholds(freeSpace: FreeSpaceOptions, dir: string): Promise<void> {
  let at = dir;
  let disk: DiskSpace | undefined;
  while (disk === undefined) {
    try {
      disk = await diskSpace(at);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(at) === at) throw error;
      at = dirname(at);
    }
  }
  try {
    resolveThresholds(freeSpace, disk);
  } catch (error) {
    if (InvalidArgumentError.isInstance(error)) throw usageError(CliErrorCodes.INVALID_SIZE, `invalid free-space thresholds: ${error.message}`);
    throw error;
  }
}

/**
 * The certificate and key of `--tls-cert` / `--tls-key`: both or neither (a
 * `CLI_TLS` usage error otherwise), read before anything is opened; a file
 * that cannot be read is a `CLI_TLS` error naming its path.
 */
async function readTls(config: ResolvedConfig): Promise<{ cert: Buffer; key: Buffer } | undefined> {
  const { tlsCert, tlsKey } = config;
  if (tlsCert === undefined && tlsKey === undefined) return undefined;
  if (tlsCert === undefined || tlsKey === undefined) {
    throw usageError(CliErrorCodes.TLS, `${tlsCert === undefined ? '--tls-key' : '--tls-cert'} needs ${tlsCert === undefined ? '--tls-cert' : '--tls-key'} too: give both (PEM files) for HTTPS, or neither`);
  }
  const read = async (path: string, what: string) => {
    try {
      return await readFile(path);
    } catch (error) {
      throw operationalError(CliErrorCodes.TLS, `cannot read the TLS ${what} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
  };
  return { cert: await read(tlsCert, 'certificate'), key: await read(tlsKey, 'key') };
}

/**
 * Refuses an empty or unusable token (`--token ''`, `IMAGE_CACHE_TOKEN=` set
 * but empty, a blank one): leaving the management API open must be a choice,
 * never a typo. The message names where the token came from, never the token.
 */
function assertTokens(config: ResolvedConfig): void {
  const where = {
    token: { flag: '--token', env: 'IMAGE_CACHE_TOKEN' },
    metricsToken: { flag: '--metrics-token', env: 'IMAGE_CACHE_METRICS_TOKEN' },
  } as const;
  for (const name of ['token', 'metricsToken'] as const) {
    const value = config[name];
    if (value === undefined) continue;
    const source = config.sources[name];
    const what = source === 'flag' ? where[name].flag : source === 'env' ? where[name].env : `${name} in ${config.configFile ?? 'the config file'}`;
    if (value.trim() === '') {
      throw usageError(
        CliErrorCodes.INVALID_TOKEN,
        `${what} is empty: give a token (visible ASCII characters, e.g. from \`openssl rand -hex 32\`)${name === 'token' ? ', or leave it out to serve the management API without one (on loopback only)' : ', or leave it out'}`,
      );
    }
    if (!/^[\x21-\x7e]+$/.test(value)) {
      throw usageError(CliErrorCodes.INVALID_TOKEN, `${what} must be visible ASCII characters without spaces (e.g. from \`openssl rand -hex 32\`)`);
    }
  }
}
