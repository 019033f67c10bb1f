import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { drainOrClose, openWriterIfCacheable, rollBackWhole, toBuffer, whenClosed, type ImageSource } from './cache-write.js';
import { formatChecksum, type NormalizedChecksum } from './checksum.js';
import type { CacheDriver, CacheWriter } from './driver.js';
import { ChecksumMismatchError, ImageBeingCachedError } from './errors.js';
import { WriteLock } from './fill/owner.js';
import type { ImageId } from './image-id.js';
import { ParallelHash } from './parallel-hash.js';
import { cacheFull, noSpaceNeed, type WriteSpace } from './space.js';

/**
 * How long a caching stream whose client stopped reading waits for the source
 * to report its end (the client then had every byte, and the entry is committed).
 */
const END_GRACE_MS = 250;

/** How a caching stream's cache write ended. */
export interface CachingOutcome {
  /**
   * - `committed`: the entry is active and verified.
   * - `skipped`: not written (already cached, or another writer has it).
   * - `failed`: the cache failed (the client still got every byte); see `error`.
   * - `aborted`: the source failed, the checksum did not match, or the client stopped; rolled back.
   */
  status: 'committed' | 'skipped' | 'failed' | 'aborted';
  /** For `aborted`: whether the source (including a checksum mismatch) or the client ended the stream. */
  abortedBy?: 'source' | 'client';
  error?: Error;
}

/**
 * The client's stream from {@link ImageCache.getCachingStream}. Emits
 * `cacheError` when the cache write fails (never `error` for that);
 * `cacheOutcome` tells how the cache write ended.
 */
export class CachingStream extends Readable {
  /** The image being streamed. */
  readonly imageId: ImageId;
  /** Settles (never rejects) once the cache write has committed, been skipped, failed or been rolled back. */
  readonly cacheOutcome: Promise<CachingOutcome>;
  readonly #driver: CacheDriver;
  readonly #source: ImageSource;
  readonly #expected: NormalizedChecksum | undefined;
  readonly #hash: ParallelHash | undefined;
  readonly #onCacheError: ((error: Error, imageId: ImageId) => void) | undefined;
  #iterator: AsyncIterator<unknown> | undefined;
  #writer: CacheWriter | undefined;
  #pumping = false;
  /** The source has ended: every byte has been pushed, only verification and the commit are left. */
  #sourceEnded = false;
  /** The source read in progress, if any. */
  #pendingStep: Promise<IteratorResult<unknown>> | undefined;
  #settle!: (outcome: CachingOutcome) => void;
  #settled = false;
  /** The host's write lock of the id, held from `_construct` until the outcome. */
  #lock: WriteLock | undefined;
  /** The writer of the cache write, kept to wait for its rollback before the lock is given back. */
  #lastWriter: CacheWriter | undefined;
  /** Bytes handed to the cache writer. */
  #cachedBytes = 0;
  readonly #space: WriteSpace | undefined;
  /** Bytes the space policy has reserved for this write. */
  #reservedBytes = 0;

  /**
   * @param lock - @internal the host's write lock of `id`, when the caller already holds it.
   * @param space - @internal the cache's space policy.
   */
  constructor(
    driver: CacheDriver,
    id: ImageId,
    source: ImageSource,
    expected: NormalizedChecksum | undefined,
    onCacheError?: (error: Error, imageId: ImageId) => void,
    lock?: WriteLock,
    space?: WriteSpace,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.imageId = id;
    this.#driver = driver;
    this.#source = source;
    this.#expected = expected;
    this.#hash = expected === undefined ? undefined : new ParallelHash(expected.algorithm);
    this.#onCacheError = onCacheError;
    this.#lock = lock;
    this.#space = space;
    this.cacheOutcome = new Promise((resolve) => (this.#settle = resolve));
  }

  #finishOutcome(outcome: CachingOutcome): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#settle(outcome);
    const lock = this.#lock;
    this.#lock = undefined;
    // Followers (fills of other processes) learn the outcome once the file is where it ends up.
    const writer = this.#lastWriter;
    const moved = writer === undefined ? Promise.resolve() : whenClosed(writer);
    void moved.then(() => {
      this.#space?.release(this.imageId);
      if (lock === undefined) return;
      if (outcome.status === 'committed') {
        lock.committed(this.#cachedBytes, this.#expected === undefined ? undefined : formatChecksum(this.#expected));
      } else if (outcome.status === 'skipped' || outcome.error === undefined) {
        lock.release();
      } else {
        lock.failed(outcome.error, outcome.status === 'aborted' && outcome.abortedBy === 'source');
      }
    });
  }

  /** A cache-side failure: report it, roll back, keep serving the client. */
  #cacheFailed(error: Error): void {
    const writer = this.#writer;
    this.#writer = undefined;
    writer?.destroy(error);
    this.#finishOutcome({ status: 'failed', error });
    this.emit('cacheError', error);
    try {
      this.#onCacheError?.(error, this.imageId);
    } catch {
      // A broken reporter must not break the client.
    }
  }

  /**
   * Rolls the cache write back and waits until the file is in `invalid/`: for
   * a source-side failure (a checksum mismatch included) with every byte
   * received, for a client that left at once. Both may happen at once (a
   * server's shutdown aborts the origin request and destroys the client's
   * connection together): the second call then waits for the rollback the
   * first one started, so that `cacheOutcome` never settles while the partial
   * file is still in `incomplete/`.
   */
  async #abortCache(error: Error, abortedBy: 'source' | 'client'): Promise<void> {
    const writer = this.#writer;
    this.#writer = undefined;
    if (writer !== undefined) {
      // The source's bytes so far (all of them, for a checksum mismatch) go to invalid/ whole; a client that left is cut short.
      if (abortedBy === 'source') await rollBackWhole(writer, error);
      else {
        writer.destroy(error);
        await whenClosed(writer);
      }
    } else {
      // A rollback another call started (or a commit under way): wait for its file to leave incomplete/.
      const rollingBack = this.#lastWriter;
      if (rollingBack !== undefined && (rollingBack.destroyed || rollingBack.writableEnded)) await whenClosed(rollingBack);
    }
    this.#finishOutcome({ status: 'aborted', abortedBy, error });
  }

  override _construct(callback: (error?: Error | null) => void): void {
    this.#open().then(() => callback(), callback);
  }

  async #open(): Promise<void> {
    const source = this.#source;
    const iterable: AsyncIterable<unknown> =
      typeof source === 'string' ? createReadStream(source, { highWaterMark: 1024 * 1024 }) : source;
    this.#iterator = iterable[Symbol.asyncIterator]();
    try {
      // The host's write lock of the id (ADR 0003): held by a fill or writer elsewhere -> pass through without caching.
      this.#lock ??= await WriteLock.acquire(this.#driver, this.imageId);
      if (this.#lock === undefined) {
        this.#finishOutcome({ status: 'skipped' });
        return;
      }
      // The space policy (ADR 0006): below the stop threshold, or no room in the budget -> pass through.
      const bypass = await this.#space?.admit(this.imageId, undefined);
      if (bypass !== undefined) {
        this.#finishOutcome({ status: 'skipped', error: cacheFull(this.imageId, bypass) });
        return;
      }
      this.#reservedBytes = this.#space?.reservedFor(this.imageId) ?? Number.POSITIVE_INFINITY;
      const writer = await openWriterIfCacheable(this.#driver, this.imageId);
      if (writer === undefined) {
        this.#finishOutcome({ status: 'skipped' });
        return;
      }
      const space = this.#space;
      // Of unknown size: an ENOSPC evicts one write buffer's worth when it can, and the write goes on; else it rolls back.
      if (space !== undefined) writer.setNoSpaceHandler?.((unwritten) => space.noSpace(this.imageId, noSpaceNeed(undefined, unwritten)));
      writer.on('error', (error: Error) => {
        if (this.#writer === writer) this.#cacheFailed(error);
      });
      this.#writer = writer;
      this.#lastWriter = writer;
      this.#lock.announce(this.#expected === undefined ? {} : { checksum: formatChecksum(this.#expected) });
      await this.#lock.attach(writer, this.#driver.getImageFilepath(this.imageId, 'incomplete'));
    } catch (error) {
      if (ImageBeingCachedError.isInstance(error)) this.#finishOutcome({ status: 'skipped', error });
      else this.#cacheFailed(error as Error);
    }
  }

  override _read(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    this.#pump().catch((error: Error) => this.destroy(error));
  }

  async #pump(): Promise<void> {
    const iterator = this.#iterator as AsyncIterator<unknown>;
    for (;;) {
      let step: IteratorResult<unknown>;
      let chunk: Buffer;
      try {
        this.#pendingStep = iterator.next();
        step = await this.#pendingStep;
        this.#pendingStep = undefined;
        if (this.destroyed) return;
        if (step.done === true) {
          this.#sourceEnded = true;
          break;
        }
        chunk = toBuffer(step.value);
        const hashing = this.#hash?.update(chunk);
        if (hashing !== undefined) await hashing;
      } catch (error) {
        await this.#abortCache(error as Error, 'source');
        this.destroy(error as Error);
        return;
      }
      await this.#writeToCache(chunk);
      if (this.destroyed) return;
      if (!this.push(chunk)) {
        this.#pumping = false;
        return;
      }
    }
    await this.#endOfSource();
  }

  async #writeToCache(chunk: Buffer): Promise<void> {
    const writer = this.#writer;
    if (writer === undefined || chunk.length === 0) return;
    if (this.#cachedBytes + chunk.length > this.#reservedBytes && this.#space !== undefined) {
      // The budget grows with the write (evicting as it goes); no room: the cache write fails, the client goes on.
      const full = await this.#space.grow(this.imageId, this.#cachedBytes + chunk.length);
      if (this.#writer !== writer) return;
      if (full !== undefined) {
        this.#cacheFailed(full);
        return;
      }
      this.#reservedBytes = this.#space.reservedFor(this.imageId);
    }
    this.#cachedBytes += chunk.length;
    if (writer.write(chunk)) return;
    await drainOrClose(writer);
  }

  async #endOfSource(): Promise<void> {
    if (this.#expected !== undefined && this.#hash !== undefined) {
      let actual: string;
      try {
        actual = await this.#hash.digest();
      } catch (error) {
        await this.#abortCache(error as Error, 'source');
        this.destroy(error as Error);
        return;
      }
      if (actual !== this.#expected.digest) {
        const error = new ChecksumMismatchError(this.imageId, this.#expected.algorithm, this.#expected.digest, actual);
        await this.#abortCache(error, 'source');
        this.destroy(error);
        return;
      }
    }
    const writer = this.#writer;
    if (writer !== undefined) {
      if (this.#expected !== undefined) writer.setChecksum(formatChecksum(this.#expected));
      writer.end();
      try {
        await finished(writer);
        if (this.#writer === writer) this.#finishOutcome({ status: 'committed' });
      } catch (error) {
        if (this.#writer === writer) this.#cacheFailed(error as Error);
      }
      this.#writer = undefined;
    }
    this.push(null);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#sourceEnded && this.#writer !== undefined) {
      // The client had every byte and went away while the entry was being
      // verified and committed: let the commit finish (cacheOutcome tells how it ended).
      callback(error);
      return;
    }
    const iterator = this.#iterator;
    if (error === null && this.#writer !== undefined && iterator !== undefined) {
      // The client stopped reading. It had every byte exactly when the source has
      // nothing more: an HTTP client closing the connection on reaching
      // Content-Length does this, just before the source reports its end. Ask
      // the source (briefly): at its end, commit; otherwise roll back.
      const next = this.#pendingStep ?? iterator.next();
      let timer: NodeJS.Timeout | undefined;
      const tooLate = new Promise<'more'>((resolve) => (timer = setTimeout(() => resolve('more'), END_GRACE_MS)));
      Promise.race([next.then((step) => (step.done === true ? 'ended' : 'more')), tooLate])
        .catch(() => 'more' as const)
        .then((verdict) => {
          clearTimeout(timer);
          if (verdict === 'ended' && this.#writer !== undefined) {
            this.#sourceEnded = true;
            void this.#endOfSource();
            callback(null);
          } else {
            this.#rollBack(null, iterator, callback);
          }
        });
      return;
    }
    this.#rollBack(error, iterator, callback);
  }

  /** Rolls the cache write back (the client stopped, or `error` ended the stream) and finishes the destroy. */
  #rollBack(error: Error | null, iterator: AsyncIterator<unknown> | undefined, callback: (error?: Error | null) => void): void {
    this.#hash?.dispose();
    this.#abortCache(error ?? new Error('client stopped reading before the end of the image'), 'client')
      .then(() => iterator?.return?.())
      .then(
        () => callback(error),
        () => callback(error),
      );
  }



}
