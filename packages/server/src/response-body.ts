import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { CacheStorageError } from '@cache/core';

/** Bytes a response body buffers on each side of its counter (about one cache read). */
const BODY_BUFFER = 1024 * 1024;

/** Options of {@link responseBody}. */
export interface ResponseBodyOptions {
  /** The `Content-Length` sent; a source that ends short of it or runs past it fails the response. */
  expected: number | undefined;
  /**
   * Hold the body's last byte back until `source` has ended without an
   * error. For a source that ends only once its bytes are verified (a fill's
   * reader, which ends when the fill has checked the origin's length and
   * digest and committed), a failure then always leaves the client short of
   * the end: with a `Content-Length` the response is visibly incomplete,
   * never a complete body with wrong bytes. @default false
   */
  holdLast?: boolean;
  /** Called with each chunk's length as it is passed on (for the served-bytes counter). */
  onBytes: (bytes: number) => void;
  /** Called once if the body fails (a source error or a wrong length; not a client that went away). */
  onError: (error: Error) => void;
}

/**
 * The stream handed to fastify for an image body: `source` piped through a
 * counter that also enforces the announced length. A failure destroys the
 * body with an error; fastify then destroys the socket when the headers are
 * out (so a client can tell the response is incomplete: a short body under a
 * `Content-Length`, or a chunked body without its last chunk), or answers
 * with an error status when they are not.
 *
 * When the body is destroyed without an error (the client went away, or
 * shutdown cut the connection), `source` is destroyed too: a cache read or a
 * fill's reader is closed (the fill itself goes on: its other readers, and
 * the cache, still want it). When the client already has every byte of its
 * `Content-Length`, the source is left to end instead (a client may close
 * the connection as soon as it has them; a stream that commits when it ends,
 * such as `ImageCache.getCachingStream`, then commits). A cache read has
 * counted its hit already: core counts it when the last byte is delivered.
 */
export function responseBody(source: Readable, options: ResponseBodyOptions): Readable {
  const { expected, onBytes } = options;
  const holdLast = options.holdLast === true;
  /** Bytes taken from the source. */
  let sent = 0;
  /** Bytes passed on to the client. */
  let passed = 0;
  let held: Buffer | undefined;
  let reported = false;
  const pass = (stream: Transform, chunk: Buffer) => {
    passed += chunk.length;
    onBytes(chunk.length);
    stream.push(chunk);
  };
  const report = (error: Error) => {
    if (reported) return;
    reported = true;
    options.onError(error);
  };
  const body = new Transform({
    // Room for a whole cache read (1 MiB) on each side: the source reads ahead while the socket takes the last chunk.
    writableHighWaterMark: BODY_BUFFER,
    readableHighWaterMark: BODY_BUFFER,
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      sent += chunk.length;
      if (expected !== undefined && sent > expected) {
        callback(new CacheStorageError(`image body ran past its Content-Length of ${expected} bytes (was the entry replaced?)`));
        return;
      }
      if (!holdLast) {
        pass(this, chunk);
        callback();
        return;
      }
      if (chunk.length === 0) {
        callback();
        return;
      }
      // Everything but the stream's very last byte goes on at once (so the headers and the bulk are not delayed).
      if (held !== undefined) pass(this, held);
      if (chunk.length > 1) pass(this, chunk.subarray(0, chunk.length - 1));
      held = chunk.subarray(chunk.length - 1);
      callback();
    },
    flush(callback: TransformCallback) {
      if (expected !== undefined && sent !== expected) {
        callback(new CacheStorageError(`image body ended after ${sent} of ${expected} bytes (was the entry replaced?)`));
        return;
      }
      if (held !== undefined) pass(this, held);
      callback();
    },
    destroy(error, callback) {
      source.unpipe(body);
      if (error !== null) report(error);
      if (!source.destroyed && !source.readableEnded) {
        if (error === null && expected !== undefined && passed === expected) source.resume();
        else source.destroy();
      }
      callback(error);
    },
  });
  source.on('error', (error: Error) => {
    report(error);
    body.destroy(error);
  });
  source.pipe(body);
  return body;
}
