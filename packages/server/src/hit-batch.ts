import type { ImageCache, ImageId } from '@cache/core';

/** How long a hit waits in memory before it is written to the driver (ms). */
export const HIT_FLUSH_INTERVAL = 1000;

interface PendingHits {
  id: ImageId;
  identity: string;
  count: number;
  /** When the last of them completed, epoch seconds. */
  time: number;
}

/**
 * Hits of cache reads, counted in memory and written to the driver in one
 * `cache.recordHits(id, count, { identity, time })` per file every
 * {@link HIT_FLUSH_INTERVAL} ms (and on {@link close}), instead of one
 * metadata write per request. Only for drivers that can
 * (`cache.canRecordHits`); reads are then opened with `countHit: false` and
 * {@link add} is called once a read has delivered the image's last byte
 * (core's hit rule). Hits of a file that was deleted or replaced before the
 * flush are dropped (`recordHits` resolves false), as a per-read count on a
 * file that is gone records nothing either.
 */
export class HitBatch {
  readonly #cache: ImageCache;
  readonly #interval: number;
  readonly #onError: (error: unknown, id: ImageId, count: number) => void;
  #pending = new Map<string, PendingHits>();
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();

  constructor(cache: ImageCache, options: { interval?: number; onError: (error: unknown, id: ImageId, count: number) => void }) {
    this.#cache = cache;
    this.#interval = options.interval ?? HIT_FLUSH_INTERVAL;
    this.#onError = options.onError;
  }

  /** One completed read of the file `identity` of `id`. */
  add(id: ImageId, identity: string): void {
    const key = `${id}\0${identity}`;
    const time = Date.now() / 1000;
    const pending = this.#pending.get(key);
    if (pending === undefined) this.#pending.set(key, { id, identity, count: 1, time });
    else {
      pending.count++;
      pending.time = time;
    }
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, this.#interval).unref();
  }

  /** Hits counted and not yet written. */
  get pending(): number {
    let total = 0;
    for (const hits of this.#pending.values()) total += hits.count;
    return total;
  }

  /** Writes the hits counted so far (after any flush still running); never rejects. */
  flush(): Promise<void> {
    const batch = [...this.#pending.values()];
    this.#pending = new Map();
    this.#flushing = this.#flushing.then(async () => {
      for (const hits of batch) {
        try {
          await this.#cache.recordHits(hits.id, hits.count, { identity: hits.identity, time: hits.time });
        } catch (error) {
          this.#onError(error, hits.id, hits.count);
        }
      }
    });
    return this.#flushing;
  }

  /** Stops the timer and writes what is left. */
  async close(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}
