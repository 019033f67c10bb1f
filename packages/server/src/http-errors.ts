import { STATUS_CODES } from 'node:http';
import {
  CacheError,
  ChecksumMismatchError,
  FillAbandonedError,
  FillAbortedError,
  ImageBeingCachedError,
  ImageNotCachedError,
  InvalidArgumentError,
  InvalidImageIdError,
  OriginError,
} from '@cache/core';

/** The JSON body of every error response (fastify's own error shape, plus `code`). */
export interface ErrorBody {
  statusCode: number;
  /** The status text, e.g. `Bad Request`. */
  error: string;
  /** A `CacheError` code (`CACHE_INVALID_IMAGE_ID`...), or a server code such as `UNAUTHORIZED`. */
  code: string;
  message: string;
}

/**
 * An error the server answers with a given status and code (not a cache
 * error: authentication, an unsatisfiable range, a bad header).
 */
export class HttpError extends Error {
  readonly statusCode: number;
  readonly code: string;
  readonly headers: Record<string, string>;
  constructor(statusCode: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.statusCode = statusCode;
    this.code = code;
    this.headers = headers;
  }
}

/**
 * The HTTP status for an error:
 * invalid id or argument 400; not cached (and no origin) 404; origin 404 → 404;
 * any other origin failure, or a checksum mismatch at the source, 502;
 * another writer holding the id 409; a fetch aborted by shutdown, or a fill aborted or abandoned, 503; errors that carry a 4xx/5xx `statusCode`
 * (fastify's, {@link HttpError}) keep it; anything else 500.
 */
export function statusFor(error: unknown): number {
  if (InvalidImageIdError.isInstance(error) || InvalidArgumentError.isInstance(error)) return 400;
  if (ImageNotCachedError.isInstance(error)) return 404;
  if (OriginError.isInstance(error)) return error.notFound ? 404 : 502;
  if (ChecksumMismatchError.isInstance(error)) return 502;
  if (ImageBeingCachedError.isInstance(error)) return 409;
  if (error instanceof Error && error.name === 'AbortError') return 503; // a fetch aborted by shutdown
  if (FillAbortedError.isInstance(error) || FillAbandonedError.isInstance(error)) return 503;
  const status = (error as { statusCode?: unknown } | null)?.statusCode;
  if (typeof status === 'number' && status >= 400 && status <= 599) return status;
  return 500;
}

/** The JSON body for an error answered with `status`. Messages of unexpected (500) errors are not exposed. */
export function errorBody(error: unknown, status: number): ErrorBody {
  const known = CacheError.isCacheError(error) || error instanceof HttpError || status < 500;
  const rawCode = (error as { code?: unknown } | null)?.code;
  return {
    statusCode: status,
    error: STATUS_CODES[status] ?? 'Error',
    code: typeof rawCode === 'string' ? rawCode : `HTTP_${status}`,
    message: known && error instanceof Error ? error.message : 'internal server error; see the server log',
  };
}
