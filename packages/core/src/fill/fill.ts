import { EventEmitter } from 'node:events';
import { createReadStream } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { isErrnoError, storageError } from '../cache-dir.js';
import { formatChecksum, normalizeChecksum, type Checksum, type NormalizedChecksum } from '../checksum.js';
import type { CacheDriver, CacheWriter } from '../driver.js';
import { ChecksumMismatchError, FillAbandonedError, InvalidArgumentError, OriginError } from '../errors.js';
import { assertImageId, type ImageId } from '../image-id.js';
import { assertSource, drainOrClose, toBuffer, whenClosed } from '../cache-write.js';
import { ParallelHash } from '../parallel-hash.js';
import { failureFromMessage, FollowerLink, type FillMessage } from './lock.js';
import { fileKey, lockNameFor, WriteLock } from './owner.js';
import { GrowingFileReader, type GrowingFile, type GrowthSnapshot, type ReadRange } from './reader.js';

/** Where a fill's bytes come from: a stream, any async iterable of bytes, or a file path. */
export type FillSource = Readable | AsyncIterable<Uint8Array> | string;

/** What {@link FillOptions.fetch} is given. */
export interface FillFetchContext {
  /** Aborted when the fill stops early (abandoned, or the cache failed): pass it to `fetch()` / `http.get()`. */
  readonly signal: AbortSignal;
}

/** Options of `ImageCache.fill()`. */
export interface FillOptions {
  /**
   * Opens the image at its origin. Called only by the process that owns the
   * fill on this host, once per attempt (again after a takeover from a dead
   * owner, from byte 0).
   */
  fetch: (context: FillFetchContext) => FillSource | Promise<FillSource>;
  /** Expected digest; a mismatch fails the fill with `ChecksumMismatchError` and nothing is committed. */
  checksum?: Checksum;
  /**
   * Expected size in bytes: reported as progress, and verified (an origin
   * that sends more or fewer bytes fails the fill with `OriginError`).
   */
  expectedSize?: number;
  /**
   * Seconds without any reader (in this process, or a follower process)
   * after which the owner stops the fill and rolls it back with
   * `FillAbandonedError`. @default never: the fill finishes, the next
   * request is likely to come
   */
  abandonAfter?: number;
}

/**
 * This process's part in a fill:
 * - `pending`: deciding (looking for the entry, trying the lock);
 * - `cached`: the entry was already active; readers read it;
 * - `owner`: this process holds the host lock and fetches from the origin;
 * - `follower`: another process (or another writer of this one) owns the
 *   fill; readers follow its file.
 */
export type FillRole = 'pending' | 'cached' | 'owner' | 'follower';

/** How a fill ended. `done` resolves with it and never rejects. */
export type FillOutcome =
  | {
      status: 'committed';
      /** Bytes of the committed entry. */
      size: number;
      /** The verified digest stored with it (`sha256:<hex>`, bare md5 hex), when one was given. */
      checksum: string | undefined;
      /** `fetched`: this process fetched it; `followed`: another owner did; `cached`: it was already cached. */
      via: 'fetched' | 'followed' | 'cached';
    }
  | {
      status: 'failed';
      /**
       * The origin's error (for a follower: an `OriginError` with the owner's
       * message), `ChecksumMismatchError`, `FillAbandonedError`, or a
       * `CacheStorageError`. Nothing was committed; the partial file is in `invalid/`.
       */
      error: Error;
    };

interface MutableState {
  generation: number;
  file: string | undefined;
  available: number;
  outcome: GrowthSnapshot['outcome'];
}

/** One attempt of the owner: the source, the writer and how it ended. */
interface Attempt {
  writer: CacheWriter;
  failure: { error: Error; source: boolean } | undefined;
  fail(error: Error, source: boolean): void;
}

type AttemptResult = { ok: true; size: number; checksum: string | undefined } | { ok: false; error: Error; source: boolean };

/**
 * A fill (ADR 0003): one id fetched from the origin at the origin's speed
 * into `incomplete/<id>` through the driver's ordinary writer (so the commit,
 * verification and metadata are those of every write), with no client of
 * its own. Any number of readers ({@link openReader}) read the growing file
 * at their own pace. There is one fill per id per process (`ImageCache.fill`
 * shares it) and one owner per id per host (an abstract-socket lock): other
 * processes follow the owner's file and its notifications instead of
 * fetching, and take over when the owner dies.
 *
 * Events: `role` (the {@link FillRole}), `progress` (bytes in the file),
 * `done` (the {@link FillOutcome}).
 *
 * @example
 * ```ts
 * const fill = cache.fill('image-1', { fetch: () => origin.open('image-1'), expectedSize });
 * const whole = fill.openReader();                        // from byte 0, as soon as bytes arrive
 * const tail = fill.openReader({ start: 1024 * 1024 });   // waits until the fill passes 1 MiB
 * const outcome = await fill.done;                        // { status: 'committed', ... } or { status: 'failed', error }
 * ```
 */
export class Fill extends EventEmitter {
  /** The image being filled. */
  readonly imageId: ImageId;
  /** Resolves (never rejects) when the fill has committed or failed. */
  readonly done: Promise<FillOutcome>;
  readonly #driver: CacheDriver;
  readonly #fetch: FillOptions['fetch'];
  readonly #expected: NormalizedChecksum | undefined;
  readonly #abandonAfter: number | undefined;
  #expectedSize: number | undefined;
  #role: FillRole = 'pending';
  #ownerPid: number | undefined;
  readonly #state: MutableState = { generation: 0, file: undefined, available: 0, outcome: undefined };
  #pulse: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #readers = 0;
  #lock: WriteLock | undefined;
  #attempt: Attempt | undefined;
  #abandonTimer: NodeJS.Timeout | undefined;
  readonly #file: GrowingFile;

  /**
   * Starts the fill at once. Applications call `ImageCache.fill()`, which
   * validates the id and shares one fill per id in the process.
   * Throws `InvalidImageIdError` / `InvalidArgumentError` for bad arguments.
   */
  constructor(driver: CacheDriver, id: ImageId, options: FillOptions) {
    super();
    assertImageId(id);
    if (typeof options?.fetch !== 'function') {
      throw new InvalidArgumentError('fill needs { fetch: ({ signal }) => ImageSource | Promise<ImageSource> }');
    }
    const { expectedSize, abandonAfter } = options;
    if (expectedSize !== undefined && (!Number.isSafeInteger(expectedSize) || expectedSize < 0)) {
      throw new InvalidArgumentError(`expectedSize must be an integer >= 0, got ${String(expectedSize)}`);
    }
    if (abandonAfter !== undefined && (typeof abandonAfter !== 'number' || !Number.isFinite(abandonAfter) || abandonAfter < 0)) {
      throw new InvalidArgumentError(`abandonAfter must be a finite number of seconds >= 0, got ${String(abandonAfter)}`);
    }
    this.imageId = id;
    this.#driver = driver;
    this.#fetch = options.fetch;
    this.#expected = normalizeChecksum(options.checksum);
    this.#expectedSize = expectedSize;
    this.#abandonAfter = abandonAfter;
    const fill = this;
    this.#file = {
      activePath: driver.getImageFilepath(id, 'active'),
      candidatePaths: [
        driver.getImageFilepath(id, 'incomplete'),
        driver.getImageFilepath(id, 'active'),
        driver.getImageFilepath(id, 'invalid'),
      ],
      snapshot: () => ({ ...fill.#state }),
      changed: () => fill.#changed(),
      readerCount: (delta) => {
        fill.#readers += delta;
        fill.#checkAbandon();
      },
    };
    this.done = this.#run()
      .catch((error: unknown): FillOutcome => ({ status: 'failed', error: error as Error }))
      .then((outcome) => {
        this.#finish(outcome);
        return outcome;
      });
  }

  /** This process's part in the fill (see {@link FillRole}). */
  get role(): FillRole {
    return this.#role;
  }

  /** The process that fetches the image: this one when `owner`, the owner's when `follower` (once it said hello). */
  get ownerPid(): number | undefined {
    return this.#ownerPid;
  }

  /** Bytes in the file so far (of the current attempt); the size once committed. */
  get written(): number {
    const outcome = this.#state.outcome;
    return outcome?.status === 'committed' ? outcome.size : this.#state.available;
  }

  /** The expected size: given in the options, or announced by the owner; `undefined` when unknown. */
  get expectedSize(): number | undefined {
    const outcome = this.#state.outcome;
    return outcome?.status === 'committed' ? outcome.size : this.#expectedSize;
  }

  /** Readers of this process that are open now. */
  get readers(): number {
    return this.#readers;
  }

  /**
   * A new reader of the image (or of `range`; `end` is inclusive). It
   * delivers bytes as soon as they are in the file, waits for more when it
   * has caught up, ends at the committed size (or `end`), and fails with
   * the fill's error when it needs bytes the failed fill never wrote. A
   * range that starts past the end of the image ends with no bytes. Readers
   * may be opened at any time, also after `done`; destroying one never
   * affects the fill (see {@link FillOptions.abandonAfter}). Reads of a fill
   * record no hits.
   */
  openReader(range?: ReadRange): GrowingFileReader {
    return new GrowingFileReader(this.#file, range);
  }

  // ---- state and notifications ---------------------------------------------------------

  #changed(): Promise<void> {
    this.#pulse ??= new Promise<void>((resolve) => (this.#wake = resolve));
    return this.#pulse;
  }

  #update(patch: Partial<MutableState>): void {
    Object.assign(this.#state, patch);
    const wake = this.#wake;
    this.#pulse = undefined;
    this.#wake = undefined;
    wake?.();
  }

  #progress(written: number): void {
    if (written <= this.#state.available) return;
    this.#update({ available: written });
    this.emit('progress', written);
  }

  #setRole(role: FillRole): void {
    this.#role = role;
    this.emit('role', role);
  }

  /** A new attempt writes a new file: readers drop the descriptor of the old one. */
  #newAttempt(role: FillRole): void {
    this.#ownerPid = role === 'owner' ? process.pid : undefined;
    this.#update({ generation: this.#state.generation + 1, file: undefined, available: 0 });
    this.#setRole(role);
  }

  #finish(outcome: FillOutcome): void {
    if (this.#state.outcome !== undefined) return;
    clearTimeout(this.#abandonTimer);
    this.#abandonTimer = undefined;
    this.#update({
      outcome: outcome.status === 'committed' ? { status: 'committed', size: outcome.size } : { status: 'failed', error: outcome.error },
    });
    this.emit('done', outcome);
  }

  // ---- the fill ------------------------------------------------------------------------

  async #run(): Promise<FillOutcome> {
    const name = await lockNameFor(this.#driver, this.imageId);
    for (;;) {
      const cached = await this.#statActive();
      if (cached !== undefined) {
        this.#newAttempt('cached');
        this.#update({ file: cached.key });
        return { status: 'committed', size: cached.size, checksum: undefined, via: 'cached' };
      }
      const lock = await WriteLock.acquire(this.#driver, this.imageId);
      if (lock !== undefined) return this.#own(lock);
      const link = await FollowerLink.connect(name);
      if (link === undefined) continue; // the owner just finished or died: look again
      const outcome = await this.#follow(link);
      if (outcome !== undefined) return outcome;
      // The owner died or gave up without an outcome: look again, and take over if nobody else does.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  async #statActive(): Promise<{ size: number; key: string } | undefined> {
    const path = this.#file.activePath;
    try {
      const info = await lstat(path, { bigint: true });
      return info.isFile() ? { size: Number(info.size), key: fileKey(info) } : undefined;
    } catch (error) {
      if (isErrnoError(error, 'ENOENT', 'ENOTDIR')) return undefined;
      throw storageError('stat', path, error);
    }
  }

  // ---- following -----------------------------------------------------------------------

  /** Follows the owner's notifications; resolves the outcome, or `undefined` to take over. */
  #follow(link: FollowerLink): Promise<FillOutcome | undefined> {
    this.#newAttempt('follower');
    return new Promise((resolve) => {
      let outcome: FillOutcome | undefined;
      link.on('message', (message: FillMessage) => {
        if ('hello' in message) {
          this.#ownerPid = message.pid;
          if (this.#expectedSize === undefined && message.expectedSize !== undefined) this.#expectedSize = message.expectedSize;
          if (message.file !== null) this.#update({ file: message.file });
          this.#progress(message.written);
        } else if ('committed' in message) {
          outcome = { status: 'committed', size: message.committed, checksum: message.checksum, via: 'followed' };
        } else if ('failed' in message) {
          this.#progress(message.written);
          // A failure of the origin is final; any other (cache, client, abandoned) is a reason to take over.
          if (message.source) outcome = { status: 'failed', error: failureFromMessage(this.imageId, message) };
        } else if ('file' in message) {
          this.#update({ file: message.file });
        } else if ('written' in message) {
          this.#progress(message.written);
        }
        if (outcome !== undefined) {
          link.close();
          resolve(outcome);
        }
      });
      link.on('end', () => resolve(outcome));
    });
  }

  // ---- owning --------------------------------------------------------------------------

  async #own(lock: WriteLock): Promise<FillOutcome> {
    this.#lock = lock;
    this.#newAttempt('owner');
    lock.setExpectedSize(this.#expectedSize);
    lock.onFollowersChange = () => this.#checkAbandon();
    try {
      // A writer commits under the lock: what is cached now stays cached.
      const cached = await this.#statActive();
      if (cached !== undefined) {
        this.#update({ file: cached.key });
        this.#setRole('cached');
        lock.committed(cached.size);
        return { status: 'committed', size: cached.size, checksum: undefined, via: 'cached' };
      }
      this.#checkAbandon();
      const result = await this.#fetchAndWrite(lock);
      if (result.ok) {
        lock.committed(result.size, result.checksum);
        return { status: 'committed', size: result.size, checksum: result.checksum, via: 'fetched' };
      }
      lock.failed(result.error, result.source);
      return { status: 'failed', error: result.error };
    } catch (error) {
      lock.failed(error as Error, false);
      throw error;
    } finally {
      lock.onFollowersChange = undefined;
      this.#lock = undefined;
      this.#attempt = undefined;
      clearTimeout(this.#abandonTimer);
      this.#abandonTimer = undefined;
    }
  }

  /** Starts, restarts or stops the abandon timer: it runs while the owner has no reader and no follower. */
  #checkAbandon(): void {
    const seconds = this.#abandonAfter;
    const lock = this.#lock;
    if (seconds === undefined || lock === undefined || this.#state.outcome !== undefined) return;
    if (this.#readers + lock.followers > 0) {
      clearTimeout(this.#abandonTimer);
      this.#abandonTimer = undefined;
      return;
    }
    this.#abandonTimer ??= setTimeout(() => {
      this.#abandonTimer = undefined;
      const error = new FillAbandonedError(this.imageId, seconds);
      this.#abandoned = error;
      if (this.#attempt !== undefined) this.#attempt.fail(error, false);
      else this.#abortFetch?.(error);
    }, seconds * 1000);
  }

  /** Set when the abandon timer fired (checked when the fetch or the writer becomes available). */
  #abandoned: FillAbandonedError | undefined;
  /** Aborts the signal given to `fetch()` while there is no writer yet. */
  #abortFetch: ((error: Error) => void) | undefined;

  async #fetchAndWrite(lock: WriteLock): Promise<AttemptResult> {
    const controller = new AbortController();
    const id = this.imageId;
    let source: FillSource;
    this.#abortFetch = (error) => controller.abort(error);
    try {
      source = await this.#fetch({ signal: controller.signal });
      assertSource(source, 'fetch() must return');
    } catch (error) {
      if (this.#abandoned !== undefined) return { ok: false, error: this.#abandoned, source: false };
      return { ok: false, error: error as Error, source: true };
    } finally {
      this.#abortFetch = undefined;
    }
    if (this.#abandoned !== undefined) {
      discardSource(source);
      return { ok: false, error: this.#abandoned, source: false };
    }
    let writer: CacheWriter;
    try {
      writer = await this.#driver.openForWrite(id);
    } catch (error) {
      discardSource(source);
      return { ok: false, error: error as Error, source: false };
    }
    const iterable: AsyncIterable<unknown> = typeof source === 'string' ? createReadStream(source, { highWaterMark: 1024 * 1024 }) : source;
    const iterator = iterable[Symbol.asyncIterator]();
    const hash = this.#expected === undefined ? undefined : new ParallelHash(this.#expected.algorithm);
    let settle!: (result: AttemptResult) => void;
    const settled = new Promise<AttemptResult>((resolve) => (settle = resolve));
    const attempt: Attempt = {
      writer,
      failure: undefined,
      fail: (error, fromSource) => {
        if (attempt.failure !== undefined) return;
        attempt.failure = { error, source: fromSource };
        hash?.dispose();
        controller.abort(error);
        if (iterable instanceof Readable) iterable.destroy();
        else void Promise.resolve(iterator.return?.()).catch(() => undefined);
        if (!writer.destroyed) writer.destroy(error);
        // The rollback (incomplete/ -> invalid/) is done when the writer closes.
        whenClosed(writer).then(() => settle({ ok: false, error, source: fromSource }));
      },
    };
    this.#attempt = attempt;
    writer.on('error', (error: Error) => attempt.fail(error, false));
    if (this.#abandoned !== undefined) {
      attempt.fail(this.#abandoned, false);
      return settled;
    }
    try {
      const key = await lock.attach(writer, this.#driver.getImageFilepath(id, 'incomplete'), (written) => this.#progress(written));
      this.#update({ file: key });
    } catch (error) {
      attempt.fail(error as Error, false);
      return settled;
    }
    void this.#pump(attempt, iterator, hash).then((size) => {
      if (size === undefined || attempt.failure !== undefined) return;
      const checksum = this.#expected === undefined ? undefined : formatChecksum(this.#expected);
      this.#progress(size);
      settle({ ok: true, size, checksum });
    });
    return settled;
  }

  /** Copies the source into the writer, verifies and commits. Resolves the size once committed, `undefined` after a failure. */
  async #pump(attempt: Attempt, iterator: AsyncIterator<unknown>, hash: ParallelHash | undefined): Promise<number | undefined> {
    const { writer } = attempt;
    const id = this.imageId;
    const expectedSize = this.#expectedSize;
    let size = 0;
    try {
      for (;;) {
        let step: IteratorResult<unknown>;
        let chunk: Buffer;
        try {
          step = await iterator.next();
          if (attempt.failure !== undefined) return undefined;
          if (step.done === true) break;
          chunk = toBuffer(step.value);
        } catch (error) {
          attempt.fail(error as Error, true);
          return undefined;
        }
        size += chunk.length;
        if (expectedSize !== undefined && size > expectedSize) {
          attempt.fail(new OriginError(id, `sent more than the expected ${expectedSize} bytes`), true);
          return undefined;
        }
        const hashing = hash?.update(chunk);
        if (hashing !== undefined) await hashing;
        if (attempt.failure !== undefined) return undefined;
        if (chunk.length > 0 && !writer.write(chunk)) await drainOrClose(writer);
        if (attempt.failure !== undefined) return undefined;
      }
      if (expectedSize !== undefined && size !== expectedSize) {
        attempt.fail(new OriginError(id, `ended after ${size} of the expected ${expectedSize} bytes`), true);
        return undefined;
      }
      if (hash !== undefined && this.#expected !== undefined) {
        const actual = await hash.digest();
        if (actual !== this.#expected.digest) {
          attempt.fail(new ChecksumMismatchError(id, this.#expected.algorithm, this.#expected.digest, actual), true);
          return undefined;
        }
        writer.setChecksum(formatChecksum(this.#expected));
      }
      writer.end();
      await finished(writer);
      return attempt.failure === undefined ? size : undefined;
    } catch (error) {
      // The hash worker, the write or the commit failed: a failure of the cache, not of the origin.
      attempt.fail(error as Error, false);
      return undefined;
    }
  }
}

function discardSource(source: FillSource): void {
  if (source instanceof Readable) source.destroy();
}
