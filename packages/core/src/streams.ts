import type { FileHandle } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { storageError } from './cache-dir.js';
import type { CacheWriter } from './driver.js';
import type { ImageId } from './image-id.js';

/** How a {@link CacheWriteStream} ends: the driver supplies both halves. */
export interface WriteLifecycle {
  /** Makes the written file the active entry; called once, after the last byte. */
  commit(handle: FileHandle, checksum: string | undefined): Promise<void>;
  /** Moves the partial file out of the way; called once when the write fails or is aborted before commit. */
  rollback(handle: FileHandle, reason: Error): Promise<void>;
}

/** Default buffer of a cache writer (bytes): large writes, few syscalls. */
export const WRITE_HIGH_WATER_MARK = 1024 * 1024;

/**
 * Bytes a cache writer takes ahead of the disk (write-behind). A write is
 * acknowledged once it is queued, while fewer than this many bytes wait to be
 * written, so the producer (e.g. hashing the next chunk) runs while earlier
 * chunks are written. A plain `Writable` asks for more only once its whole
 * buffer has been written, which serializes the two.
 */
export const WRITE_BEHIND_BYTES = 4 * 1024 * 1024;

/** Positional writes a cache writer keeps in flight (libuv's pool has 4 threads by default). */
const WRITES_IN_FLIGHT = 2;

/**
 * Bytes after which a cache writer asks the kernel to start writing the file
 * back (an `fdatasync` in the background, one at a time), so the disk works
 * while the producer (hashing, the network) still runs, and the fsync before
 * the commit finds little left to do. Durability is unchanged: the commit
 * still fsyncs the whole file before the rename.
 */
export const EARLY_FLUSH_BYTES = 64 * 1024 * 1024;

/**
 * A `Writable` onto `incomplete/<id>`: finishing it commits, an error or
 * `destroy()` rolls back. Used by every driver through `DirectoryCacheDriver`.
 *
 * Writes are acknowledged as soon as they are queued (up to
 * {@link WRITE_BEHIND_BYTES} ahead of the disk); a chunk is referenced until
 * it has been written, so a caller must not reuse a chunk's memory after
 * writing it. A failed write destroys the stream with that error (through
 * the pending write callback when there is one); `_final` writes everything
 * queued before it commits, and a rollback waits for the writes in flight.
 */
export class CacheWriteStream extends Writable implements CacheWriter {
  readonly imageId: ImageId;
  #handle: FileHandle;
  #lifecycle: WriteLifecycle;
  #bytes = 0;
  #checksum: string | undefined;
  #settled = false;
  /** Chunks accepted and not yet handed to the filesystem. */
  #queue: Buffer[] = [];
  /** Bytes accepted and not yet written (queued plus in flight). */
  #unwritten = 0;
  /** File offset of the next write. */
  #position = 0;
  /** Writes started and not yet settled. */
  #inFlight = 0;
  #writes = new Set<Promise<void>>();
  /** The first write error; nothing is written after it. */
  #error: Error | undefined;
  /** A write callback held back until the queue has room again. */
  #blocked: ((error?: Error | null) => void) | undefined;
  /** `_final` is waiting for the queue: it reports a write error itself. */
  #finishing = false;
  /** Bytes written when the last early flush started. */
  #flushedAt = 0;
  #flushing = false;
  /** The unwritten start of each write in flight, in dispatch (= file) order. */
  #inFlightAt: { at: number }[] = [];
  /** Bytes from offset 0 that are in the file (every write below them has completed). */
  #inFile = 0;

  readonly #path: string;

  /**
   * @param path - the incomplete file, named in errors (a full disk becomes a `CacheStorageError` saying so).
   */
  constructor(imageId: ImageId, handle: FileHandle, lifecycle: WriteLifecycle, path: string) {
    super({ highWaterMark: WRITE_HIGH_WATER_MARK, decodeStrings: true });
    this.imageId = imageId;
    this.#path = path;
    this.#handle = handle;
    this.#lifecycle = lifecycle;
  }

  get bytesWritten(): number {
    return this.#bytes;
  }

  /**
   * Bytes from the start of the file whose writes have all completed: another
   * file descriptor on the same file reads exactly these bytes. Two writes
   * run at once and may finish out of order, so this can trail
   * `bytesWritten`. Each increase is announced by a `progress` event with the
   * new value, before the commit.
   */
  get bytesInFile(): number {
    return this.#inFile;
  }

  setChecksum(checksum: string): void {
    this.#checksum = checksum;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#accept([chunk], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.#accept(
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  #accept(buffers: Buffer[], callback: (error?: Error | null) => void): void {
    if (this.#error !== undefined) {
      callback(this.#error);
      return;
    }
    for (const buffer of buffers) {
      if (buffer.length === 0) continue;
      this.#queue.push(buffer);
      this.#unwritten += buffer.length;
    }
    this.#dispatch();
    // Acknowledged on the next turn of the event loop, not at once: the producer
    // then yields after every chunk, so finished writes are seen and the next
    // ones started while it runs, instead of only when it blocks.
    if (this.#unwritten < WRITE_BEHIND_BYTES) setImmediate(callback);
    else this.#blocked = callback;
  }

  /** Starts positional writes of the queued chunks, at most {@link WRITES_IN_FLIGHT} at a time. */
  #dispatch(): void {
    while (this.#queue.length > 0 && this.#inFlight < WRITES_IN_FLIGHT && this.#error === undefined && !this.destroyed) {
      const batch = this.#queue;
      this.#queue = [];
      let length = 0;
      for (const buffer of batch) length += buffer.length;
      const position = this.#position;
      this.#position += length;
      this.#inFlight++;
      const write = this.#writeAt(batch, position).then(
        () => this.#written(undefined),
        (error: Error) => this.#written(error),
      );
      this.#writes.add(write);
      void write.then(() => this.#writes.delete(write));
    }
  }

  #written(error: Error | undefined): void {
    this.#inFlight--;
    if (error !== undefined && this.#error === undefined) {
      this.#error = error;
      this.#queue = [];
    }
    this.#maybeFlushEarly();
    this.#dispatch();
    const blocked = this.#blocked;
    if (blocked !== undefined && (this.#error !== undefined || this.#unwritten < WRITE_BEHIND_BYTES)) {
      this.#blocked = undefined;
      blocked(this.#error);
    } else if (blocked === undefined && error !== undefined && !this.#finishing && !this.destroyed) {
      // No write callback is waiting to report it: fail the stream now, as a failed write callback would.
      this.destroy(error);
    }
  }

  /** Starts a background `fdatasync` once {@link EARLY_FLUSH_BYTES} more have been written. */
  #maybeFlushEarly(): void {
    if (EARLY_FLUSH_BYTES <= 0 || this.#flushing || this.#error !== undefined || this.destroyed) return;
    if (this.#bytes - this.#flushedAt < EARLY_FLUSH_BYTES) return;
    this.#flushedAt = this.#bytes;
    this.#flushing = true;
    const flush = this.#handle.datasync().then(
      () => {
        this.#flushing = false;
      },
      (error: unknown) => {
        this.#flushing = false;
        // A failed flush is a failed write: the commit's fsync would fail the same way.
        if (this.#error === undefined) this.#error = storageError('write', this.#path, error);
      },
    );
    this.#writes.add(flush);
    void flush.then(() => this.#writes.delete(flush));
  }

  /** Writes `buffers` at `position` in full (short writes are continued); failures become a `CacheStorageError`. */
  async #writeAt(buffers: Buffer[], position: number): Promise<void> {
    let pending = buffers;
    let at = position;
    const slot = { at };
    this.#inFlightAt.push(slot);
    try {
      while (pending.length > 0) {
        const { bytesWritten } = pending.length === 1
          ? await this.#handle.write(pending[0] as Buffer, 0, (pending[0] as Buffer).length, at)
          : await this.#handle.writev(pending, at);
        this.#bytes += bytesWritten;
        this.#unwritten -= bytesWritten;
        at += bytesWritten;
        slot.at = at;
        pending = skipBytes(pending, bytesWritten);
        if (pending.length === 0) this.#inFlightAt.splice(this.#inFlightAt.indexOf(slot), 1);
        this.#reportInFile();
      }
    } catch (error) {
      throw storageError('write', this.#path, error);
    }
  }

  /** Emits `progress` when the contiguous prefix in the file has grown (see {@link bytesInFile}). */
  #reportInFile(): void {
    const first = this.#inFlightAt[0];
    const inFile = first === undefined ? this.#position : first.at;
    if (inFile <= this.#inFile) return;
    this.#inFile = inFile;
    this.emit('progress', inFile);
  }

  /** Resolves when nothing is being written (the queue is empty or a write failed). */
  async #idle(): Promise<void> {
    while (this.#writes.size > 0) await Promise.all(this.#writes);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#finishing = true;
    this.#idle().then(() => {
      if (this.#error !== undefined) {
        callback(this.#error);
        return;
      }
      this.#settled = true;
      this.#lifecycle.commit(this.#handle, this.#checksum).then(() => callback(), callback);
    }, callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#settled) {
      callback(error);
      return;
    }
    this.#settled = true;
    const reason = error ?? new Error('incomplete fetch');
    // Chunks still queued are dropped, as a Writable drops its buffer; the writes in flight finish first.
    this.#idle()
      .then(() => {
        const blocked = this.#blocked;
        this.#blocked = undefined;
        blocked?.();
        return this.#lifecycle.rollback(this.#handle, reason);
      })
      .then(
        () => callback(error),
        (rollbackError: Error) => callback(error ?? rollbackError),
      );
  }
}

function skipBytes(buffers: Buffer[], count: number): Buffer[] {
  const rest: Buffer[] = [];
  let skip = count;
  for (const buffer of buffers) {
    if (skip >= buffer.length) {
      skip -= buffer.length;
      continue;
    }
    rest.push(skip > 0 ? buffer.subarray(skip) : buffer);
    skip = 0;
  }
  return rest;
}

/** Default read chunk of a cache reader (bytes). */
export const READ_CHUNK_SIZE = 256 * 1024;

/**
 * A `Readable` over an open active entry. When the last byte has been read,
 * `onComplete` runs (the driver records the hit) before `end` is emitted, so a
 * caller that awaited the read sees the hit. A failed or abandoned read never
 * calls it.
 */
export class CacheReadStream extends Readable {
  readonly imageId: ImageId;
  #handle: FileHandle;
  #onComplete: () => Promise<void>;
  #position = 0;
  #reading = false;
  readonly #size: number;

  /**
   * @param size - the entry's size when it was opened, if known. Buffers are
   *   then no larger than what is left (a 4 KiB entry is read into 4 KiB, not
   *   256 KiB), and the read ends after that many bytes without one more read
   *   to find the end of the file: an active entry never changes (a rewrite
   *   replaces the file by rename; this handle keeps the one it opened). A file
   *   that turns out shorter still ends at its end.
   */
  constructor(imageId: ImageId, handle: FileHandle, onComplete: () => Promise<void>, size?: number) {
    super({ highWaterMark: READ_CHUNK_SIZE });
    this.imageId = imageId;
    this.#handle = handle;
    this.#onComplete = onComplete;
    this.#size = size ?? Number.POSITIVE_INFINITY;
  }

  override _read(size: number): void {
    if (this.#reading) return;
    this.#reading = true;
    const left = this.#size - this.#position;
    if (left <= 0) {
      this.#reading = false;
      void this.#end();
      return;
    }
    const buffer = Buffer.allocUnsafe(Math.min(Math.max(size, READ_CHUNK_SIZE), left));
    this.#handle.read(buffer, 0, buffer.length, this.#position).then(
      async ({ bytesRead }) => {
        this.#reading = false;
        if (bytesRead === 0) {
          await this.#end();
          return;
        }
        this.#position += bytesRead;
        this.push(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead));
      },
      (error: Error) => this.destroy(error),
    );
  }

  /** The last byte has been read: record the hit, then end. */
  async #end(): Promise<void> {
    await this.#onComplete().catch(() => undefined);
    if (!this.destroyed) this.push(null);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#handle.close().then(
      () => callback(error),
      () => callback(error),
    );
  }
}
