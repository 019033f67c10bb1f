/**
 * Typed errors of the image cache. Every error carries a stable `code`; compare
 * codes (or use the static `isInstance`), never messages: messages may change.
 *
 * @packageDocumentation
 */

const MARKER = Symbol.for('@cache/core.error');

/** Stable error codes, one per error class. */
export const ErrorCodes = {
  BAD_DRIVER_CONFIGURATION: 'CACHE_BAD_DRIVER_CONFIGURATION',
  INVALID_IMAGE_ID: 'CACHE_INVALID_IMAGE_ID',
  INVALID_ARGUMENT: 'CACHE_INVALID_ARGUMENT',
  IMAGE_NOT_CACHED: 'CACHE_IMAGE_NOT_CACHED',
  IMAGE_BEING_CACHED: 'CACHE_IMAGE_BEING_CACHED',
  CHECKSUM_MISMATCH: 'CACHE_CHECKSUM_MISMATCH',
  STORAGE: 'CACHE_STORAGE_ERROR',
  DRIVER_NOT_OPEN: 'CACHE_DRIVER_NOT_OPEN',
  ORIGIN: 'CACHE_ORIGIN_ERROR',
  FILL_ABANDONED: 'CACHE_FILL_ABANDONED',
  FILL_ABORTED: 'CACHE_FILL_ABORTED',
  RANGE_NOT_SATISFIABLE: 'CACHE_RANGE_NOT_SATISFIABLE',
  IMAGE_CHANGED: 'CACHE_IMAGE_CHANGED',
  CACHE_FULL: 'CACHE_FULL',
} as const;

/** One of the values of {@link ErrorCodes}. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Options common to every cache error. */
export interface CacheErrorOptions {
  /** The lower-level error that caused this one (an `fs` or database error). */
  cause?: unknown;
  /** The file or directory the error is about, when there is one. */
  path?: string;
}

/**
 * Base class of every error thrown by `@cache/*` packages.
 *
 * `CacheError.isInstance(err)` works across two installed copies of the
 * package, where `instanceof` does not.
 */
export class CacheError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;
  /** The path the error is about, if any. */
  readonly path: string | undefined;

  constructor(code: ErrorCode, message: string, options: CacheErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.path = options.path;
    Object.defineProperty(this, MARKER, { value: true });
  }

  override get name(): string {
    return this.constructor.name;
  }

  /** True for any cache error (from any copy of this package), optionally of one `code`. */
  static isCacheError(error: unknown, code?: ErrorCode): error is CacheError {
    return (
      typeof error === 'object' &&
      error !== null &&
      (error as Record<symbol, unknown>)[MARKER] === true &&
      (code === undefined || (error as CacheError).code === code)
    );
  }
}

/** Defines `static isInstance()` for a subclass with a fixed code. */
function codeGuard<T extends CacheError>(code: ErrorCode) {
  return (error: unknown): error is T => CacheError.isCacheError(error, code);
}

/** A driver cannot work with its options or on this filesystem. Thrown by `configure()`. */
export class BadDriverConfigurationError extends CacheError {
  /** Name of the driver that refused. */
  readonly driver: string;
  constructor(driver: string, reason: string, options: CacheErrorOptions = {}) {
    super(ErrorCodes.BAD_DRIVER_CONFIGURATION, `[${driver}] bad driver configuration: ${reason}`, options);
    this.driver = driver;
  }
  static isInstance = codeGuard<BadDriverConfigurationError>(ErrorCodes.BAD_DRIVER_CONFIGURATION);
}

/** An image id that cannot be a cache entry (path separators, reserved names, too long...). */
export class InvalidImageIdError extends CacheError {
  /** The rejected id, as given (possibly not a string). */
  readonly imageId: unknown;
  /** What is wrong with it, without the id (e.g. `contains '/'`). */
  readonly reason: string;
  constructor(imageId: unknown, reason: string) {
    super(
      ErrorCodes.INVALID_IMAGE_ID,
      `invalid image id ${describeId(imageId)}: ${reason}. Use one path segment of at most 255 bytes, ` +
        `not starting with '.', without '/', '\\' or NUL, and not a reserved name.`,
    );
    this.imageId = imageId;
    this.reason = reason;
  }
  static isInstance = codeGuard<InvalidImageIdError>(ErrorCodes.INVALID_IMAGE_ID);
}

/** A call got an argument it cannot use (a malformed checksum, a negative size...). */
export class InvalidArgumentError extends CacheError {
  constructor(message: string) {
    super(ErrorCodes.INVALID_ARGUMENT, message);
  }
  static isInstance = codeGuard<InvalidArgumentError>(ErrorCodes.INVALID_ARGUMENT);
}

/** The image has no active entry in the cache. */
export class ImageNotCachedError extends CacheError {
  readonly imageId: string;
  constructor(imageId: string, path: string, cause?: unknown) {
    super(ErrorCodes.IMAGE_NOT_CACHED, `image '${imageId}' is not cached (no file at ${path})`, { path, cause });
    this.imageId = imageId;
  }
  static isInstance = codeGuard<ImageNotCachedError>(ErrorCodes.IMAGE_NOT_CACHED);
}

/** Another writer is caching this image right now (its `incomplete/` file exists). */
export class ImageBeingCachedError extends CacheError {
  readonly imageId: string;
  constructor(imageId: string, path: string, cause?: unknown) {
    super(
      ErrorCodes.IMAGE_BEING_CACHED,
      `image '${imageId}' is being cached by another writer (${path} exists); serve it from the source ` +
        `or wait. If that writer is gone, \`image-cache clean\` removes the stalled file once it is older than the stall time (--stall-time).`,
      { path, cause },
    );
    this.imageId = imageId;
  }
  static isInstance = codeGuard<ImageBeingCachedError>(ErrorCodes.IMAGE_BEING_CACHED);
}

/** The bytes did not hash to the expected digest; nothing was committed. */
export class ChecksumMismatchError extends CacheError {
  readonly imageId: string;
  readonly algorithm: string;
  readonly expected: string;
  readonly actual: string;
  constructor(imageId: string, algorithm: string, expected: string, actual: string) {
    super(
      ErrorCodes.CHECKSUM_MISMATCH,
      `checksum verification failed for image '${imageId}': expected ${algorithm} ${expected}, got ${actual}. ` +
        `The data was not cached; check the source.`,
    );
    this.imageId = imageId;
    this.algorithm = algorithm;
    this.expected = expected;
    this.actual = actual;
  }
  static isInstance = codeGuard<ChecksumMismatchError>(ErrorCodes.CHECKSUM_MISMATCH);
}

/** The filesystem or the metadata store failed (disk full, I/O error, corrupt database...). */
export class CacheStorageError extends CacheError {
  constructor(message: string, options: CacheErrorOptions = {}) {
    super(ErrorCodes.STORAGE, message, options);
  }
  static isInstance = codeGuard<CacheStorageError>(ErrorCodes.STORAGE);
}

/**
 * A ranged read starts at or past the end of the image (HTTP's 416 Range Not
 * Satisfiable). `start: 0` is always satisfiable: on an empty image it reads
 * nothing.
 */
export class RangeNotSatisfiableError extends CacheError {
  readonly imageId: string;
  /** The image's size in bytes when it was opened (for a `Content-Range: bytes *\/<size>` header). */
  readonly size: number;
  /** The requested first byte. */
  readonly start: number;
  constructor(imageId: string, path: string, start: number, size: number) {
    super(
      ErrorCodes.RANGE_NOT_SATISFIABLE,
      `cannot read image '${imageId}' from byte ${start}: it has ${size} bytes (${path}). Start below the size.`,
      { path },
    );
    this.imageId = imageId;
    this.size = size;
    this.start = start;
  }
  static isInstance = codeGuard<RangeNotSatisfiableError>(ErrorCodes.RANGE_NOT_SATISFIABLE);
}

/**
 * The active file of an image is not the one the caller asked for by
 * identity (`openForRead(id, { identity })`, `quarantine(id, { identity })`):
 * it was replaced since the caller looked at it. Look again (`stat(id)`).
 */
export class ImageChangedError extends CacheError {
  readonly imageId: string;
  /** The identity the caller asked for. */
  readonly expected: string;
  /** The identity of the file there now. */
  readonly actual: string;
  constructor(imageId: string, path: string, expected: string, actual: string) {
    super(
      ErrorCodes.IMAGE_CHANGED,
      `image '${imageId}' was replaced (${path} is file ${actual}, not ${expected}); look it up again with stat(id)`,
      { path },
    );
    this.imageId = imageId;
    this.expected = expected;
    this.actual = actual;
  }
  static isInstance = codeGuard<ImageChangedError>(ErrorCodes.IMAGE_CHANGED);
}

/** A driver was used before `configure()` or after `close()`. */
export class DriverNotOpenError extends CacheError {
  constructor(driver: string, state: 'new' | 'closed') {
    super(
      ErrorCodes.DRIVER_NOT_OPEN,
      state === 'new'
        ? `[${driver}] driver is not configured: call and await configure() first (ImageCache.open does it)`
        : `[${driver}] driver is closed: open a new driver`,
    );
  }
  static isInstance = codeGuard<DriverNotOpenError>(ErrorCodes.DRIVER_NOT_OPEN);
}

/**
 * The origin an image is fetched from on a miss failed: it does not have the
 * image (`status` 404), answered with another error status, could not be
 * reached, or broke off mid-stream.
 */
export class OriginError extends CacheError {
  /** The image that was being fetched. */
  readonly imageId: string;
  /** The origin's HTTP status, when it answered with one (404 when a directory origin lacks the file). */
  readonly status: number | undefined;
  /**
   * The origin's `Retry-After` (delay-seconds or an HTTP-date, as it sent it)
   * with an error status such as 503 or 429: when to try again. A server in
   * front of the origin passes it on.
   */
  readonly retryAfter: string | undefined;
  constructor(imageId: string, message: string, options: CacheErrorOptions & { status?: number; retryAfter?: string } = {}) {
    super(ErrorCodes.ORIGIN, `origin failed for image '${imageId}': ${message}`, options);
    this.imageId = imageId;
    this.status = options.status;
    this.retryAfter = options.retryAfter;
  }
  /** True when the origin said it does not have the image. */
  get notFound(): boolean {
    return this.status === 404;
  }
  static isInstance = codeGuard<OriginError>(ErrorCodes.ORIGIN);
}

/** A fill was stopped and rolled back because it had no reader for its `abandonAfter` seconds. */
export class FillAbandonedError extends CacheError {
  readonly imageId: string;
  constructor(imageId: string, seconds: number) {
    super(
      ErrorCodes.FILL_ABANDONED,
      `the fill of image '${imageId}' was abandoned: no reader for ${seconds} s (abandonAfter); the partial file was rolled back`,
    );
    this.imageId = imageId;
  }
  static isInstance = codeGuard<FillAbandonedError>(ErrorCodes.FILL_ABANDONED);
}

/**
 * A fill was stopped by its caller (`fill.abort()` or `FillOptions.signal`)
 * without an error of its own as the reason; the partial file was rolled back.
 */
export class FillAbortedError extends CacheError {
  readonly imageId: string;
  constructor(imageId: string, reason?: unknown) {
    super(
      ErrorCodes.FILL_ABORTED,
      `the fill of image '${imageId}' was aborted${reason === undefined ? '' : ` (${String(reason)})`}; the partial file was rolled back`,
      reason === undefined ? {} : { cause: reason },
    );
    this.imageId = imageId;
  }
  static isInstance = codeGuard<FillAbortedError>(ErrorCodes.FILL_ABORTED);
}

/**
 * The space policy refused to cache an image, or to let a write grow: it
 * cannot fit in the byte budget even with everything evictable evicted
 * (`too-large`, `budget-full`), or the disk is below the `stop` free-space
 * threshold (`disk-low`). Nothing was committed; a client streaming the image
 * gets it uncached.
 */
export class CacheFullError extends CacheError {
  /** The image that was not cached. */
  readonly imageId: string;
  /** Why: `too-large` (larger than the whole budget), `budget-full` (the rest is being read or written), `disk-low`. */
  readonly reason: 'too-large' | 'budget-full' | 'disk-low';
  constructor(imageId: string, reason: 'too-large' | 'budget-full' | 'disk-low', message: string) {
    super(ErrorCodes.CACHE_FULL, `not caching image ${describeId(imageId)}: ${message}`);
    this.imageId = imageId;
    this.reason = reason;
  }
  static isInstance = codeGuard<CacheFullError>(ErrorCodes.CACHE_FULL);
}

function describeId(id: unknown): string {
  if (typeof id !== 'string') return `(${id === null ? 'null' : typeof id})`;
  const shown = id.length > 64 ? `${id.slice(0, 64)}...` : id;
  return JSON.stringify(shown);
}
