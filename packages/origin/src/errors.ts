import { OriginError, type ImageId } from '@cache/core';

const MARKER = Symbol.for('@cache/origin.OriginLengthError');

/**
 * An image body that did not have the announced length: `truncated` (it
 * ended, or the connection broke, before the announced length) or
 * `overlong` (it ran past it). An {@link OriginError} (same `code`,
 * `CACHE_ORIGIN_ERROR`); `reason` tells which.
 */
export class OriginLengthError extends OriginError {
  /** `truncated`: fewer bytes than announced; `overlong`: more. */
  readonly reason: 'truncated' | 'overlong';
  /** The announced length. */
  readonly expectedLength: number;
  /** Bytes received when the failure was noticed (for `overlong`, at least this many were sent). */
  readonly receivedLength: number;

  constructor(
    imageId: ImageId,
    message: string,
    details: { reason: 'truncated' | 'overlong'; expectedLength: number; receivedLength: number; cause?: unknown },
  ) {
    super(imageId, message, details.cause === undefined ? {} : { cause: details.cause });
    this.reason = details.reason;
    this.expectedLength = details.expectedLength;
    this.receivedLength = details.receivedLength;
    Object.defineProperty(this, MARKER, { value: true });
  }

  /** True for an `OriginLengthError` (from any copy of this package). */
  static override isInstance = (error: unknown): error is OriginLengthError =>
    OriginError.isInstance(error) && (error as unknown as Record<symbol, unknown>)[MARKER] === true;
}
