import { Readable, Transform, type TransformCallback } from 'node:stream';
import { OriginError, type ImageId } from '@cache/core';
import { OriginLengthError } from './errors.js';
import type { OriginExpectation, Verification } from './expected.js';
import { describeCause } from './request.js';

export const CHUNK_SIZE = 1024 * 1024;

/** One image as the origin serves it, with what the origin announced about it. */
export interface OriginImage {
  /**
   * The bytes. Consume or destroy it. An origin failure mid-stream errors it
   * with an {@link OriginError}: an {@link OriginLengthError} when the body
   * ends short of, or runs past, the announced `expected.length`. An abort by
   * the caller's signal errors it with the signal's reason.
   */
  stream: Readable;
  /** Byte length, when the origin says: the same as `expected.length`. */
  size: number | undefined;
  /**
   * What the origin announced: length and digest, each with its source. The
   * digest is not checked by the stream: hand it to the cache as the checksum
   * ({@link expectedChecksum}).
   */
  expected: OriginExpectation;
  /** How far the end of the body can be trusted; see {@link Verification}. */
  verification: Verification;
  /**
   * Whether a cache may commit a fill from this stream: `false` when
   * `verification` is `none` and the origin was not created with
   * `allowUnverified: true`. The bytes may still be passed on to a client;
   * they must not be kept as the image.
   */
  cacheable: boolean;
}

/** What {@link originImage} needs to know about a body. */
export interface BodyContext {
  id: ImageId;
  /** What is being read, for messages (`GET <url>`, `read <path>`). */
  what: string;
  expected: OriginExpectation;
  verification: Verification;
  allowUnverified: boolean;
  signal: AbortSignal | undefined;
}

/** Wraps a body (see {@link guardStream}) into an {@link OriginImage}. */
export function originImage(body: Readable, context: BodyContext): OriginImage {
  const { expected, verification } = context;
  return {
    stream: guardStream(body, context),
    size: expected.length,
    expected,
    verification,
    cacheable: verification !== 'none' || context.allowUnverified,
  };
}

/**
 * Passes `source` through, turning its failures into `OriginError`s (or the
 * caller's abort reason), and failing with an {@link OriginLengthError} when
 * it ends (or breaks off) short of, or runs beyond, the expected length.
 * Destroying the returned stream destroys the source.
 */
function guardStream(source: Readable, context: BodyContext): Readable {
  const { id, what, signal } = context;
  const size = context.expected.length;
  let received = 0;
  const truncated = (detail: string, cause?: unknown) =>
    new OriginLengthError(id, `${what} ${detail} after ${received} of ${size} bytes`, {
      reason: 'truncated',
      expectedLength: size as number,
      receivedLength: received,
      ...(cause === undefined ? {} : { cause }),
    });
  const guarded = new Transform({
    readableHighWaterMark: CHUNK_SIZE,
    writableHighWaterMark: CHUNK_SIZE,
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      received += chunk.length;
      if (size !== undefined && received > size) {
        callback(
          new OriginLengthError(id, `${what} sent more than the expected ${size} bytes (${received} so far)`, {
            reason: 'overlong',
            expectedLength: size,
            receivedLength: received,
          }),
        );
        return;
      }
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      callback(size !== undefined && received !== size ? truncated('ended') : null);
    },
    destroy(error, callback) {
      signal?.removeEventListener('abort', onAbort);
      source.destroy();
      callback(error);
    },
  });
  const onAbort = () => guarded.destroy(toError(signal?.reason));
  signal?.addEventListener('abort', onAbort, { once: true });
  source.on('error', (cause: unknown) => {
    if (signal?.aborted === true) guarded.destroy(toError(signal.reason));
    else if (OriginError.isInstance(cause)) guarded.destroy(cause);
    else if (size !== undefined && received < size) guarded.destroy(truncated(`broke off (${describeCause(cause)})`, cause));
    else guarded.destroy(new OriginError(id, `${what} broke off after ${received} bytes: ${describeCause(cause)}`, { cause }));
  });
  source.pipe(guarded);
  // The error is kept (`guarded.errored`) and seen by whoever reads later (async iteration, pipeline,
  // finished); without this listener an origin failure before the consumer attaches would crash the process.
  guarded.on('error', () => undefined);
  return guarded;
}

function toError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
