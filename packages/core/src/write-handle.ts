import { close, closeSync, fdatasync, fstat, fsync, write, writev, type BigIntStats } from 'node:fs';
import { promisify } from 'node:util';

const closeAsync = promisify(close);
const fdatasyncAsync = promisify(fdatasync);
const fsyncAsync = promisify(fsync);

/**
 * What a cache writer needs of the file it writes: a subset of `FileHandle`,
 * so a `FileHandle` passes as one.
 */
export interface WriteHandle {
  readonly fd: number;
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  writev(buffers: readonly NodeJS.ArrayBufferView[], position: number): Promise<{ bytesWritten: number }>;
  datasync(): Promise<void>;
  sync(): Promise<void>;
  stat(options: { bigint: true }): Promise<BigIntStats>;
  close(): Promise<void>;
}

/**
 * A {@link WriteHandle} on a descriptor opened with a synchronous `open`
 * (Node has no `FileHandle` for a descriptor it did not open itself). The
 * writes and fsyncs run on the threadpool as a `FileHandle`'s do;
 * {@link closeNow} closes on the event loop (a small file's close: see
 * `SMALL_WRITE_BYTES`). Closing twice is a no-op, so every path may close.
 */
export class FdHandle implements WriteHandle {
  #fd: number;

  constructor(fd: number) {
    this.#fd = fd;
  }

  /** The descriptor; -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  write(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> {
    return new Promise((resolve, reject) => {
      write(this.#open(), buffer, offset, length, position, (error, bytesWritten) => (error ? reject(error) : resolve({ bytesWritten })));
    });
  }

  writev(buffers: readonly NodeJS.ArrayBufferView[], position: number): Promise<{ bytesWritten: number }> {
    return new Promise((resolve, reject) => {
      writev(this.#open(), buffers, position, (error, bytesWritten) => (error ? reject(error) : resolve({ bytesWritten })));
    });
  }

  async datasync(): Promise<void> {
    await fdatasyncAsync(this.#open());
  }

  async sync(): Promise<void> {
    await fsyncAsync(this.#open());
  }

  stat(_options: { bigint: true }): Promise<BigIntStats> {
    return new Promise((resolve, reject) => {
      fstat(this.#open(), { bigint: true }, (error, stats) => (error ? reject(error) : resolve(stats)));
    });
  }

  /** Closes on the threadpool. */
  async close(): Promise<void> {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    await closeAsync(fd);
  }

  /** Closes at once with a synchronous `close(2)`. */
  closeNow(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    closeSync(fd);
  }

  #open(): number {
    if (this.#fd < 0) throw Object.assign(new Error('EBADF: file descriptor already closed'), { code: 'EBADF' });
    return this.#fd;
  }
}
