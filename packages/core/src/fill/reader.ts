import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { isErrnoError, storageError } from '../cache-dir.js';
import { CacheStorageError, InvalidArgumentError } from '../errors.js';
import { READ_CHUNK_SIZE } from '../streams.js';
import { fileKey } from './owner.js';

/** How a fill stands, as its readers see it. */
export interface GrowthSnapshot {
  /** Changes when a new attempt (a takeover) writes a new file: readers drop the old one. */
  readonly generation: number;
  /** `dev:ino` of this attempt's file, once it exists (for an entry cached before the fill, of the active file). */
  readonly file: string | undefined;
  /** Bytes from offset 0 that are in this attempt's file. */
  readonly available: number;
  /**
   * Set once the fill has ended. `uncached`: every byte was written (and
   * verified) but the file was not committed: readers read this attempt's
   * file (now in `invalid/`) to `size` and end.
   */
  readonly outcome:
    | { readonly status: 'committed'; readonly size: number }
    | { readonly status: 'uncached'; readonly size: number }
    | { readonly status: 'failed'; readonly error: Error }
    | {
        /**
         * The fill stopped caching mid-way and passed the rest through
         * (ADR 0006): the image is `size` bytes, the first
         * {@link GrowthSnapshot.tail}`.start` in this attempt's file (now in
         * `invalid/`), the rest from the tail.
         */
        readonly status: 'passed';
        readonly size: number;
        /** Why it was not cached: a reader that needs bytes neither the file nor the tail holds fails with it. */
        readonly error: Error;
      }
    | undefined;
  /**
   * Set once the fill has stopped caching and passes the origin's bytes
   * through to its readers (an image of unknown size that outgrew the
   * budget): bytes from `start` on are served from memory ({@link GrowingFile.tail}),
   * up to `end` (exclusive) so far; below `start` from the file.
   */
  readonly tail?: { readonly start: number; readonly end: number; readonly error: Error } | undefined;
}

/** What a {@link GrowingFileReader} follows: a file being written, and notifications as it grows. */
export interface GrowingFile {
  /** The file when committed. */
  readonly activePath: string;
  /** Where the current attempt's file may be found, in order (it moves on commit or rollback). */
  readonly candidatePaths: readonly string[];
  /** The current state. */
  snapshot(): GrowthSnapshot;
  /** Resolves at the next change of the state (never rejects). */
  changed(): Promise<void>;
  /** A reader opened (`+1`) or closed (`-1`). */
  readerCount(delta: 1 | -1, reader: GrowingFileReader): void;
  /**
   * Up to `max` bytes of the tail from `position`, or `undefined` when the
   * tail no longer holds them (every reader of the time had passed them).
   */
  tail?(position: number, max: number): Buffer | undefined;
  /** A reader delivered tail bytes (the fill may let more in, and drop what every reader has passed). */
  consumed?(): void;
}

/** A byte range of a read: `end` is inclusive, as in HTTP ranges and `fs.createReadStream`. */
export interface ReadRange {
  /** First byte. @default 0 */
  start?: number;
  /** Last byte (inclusive). @default the last byte of the image */
  end?: number;
  /** Bytes the reader buffers at most, and reads at once. @default 256 KiB */
  highWaterMark?: number;
}

/**
 * A `Readable` over a file that is still being written: it delivers bytes as
 * soon as they are in the file, waits (on notifications, not by polling) when
 * it has caught up, ends at the committed size or at `end`, and fails with
 * the fill's error when it needs bytes the failed fill never wrote.
 *
 * It reads with its own file descriptor at its own pace: a slow or departed
 * reader never holds up the writer. It buffers at most `highWaterMark`
 * bytes (`readableLength` never exceeds `readableHighWaterMark`).
 */
export class GrowingFileReader extends Readable {
  readonly #file: GrowingFile;
  #position: number;
  /** Exclusive end of the range (`Infinity`: to the end of the image). */
  readonly #end: number;
  #handle: FileHandle | undefined;
  #handleGeneration = -1;
  #handleKey: string | undefined;
  #handleSize = 0;
  #reading = false;
  /** `_read` was called while a read ran. */
  #again = false;
  #counted = false;

  constructor(file: GrowingFile, range: ReadRange = {}) {
    const { start = 0, end, highWaterMark = READ_CHUNK_SIZE } = range;
    if (!Number.isSafeInteger(start) || start < 0) throw new InvalidArgumentError(`range start must be an integer >= 0, got ${String(start)}`);
    if (end !== undefined && (!Number.isSafeInteger(end) || end < -1)) {
      throw new InvalidArgumentError(`range end must be an integer >= 0 (inclusive), got ${String(end)}`);
    }
    if (!Number.isSafeInteger(highWaterMark) || highWaterMark < 1) {
      throw new InvalidArgumentError(`highWaterMark must be an integer >= 1, got ${String(highWaterMark)}`);
    }
    super({ highWaterMark });
    this.#file = file;
    this.#position = start;
    this.#end = end === undefined ? Number.POSITIVE_INFINITY : end + 1;
    file.readerCount(1, this);
    this.#counted = true;
  }

  /** The offset of the next byte this reader delivers. */
  get position(): number {
    return this.#position;
  }

  /** True once this reader needs no more bytes: it has reached the end of its range, ended, or was destroyed. */
  get satisfied(): boolean {
    return this.destroyed || this.readableEnded || this.#position >= this.#end;
  }

  override _read(): void {
    if (this.#reading) {
      // Asked again while a read runs (a consumer can ask from the push itself): read again once it is done.
      this.#again = true;
      return;
    }
    this.#reading = true;
    this.#again = false;
    this.#next().then(
      () => {
        this.#reading = false;
        if (this.#again && !this.destroyed && this.readableLength < this.readableHighWaterMark) this._read();
      },
      (error: Error) => {
        this.#reading = false;
        this.destroy(error);
      },
    );
  }

  /** Pushes one chunk, ends, fails, or waits for the fill until one of those is possible. */
  async #next(): Promise<void> {
    for (;;) {
      if (this.destroyed) return;
      // Taken before the state is looked at: a change after this point wakes the wait below.
      const changed = this.#file.changed();
      const state = this.#file.snapshot();
      if (this.#position >= this.#end) {
        this.push(null);
        return;
      }
      const tail = state.tail;
      if (tail !== undefined && this.#position >= tail.start) {
        // Passed through (not cached): the rest comes from memory, as the origin sends it.
        if (this.#position < tail.end) {
          await this.#closeHandle();
          const room = Math.max(1, this.readableHighWaterMark - this.readableLength);
          const bytes = this.#file.tail?.(this.#position, Math.min(room, this.#end - this.#position));
          if (bytes === undefined) {
            this.destroy(tail.error);
            return;
          }
          this.#position += bytes.length;
          this.push(bytes);
          this.#file.consumed?.();
          return;
        }
        if (state.outcome?.status === 'passed') {
          await this.#closeHandle();
          this.push(null);
          return;
        }
        if (state.outcome?.status === 'failed') {
          this.destroy(state.outcome.error);
          return;
        }
        await changed;
        continue;
      }
      let limit: number;
      if (state.outcome?.status === 'committed') {
        if (!(await this.#openCommitted(state))) return;
        limit = Math.min(this.#end, this.#handleSize);
        if (this.#position >= limit) {
          await this.#closeHandle();
          this.push(null);
          return;
        }
      } else if (state.file !== undefined && this.#position < state.available) {
        if (!(await this.#openAttempt(state))) {
          if (this.destroyed) return;
          if (state.outcome?.status === 'failed') {
            // Rolled back and gone from invalid/ too (cleaned): the bytes cannot be read any more.
            this.destroy(state.outcome.error);
            return;
          }
          if (state.outcome?.status === 'uncached') {
            this.destroy(new CacheStorageError(`the uncached file of the fill is gone (cleaned or replaced in invalid/) at ${this.#position} bytes`));
            return;
          }
          if (state.tail !== undefined) {
            // Passed through: the partial file was rolled back and is gone; these bytes cannot be read any more.
            this.destroy(state.tail.error);
            return;
          }
          await changed; // the file moved (commit, rollback) between the notification and the open
          continue;
        }
        limit = Math.min(this.#end, state.available);
      } else if (state.outcome?.status === 'failed') {
        this.destroy(state.outcome.error);
        return;
      } else if (state.outcome?.status === 'uncached') {
        // Every byte of the image is below `available`: this reader is at the end of it.
        await this.#closeHandle();
        this.push(null);
        return;
      } else {
        await changed;
        continue;
      }
      await this.#readUpTo(limit, state.outcome?.status === 'committed');
      return;
    }
  }

  async #readUpTo(limit: number, committed: boolean): Promise<void> {
    const room = Math.max(1, this.readableHighWaterMark - this.readableLength);
    const length = Math.min(limit - this.#position, room);
    const buffer = Buffer.allocUnsafe(length);
    const handle = this.#handle as FileHandle;
    const { bytesRead } = await handle.read(buffer, 0, length, this.#position);
    if (this.destroyed) return;
    if (bytesRead === 0) {
      if (committed) {
        this.push(null);
        return;
      }
      throw new CacheStorageError(`the file being filled ended at ${this.#position} bytes, below what its writer reported`);
    }
    this.#position += bytesRead;
    this.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead));
  }

  /** Keeps the descriptor of the current attempt's file, or opens it (false: not found under any name now). */
  async #openAttempt(state: GrowthSnapshot): Promise<boolean> {
    if (this.#handle !== undefined && this.#handleGeneration === state.generation) return true;
    await this.#closeHandle();
    for (const path of this.#file.candidatePaths) {
      const opened = await this.#tryOpen(path);
      if (opened === undefined) continue;
      if (opened.key === state.file) return this.#adopt(opened, state.generation);
      await opened.handle.close().catch(() => undefined);
    }
    return false;
  }

  /** Keeps the descriptor when it is the committed file, else opens the active file; sets the size limit. */
  async #openCommitted(state: GrowthSnapshot): Promise<boolean> {
    if (state.outcome?.status !== 'committed') return false;
    if (this.#handle !== undefined && this.#handleGeneration === state.generation && this.#handleKey === state.file) {
      this.#handleSize = state.outcome.size;
      return true;
    }
    await this.#closeHandle();
    const opened = await this.#tryOpen(this.#file.activePath);
    if (opened === undefined) {
      throw storageError('open', this.#file.activePath, Object.assign(new Error('the committed file is gone'), { code: 'ENOENT' }));
    }
    if (!this.#adopt(opened, state.generation)) return false;
    // Replaced since the commit (deleted and cached again): it is another complete file; read it to its own end.
    this.#handleSize = opened.key === state.file ? state.outcome.size : opened.size;
    return true;
  }

  /** Keeps an opened descriptor as this reader's (false, and closed, when the reader was destroyed meanwhile). */
  #adopt(opened: { handle: FileHandle; key: string }, generation: number): boolean {
    if (this.destroyed) {
      void opened.handle.close().catch(() => undefined);
      return false;
    }
    this.#handle = opened.handle;
    this.#handleKey = opened.key;
    this.#handleGeneration = generation;
    return true;
  }

  async #tryOpen(path: string): Promise<{ handle: FileHandle; key: string; size: number } | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    } catch (error) {
      if (isErrnoError(error, 'ENOENT', 'ENOTDIR', 'ELOOP')) return undefined;
      throw storageError('open', path, error);
    }
    try {
      const info = await handle.stat({ bigint: true });
      return { handle, key: fileKey(info), size: Number(info.size) };
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw storageError('stat', path, error);
    }
  }

  async #closeHandle(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    this.#handleGeneration = -1;
    this.#handleKey = undefined;
    await handle?.close().catch(() => undefined);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#counted) {
      this.#counted = false;
      this.#file.readerCount(-1, this);
    }
    this.#closeHandle().then(
      () => callback(error),
      () => callback(error),
    );
  }
}
