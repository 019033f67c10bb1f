import { OriginError, type CleanReport, type ImageCache, type ImageId, type PruneResult } from '@cache/core';
import { mapLimit } from '@cache/core/driver';
import type { ServerFills } from './fill.js';
import type { PrefetchOutcome, ServerMetrics, WorkerName } from './metrics.js';

/**
 * Runs async jobs one after the other (a promise chain). The pruner and
 * `POST /v2/cache/prune` share one, so two prunes never run at once, as
 * Glance's host lock orders them; likewise for clean.
 */
export class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  /** Runs `job` after every job queued before it; settles as `job` does. */
  run<T>(job: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(job, job);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}

/** A job a {@link PeriodicWorker} runs; `signal` aborts when the worker stops. */
export type WorkerTask = (signal: AbortSignal) => Promise<void>;

/**
 * Runs a task every `interval` ms (0: only when triggered), never two runs at
 * once: a tick that finds the previous run still going is skipped (and
 * counted as such). Timers are unref'd: they never keep the process alive.
 */
export class PeriodicWorker {
  readonly name: WorkerName;
  readonly interval: number;
  readonly #task: WorkerTask;
  readonly #metrics: ServerMetrics;
  readonly #onError: (error: unknown) => void;
  readonly #controller = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #rerun = false;
  #stopped = false;

  constructor(name: WorkerName, interval: number, task: WorkerTask, metrics: ServerMetrics, onError: (error: unknown) => void) {
    this.name = name;
    this.interval = interval;
    this.#task = task;
    this.#metrics = metrics;
    this.#onError = onError;
  }

  /** Starts the timer (no-op for interval 0). */
  start(): void {
    if (this.interval === 0 || this.#stopped || this.#timer !== undefined) return;
    this.#timer = setInterval(() => {
      if (this.#running !== undefined) this.#metrics.workerRuns.inc({ worker: this.name, result: 'skipped' });
      else void this.#run();
    }, this.interval);
    this.#timer.unref();
  }

  /**
   * Runs the task now, or, when a run is going, once more right after it (so
   * work queued during a run is not left for the next tick). Resolves when
   * that run has finished; never rejects.
   */
  trigger(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    const current = this.#running;
    if (current === undefined) return this.#run();
    this.#rerun = true;
    // `current` settles after its finally handler has started the rerun.
    return current.then(() => this.#running);
  }

  /** Stops the timer, aborts the current run's signal and waits for the run to end. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#controller.abort();
    while (this.#running !== undefined) await this.#running;
  }

  #run(): Promise<void> {
    this.#rerun = false;
    const run = this.#once().finally(() => {
      this.#running = undefined;
      if (this.#rerun && !this.#stopped) void this.#run();
    });
    this.#running = run;
    return run;
  }

  async #once(): Promise<void> {
    try {
      await this.#task(this.#controller.signal);
      this.#metrics.workerRuns.inc({ worker: this.name, result: 'ok' });
    } catch (error) {
      this.#metrics.workerRuns.inc({ worker: this.name, result: 'error' });
      this.#metrics.countError(error);
      this.#onError(error);
    }
  }
}

/**
 * Prunes under `serial` and counts the evictions. `invalid/` counts against
 * the budget: its files (failed and quarantined writes) are deleted first,
 * counted as cleaned `invalid` files.
 */
export async function runPrune(cache: ImageCache, serial: Serial, metrics: ServerMetrics): Promise<PruneResult> {
  const result = await serial.run(() => cache.prune({ includeInvalid: true }));
  metrics.prunedFiles.inc(result.files);
  metrics.prunedBytes.inc(result.bytes);
  if (result.invalid !== undefined) metrics.cleanedFiles.inc({ kind: 'invalid' }, result.invalid.files);
  return result;
}

/** Cleans (with the cache's stall time) under `serial` and counts what was removed. */
export async function runClean(cache: ImageCache, serial: Serial, metrics: ServerMetrics): Promise<CleanReport> {
  const report = await serial.run(() => cache.clean());
  metrics.cleanedFiles.inc({ kind: 'invalid' }, report.invalid);
  metrics.cleanedFiles.inc({ kind: 'stalled' }, report.stalled);
  for (const error of report.errors) metrics.countError(error);
  return report;
}

/** What the prefetch worker needs. */
export interface PrefetchContext {
  cache: ImageCache;
  /** The server's fills: a prefetch and a client's miss of the same id share one. */
  fills: ServerFills;
  metrics: ServerMetrics;
  concurrency: number;
  onError: (error: unknown, imageId: ImageId) => void;
}

/**
 * One prefetch run: every queued id (oldest first), `concurrency` at a time.
 * One id's failure is counted and reported and does not stop the others;
 * its marker stays, so the next run retries it. When `signal` aborts (the
 * worker stops), the run stops waiting: fills it started are left to the
 * server's shutdown (which aborts those nobody reads).
 */
export async function runPrefetch(context: PrefetchContext, signal: AbortSignal): Promise<void> {
  const ids = await context.cache.getQueuedImages();
  await mapLimit(ids, context.concurrency, async (id) => {
    if (signal.aborted) return;
    let outcome: PrefetchOutcome;
    try {
      outcome = await prefetchOne(context, id, signal);
    } catch (error) {
      outcome = 'failed';
      if (!signal.aborted) {
        context.metrics.countError(error);
        context.onError(error, id);
      }
    }
    context.metrics.prefetches.inc({ outcome });
  });
}

/**
 * Fetches one queued image into the cache. It goes through the server's
 * fills (`cache.fill`), not `cacheImage`, so a prefetch and a client's miss
 * of the same id share one fill and one origin request, in this process and
 * on this host.
 *
 * - committed: the driver's commit removed the queue marker;
 * - already cached: the marker is removed here;
 * - the origin does not have it (404): the marker is removed (Glance keeps
 *   such markers forever; spec section 15, item 13);
 * - a body nothing can verify (`cacheable: false`): failed, the marker stays;
 *   the fill is stopped unless a client reads it;
 * - not committed for another reason (verification, disk full, the space
 *   policy bypassed it): the marker stays.
 */
async function prefetchOne(context: PrefetchContext, id: ImageId, signal: AbortSignal): Promise<PrefetchOutcome> {
  const { cache, fills } = context;
  const fill = fills.fill(id);
  const announcement = await untilAborted(fill.whenAnnounced(), signal);
  if (announcement?.cache === false) {
    const error = new OriginError(
      id,
      'not prefetched: the origin announced no length or digest and its body is close-delimited, so a cut could not be told from the end (allow unverified fills on the origin to cache it anyway)',
    );
    // Without a client to pass it on to, it is not even read.
    if (fill.readers === 0) fill.abort(error);
    throw error;
  }
  const outcome = await untilAborted(fill.done, signal);
  if (outcome.status === 'failed') {
    if (OriginError.isInstance(outcome.error) && outcome.error.notFound) {
      await cache.deleteQueuedImage(id);
      return 'not_found';
    }
    throw outcome.error;
  }
  if (outcome.status === 'uncached') return 'not_cached';
  // The space policy would not cache it (too large, budget held, disk low): the marker stays for a later try.
  if (outcome.status === 'bypassed') return 'not_cached';
  if (outcome.via === 'cached') {
    await cache.deleteQueuedImage(id);
    return 'already_cached';
  }
  return 'cached';
}

/** `work`, or a rejection with the signal's reason once `signal` aborts (the work goes on). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  let onAbort!: () => void;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([work, aborted]).finally(() => signal.removeEventListener('abort', onAbort));
}
