import { CacheError, type FillRole, type ImageCache, type SpaceEvent, type SpaceStatus } from '@cache/core';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Where the bytes of an image response came from (label `source`). */
export type ByteSource = 'cache' | 'origin' | 'peer';

/** How one prefetch of a queued id ended (label `outcome`). */
export type PrefetchOutcome = 'cached' | 'already_cached' | 'not_found' | 'not_cached' | 'failed';

/** Names of the background workers (label `worker`). */
export type WorkerName = 'prune' | 'clean' | 'prefetch';

/** How one worker run ended (label `result`); `skipped` means the previous run was still going. */
export type WorkerRunResult = 'ok' | 'error' | 'skipped';

/** Every metric name the server exports, for documentation and tests. */
export const METRIC_NAMES = {
  hits: 'image_cache_hits_total',
  hitsUnrecorded: 'image_cache_hits_unrecorded_total',
  misses: 'image_cache_misses_total',
  servedBytes: 'image_cache_served_bytes_total',
  originFetches: 'image_cache_origin_fetches_total',
  peerFetches: 'image_cache_peer_fetches_total',
  prunedFiles: 'image_cache_pruned_files_total',
  prunedBytes: 'image_cache_pruned_bytes_total',
  cleanedFiles: 'image_cache_cleaned_files_total',
  prefetches: 'image_cache_prefetch_total',
  workerRuns: 'image_cache_worker_runs_total',
  errors: 'image_cache_errors_total',
  size: 'image_cache_size_bytes',
  maxSize: 'image_cache_max_size_bytes',
  queueLength: 'image_cache_queue_length',
  fillsInProgress: 'image_cache_fills_in_progress',
  requestDuration: 'image_cache_http_request_duration_seconds',
  bypassed: 'image_cache_bypassed_total',
  evictions: 'image_cache_evictions_total',
  evictedBytes: 'image_cache_evicted_bytes_total',
  noSpace: 'image_cache_enospc_total',
  usedBytes: 'image_cache_used_bytes',
  freeBytes: 'image_cache_fs_free_bytes',
  freeFiles: 'image_cache_fs_free_files',
  fsBytes: 'image_cache_fs_size_bytes',
  freeThreshold: 'image_cache_fs_free_threshold_bytes',
  spaceState: 'image_cache_space_state',
  process: 'image_cache_server_process',
} as const;

/**
 * The label value of `image_cache_errors_total` for an error: its
 * `CacheError` code when it has one, else the HTTP status class
 * (`HTTP_4XX`, `HTTP_5XX`) of the response it caused.
 */
export function errorLabel(error: unknown, status = 500): string {
  if (CacheError.isCacheError(error)) return error.code;
  return `HTTP_${Math.floor(status / 100)}XX`;
}

/** The values of `fills_in_progress`'s `role` label: core's {@link FillRole}s. */
const FILL_ROLES: readonly FillRole[] = ['pending', 'owner', 'follower', 'cached'];

/**
 * The server's Prometheus metrics, in a registry of its own (never the
 * global one). Each metric says how the metrics of a server of several
 * processes (`serve --workers N`, aggregated by prom-client's
 * `AggregatorRegistry`) combine: counters and histograms are summed, as are
 * the per-process gauges (`fills_in_progress`, by role; `server_process` and
 * `used_bytes{part="reserved"}` are kept per pid); the gauges every process
 * reads from the same directory or filesystem (size, budget, queue, space)
 * take one process's value (`first`), never N times it.
 */
export class ServerMetrics {
  /** The registry `/metrics` exposes. */
  readonly registry = new Registry();
  readonly hits: Counter;
  readonly hitsUnrecorded: Counter;
  readonly #onError: ((error: unknown) => void) | undefined;
  readonly misses: Counter;
  readonly servedBytes: Counter<'source'>;
  readonly originFetches: Counter;
  readonly peerFetches: Counter<'result'>;
  readonly prunedFiles: Counter;
  readonly prunedBytes: Counter;
  readonly cleanedFiles: Counter<'kind'>;
  readonly prefetches: Counter<'outcome'>;
  readonly workerRuns: Counter<'worker' | 'result'>;
  readonly errors: Counter<'code'>;
  readonly fillsInProgress: Gauge;
  readonly requestDuration: Histogram<'method' | 'route' | 'status_code'>;
  readonly bypassed: Counter<'reason'>;
  readonly evictions: Counter<'cause'>;
  readonly evictedBytes: Counter<'cause'>;
  readonly noSpace: Counter<'retried'>;
  /** Stops counting the cache's space events (the server's `close()`). */
  readonly detach: () => void;

  /**
   * @param onCollectError - told when a scrape-time gauge could not be read (the gauge keeps its last value).
   * @param onError - told of every error {@link countError} counts (readiness looks at them).
   */
  constructor(cache: ImageCache, onCollectError: (error: unknown) => void, onError?: (error: unknown) => void) {
    this.#onError = onError;
    const registers = [this.registry];
    this.hits = new Counter({
      name: METRIC_NAMES.hits,
      help: 'Image responses answered from the cache (200, 206, 304).',
      registers,
    });
    this.hitsUnrecorded = new Counter({
      name: METRIC_NAMES.hitsUnrecorded,
      help: 'Image bodies served from the cache while the metadata store failed: the driver drops their hits or records them later.',
      registers,
    });
    this.misses = new Counter({
      name: METRIC_NAMES.misses,
      help: 'Image requests that were not in the cache: answered from a fill (started, joined or followed) or from the origin\'s headers (HEAD).',
      registers,
    });
    this.servedBytes = new Counter({
      name: METRIC_NAMES.servedBytes,
      help: 'Image bytes sent to clients, by where they came from.',
      labelNames: ['source'],
      registers,
    });
    this.originFetches = new Counter({
      name: METRIC_NAMES.originFetches,
      help: 'Requests made to the origin (one per fill, whatever the number of its readers; HEAD misses).',
      registers,
    });
    this.peerFetches = new Counter({
      name: METRIC_NAMES.peerFetches,
      help: 'Misses fetched from a peer node of the cluster (result ok) and peer requests that failed before the body (result failed: the next peer or the origin was tried).',
      labelNames: ['result'],
      registers,
    });
    this.prunedFiles = new Counter({ name: METRIC_NAMES.prunedFiles, help: 'Entries evicted by prune.', registers });
    this.prunedBytes = new Counter({ name: METRIC_NAMES.prunedBytes, help: 'Bytes evicted by prune.', registers });
    this.cleanedFiles = new Counter({
      name: METRIC_NAMES.cleanedFiles,
      help: 'Files removed by clean: kind="invalid" (failed writes) or "stalled" (old incomplete writes).',
      labelNames: ['kind'],
      registers,
    });
    this.prefetches = new Counter({
      name: METRIC_NAMES.prefetches,
      help: 'Queued images the prefetch worker handled, by outcome.',
      labelNames: ['outcome'],
      registers,
    });
    this.workerRuns = new Counter({
      name: METRIC_NAMES.workerRuns,
      help: 'Background worker runs, by worker and result (skipped: the previous run was still going).',
      labelNames: ['worker', 'result'],
      registers,
    });
    this.errors = new Counter({
      name: METRIC_NAMES.errors,
      help: 'Errors by CacheError code, or by HTTP status class (HTTP_4XX, HTTP_5XX) for other error responses.',
      labelNames: ['code'],
      registers,
    });
    this.fillsInProgress = new Gauge({
      name: METRIC_NAMES.fillsInProgress,
      help:
        'Fills of this server running now (misses and prefetches), by role: owner (this process fetches it), follower (another process or writer fetches it; this one reads its file), pending (deciding), cached (found cached, ending); summed over the processes of a server, so role="owner" counts each fill being fetched once.',
      labelNames: ['role'],
      aggregator: 'sum',
      registers,
    });
    // Every role's series from the start: a scrape shows 0, not nothing, before the first fill.
    for (const role of FILL_ROLES) this.fillsInProgress.set({ role }, 0);
    this.requestDuration = new Histogram({
      name: METRIC_NAMES.requestDuration,
      help: 'Time to the end of the response, by method, route pattern and status code.',
      labelNames: ['method', 'route', 'status_code'],
      buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
      registers,
    });
    // One series per process whose metrics the scrape holds: every worker of `serve --workers N` (kept per pid).
    new Gauge({
      name: METRIC_NAMES.process,
      help: 'Always 1, one series per server process whose metrics this scrape holds (pid label): every worker of serve --workers N, or the one process.',
      labelNames: ['pid'],
      aggregator: 'sum',
      registers,
    }).set({ pid: String(process.pid) }, 1);
    // The size and the space gauges come from one spaceStatus() per scrape (one listing of the directory, where
    // getCacheSize() would be a second), shared by the gauges that collect at once.
    let status: Promise<SpaceStatus> | undefined;
    const space = (): Promise<SpaceStatus> => {
      status ??= cache.spaceStatus().finally(() => setImmediate(() => (status = undefined)));
      return status;
    };
    new Gauge({
      name: METRIC_NAMES.size,
      help: 'Bytes in active cache entries (read at scrape time).',
      // Every process reads the same directory: one value, never N times it.
      aggregator: 'first',
      registers,
      async collect() {
        try {
          this.set((await space()).active);
        } catch (error) {
          onCollectError(error);
        }
      },
    });
    new Gauge({ name: METRIC_NAMES.maxSize, help: 'The byte budget (prune; every write too with the write budget on).', aggregator: 'first', registers }).set(cache.maxSize);
    this.bypassed = new Counter({
      name: METRIC_NAMES.bypassed,
      help: 'Images the space policy did not cache (served uncached), by reason: too-large (over the whole budget), budget-full (the rest read or written), disk-low (free space below stop).',
      labelNames: ['reason'],
      registers,
    });
    this.evictions = new Counter({
      name: METRIC_NAMES.evictions,
      help: 'Entries the space policy evicted, by cause: budget (room for a write), cull (free space below cull), enospc (a write hit a full disk).',
      labelNames: ['cause'],
      registers,
    });
    this.evictedBytes = new Counter({ name: METRIC_NAMES.evictedBytes, help: 'Bytes the space policy evicted, by cause.', labelNames: ['cause'], registers });
    this.noSpace = new Counter({
      name: METRIC_NAMES.noSpace,
      help: 'Cache writes that hit ENOSPC, by whether eviction made room and the write went on (retried="true") or it rolled back.',
      labelNames: ['retried'],
      registers,
    });
    this.detach = cache.addSpaceListener((event: SpaceEvent) => {
      if (event.type === 'bypass') this.bypassed.inc({ reason: event.reason });
      else if (event.type === 'evict') {
        this.evictions.inc({ cause: event.cause });
        this.evictedBytes.inc({ cause: event.cause }, event.bytes);
      } else if (event.type === 'enospc') this.noSpace.inc({ retried: String(event.retried) });
    });
    // Directory- and filesystem-wide: every process reads the same, so a server of several processes shows one value ('first').
    const spaceGauge = <L extends string>(name: string, help: string, labelNames: L[], set: (gauge: Gauge<L>, now: SpaceStatus) => void) =>
      new Gauge<L>({
        name,
        help,
        labelNames,
        aggregator: 'first',
        registers,
        async collect() {
          try {
            set(this, await space());
          } catch (error) {
            onCollectError(error);
          }
        },
      });
    // `reserved` is held by this process's writes: one series per pid, so that a server of several processes shows each.
    const pid = String(process.pid);
    spaceGauge(
      METRIC_NAMES.usedBytes,
      'Bytes counted against the budget, by part: active, incomplete, invalid (the directory), reserved (by the writes of the process in the pid label) (read at scrape time).',
      ['part', 'pid'],
      (gauge, now) => {
        for (const part of ['active', 'incomplete', 'invalid'] as const) gauge.set({ part }, now[part]);
        gauge.set({ part: 'reserved', pid }, now.reserved);
      },
    );
    spaceGauge(METRIC_NAMES.freeBytes, 'Bytes available on the cache filesystem (statfs bavail x bsize).', [], (gauge, now) => gauge.set(now.disk.freeBytes));
    spaceGauge(METRIC_NAMES.freeFiles, 'Free inodes on the cache filesystem (statfs ffree).', [], (gauge, now) => gauge.set(now.disk.freeFiles));
    spaceGauge(METRIC_NAMES.fsBytes, 'Size of the cache filesystem (statfs blocks x bsize).', [], (gauge, now) => gauge.set(now.disk.totalBytes));
    spaceGauge(METRIC_NAMES.freeThreshold, 'The free-space thresholds in bytes (run, cull, stop), when set.', ['threshold'], (gauge, now) => {
      for (const threshold of ['run', 'cull', 'stop'] as const) {
        const value = now.thresholds?.[threshold].bytes;
        if (value !== undefined) gauge.set({ threshold }, value);
      }
    });
    spaceGauge(METRIC_NAMES.spaceState, 'The free-space watcher: 1 for the current state (ok, culling, stopped), 0 for the others.', ['state'], (gauge, now) => {
      for (const state of ['ok', 'culling', 'stopped'] as const) gauge.set({ state }, now.state === state ? 1 : 0);
    });
    new Gauge({
      name: METRIC_NAMES.queueLength,
      help: 'Images queued for prefetch (read at scrape time).',
      aggregator: 'first',
      registers,
      async collect() {
        try {
          this.set((await cache.getQueuedImages()).length);
        } catch (error) {
          onCollectError(error);
        }
      },
    });
  }

  /** Counts one error under {@link errorLabel}. */
  countError(error: unknown, status?: number): void {
    this.errors.inc({ code: errorLabel(error, status) });
    this.#onError?.(error);
  }
}
