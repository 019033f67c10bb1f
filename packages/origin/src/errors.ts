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

const TIMEOUT_MARKER = Symbol.for('@cache/origin.OriginTimeoutError');

/** Which of an HTTP origin's timeouts ran out; see {@link OriginTimeoutError}. */
export type OriginTimeout = 'headers' | 'body-idle' | 'total';

/**
 * An HTTP origin request that ran out of time: `headers` (no response
 * headers within `headersTimeout`, or for a small text answer such as a
 * Glance record, no complete answer), `body-idle` (no body byte for
 * `bodyIdleTimeout` while the cache was waiting for one) or `total` (the
 * whole `open()` and body, retries included, took longer than
 * `totalTimeout`). An {@link OriginError} without a `status`.
 */
export class OriginTimeoutError extends OriginError {
  /** Which timeout ran out. */
  readonly timeout: OriginTimeout;
  /** Its value, in milliseconds. */
  readonly timeoutMs: number;

  constructor(imageId: ImageId, message: string, details: { timeout: OriginTimeout; timeoutMs: number }) {
    super(imageId, message);
    this.timeout = details.timeout;
    this.timeoutMs = details.timeoutMs;
    Object.defineProperty(this, TIMEOUT_MARKER, { value: true });
  }

  /** True for an `OriginTimeoutError` (from any copy of this package). */
  static override isInstance = (error: unknown): error is OriginTimeoutError =>
    OriginError.isInstance(error) && (error as unknown as Record<symbol, unknown>)[TIMEOUT_MARKER] === true;
}
