import { unlink } from 'node:fs/promises';
import { Readable, Transform, type Duplex, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { formatChecksum, type Checksum, type NormalizedChecksum } from './checksum.js';
import type { CacheDriver, CacheWriter } from './driver.js';
import { ChecksumMismatchError, ImageBeingCachedError, InvalidArgumentError } from './errors.js';
import type { ImageId } from './image-id.js';
import { ParallelHash } from './parallel-hash.js';

// What the facade's writes share: sources, the cacheable check before a
// write, verification on the way through.

/** Where image bytes come from: a stream, any async iterable of bytes, or a file path. */
export type ImageSource = Readable | AsyncIterable<Uint8Array> | string;

/** Options for writing an image into the cache. */
export interface CacheImageOptions {
  /** Expected digest; a mismatch rejects with `ChecksumMismatchError` and nothing is committed. */
  checksum?: Checksum;
}

/**
 * Opens an exclusive writer for `id` unless it is cached or being cached.
 * The cached check is repeated once the writer holds `incomplete/<id>`: a
 * writer of another process may have committed between the first check and
 * the exclusive create, and the image must not be fetched and written twice.
 */
export async function openWriterIfCacheable(driver: CacheDriver, id: ImageId): Promise<CacheWriter | undefined> {
  if (!(await driver.isCacheable(id))) return undefined;
  let writer: CacheWriter;
  try {
    writer = await driver.openForWrite(id);
  } catch (error) {
    if (ImageBeingCachedError.isInstance(error)) return undefined;
    throw error;
  }
  if (await driver.isCached(id).catch(() => false)) {
    // Nothing was written: give the empty file back instead of leaving it in invalid/.
    writer.on('error', () => undefined);
    writer.destroy();
    await whenClosed(writer);
    await unlink(driver.getImageFilepath(id, 'invalid')).catch(() => undefined);
    return undefined;
  }
  return writer;
}

/**
 * Throws `InvalidArgumentError` unless `source` is a stream, an async iterable or a non-empty path.
 * @param what - how the message names the source's origin (`source must be`, `fetch() must return`).
 */
export function assertSource(source: unknown, what = 'source must be'): asserts source is ImageSource {
  const ok =
    typeof source === 'string'
      ? source.length > 0
      : typeof source === 'object' && source !== null && Symbol.asyncIterator in source;
  if (!ok) {
    throw new InvalidArgumentError(`${what} a Readable, an AsyncIterable<Uint8Array> or a file path`);
  }
}

/**
 * Rolls a write back because its source failed or its bytes did not verify:
 * with `abortOnEnd` when the writer has it (every byte accepted reaches
 * `invalid/`), else by `destroy(reason)`. Resolves once the writer has closed.
 */
export async function rollBackWhole(writer: CacheWriter, reason: Error): Promise<void> {
  if (typeof writer.abortOnEnd === 'function' && !writer.destroyed && !writer.writableEnded) {
    writer.abortOnEnd(reason);
    writer.end();
  } else {
    writer.destroy(reason);
  }
  await whenClosed(writer);
}

/** Resolves once the stream has emitted `close` (its destroy work, e.g. a rollback, is done). */
export function whenClosed(stream: Readable | CacheWriter): Promise<void> {
  if (stream.closed) return Promise.resolve();
  return new Promise((resolve) => stream.once('close', () => resolve()));
}

/**
 * `pipeline(first, ...rest)` of `node:stream/promises` for a chain that
 * starts with a `Readable`, without pipeline's per-call `AbortController`
 * (whose `abort()` at the end of every pipeline builds a `DOMException` with
 * its stack: about as much CPU as the rest of a 4 KiB commit). The same
 * outcome: resolves once the last stream has finished; at the first error
 * (or a stream closing before its end) every stream is destroyed with it and
 * the promise rejects with it. Other sources go through `pipeline`.
 */
export function pipeChain(first: Readable | AsyncIterable<Uint8Array>, ...rest: [...Duplex[], Writable]): Promise<void> {
  if (!(first instanceof Readable)) return (pipeline as unknown as (...streams: unknown[]) => Promise<void>)(first, ...rest);
  const streams: (Readable | Duplex | Writable)[] = [first, ...rest];
  const last = rest[rest.length - 1] as Writable;
  return new Promise<void>((resolve, reject) => {
    let done = false;
    const fail = (error: Error) => {
      if (done) return;
      done = true;
      for (const stream of streams) if (!stream.destroyed && !(stream === last && last.writableFinished)) stream.destroy(error);
      reject(error);
    };
    const premature = () => Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
    streams.forEach((stream, i) => {
      stream.on('error', fail);
      const isLast = i === streams.length - 1;
      const ended = () => (isLast ? (stream as Writable).writableFinished : (stream as Readable).readableEnded);
      stream.once('close', () => {
        if (!ended()) fail(premature());
      });
      if (!isLast) (stream as Readable).pipe(streams[i + 1] as Writable);
    });
    // A stream that failed or closed before the chain was built (its events are gone): as pipeline does.
    for (const [i, stream] of streams.entries()) {
      const errored = (stream as { errored?: Error | null }).errored;
      if (errored) fail(errored);
      else if (stream.destroyed && !(i === streams.length - 1 ? (stream as Writable).writableFinished : (stream as Readable).readableEnded)) fail(premature());
    }
    last.once('finish', () => {
      if (done) return;
      done = true;
      resolve();
    });
  });
}

/**
 * Writes `bytes` as the whole content of `writer` and ends it: resolves once
 * it has finished (committed), rejects with its error, or with a premature
 * close when it closes first. For bytes already in memory: no source stream
 * and no pipe.
 */
export function endWith(writer: CacheWriter, bytes: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (error: Error) => {
      writer.off('finish', onFinish);
      writer.off('close', onClose);
      reject(error);
    };
    const onFinish = () => {
      writer.off('error', onError);
      writer.off('close', onClose);
      resolve();
    };
    const onClose = () => {
      if (writer.writableFinished) return;
      writer.off('error', onError);
      writer.off('finish', onFinish);
      reject(Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    };
    writer.once('error', onError);
    writer.once('finish', onFinish);
    writer.once('close', onClose);
    writer.end(bytes);
  });
}

/** Resolves once `writer` has drained or closed (a writer that failed never drains). */
export function drainOrClose(writer: CacheWriter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      writer.off('drain', done);
      writer.off('close', done);
      resolve();
    };
    writer.on('drain', done);
    writer.on('close', done);
  });
}

/** A chunk of a source as a Buffer (no copy); anything but bytes is an `InvalidArgumentError`. */
export function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new InvalidArgumentError(`source yielded a ${typeof chunk}, expected Uint8Array chunks`);
}

/**
 * Hashes what passes (on a worker thread for large images, see `ParallelHash`);
 * on flush either records the digest on the writer or fails with
 * `ChecksumMismatchError` (through the writer when it has `abortOnEnd`, so the
 * whole download reaches `invalid/`).
 */
export class VerifyingTransform extends Transform {
  readonly #hash: ParallelHash;
  constructor(
    readonly imageId: ImageId,
    readonly expected: NormalizedChecksum,
    readonly writer: CacheWriter,
  ) {
    super();
    this.#hash = new ParallelHash(expected.algorithm);
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    let wait: Promise<void> | undefined;
    try {
      wait = this.#hash.update(chunk);
    } catch (error) {
      callback(error as Error);
      return;
    }
    if (wait === undefined) callback(null, chunk);
    else wait.then(() => callback(null, chunk), callback);
  }
  override _flush(callback: TransformCallback): void {
    this.#hash.digest().then((actual) => {
      if (actual !== this.expected.digest) {
        const mismatch = new ChecksumMismatchError(this.imageId, this.expected.algorithm, this.expected.digest, actual);
        if (typeof this.writer.abortOnEnd === 'function') {
          // The writer gets every byte and then rolls back (the pipeline then fails with the mismatch):
          // failing here would destroy it with bytes still buffered, and invalid/ would keep a short copy.
          this.writer.abortOnEnd(mismatch);
          callback();
        } else {
          callback(mismatch);
        }
        return;
      }
      this.writer.setChecksum(formatChecksum(this.expected));
      callback();
    }, callback);
  }
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#hash.dispose();
    callback(error);
  }
}
