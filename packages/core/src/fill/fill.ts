import { EventEmitter } from 'node:events';
import { createReadStream } from 'node:fs';
import { lstat, unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { isErrnoError, storageError } from '../cache-dir.js';
import { formatChecksum, normalizeChecksum, type Checksum, type NormalizedChecksum } from '../checksum.js';
import type { CacheDriver, CacheWriter } from '../driver.js';
import { CacheFullError, ChecksumMismatchError, FillAbandonedError, FillAbortedError, InvalidArgumentError, OriginError } from '../errors.js';
import { assertImageId, type ImageId } from '../image-id.js';
import { assertSource, drainOrClose, rollBackWhole, toBuffer, whenClosed } from '../cache-write.js';
import { ParallelHash } from '../parallel-hash.js';
import { cacheFull, noSpaceNeed, type BypassReason, type WriteSpace } from '../space.js';
import type { FetchedImage } from '../read-through.js';
import { failureFromMessage, FollowerLink, type Announcement, type FillMessage } from './lock.js';
import { fileKey, lockNameFor, WriteLock } from './owner.js';
import { GrowingFileReader, type GrowingFile, type GrowthSnapshot, type ReadRange } from './reader.js';

/** Where a fill's bytes come from: a stream, any async iterable of bytes, or a file path. */
export type FillSource = Readable | AsyncIterable<Uint8Array> | string;

/** What {@link FillOptions.fetch} is given. */
export interface FillFetchContext {
  /** Aborted when the fill stops early (abandoned, aborted, or the cache failed): pass it to `fetch()` / `http.get()`. */
  readonly signal: AbortSignal;
}

/**
 * What {@link FillOptions.fetch} may resolve to instead of a bare source: the
 * source together with what the origin announced about it, which is only
 * known once the origin has answered (its `Content-Length`, a digest in its
 * headers or metadata, whether its body can be verified at all). It is
 * published as the fill's {@link FillAnnouncement}.
 */
export interface FetchedFill extends FetchedImage {
  /** The image bytes. */
  source: FillSource;
  /**
   * Expected digest: verified, and stored with the entry, as
   * {@link FillOptions.checksum} (which wins when both are given). A
   * mismatch fails the fill with `ChecksumMismatchError`.
   */
  checksum?: Checksum;
  /**
   * Expected size in bytes: verified as {@link FillOptions.expectedSize}
   * (which wins when both are given). A body shorter or longer fails the
   * fill with `OriginError`; nothing is committed.
   */
  size?: number;
  /**
   * `false`: readers get the bytes, but the fill never commits them (for a
   * body nothing can verify, such as a close-delimited HTTP body without a
   * length or digest). The size and digest, when given, are still verified;
   * at the end the file is rolled back to `invalid/` (deleted by the next
   * `clean()`) and `done` resolves `{ status: 'uncached' }`. @default true
   */
  cache?: boolean;
}

/**
 * What a fill knows about the image once the origin has answered
 * ({@link Fill.whenAnnounced}); in a follower, what the owner announced.
 */
export interface FillAnnouncement {
  /** The size the fill verifies ({@link FillOptions.expectedSize}, else {@link FetchedFill.size}); `undefined` when unknown. */
  readonly expectedSize: number | undefined;
  /**
   * The digest the fill verifies and stores ({@link FillOptions.checksum},
   * else {@link FetchedFill.checksum}), as stored: `sha256:<hex>`,
   * `sha512:<hex>`, bare md5 hex (`parseStoredChecksum` reads it); `undefined` when none.
   */
  readonly checksum: string | undefined;
  /** False when the fill will not be committed ({@link FetchedFill.cache}): it ends `uncached`. */
  readonly cache: boolean;
}

/** Options of `ImageCache.fill()`. */
export interface FillOptions {
  /**
   * Opens the image at its origin. Called only by the process that owns the
   * fill on this host, once per attempt (again after a takeover from a dead
   * owner, from byte 0). It may resolve to a {@link FetchedFill} to pass
   * what the origin announced (size, digest) or to refuse caching.
   */
  fetch: (context: FillFetchContext) => FillSource | FetchedFill | Promise<FillSource | FetchedFill>;
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
  /**
   * Aborts the fill, as {@link Fill.abort} with the signal's reason. Only the
   * options of the caller that starts the fill are used: a caller that joins
   * a running fill shares it and cannot stop it for the others with its own signal.
   */
  signal?: AbortSignal;
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
      /**
       * Every byte was fetched (and verified against the announced size and
       * digest, if any) and read by the readers, but not committed, because
       * the fetch said `cache: false` ({@link FetchedFill.cache}): the file
       * is in `invalid/`, the id is not cached.
       */
      status: 'uncached';
      /** Bytes the origin sent. */
      size: number;
      /** The verified digest, when one was announced. */
      checksum: string | undefined;
      /** `fetched`: this process fetched it; `followed`: another owner did. */
      via: 'fetched' | 'followed';
    }
  | {
      /**
       * The space policy did not let the image be cached (ADR 0006): it is
       * larger than the budget, the budget is held by reads and fills, or the
       * disk is below the `stop` threshold.
       *
       * Decided before the first byte (`streamed` undefined): nothing was
       * written; readers fail with a `CacheFullError`. The origin's response
       * is handed over once by {@link Fill.takeSource}, to stream it uncached.
       *
       * Decided mid-way (`streamed` set: an image of unknown size outgrew
       * the budget): the partial file was rolled back, and the fill passed
       * the rest of the origin's bytes through to the readers it had, which
       * got every byte (a reader opened later fails with the
       * `CacheFullError` once it needs bytes no longer held).
       */
      status: 'bypassed';
      reason: BypassReason;
      /** The size the origin announced, when it did. */
      size: number | undefined;
      /** Bytes the fill delivered to its readers in all when it passed them through; `undefined` when it bypassed before the first byte. */
      streamed?: number;
      via: 'fetched';
    }
  | {
      status: 'failed';
      /**
       * The origin's error (for a follower: an `OriginError` with the owner's
       * message), `ChecksumMismatchError`, `FillAbandonedError`, the reason
       * given to {@link Fill.abort} (`FillAbortedError` when none), or a
       * `CacheStorageError`. Nothing was committed; the partial file is in `invalid/`.
       */
      error: Error;
    };

interface MutableState {
  generation: number;
  file: string | undefined;
  available: number;
  outcome: GrowthSnapshot['outcome'];
  tail: GrowthSnapshot['tail'];
}

/**
 * Bytes a passed-through fill holds in memory ahead of its slowest reader:
 * the origin is read no faster than that reader (as a tee would).
 */
export const PASS_THROUGH_BUFFER = 4 * 1024 * 1024;

/** One attempt of the owner: the source, the writer, what the origin announced and how it ended. */
interface Attempt {
  writer: CacheWriter;
  /** The digest to verify (the options', else the origin's). */
  expected: NormalizedChecksum | undefined;
  /** The size to verify (the options', else the origin's). */
  expectedSize: number | undefined;
  /** False: verify, let readers read, but do not commit. */
  cache: boolean;
  /** Set once the commit (or the discard of an uncached file) has begun: too late to stop. */
  ending: boolean;
  /** Set once the fill stopped caching and passes the rest through: the writer's rollback is no failure. */
  passing: boolean;
  failure: { error: Error; source: boolean } | undefined;
  fail(error: Error, source: boolean): void;
}

type AttemptResult =
  | { ok: true; size: number; checksum: string | undefined; cached: boolean }
  | { ok: 'bypassed'; reason: BypassReason; size: number | undefined; streamed?: number }
  | { ok: false; error: Error; source: boolean };

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
 * Events: `role` (the {@link FillRole}), `announced` (the
 * {@link FillAnnouncement}, once the origin has answered), `progress` (bytes
 * in the file), `passThrough` (the {@link BypassReason}: an image of unknown
 * size outgrew the budget; the fill stopped caching and passes the rest to
 * its readers, see {@link FillOutcome}), `done` (the {@link FillOutcome}).
 *
 * @example
 * ```ts
 * const fill = cache.fill('image-1', { fetch: async ({ signal }) => ({ source: await open('image-1', signal), size, checksum }) });
 * const announced = await fill.whenAnnounced();           // { expectedSize, checksum, cache }, or undefined if it ended first
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
  readonly #expectedSize: number | undefined;
  readonly #signal: AbortSignal | undefined;
  #announcement: FillAnnouncement | undefined;
  readonly #announced: Promise<FillAnnouncement | undefined>;
  #resolveAnnounced: ((announcement: FillAnnouncement | undefined) => void) | undefined;
  /** Why the fill was stopped early (abandoned or aborted), once it was. */
  #stopped: Error | undefined;
  /** Resolves with {@link #stopped} when the fill is stopped early. */
  readonly #whenStopped: Promise<Error>;
  #resolveStopped!: (error: Error) => void;
  #role: FillRole = 'pending';
  #ownerPid: number | undefined;
  readonly #state: MutableState = { generation: 0, file: undefined, available: 0, outcome: undefined, tail: undefined };
  /** This process's open readers (their positions pace a pass-through). */
  readonly #readerSet = new Set<GrowingFileReader>();
  /** The bytes of a pass-through not yet passed by every reader, in order, from {@link #tailBase}. */
  #tailChunks: Buffer[] = [];
  #tailBase = 0;
  #pulse: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #readers = 0;
  #lock: WriteLock | undefined;
  #attempt: Attempt | undefined;
  #abandonTimer: NodeJS.Timeout | undefined;
  readonly #file: GrowingFile;
  readonly #space: WriteSpace | undefined;
  /** The origin's response of a bypassed fill, until {@link takeSource} takes it. */
  #bypassed: FetchedFill | undefined;

  /**
   * Starts the fill at once. Applications call `ImageCache.fill()`, which
   * validates the id and shares one fill per id in the process.
   * Throws `InvalidImageIdError` / `InvalidArgumentError` for bad arguments.
   * @param space - @internal the cache's space policy (reservations, ENOSPC).
   */
  constructor(driver: CacheDriver, id: ImageId, options: FillOptions, space?: WriteSpace) {
    super();
    assertImageId(id);
    if (typeof options?.fetch !== 'function') {
      throw new InvalidArgumentError('fill needs { fetch: ({ signal }) => ImageSource | Promise<ImageSource> }');
    }
    const { expectedSize, abandonAfter, signal } = options;
    if (expectedSize !== undefined && (!Number.isSafeInteger(expectedSize) || expectedSize < 0)) {
      throw new InvalidArgumentError(`expectedSize must be an integer >= 0, got ${String(expectedSize)}`);
    }
    if (abandonAfter !== undefined && (typeof abandonAfter !== 'number' || !Number.isFinite(abandonAfter) || abandonAfter < 0)) {
      throw new InvalidArgumentError(`abandonAfter must be a finite number of seconds >= 0, got ${String(abandonAfter)}`);
    }
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('signal must be an AbortSignal');
    this.imageId = id;
    this.#driver = driver;
    this.#fetch = options.fetch;
    this.#expected = normalizeChecksum(options.checksum);
    this.#expectedSize = expectedSize;
    this.#abandonAfter = abandonAfter;
    this.#signal = signal;
    this.#space = space;
    this.#announced = new Promise((resolve) => (this.#resolveAnnounced = resolve));
    this.#whenStopped = new Promise((resolve) => (this.#resolveStopped = resolve));
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
      tail: (position, max) => fill.#tailRead(position, max),
      consumed: () => fill.#tailConsumed(),
      readerCount: (delta, reader) => {
        fill.#readers += delta;
        if (delta > 0) fill.#readerSet.add(reader);
        else fill.#readerSet.delete(reader);
        if (fill.#state.tail !== undefined) fill.#update({});
        fill.#checkAbandon();
        fill.emit('readers', fill.#readers);
      },
    };
    this.done = this.#run()
      .catch((error: unknown): FillOutcome => ({ status: 'failed', error: error as Error }))
      .then((outcome) => {
        this.#finish(outcome);
        return outcome;
      });
    if (signal !== undefined) {
      if (signal.aborted) this.abort(signal.reason);
      else {
        const onAbort = () => this.abort(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
        void this.done.then(() => signal.removeEventListener('abort', onAbort));
      }
    }
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

  /**
   * The expected size: announced (see {@link announcement}), else given in
   * the options; the size once committed; `undefined` when unknown.
   */
  get expectedSize(): number | undefined {
    const outcome = this.#state.outcome;
    if (outcome?.status === 'committed' || outcome?.status === 'uncached') return outcome.size;
    return this.#announcement?.expectedSize ?? this.#expectedSize;
  }

  /**
   * The digest the fill verifies and stores, as stored (`sha256:<hex>`, bare
   * md5 hex): announced (see {@link announcement}), else given in the
   * options; `undefined` when none is known.
   */
  get checksum(): string | undefined {
    if (this.#announcement !== undefined) return this.#announcement.checksum;
    return this.#expected === undefined ? undefined : formatChecksum(this.#expected);
  }

  /**
   * What the origin announced, once it answered (the owner's announcement,
   * in a follower); `undefined` before, and for an entry that was already
   * cached. Also emitted as the `announced` event.
   */
  get announcement(): FillAnnouncement | undefined {
    return this.#announcement;
  }

  /** How the fill ended (what `done` resolves with), or `undefined` while it runs. */
  get outcome(): FillOutcome | undefined {
    return this.#outcome;
  }

  /**
   * Resolves with the {@link announcement} as soon as the origin has
   * answered (or the owner announced it), or with `undefined` when the fill
   * ended first: it failed before the origin answered (see `done` for the
   * error), or the entry was cached already or committed by a writer that
   * was followed from its end. Never rejects. A server waits for it before
   * it sends its status line: the size and digest are known then.
   */
  whenAnnounced(): Promise<FillAnnouncement | undefined> {
    return this.#announced;
  }

  /**
   * Stops the fill early: the fetch is aborted (the signal given to `fetch()`
   * aborts), the partial file is rolled back to `invalid/` (never active),
   * and `done` resolves `{ status: 'failed', error: reason }` once it is
   * there (`reason` when it is an `Error`, else a `FillAbortedError`).
   * Readers that need bytes the fill did not write get that error. A
   * follower stops following (the owner's fill goes on); an owner's
   * followers in other processes take over. No effect once the fill has
   * ended or has begun to commit (it then commits).
   */
  abort(reason?: unknown): void {
    if (this.#outcome !== undefined) return;
    this.#stop(reason instanceof Error ? reason : new FillAbortedError(this.imageId, reason));
  }

  /**
   * For a fill that ended `bypassed`: the origin's response it opened and did
   * not read (with what the origin announced), to stream to a client
   * uncached. The first caller gets it; later ones get `undefined` (and open
   * the origin themselves). Take it when `done` resolves: a source nobody
   * took is destroyed on the next turn of the event loop.
   */
  takeSource(): FetchedFill | undefined {
    const source = this.#bypassed;
    this.#bypassed = undefined;
    return source;
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

  #outcome: FillOutcome | undefined;

  #finish(outcome: FillOutcome): void {
    if (this.#state.outcome !== undefined) return;
    clearTimeout(this.#abandonTimer);
    this.#abandonTimer = undefined;
    this.#outcome = outcome;
    this.#resolveAnnounced?.(undefined);
    this.#resolveAnnounced = undefined;
    this.#update({
      outcome:
        outcome.status === 'failed'
          ? { status: 'failed', error: outcome.error }
          : outcome.status === 'bypassed'
            ? outcome.streamed !== undefined
              ? { status: 'passed', size: outcome.streamed, error: cacheFull(this.imageId, outcome.reason) }
              : { status: 'failed', error: cacheFull(this.imageId, outcome.reason) }
            : { status: outcome.status, size: outcome.size },
    });
    if (this.#bypassed !== undefined) {
      setImmediate(() => {
        const untaken = this.takeSource();
        if (untaken !== undefined) discardSource(untaken.source);
      });
    }
    this.emit('done', outcome);
  }

  /** Publishes what the origin (or the owner) announced. */
  #announce(announcement: FillAnnouncement): void {
    this.#announcement = announcement;
    this.#resolveAnnounced?.(announcement);
    this.#resolveAnnounced = undefined;
    this.emit('announced', announcement);
  }

  /** Stops the fill with `error` (aborted or abandoned), unless its commit has begun. */
  #stop(error: Error): void {
    if (this.#stopped !== undefined || this.#attempt?.ending === true) return;
    this.#stopped = error;
    this.#resolveStopped(error);
    if (this.#attempt !== undefined) this.#attempt.fail(error, false);
    else this.#abortFetch?.(error);
  }

  /** The failed outcome of a fill stopped early. */
  #stoppedOutcome(): FillOutcome {
    return { status: 'failed', error: this.#stopped as Error };
  }

  // ---- the fill ------------------------------------------------------------------------

  async #run(): Promise<FillOutcome> {
    // Once deferred: a fill aborted in its constructor (an aborted signal) has its `done` set up first.
    await Promise.resolve();
    if (this.#stopped !== undefined) return this.#stoppedOutcome();
    const name = await lockNameFor(this.#driver, this.imageId);
    for (;;) {
      if (this.#stopped !== undefined) return this.#stoppedOutcome();
      const cached = await this.#statActive();
      if (cached !== undefined) {
        this.#newAttempt('cached');
        this.#update({ file: cached.key });
        return { status: 'committed', size: cached.size, checksum: undefined, via: 'cached' };
      }
      if (this.#stopped !== undefined) return this.#stoppedOutcome();
      const lock = await WriteLock.acquire(this.#driver, this.imageId);
      if (lock !== undefined) return this.#own(lock);
      const link = await FollowerLink.connect(name);
      if (link === undefined) continue; // the owner just finished or died: look again
      if (this.#stopped !== undefined) {
        link.close();
        return this.#stoppedOutcome();
      }
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
      // Aborted: stop following (the owner goes on without this process).
      void this.#whenStopped.then(() => {
        if (outcome !== undefined) return;
        outcome = this.#stoppedOutcome();
        link.close();
        resolve(outcome);
      });
      link.on('message', (message: FillMessage) => {
        if (outcome !== undefined) return;
        if ('hello' in message) {
          this.#ownerPid = message.pid;
          // An owner has a file only once its origin answered: a hello with a file is announced (whatever the owner's version).
          if (message.announced === 1 || message.file !== null) this.#announce(announcementOf(message));
          if (message.file !== null) this.#update({ file: message.file });
          this.#progress(message.written);
        } else if ('announced' in message) {
          this.#announce(announcementOf(message));
        } else if ('committed' in message) {
          outcome = { status: 'committed', size: message.committed, checksum: message.checksum, via: 'followed' };
        } else if ('uncached' in message) {
          this.#progress(message.uncached);
          outcome = { status: 'uncached', size: message.uncached, checksum: message.checksum, via: 'followed' };
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
      if (result.ok === 'bypassed') {
        // Not cached here: followers look again, and decide for themselves.
        lock.release();
        return result.streamed === undefined
          ? { status: 'bypassed', reason: result.reason, size: result.size, via: 'fetched' }
          : { status: 'bypassed', reason: result.reason, size: result.size, streamed: result.streamed, via: 'fetched' };
      }
      if (result.ok && !result.cached) {
        lock.uncached(result.size, result.checksum);
        return { status: 'uncached', size: result.size, checksum: result.checksum, via: 'fetched' };
      }
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
      this.#space?.release(this.imageId);
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
      this.#stop(new FillAbandonedError(this.imageId, seconds));
    }, seconds * 1000);
  }

  /** Aborts the signal given to `fetch()` while there is no writer yet. */
  #abortFetch: ((error: Error) => void) | undefined;

  /**
   * Calls `fetch()` and reads what the origin announced. Stopping the fill
   * meanwhile aborts the fetch's signal and does not wait for a fetch that
   * ignores it (a source it resolves later is discarded).
   */
  async #fetchSource(signal: AbortSignal): Promise<{ ok: true; fetched: FetchedFill } | { ok: false; error: Error; source: boolean }> {
    const fetching = (async () => unwrapFetched(await this.#fetch({ signal })))();
    const stopped = this.#whenStopped.then((error) => {
      void fetching.then((late) => discardSource(late.source), () => undefined);
      return { ok: false as const, error, source: false };
    });
    try {
      const fetched = await Promise.race([fetching, stopped]);
      if ('ok' in fetched) return fetched;
      assertSource(fetched.source, 'fetch() must return');
      return { ok: true, fetched };
    } catch (error) {
      if (this.#stopped !== undefined) return { ok: false, error: this.#stopped, source: false };
      return { ok: false, error: error as Error, source: true };
    }
  }

  async #fetchAndWrite(lock: WriteLock): Promise<AttemptResult> {
    if (this.#stopped !== undefined) return { ok: false, error: this.#stopped, source: false };
    const controller = new AbortController();
    const id = this.imageId;
    this.#abortFetch = (error) => controller.abort(error);
    const result = await this.#fetchSource(controller.signal);
    this.#abortFetch = undefined;
    if (!result.ok) return result;
    const { source } = result.fetched;
    if (this.#stopped !== undefined) {
      discardSource(source);
      return { ok: false, error: this.#stopped, source: false };
    }
    // What the origin announced: the options win; a malformed announcement is the origin's failure.
    let announced: { expected: NormalizedChecksum | undefined; expectedSize: number | undefined; cache: boolean };
    try {
      announced = readAnnouncement(result.fetched, this.#expected, this.#expectedSize);
    } catch (error) {
      discardSource(source);
      return { ok: false, error: error as Error, source: true };
    }
    // The space policy (ADR 0006): the whole size reserved before the first byte, or the reason not to cache.
    const bypass = await this.#space?.admit(id, announced.expectedSize);
    if (this.#stopped !== undefined) {
      discardSource(source);
      return { ok: false, error: this.#stopped, source: false };
    }
    if (bypass !== undefined) {
      this.#bypassed = result.fetched;
      return { ok: 'bypassed', reason: bypass, size: announced.expectedSize };
    }
    const checksum = announced.expected === undefined ? undefined : formatChecksum(announced.expected);
    const announcement: FillAnnouncement = { expectedSize: announced.expectedSize, checksum, cache: announced.cache };
    lock.announce(toLockAnnouncement(announcement));
    this.#announce(announcement);
    let writer: CacheWriter;
    try {
      writer = await this.#driver.openForWrite(id);
    } catch (error) {
      discardSource(source);
      return { ok: false, error: error as Error, source: false };
    }
    const iterable: AsyncIterable<unknown> = typeof source === 'string' ? createReadStream(source, { highWaterMark: 1024 * 1024 }) : source;
    const iterator = iterable[Symbol.asyncIterator]();
    const hash = announced.expected === undefined ? undefined : new ParallelHash(announced.expected.algorithm);
    let settle!: (result: AttemptResult) => void;
    const settled = new Promise<AttemptResult>((resolve) => (settle = resolve));
    const attempt: Attempt = {
      writer,
      expected: announced.expected,
      expectedSize: announced.expectedSize,
      cache: announced.cache,
      ending: false,
      passing: false,
      failure: undefined,
      fail: (error, fromSource) => {
        if (attempt.failure !== undefined) return;
        attempt.failure = { error, source: fromSource };
        hash?.dispose();
        controller.abort(error);
        if (iterable instanceof Readable) iterable.destroy();
        else void Promise.resolve(iterator.return?.()).catch(() => undefined);
        // The rollback (incomplete/ -> invalid/) is done when the writer closes. After a failure of the source (a
        // digest or length mismatch, a cut) the copy kept in invalid/ holds every byte received, for inspection;
        // after a failure of the cache, or an abort, the writer is destroyed at once.
        let rolledBack: Promise<void>;
        if (fromSource) rolledBack = rollBackWhole(writer, error);
        else {
          if (!writer.destroyed) writer.destroy(error);
          rolledBack = whenClosed(writer);
        }
        void rolledBack.then(() => settle({ ok: false, error, source: fromSource }));
      },
    };
    this.#attempt = attempt;
    const space = this.#space;
    if (space !== undefined && typeof writer.setNoSpaceHandler === 'function') {
      // ENOSPC mid-fill: evict and retry once when the rest of a known size (else one write buffer) can be made room for.
      const expectedSize = announced.expectedSize;
      writer.setNoSpaceHandler((unwritten) =>
        space.noSpace(id, noSpaceNeed(expectedSize === undefined ? undefined : expectedSize - writer.bytesWritten, unwritten)),
      );
    }
    writer.on('error', (error: Error) => {
      // An uncached file is discarded with an error as the rollback's reason: that is no failure.
      if (!(attempt.ending && !attempt.cache) && !attempt.passing) attempt.fail(error, false);
    });
    if (this.#stopped !== undefined) {
      attempt.fail(this.#stopped, false);
      return settled;
    }
    try {
      const key = await lock.attach(writer, this.#driver.getImageFilepath(id, 'incomplete'), (written) => this.#progress(written));
      this.#update({ file: key });
    } catch (error) {
      attempt.fail(error as Error, false);
      return settled;
    }
    void this.#pump(attempt, iterator, hash, lock).then((size) => {
      if (size === undefined || attempt.failure !== undefined) return;
      if (typeof size === 'object') {
        settle({ ok: 'bypassed', reason: size.reason, size: undefined, streamed: size.streamed });
        return;
      }
      this.#progress(size);
      settle({ ok: true, size, checksum, cached: attempt.cache });
    });
    return settled;
  }

  /**
   * Whether the origin's bytes match the digest it announced, once it ended:
   * false when the attempt failed meanwhile, or on a mismatch (which fails
   * the attempt with a {@link ChecksumMismatchError}).
   */
  async #digestMatches(attempt: Attempt, hash: ParallelHash, expected: NormalizedChecksum): Promise<boolean> {
    const actual = await hash.digest();
    if (attempt.failure !== undefined) return false;
    if (actual === expected.digest) return true;
    attempt.fail(new ChecksumMismatchError(this.imageId, expected.algorithm, expected.digest, actual), true);
    return false;
  }

  /** Copies the source into the writer, verifies and commits. Resolves the size once committed, `undefined` after a failure. */
  async #pump(
    attempt: Attempt,
    iterator: AsyncIterator<unknown>,
    hash: ParallelHash | undefined,
    lock: WriteLock,
  ): Promise<number | { reason: BypassReason; streamed: number } | undefined> {
    const { writer, expected, expectedSize } = attempt;
    const id = this.imageId;
    const space = this.#space;
    let reserved = space?.reservedFor(id) ?? Number.POSITIVE_INFINITY;
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
        if (size > reserved && space !== undefined) {
          // Unknown size: the reservation grows ahead of the bytes, evicting as it goes.
          const full = await space.grow(id, size);
          if (attempt.failure !== undefined) return undefined;
          if (full !== undefined) {
            if (expectedSize === undefined) {
              // Outgrew the budget: stop caching, but the readers still get every byte (ADR 0006).
              return await this.#passThrough(attempt, iterator, hash, lock, full, chunk, size - chunk.length);
            }
            attempt.fail(full, false);
            return undefined;
          }
          reserved = space.reservedFor(id);
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
      if (hash !== undefined && expected !== undefined) {
        if (!(await this.#digestMatches(attempt, hash, expected))) return undefined;
        writer.setChecksum(formatChecksum(expected));
      }
      if (attempt.failure !== undefined) return undefined;
      if (!attempt.cache) {
        // Not to be kept: once every byte is in the file (readers read it to the end), roll it back to invalid/.
        await whenInFile(writer, size);
        if (attempt.failure !== undefined) return undefined;
        attempt.ending = true;
        writer.destroy(new Error('not cached: the origin response was not to be cached (cache: false)'));
        await whenClosed(writer);
        return size;
      }
      attempt.ending = true;
      writer.end();
      await finished(writer);
      return attempt.failure === undefined ? size : undefined;
    } catch (error) {
      // The hash worker, the write or the commit failed: a failure of the cache, not of the origin.
      attempt.fail(error as Error, false);
      return undefined;
    }
  }

  // ---- passing through -------------------------------------------------------------------

  /** Up to `max` tail bytes from `position`; `undefined` when they were dropped already. */
  #tailRead(position: number, max: number): Buffer | undefined {
    if (position < this.#tailBase) return undefined;
    let offset = this.#tailBase;
    for (const chunk of this.#tailChunks) {
      if (position < offset + chunk.length) {
        const from = position - offset;
        return chunk.subarray(from, from + Math.max(1, Math.min(max, chunk.length - from)));
      }
      offset += chunk.length;
    }
    return undefined;
  }

  /** The lowest position of this process's readers that still need bytes (`Infinity` without any). */
  #slowestReader(): number {
    let min = Number.POSITIVE_INFINITY;
    for (const reader of this.#readerSet) if (!reader.satisfied && reader.position < min) min = reader.position;
    return min;
  }

  /** Drops the tail bytes every reader has passed, and wakes the pump waiting for room. */
  #tailConsumed(): void {
    const slowest = this.#slowestReader();
    while (this.#tailChunks.length > 0) {
      const first = this.#tailChunks[0] as Buffer;
      if (this.#tailBase + first.length > slowest) break;
      this.#tailChunks.shift();
      this.#tailBase += first.length;
    }
    this.#update({});
  }

  /**
   * The rest of an image of unknown size that outgrew the budget (ADR 0006):
   * the partial file (`written` bytes) is rolled back to `invalid/` whole and
   * its reservation released, the lock given back and the fill forgotten by
   * `ImageCache.fill` (later requests go to the origin), while the readers of
   * now get the rest of the origin's bytes from memory, paced by the slowest
   * (at most {@link PASS_THROUGH_BUFFER} ahead of it). Once the origin has
   * ended (and its digest, when one was announced, matched) and every reader
   * has passed the file, the file is deleted. Resolves the bytes streamed in
   * all, or `undefined` after a failure (of the origin, the digest, or a stop).
   */
  async #passThrough(
    attempt: Attempt,
    iterator: AsyncIterator<unknown>,
    hash: ParallelHash | undefined,
    lock: WriteLock,
    full: CacheFullError,
    first: Buffer,
    written: number,
  ): Promise<{ reason: BypassReason; streamed: number } | undefined> {
    const { writer, expected } = attempt;
    const id = this.imageId;
    attempt.passing = true;
    this.#tailBase = written;
    this.#tailChunks = [];
    this.#update({ tail: { start: written, end: written, error: full } });
    this.emit('passThrough', full.reason);
    // The partial file goes to invalid/ whole (readers behind it keep reading it there), its reservation with it.
    await rollBackWhole(writer, full).catch(() => undefined);
    this.#space?.release(id);
    lock.release();
    if (attempt.failure !== undefined) return undefined;
    const inFile = typeof writer.bytesInFile === 'number' ? writer.bytesInFile : written;
    if (inFile < written) {
      // The rollback could not keep every byte (the disk failed): the readers behind cannot be served.
      attempt.fail(full, false);
      return undefined;
    }
    this.#progress(written);
    let size = written;
    let chunk: Buffer | undefined = first;
    for (;;) {
      if (chunk === undefined) {
        let step: IteratorResult<unknown>;
        try {
          step = await iterator.next();
        } catch (error) {
          attempt.fail(error as Error, true);
          return undefined;
        }
        if (attempt.failure !== undefined) return undefined;
        if (step.done === true) break;
        chunk = toBuffer(step.value);
      }
      const hashing = hash?.update(chunk);
      if (hashing !== undefined) await hashing;
      if (attempt.failure !== undefined) return undefined;
      if (this.#slowestReader() === Number.POSITIVE_INFINITY) {
        // Nobody to pass it to: stop reading the origin.
        attempt.fail(full, false);
        return undefined;
      }
      if (chunk.length > 0) {
        this.#tailChunks.push(chunk);
        size += chunk.length;
        this.#update({ tail: { start: written, end: size, error: full } });
      }
      chunk = undefined;
      // Paced by the slowest reader: at most PASS_THROUGH_BUFFER ahead of it.
      while (attempt.failure === undefined && size - this.#slowestReader() > PASS_THROUGH_BUFFER) await this.#changed();
      if (attempt.failure !== undefined) return undefined;
    }
    if (hash !== undefined && expected !== undefined && !(await this.#digestMatches(attempt, hash, expected))) return undefined;
    // Deleted once every reader has passed the file (a reader behind may not have opened it yet).
    while (attempt.failure === undefined && this.#slowestReader() < written) await this.#changed();
    if (attempt.failure !== undefined) return undefined;
    attempt.ending = true;
    await this.#removeRolledBack();
    return { reason: full.reason, streamed: size };
  }

  /** Deletes this attempt's file from `invalid/` when it is still there (not replaced since). */
  async #removeRolledBack(): Promise<void> {
    const path = this.#driver.getImageFilepath(this.imageId, 'invalid');
    try {
      const info = await lstat(path, { bigint: true });
      if (fileKey(info) === this.#state.file) await unlink(path);
    } catch {
      // Gone already (evicted, cleaned): nothing to delete.
    }
  }
}

function discardSource(source: FillSource): void {
  if (source instanceof Readable) source.destroy();
}

/** A fetch result as a {@link FetchedFill} (a bare source is one with nothing announced). */
function unwrapFetched(fetched: FillSource | FetchedFill): FetchedFill {
  const isFetched = typeof fetched === 'object' && fetched !== null && !(Symbol.asyncIterator in fetched) && 'source' in fetched;
  return isFetched ? fetched : { source: fetched };
}

/** Validates what the origin announced and merges it with the options (which win). */
function readAnnouncement(
  fetched: FetchedFill,
  expected: NormalizedChecksum | undefined,
  expectedSize: number | undefined,
): { expected: NormalizedChecksum | undefined; expectedSize: number | undefined; cache: boolean } {
  const { size, cache } = fetched;
  if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) {
    throw new InvalidArgumentError(`fetch() announced a size that is not an integer >= 0: ${String(size)}`);
  }
  if (cache !== undefined && typeof cache !== 'boolean') throw new InvalidArgumentError(`fetch() announced cache: ${String(cache)}, not a boolean`);
  return { expected: expected ?? normalizeChecksum(fetched.checksum), expectedSize: expectedSize ?? size, cache: cache !== false };
}

/** An announcement in the lock protocol's shape. */
function toLockAnnouncement(announcement: FillAnnouncement): Announcement {
  const message: Announcement = {};
  if (announcement.expectedSize !== undefined) message.expectedSize = announcement.expectedSize;
  if (announcement.checksum !== undefined) message.checksum = announcement.checksum;
  if (!announcement.cache) message.cache = false;
  return message;
}

/** The announcement a follower read from the owner. */
function announcementOf(message: Announcement): FillAnnouncement {
  return { expectedSize: message.expectedSize, checksum: message.checksum, cache: message.cache !== false };
}

/** Resolves once the writer reports `size` bytes in the file (or it closes); at once for a writer that does not report. */
async function whenInFile(writer: CacheWriter, size: number): Promise<void> {
  if (typeof writer.bytesInFile !== 'number') return;
  while ((writer.bytesInFile as number) < size && !writer.destroyed) {
    await new Promise<void>((resolve) => {
      const done = () => {
        writer.off('progress', done);
        writer.off('close', done);
        resolve();
      };
      writer.on('progress', done);
      writer.on('close', done);
    });
  }
}
