import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
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
import { OriginTimeoutError } from '@cache/origin';

/** The JSON body of every error response (fastify's own error shape, plus `code`). */
export interface ErrorBody {
  statusCode: number;
  /** The status text, e.g. `Bad Request`. */
  error: string;
  /** A `CacheError` code (`CACHE_INVALID_IMAGE_ID`...), or a server code such as `UNAUTHORIZED`. */
  code: string;
  /**
   * A short message for the client: what went wrong, never an internal
   * address, path or stack, at most {@link MAX_MESSAGE} characters, with
   * echoed ids cut at {@link MAX_ECHO} characters. The whole story is in the
   * server's log.
   */
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

/** Characters of a client's input (an id, a path) an error message repeats before cutting it with `…`. */
export const MAX_ECHO = 64;
/** Longest message an error body carries (longer ones are cut with `…`). */
export const MAX_MESSAGE = 200;

/** Cuts `text` to `max` characters (code points, never half a surrogate pair), marking a cut with `…`. */
export function truncate(text: string, max: number): string {
  const points = Array.from(text);
  return points.length <= max ? text : `${points.slice(0, max).join('')}…`;
}

/** A client's value (an id, a path) as a message quotes it: JSON-quoted, at most {@link MAX_ECHO} characters. */
export function echo(value: unknown): string {
  if (typeof value !== 'string') return `(${value === null ? 'null' : typeof value})`;
  return JSON.stringify(truncate(value, MAX_ECHO));
}

/** The 404 for a path no route matches; the path is echoed cut to {@link MAX_ECHO} characters. */
export function routeNotFound(method: string, url: string): HttpError {
  return new HttpError(404, 'ROUTE_NOT_FOUND', `no route ${method} ${echo(url.split('?')[0] ?? '')}`);
}

/**
 * Fastify's `frameworkErrors` hook: the router's own refusals (a path
 * parameter past `maxParamLength`, a malformed URL) answered in the shape of
 * every other error, with the path cut to {@link MAX_ECHO} characters
 * (fastify's own answer echoes the whole path, 10 KB for a 10 KB id).
 */
export function answerFrameworkError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const path = echo(request.url.split('?')[0] ?? '');
  const http =
    error.code === 'FST_ERR_MAX_PARAM_LENGTH'
      ? new HttpError(414, 'URI_TOO_LONG', `the path ${path} is too long (an image id is at most 255 bytes)`)
      : error.code === 'FST_ERR_BAD_URL'
        ? new HttpError(400, 'BAD_URL', `the path ${path} is not a valid URL (bad percent-encoding?)`)
        : error;
  const status = statusFor(http);
  if (http !== error) request.log.info({ err: error }, 'request refused by the router');
  void reply.code(status).send(errorBody(http, status));
}

/** Origin statuses that mean "busy, come back later": the server answers them 503 (with the origin's `Retry-After`). */
const ORIGIN_BUSY = new Set([429, 503]);

/**
 * The HTTP status for an error:
 * invalid id or argument 400; not cached (and no origin) 404; origin 404 → 404;
 * origin 503 or 429 (busy) → 503; an origin that ran out of time (`OriginTimeoutError`) 504;
 * any other origin failure, or a checksum mismatch at the source, 502;
 * another writer holding the id 409; a fetch aborted by shutdown, or a fill aborted or abandoned, 503; errors that carry a 4xx/5xx `statusCode`
 * (fastify's, {@link HttpError}) keep it; anything else 500.
 */
export function statusFor(error: unknown): number {
  if (InvalidImageIdError.isInstance(error) || InvalidArgumentError.isInstance(error)) return 400;
  if (ImageNotCachedError.isInstance(error)) return 404;
  if (OriginTimeoutError.isInstance(error)) return 504;
  if (OriginError.isInstance(error)) return error.notFound ? 404 : error.status !== undefined && ORIGIN_BUSY.has(error.status) ? 503 : 502;
  if (ChecksumMismatchError.isInstance(error)) return 502;
  if (ImageBeingCachedError.isInstance(error)) return 409;
  if (error instanceof Error && error.name === 'AbortError') return 503; // a fetch aborted by shutdown
  if (FillAbortedError.isInstance(error) || FillAbandonedError.isInstance(error)) return 503;
  const status = (error as { statusCode?: unknown } | null)?.statusCode;
  if (typeof status === 'number' && status >= 400 && status <= 599) return status;
  return 500;
}

/**
 * Response headers an error brings: an {@link HttpError}'s own, and the
 * origin's `Retry-After` of an `OriginError` (an origin that is busy says
 * when to come back; the client hears the same).
 */
export function errorHeaders(error: unknown): Record<string, string> {
  if (error instanceof HttpError) return error.headers;
  if (OriginError.isInstance(error) && typeof error.retryAfter === 'string' && error.retryAfter !== '') return { 'retry-after': error.retryAfter };
  return {};
}

/**
 * The client's message for an error answered with `status`: built here from
 * the error's fields for the cache's own errors (their messages name paths
 * and origin URLs, which stay in the log), a generic one for server failures
 * (5xx), the error's own message otherwise; cut to {@link MAX_MESSAGE}.
 */
export function publicMessage(error: unknown, status: number): string {
  return truncate(describeForClient(error, status), MAX_MESSAGE);
}

function describeForClient(error: unknown, status: number): string {
  if (InvalidImageIdError.isInstance(error)) {
    return `invalid image id ${echo(error.imageId)}: ${error.reason}; an id is one path segment of at most 255 bytes, not starting with '.'`;
  }
  if (ImageNotCachedError.isInstance(error)) return `image ${echo(error.imageId)} is not cached`;
  if (OriginTimeoutError.isInstance(error)) {
    const which = { headers: 'did not start answering', 'body-idle': 'went silent', total: 'did not finish' }[error.timeout];
    return `the origin ${which} in time for image ${echo(error.imageId)} (${error.timeout} timeout, ${error.timeoutMs} ms)`;
  }
  if (OriginError.isInstance(error)) {
    const id = echo(error.imageId);
    if (error.notFound) return `the origin does not have image ${id}`;
    if (error.status !== undefined) {
      const later = error.retryAfter === undefined ? '' : '; retry after the time in Retry-After';
      return `the origin answered ${error.status} for image ${id}${later}`;
    }
    return `the origin could not deliver image ${id} (unreachable, too slow, or the transfer broke off); see the server log`;
  }
  if (ChecksumMismatchError.isInstance(error)) {
    return `image ${echo(error.imageId)} from the origin does not match its announced ${error.algorithm} digest; nothing was cached`;
  }
  if (ImageBeingCachedError.isInstance(error)) return `image ${echo(error.imageId)} is being cached by another writer; retry shortly`;
  if (error instanceof HttpError) return error.message;
  if (error instanceof Error && error.name === 'AbortError') return 'the request was stopped by a shutdown; retry';
  if (status >= 500) {
    const code = CacheError.isCacheError(error) ? ` (${error.code})` : '';
    return `internal server error${code}; see the server log`;
  }
  // Client errors of fastify (a bad body, an unsupported media type) and of the cache's argument checks.
  return error instanceof Error ? error.message : String(error);
}

/** The JSON body for an error answered with `status` (see {@link ErrorBody}). */
export function errorBody(error: unknown, status: number): ErrorBody {
  const rawCode = (error as { code?: unknown } | null)?.code;
  return {
    statusCode: status,
    error: STATUS_CODES[status] ?? 'Error',
    code: typeof rawCode === 'string' && /^[A-Z][A-Z0-9_]{0,63}$/.test(rawCode) ? rawCode : `HTTP_${status}`,
    message: publicMessage(error, status),
  };
}
