import { CacheError, OriginError, type ImageCache, type ImageId, type SpaceEvent } from '@cache/core';

/** Why `/readyz` answers 503. */
export type ReadinessReason = 'metadata_store_unavailable' | 'disk_full' | 'origin_failing';

/** One recent failure. */
interface Failure {
  /** `Date.now()` when it was last seen. */
  at: number;
  message: string;
}

/** What `/readyz` reports. */
export interface ReadinessReport {
  status: 'ok' | 'degraded';
  reasons: { reason: ReadinessReason; message: string; since: string }[];
}

/** True when `error` or one of its causes is an ENOSPC (disk full). */
function isDiskFull(error: unknown): boolean {
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === 'ENOSPC') return true;
  }
  return false;
}

/**
 * Readiness from recent failures: the metadata store (a degraded stat), a
 * full disk (a write that failed with ENOSPC: an ENOSPC anywhere in a
 * counted error's causes, or an `enospc` event of the space policy that
 * could not make room; an ENOSPC the policy absorbed by evicting, after
 * which the write went on, is no failure and never counts), the origin (an
 * `OriginError` other than a 404). Each keeps the server unready for
 * `window` ms after it was last seen; a metadata failure ends earlier when a
 * probe (a stat of the image whose stat failed) finds the store answering.
 */
export class Readiness {
  readonly #window: number;
  #metadata: (Failure & { id: ImageId; first: number }) | undefined;
  #diskFull: (Failure & { first: number }) | undefined;
  #origin: (Failure & { first: number }) | undefined;

  constructor(window: number) {
    this.#window = window;
  }

  /** A stat of `id` answered without its metadata: the store failed with `error`. */
  metadataFailed(id: ImageId, error: Error): void {
    const now = Date.now();
    this.#metadata = { id, at: now, first: this.#metadata?.first ?? now, message: error.message };
  }

  /** True from a metadata failure until a stat (or a probe) is answered with its metadata again. */
  get metadataFailing(): boolean {
    return this.#metadata !== undefined;
  }

  /** A stat answered with its metadata: the store is up. */
  metadataAnswered(): void {
    this.#metadata = undefined;
  }

  /**
   * Looks at an event of the space policy: an ENOSPC it could not absorb
   * (`retried: false`, the write rolled back) makes the disk full; one it
   * absorbed (evicted, and the write went on) does not.
   */
  spaceEvent(event: SpaceEvent): void {
    if (event.type !== 'enospc' || event.retried) return;
    const now = Date.now();
    this.#diskFull = {
      at: now,
      first: this.#fresh(this.#diskFull, now)?.first ?? now,
      message: `a write of image '${event.imageId}' failed: the cache filesystem is full (ENOSPC) and eviction could not make room`,
    };
  }

  /** Looks at an error the server counted (a response's, a cache write's, a worker's): each is a failed operation. */
  observe(error: unknown): void {
    const now = Date.now();
    if (isDiskFull(error)) {
      this.#diskFull = { at: now, first: this.#fresh(this.#diskFull, now)?.first ?? now, message: (error as Error).message };
    } else if (OriginError.isInstance(error) && !error.notFound) {
      this.#origin = { at: now, first: this.#fresh(this.#origin, now)?.first ?? now, message: error.message };
    }
  }

  /**
   * The current report. With a cache, probes the metadata store when it failed
   * recently (one stat; it may wait for the store's connection timeout);
   * without one, reports from the recorded failures alone.
   */
  async check(cache?: ImageCache): Promise<ReadinessReport> {
    const now = Date.now();
    const reasons: ReadinessReport['reasons'] = [];
    const metadata = this.#metadata;
    if (metadata !== undefined && cache === undefined) {
      const current = this.#fresh(metadata, now);
      if (current !== undefined) reasons.push(entry('metadata_store_unavailable', current));
    } else if (metadata !== undefined && cache !== undefined) {
      let probe: Awaited<ReturnType<ImageCache['stat']>> | Error;
      try {
        probe = await cache.stat(metadata.id);
      } catch (error) {
        probe = error as Error;
      }
      if (probe !== null && !(probe instanceof Error) && probe.degraded === undefined) {
        if (this.#metadata === metadata) this.#metadata = undefined;
      } else {
        if (probe instanceof Error && CacheError.isCacheError(probe)) this.metadataFailed(metadata.id, probe);
        else if (probe !== null && !(probe instanceof Error) && probe.degraded !== undefined) this.metadataFailed(metadata.id, probe.degraded);
        const current = this.#fresh(this.#metadata, now);
        if (current !== undefined) reasons.push(entry('metadata_store_unavailable', current));
        else this.#metadata = undefined;
      }
    }
    const diskFull = this.#fresh(this.#diskFull, now);
    if (diskFull !== undefined) reasons.push(entry('disk_full', diskFull));
    const origin = this.#fresh(this.#origin, now);
    if (origin !== undefined) reasons.push(entry('origin_failing', origin));
    return { status: reasons.length === 0 ? 'ok' : 'degraded', reasons };
  }

  #fresh<F extends Failure>(failure: F | undefined, now: number): F | undefined {
    return failure !== undefined && now - failure.at <= this.#window ? failure : undefined;
  }
}

function entry(reason: ReadinessReason, failure: Failure & { first: number }): ReadinessReport['reasons'][number] {
  return { reason, message: failure.message, since: new Date(failure.first).toISOString() };
}
