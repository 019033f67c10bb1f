import type { FileHandle } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
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
 * A `Writable` onto `incomplete/<id>`: finishing it commits, an error or
 * `destroy()` rolls back. Used by every driver through `DirectoryCacheDriver`.
 */
export class CacheWriteStream extends Writable implements CacheWriter {
  readonly imageId: ImageId;
  #handle: FileHandle;
  #lifecycle: WriteLifecycle;
  #bytes = 0;
  #checksum: string | undefined;
  #settled = false;

  constructor(imageId: ImageId, handle: FileHandle, lifecycle: WriteLifecycle) {
    super({ highWaterMark: WRITE_HIGH_WATER_MARK, decodeStrings: true });
    this.imageId = imageId;
    this.#handle = handle;
    this.#lifecycle = lifecycle;
  }

  get bytesWritten(): number {
    return this.#bytes;
  }

  setChecksum(checksum: string): void {
    this.#checksum = checksum;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#writeAll([chunk]).then(() => callback(), callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.#writeAll(chunks.map((c) => c.chunk)).then(() => callback(), callback);
  }

  async #writeAll(buffers: Buffer[]): Promise<void> {
    let pending = buffers.filter((b) => b.length > 0);
    while (pending.length > 0) {
      const { bytesWritten } = pending.length === 1
        ? await this.#handle.write(pending[0] as Buffer)
        : await this.#handle.writev(pending);
      this.#bytes += bytesWritten;
      pending = skipBytes(pending, bytesWritten);
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#settled = true;
    this.#lifecycle.commit(this.#handle, this.#checksum).then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#settled) {
      callback(error);
      return;
    }
    this.#settled = true;
    const reason = error ?? new Error('incomplete fetch');
    this.#lifecycle.rollback(this.#handle, reason).then(
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

  constructor(imageId: ImageId, handle: FileHandle, onComplete: () => Promise<void>) {
    super({ highWaterMark: READ_CHUNK_SIZE });
    this.imageId = imageId;
    this.#handle = handle;
    this.#onComplete = onComplete;
  }

  override _read(size: number): void {
    if (this.#reading) return;
    this.#reading = true;
    const buffer = Buffer.allocUnsafe(Math.max(size, READ_CHUNK_SIZE));
    this.#handle.read(buffer, 0, buffer.length, this.#position).then(
      async ({ bytesRead }) => {
        this.#reading = false;
        if (bytesRead === 0) {
          await this.#onComplete().catch(() => undefined);
          if (!this.destroyed) this.push(null);
          return;
        }
        this.#position += bytesRead;
        this.push(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead));
      },
      (error: Error) => this.destroy(error),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#handle.close().then(
      () => callback(error),
      () => callback(error),
    );
  }
}
