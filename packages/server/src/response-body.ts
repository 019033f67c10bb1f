import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { CacheStorageError } from '@cache/core';
import { releaseReadChunk } from '@cache/core/driver';
import type { FastifyReply } from 'fastify';

/** Bytes a response body buffers on each side of its counter (about one cache read). */
const BODY_BUFFER = 1024 * 1024;

/** The error of a body that runs past its `Content-Length`. */
function ranPast(expected: number): CacheStorageError {
  return new CacheStorageError(`image body ran past its Content-Length of ${expected} bytes (was the entry replaced?)`);
}

/** The error of a body that ends short of its `Content-Length`. */
function endedShort(sent: number, expected: number): CacheStorageError {
  return new CacheStorageError(`image body ended after ${sent} of ${expected} bytes (was the entry replaced?)`);
}

/**
 * What becomes of a body's source once the response is over: left to end
 * when the client had every byte (a client may close as soon as it has them;
 * a cache read counts its hit, a caching stream commits, when it ends),
 * destroyed otherwise.
 */
function letGo(source: Readable, clientHasAll: boolean): void {
  if (source.destroyed || source.readableEnded) return;
  if (clientHasAll) source.resume();
  else source.destroy();
}

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
        callback(ranPast(expected));
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
        callback(endedShort(sent, expected));
        return;
      }
      if (held !== undefined) pass(this, held);
      callback();
    },
    destroy(error, callback) {
      source.unpipe(body);
      if (error !== null) report(error);
      letGo(source, error === null && expected !== undefined && passed === expected);
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

/** Options of {@link sendCacheRead}. */
export interface CacheReadBodyOptions {
  /** The `Content-Length` set on the reply: a read that ends short of it or runs past it cuts the response. */
  expected: number;
  /** Called with each chunk's length as it is written (the served-bytes counter). */
  onBytes: (bytes: number) => void;
  /** Called once if the body fails after the headers are out (a read error or a wrong length; not a client that went away). */
  onError: (error: Error) => void;
}

/**
 * Sends the body of a cache read (a hit of more than one read chunk) on
 * `reply.raw` itself, handing each chunk back to core's read pool
 * (`releaseReadChunk`) once the socket has written it: a streamed 256 MiB
 * hit then reuses a few 1 MiB buffers instead of allocating 256 of them (a
 * fresh 1 MiB buffer costs more CPU than its read: ADR 0008). `pipe` cannot
 * do this, as it never says when a chunk has been written.
 *
 * The headers wait for the first chunk: a read that fails before it (or
 * whose first chunk already runs past `expected`) rejects, and the caller's
 * error handling answers with an error status as for any other failure
 * before the headers. From the first chunk on, the reply is
 * hijacked (fastify's `onResponse` hooks, the access log among them, still
 * run), its status and headers are copied to the response, and:
 * - backpressure pauses the read until the response drains;
 * - a read error, or a read that runs past or ends short of `expected`,
 *   destroys the response (the client sees a body cut short of its
 *   `Content-Length`, never wrong bytes passed as whole);
 * - a client that goes away destroys the read, unless it already had every
 *   byte (then the read is left to end, as `responseBody` does); one gone
 *   before the first chunk ends the reply there (hijacked, nothing sent).
 */
export function sendCacheRead(reply: FastifyReply, source: Readable, options: CacheReadBodyOptions): Promise<void> {
  const { expected, onBytes } = options;
  const res = reply.raw;
  return new Promise<void>((resolve, reject) => {
    let started = false;
    let sent = 0;
    let failed = false;
    const fail = (error: Error) => {
      if (failed) return;
      failed = true;
      source.off('data', onData);
      if (!source.destroyed) source.destroy();
      if (!started) {
        reject(error);
        return;
      }
      options.onError(error);
      res.destroy(error);
    };
    const start = () => {
      started = true;
      reply.hijack();
      res.statusCode = reply.statusCode;
      for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) res.setHeader(name, value);
      res.on('drain', () => source.resume());
      resolve();
    };
    res.once('close', () => {
      if (!started && !failed) start(); // the client left before the first chunk: nothing is left to answer
      letGo(source, !failed && sent === expected);
    });
    const onData = (chunk: Buffer) => {
      sent += chunk.length;
      if (sent > expected) {
        fail(ranPast(expected));
        return;
      }
      if (!started) start();
      onBytes(chunk.length);
      // The callback runs once the socket is done with the chunk (written, or the write dropped with the connection).
      if (!res.write(chunk, () => releaseReadChunk(chunk))) source.pause();
    };
    source.on('data', onData);
    source.on('error', fail);
    source.once('end', () => {
      if (failed) return;
      if (sent !== expected) {
        fail(endedShort(sent, expected));
        return;
      }
      if (!started) start();
      res.end();
    });
  });
}
