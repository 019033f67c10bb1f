import { close as closeFd, read as readFd, writeSync, writevSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { isErrnoError, SMALL_WRITE_BYTES, storageError } from './cache-dir.js';
import type { CacheWriter } from './driver.js';
import type { ImageId } from './image-id.js';
import type { WriteHandle } from './write-handle.js';

/**
 * How many times one write that hits ENOSPC may ask the space policy to make
 * room and go on (see `setNoSpaceHandler`). Each time the policy evicts what
 * that write still needs, or says no; writes in flight at once can take each
 * other's room, so one ask is not always enough.
 */
export const MAX_NO_SPACE_RETRIES = 4;

/** How a {@link CacheWriteStream} ends: the driver supplies both halves. */
export interface WriteLifecycle {
  /** Makes the written file the active entry; called once, after the last byte. */
  commit(handle: WriteHandle, checksum: string | undefined): Promise<void>;
  /** Moves the partial file out of the way; called once when the write fails or is aborted before commit. */
  rollback(handle: WriteHandle, reason: Error): Promise<void>;
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
  #handle: WriteHandle;
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
  /** Set by {@link abortOnEnd}: `_final` rolls back with it instead of committing. */
  #abortReason: Error | undefined;

  readonly #path: string;
  /** Asked, for a write that hits ENOSPC, whether to retry it (see {@link setNoSpaceHandler}). */
  #onNoSpace: ((unwritten: number) => Promise<boolean>) | undefined;

  /**
   * @param path - the incomplete file, named in errors (a full disk becomes a `CacheStorageError` saying so).
   */
  constructor(imageId: ImageId, handle: WriteHandle, lifecycle: WriteLifecycle, path: string) {
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

  /**
   * A write that fails with ENOSPC or EDQUOT asks `handler` (with the bytes
   * of that write still unwritten) whether to retry: true retries it from
   * where it stopped (asking again at a further ENOSPC, up to
   * {@link MAX_NO_SPACE_RETRIES} times); false fails the stream as before.
   */
  setNoSpaceHandler(handler: (unwritten: number) => Promise<boolean>): void {
    this.#onNoSpace = handler;
  }

  setChecksum(checksum: string): void {
    this.#checksum = checksum;
  }

  /**
   * Makes the end of the write a rollback: `end()` still writes every byte
   * accepted before it (the stream's own buffer and the write-behind queue,
   * which `destroy()` would drop), then the file moves to `invalid/` whole and
   * the stream fails with `reason`. For a write that failed verification
   * after its last byte: the copy kept for inspection is the whole download.
   */
  abortOnEnd(reason: Error): void {
    this.#abortReason = reason;
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
    let retries = 0;
    try {
      while (pending.length > 0) {
        let bytesWritten: number;
        try {
          const length = pending.reduce((sum, buffer) => sum + buffer.length, 0);
          if (at + length <= SMALL_WRITE_BYTES) {
            // Within the first SMALL_WRITE_BYTES of the file: a write into the page cache takes µs, less than a
            // threadpool round trip. Still reported after an await, as the asynchronous write is.
            bytesWritten = pending.length === 1 ? writeSync(this.#handle.fd, pending[0] as Buffer, 0, length, at) : writevSync(this.#handle.fd, pending, at);
            await undefined;
          } else {
            ({ bytesWritten } = pending.length === 1
              ? await this.#handle.write(pending[0] as Buffer, 0, (pending[0] as Buffer).length, at)
              : await this.#handle.writev(pending, at));
          }
        } catch (error) {
          // A full disk is the space policy's to handle: it may evict and let this write go on. Writes run
          // several at a time (write-behind): one's retry can take the room another's eviction made, so a
          // write may ask again, a few times, as long as the policy still finds something to free.
          const handler = this.#onNoSpace;
          if (retries >= MAX_NO_SPACE_RETRIES || handler === undefined || !isErrnoError(error, 'ENOSPC', 'EDQUOT')) throw error;
          retries++;
          const unwritten = pending.reduce((sum, buffer) => sum + buffer.length, 0);
          if (await handler(unwritten).catch(() => false)) continue;
          throw error;
        }
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
      const abort = this.#abortReason;
      if (abort !== undefined) {
        this.#lifecycle.rollback(this.#handle, abort).then(
          () => callback(abort),
          () => callback(abort),
        );
        return;
      }
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

/**
 * Default read chunk of a cache reader (bytes): large enough that a big
 * image is read and sent in few syscalls (a reader of a smaller range or
 * image allocates only what it reads).
 */
export const READ_CHUNK_SIZE = 1024 * 1024;

/** Reads larger than this take a {@link READ_CHUNK_SIZE} buffer from the pool (see {@link releaseReadChunk}). */
const POOLED_READ_BYTES = 64 * 1024;
/** Free read buffers kept for reuse (at most this many: 32 MiB). */
const POOL_LIMIT = 32;
const freeChunks: Buffer[] = [];
/** The memory of every buffer the pool has handed out, so only those come back. */
const pooledMemory = new WeakSet<ArrayBufferLike>();

function takeChunk(): Buffer {
  const chunk = freeChunks.pop();
  if (chunk !== undefined) return chunk;
  const fresh = Buffer.allocUnsafeSlow(READ_CHUNK_SIZE);
  pooledMemory.add(fresh.buffer);
  return fresh;
}

/**
 * A buffer for one read of `size` bytes: the first `size` bytes of a pooled
 * {@link READ_CHUNK_SIZE} buffer for a read of more than 64 KiB and at most
 * one chunk (see {@link releaseReadChunk}), else a new buffer.
 */
export function readBuffer(size: number): Buffer {
  return size > POOLED_READ_BYTES && size <= READ_CHUNK_SIZE ? takeChunk().subarray(0, size) : Buffer.allocUnsafe(size);
}

/**
 * Gives a chunk a {@link CacheReadStream} delivered back for reuse by later
 * reads, once the caller is done with it for good (e.g. when the HTTP
 * response that sent it has finished): a fresh 1 MiB buffer per read costs
 * more than the read itself (V8's collection of external memory). Chunks of
 * reads of up to 64 KiB, and anything the pool did not hand out, are
 * ignored. Never release a chunk something may still read: the next read
 * overwrites it.
 */
export function releaseReadChunk(chunk: Uint8Array): void {
  if (!pooledMemory.has(chunk.buffer) || freeChunks.length >= POOL_LIMIT) return;
  const whole = Buffer.from(chunk.buffer, 0, READ_CHUNK_SIZE);
  if (!freeChunks.some((free) => free.buffer === whole.buffer)) freeChunks.push(whole);
}

/** Options of a {@link CacheReadStream}. */
export interface CacheReadStreamOptions {
  /**
   * The entry's size when it was opened, if known. Buffers are then no larger
   * than what is left (a 4 KiB entry is read into 4 KiB, not 256 KiB), and the
   * read ends after the last byte without one more read to find the end of
   * the file: an active entry never changes (a rewrite replaces the file by
   * rename; the handle keeps the one it opened). A file that turns out
   * shorter still ends at its end, which is then the end of the image.
   */
  size?: number;
  /** First byte to read. @default 0 */
  start?: number;
  /** Last byte to read, inclusive (as `ReadOptions.end`). @default the last byte */
  end?: number;
  /**
   * Runs once when the reader has been handed the image's last byte (the
   * driver records the hit), never for a range that stops before it or a
   * read abandoned before it. Leave it out for a read that counts nothing.
   */
  onComplete?: () => Promise<void>;
  /**
   * The bytes of the range, already read (a small entry read whole when it
   * was opened, with its file already closed): the stream delivers them and
   * reads no file. Pass `null` as the handle with it.
   */
  data?: Buffer;
}

/**
 * A `Readable` over an open active entry, or a byte range of it.
 *
 * When the reader has been handed the image's last byte (the `data` event
 * that carries it), `onComplete` runs: the driver records the hit. `end` is
 * emitted only after it has finished, so a caller that awaited the read sees
 * the hit; a reader that destroys the stream right after the last byte (an
 * HTTP client closing on reaching `Content-Length`) still counts, and `close`
 * waits for the recording. A failed read, a read abandoned before the last
 * byte and a range that stops before it never call it.
 */
export class CacheReadStream extends Readable {
  readonly imageId: ImageId;
  /** First byte of the range. */
  readonly start: number;
  /** A `FileHandle`, or a file descriptor this stream owns (read with `fs.read`, closed with `fs.close`), or none (`data`). */
  #handle: FileHandle | number | null;
  /** Bytes of the range read at open (see {@link CacheReadStreamOptions.data}), until pushed. */
  #data: Buffer | undefined;
  #onComplete: (() => Promise<void>) | undefined;
  /** File offset of the next read. */
  #position: number;
  /** Offset just past the range: the end of the image when the range reaches it; Infinity until known. */
  #stop: number;
  /** The range ends at the end of the image (so delivering it all counts a hit). */
  #toEnd: boolean;
  /** Bytes handed to the reader (`data` events). */
  #delivered = 0;
  #reading = false;
  #finishing = false;
  /** The hit recording, once started. */
  #completion: Promise<void> | undefined;
  /** Wakes a finish that waits for the reader to take the last buffered bytes. */
  #wake: (() => void) | undefined;

  /**
   * @param handle - the open entry: a `FileHandle`, or a file descriptor the
   *   stream then owns and closes (read with callback `fs.read`, which costs
   *   less per chunk than a `FileHandle`'s promise), or `null` with `data`.
   * @param options - range, size and completion callback; see {@link CacheReadStreamOptions}.
   *   (The earlier form `(imageId, handle, onComplete, size?)` is still accepted.)
   */
  constructor(imageId: ImageId, handle: FileHandle | number | null, options?: CacheReadStreamOptions | (() => Promise<void>), size?: number) {
    super({ highWaterMark: READ_CHUNK_SIZE });
    const opts: CacheReadStreamOptions = typeof options === 'function' ? { onComplete: options, size } : (options ?? {});
    this.imageId = imageId;
    this.#handle = handle;
    this.#data = opts.data;
    if (handle === null && opts.data === undefined) throw new TypeError('CacheReadStream needs a file handle or the data of the range');
    this.#onComplete = opts.onComplete;
    this.start = opts.start ?? 0;
    this.#position = this.start;
    const known = opts.size ?? Number.POSITIVE_INFINITY;
    const last = opts.end === undefined ? Number.POSITIVE_INFINITY : opts.end + 1;
    this.#stop = Math.max(this.start, Math.min(known, last));
    // A range that starts past the last byte delivers nothing, so it is not a read of the last byte.
    this.#toEnd = (opts.end === undefined || last >= known) && !(known > 0 && this.start >= known);
  }

  /** Bytes handed to the reader so far. */
  get bytesDelivered(): number {
    return this.#delivered;
  }

  override _read(size: number): void {
    if (this.#reading || this.#finishing) return;
    const left = this.#stop - this.#position;
    if (left <= 0) {
      void this.#finish();
      return;
    }
    const data = this.#data;
    if (data !== undefined || this.#handle === null) {
      // Read at open: one push of what was read; a file that ended early ended the image there.
      this.#data = undefined;
      if (data === undefined || data.length === 0) {
        if (this.#position < this.#stop) {
          this.#stop = this.#position;
          this.#toEnd = this.start === 0;
        }
        void this.#finish();
        return;
      }
      this.#position += data.length;
      if (this.#position < this.#stop) {
        // The file was shorter than its size at open: its end is the end of the image (as a read of 0 bytes says below).
        this.#stop = this.#position;
        this.#toEnd = true;
      }
      this.push(data);
      return;
    }
    this.#reading = true;
    const handle = this.#handle;
    const wanted = Math.min(Math.max(size, READ_CHUNK_SIZE), left);
    // A read of more than 64 KiB reads into a pooled 1 MiB buffer (the chunk pushed is its first `bytesRead` bytes).
    const buffer = readBuffer(wanted);
    if (typeof handle === 'number') {
      readFd(handle, buffer, 0, buffer.length, this.#position, (error, bytesRead) => {
        if (error !== null) this.destroy(error);
        else this.#took(buffer, bytesRead);
      });
      return;
    }
    handle.read(buffer, 0, buffer.length, this.#position).then(
      ({ bytesRead }) => this.#took(buffer, bytesRead),
      (error: Error) => this.destroy(error),
    );
  }

  /** A read into `buffer` returned `bytesRead` bytes: pushes them, or ends at the end of the file. */
  #took(buffer: Buffer, bytesRead: number): void {
    this.#reading = false;
    if (this.destroyed) return;
    if (bytesRead === 0) {
      // The end of the file came first: that is the end of the image.
      this.#stop = this.#position;
      this.#toEnd = this.#position > this.start || this.start === 0;
      void this.#finish();
      return;
    }
    this.#position += bytesRead;
    this.push(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead));
  }

  // Every chunk reaches the reader through a `data` event (flowing mode, pipe
  // and `read()` alike), so counting them here counts what was delivered.
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'data') {
      this.#delivered += (args[0] as Buffer).length;
      // Started before the listeners run: one that destroys the stream at once still counts.
      this.#maybeComplete();
    }
    return super.emit(event, ...args);
  }

  /** Starts `onComplete` once the reader has every byte of a range that reaches the end of the image. */
  #maybeComplete(): void {
    if (this.#completion !== undefined || this.#onComplete === undefined || !this.#toEnd) return;
    if (this.#stop === Number.POSITIVE_INFINITY || this.#delivered < this.#stop - this.start) return;
    this.#completion = this.#onComplete().catch(() => undefined);
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Every byte of the range has been read from the file: once the hit (if any) is recorded, end. */
  async #finish(): Promise<void> {
    if (this.#finishing) return;
    this.#finishing = true;
    if (this.#onComplete !== undefined && this.#toEnd) {
      this.#maybeComplete(); // an empty image, or the reader already has everything
      // Otherwise the reader still has buffered bytes to take: the last one starts the recording.
      if (this.#completion === undefined) await new Promise<void>((resolve) => (this.#wake = resolve));
      await this.#completion;
    }
    if (!this.destroyed) this.push(null);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
    // A hit being recorded (the last byte was delivered) finishes before `close`.
    const recording = this.#completion ?? Promise.resolve();
    const handle = this.#handle;
    this.#handle = null;
    recording
      .then(() =>
        typeof handle === 'number' ? new Promise<void>((resolve) => closeFd(handle, () => resolve())) : handle?.close(),
      )
      .then(
        () => callback(error),
        () => callback(error),
      );
  }
}
