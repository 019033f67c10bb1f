import cluster from 'node:cluster';
import { InvalidArgumentError } from '@cache/core';
import { AggregatorRegistry, type Registry } from 'prom-client';
import { HttpError } from './http-errors.js';

/**
 * Whole-server metrics for a server of several processes (node:cluster, as
 * `image-cache serve --workers N` runs it), on prom-client's own cluster
 * support: a worker that gets a scrape asks its primary
 * ({@link WORKER_METRICS_REQUEST}); the primary's `AggregatorRegistry`
 * asks every worker for its registry (prom-client's IPC), aggregates them
 * (counters and histograms summed, each gauge by its `aggregator`) and
 * answers the worker with the text.
 */

/** The message a worker sends its primary for the whole server's metrics. */
export const WORKER_METRICS_REQUEST = 'image-cache:metrics-req';
/** The primary's answer: the aggregated text, or why there is none. */
export const WORKER_METRICS_RESPONSE = 'image-cache:metrics-res';

/** How long a worker waits for its primary's aggregated metrics by default, in ms (prom-client's primary waits up to 5 s for the workers). */
export const WORKER_METRICS_TIMEOUT = 8_000;

type WorkerMetricsMessage =
  | { type: typeof WORKER_METRICS_REQUEST; id: number }
  | { type: typeof WORKER_METRICS_RESPONSE; id: number; text: string; error?: undefined }
  | { type: typeof WORKER_METRICS_RESPONSE; id: number; text?: undefined; error: string };

/**
 * In the primary of a node:cluster server whose workers run
 * `createCacheServer({ workerMetrics: true })`: answers each worker's
 * request for the whole server's metrics with prom-client's
 * `AggregatorRegistry.clusterMetrics()` (every connected worker's registry,
 * aggregated). Call it before forking the workers. Returns a function that
 * stops answering (requests then go unanswered: the workers' scrapes get
 * their 503 after their timeout).
 *
 * @throws InvalidArgumentError in a cluster worker.
 *
 * @example
 * ```ts
 * import cluster from 'node:cluster';
 * if (cluster.isPrimary) {
 *   serveWorkerMetrics();
 *   for (let i = 0; i < 2; i++) cluster.fork();
 * } else {
 *   const server = await createCacheServer({ cache, origin, workerMetrics: true });
 *   await server.listen({ port: 8080 });
 * }
 * ```
 */
export function serveWorkerMetrics(): () => void {
  if (!cluster.isPrimary) throw new InvalidArgumentError('serveWorkerMetrics() runs in the primary of a node:cluster server, not in a worker');
  const aggregator = new AggregatorRegistry();
  const onMessage = (worker: { isConnected(): boolean; send(message: WorkerMetricsMessage, callback: (error: Error | null) => void): boolean }, message: WorkerMetricsMessage) => {
    if (message?.type !== WORKER_METRICS_REQUEST) return;
    const answer = (reply: WorkerMetricsMessage) => {
      // A worker gone meanwhile has nobody to answer.
      if (worker.isConnected()) worker.send(reply, () => undefined);
    };
    aggregator.clusterMetrics().then(
      (text) => answer({ type: WORKER_METRICS_RESPONSE, id: message.id, text }),
      (error: unknown) => answer({ type: WORKER_METRICS_RESPONSE, id: message.id, error: error instanceof Error ? error.message : String(error) }),
    );
  };
  cluster.on('message', onMessage);
  return () => void cluster.off('message', onMessage);
}

/**
 * The 503 of a scrape whose whole-server metrics did not arrive: the
 * primary did not answer within the timeout, or a worker did not answer
 * the primary within prom-client's 5 s. A scrape never shows one process's
 * counters instead (a sum that drops a worker would read as a counter reset).
 */
export function metricsUnavailable(reason: string): HttpError {
  return new HttpError(503, 'METRICS_UNAVAILABLE', `the whole server's metrics could not be gathered from its processes (${reason}); try again`, {
    'retry-after': '1',
  });
}

/**
 * A worker's side: registers the server's registry with prom-client's
 * cluster support (so the primary's `AggregatorRegistry` collects it) and
 * asks the primary for the aggregated text of every scrape.
 */
export class WorkerMetricsClient {
  readonly #timeout: number;
  readonly #pending = new Map<number, { resolve: (text: string) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }>();
  #next = 0;
  readonly #onMessage = (message: WorkerMetricsMessage) => {
    if (message?.type !== WORKER_METRICS_RESPONSE) return;
    const request = this.#pending.get(message.id);
    if (request === undefined) return;
    this.#settle(message.id);
    if (message.error === undefined) request.resolve(message.text);
    else request.reject(metricsUnavailable(`the primary: ${message.error}`));
  };

  /** @param registry - this process's registry: the primary aggregates it with the other workers'. */
  constructor(registry: Registry, timeout: number) {
    this.#timeout = timeout;
    // prom-client answers the primary's requests with these registries (its listener is installed by the constructor).
    AggregatorRegistry.setRegistries([registry]);
    new AggregatorRegistry();
    process.on('message', this.#onMessage);
  }

  /** The whole server's metrics (Prometheus text); rejects with {@link metricsUnavailable} when they do not arrive in time. */
  metrics(): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const id = this.#next++;
      const timer = setTimeout(() => {
        this.#settle(id);
        reject(metricsUnavailable(`no answer from the primary process within ${this.#timeout} ms`));
      }, this.#timeout);
      this.#pending.set(id, { resolve, reject, timer });
      const failed = (error: Error | null) => {
        if (error === null || !this.#pending.has(id)) return;
        this.#settle(id);
        reject(metricsUnavailable(`cannot reach the primary process: ${error.message}`));
      };
      try {
        if (process.send === undefined) throw new Error('no IPC channel');
        process.send({ type: WORKER_METRICS_REQUEST, id } satisfies WorkerMetricsMessage, undefined, {}, failed);
      } catch (error) {
        failed(error as Error);
      }
    });
  }

  /** Stops listening; requests still waiting are refused. */
  close(): void {
    process.off('message', this.#onMessage);
    for (const [id, request] of [...this.#pending]) {
      this.#settle(id);
      request.reject(metricsUnavailable('the server is closing'));
    }
  }

  #settle(id: number): void {
    const request = this.#pending.get(id);
    if (request === undefined) return;
    clearTimeout(request.timer);
    this.#pending.delete(id);
  }
}

/**
 * The sum of a metric's samples in Prometheus text (as prom-client writes
 * it), over every label set or only those with `label` = value; 0 when it has none.
 */
export function sampleSum(text: string, name: string, label?: [string, string]): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    const match = /^(?:\{([^}]*)\})? (\S+)$/.exec(rest);
    if (match === null) continue;
    if (label !== undefined && !(match[1] ?? '').split(',').includes(`${label[0]}="${label[1]}"`)) continue;
    const value = Number(match[2]);
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}

/** The pids of `image_cache_server_process` in Prometheus text: the processes whose metrics it holds. */
export function processPids(text: string, name: string): number[] {
  const pids: number[] = [];
  for (const match of text.matchAll(new RegExp(`^${name}\\{pid="(\\d+)"\\} 1$`, 'gm'))) pids.push(Number(match[1]));
  return pids;
}
