import { Readable } from 'node:stream';
import { OriginError, type ImageId } from '@cache/core';
import { OriginTimeoutError } from './errors.js';

/** How an origin makes its HTTP requests. */
export interface RequestSettings {
  /** Request headers, keys lower-case. */
  headers: Record<string, string>;
  /** Milliseconds to wait for the response headers, per attempt (for {@link getText}: for the whole answer). */
  timeout: number;
  /** Milliseconds without a body byte, while one is awaited, after which the body fails ({@link OpenResponse.body}). */
  bodyIdleTimeout?: number | undefined;
  /** Retries of a request that failed before its response headers (see {@link isRetryable}). @default 0 */
  retries?: number | undefined;
  /** Milliseconds before the first retry; doubled for each further one, with jitter. */
  retryDelay?: number | undefined;
  /** Longest wait before a retry, and longest `Retry-After` that is waited for. */
  maxRetryDelay?: number | undefined;
  /** The caller's signal (or the total timeout's): aborts the request, the retry waits and the body, with its reason. */
  signal?: AbortSignal | undefined;
}

/** A 2xx response whose body is still to be read. */
export interface OpenResponse {
  response: Response;
  /** Stops listening to the caller's signal (and clears a timer still running); call once the body is done with. */
  release: () => void;
  /**
   * The body as a Node stream (call once, instead of reading `response.body`).
   * It fails with an {@link OriginTimeoutError} (`body-idle`) when the origin
   * sends no byte for `bodyIdleTimeout` ms while the stream is waiting for one
   * (a consumer that stops reading does not count), and drops the connection.
   */
  body: (highWaterMark: number) => Readable;
}

/**
 * GETs `url` with Node's `fetch`. Resolves once the response headers are in,
 * for a 2xx answer with a body. Rejects with an `OriginError` carrying the
 * status for another answer, without one when there was no answer in time or
 * at all, and with the caller's abort reason when it aborted.
 *
 * A failure before the response headers that {@link isRetryable} allows (no
 * connection, the headers timeout, a 5xx or 429 answer) is retried up to
 * `settings.retries` times, after an exponential back-off with jitter or the
 * answer's `Retry-After` (a `Retry-After` beyond `maxRetryDelay` is not waited
 * for: the error, carrying it, is thrown). Nothing is retried once the headers
 * of a 2xx answer are in.
 */
export async function openGet(url: string, id: ImageId, settings: RequestSettings, options: { timeBody?: boolean } = {}): Promise<OpenResponse> {
  const retries = settings.retries ?? 0;
  for (let attempt = 0; ; attempt++) {
    try {
      return await attemptGet(url, id, settings, options);
    } catch (error) {
      if (attempt >= retries || settings.signal?.aborted === true || !isRetryable(error)) throw error;
      const wait = retryWait(error as OriginError, attempt, settings);
      if (wait === undefined) throw error;
      await sleep(wait, settings.signal);
    }
  }
}

/**
 * Whether a failed attempt may be made again: an `OriginError` with no
 * status (no connection, a reset before the headers, the headers timeout) or
 * with a 5xx or 429 status. Never a 404 or another 4xx, never the caller's abort.
 */
export function isRetryable(error: unknown): boolean {
  if (!OriginError.isInstance(error)) return false;
  if (OriginTimeoutError.isInstance(error) && error.timeout !== 'headers') return false;
  const status = error.status;
  return status === undefined || status === 429 || (status >= 500 && status <= 599);
}

/**
 * Milliseconds to wait before retry `attempt + 1`: `retryDelay * 2^attempt`
 * capped at `maxRetryDelay`, between half and all of it (jitter, so that
 * hosts retrying one origin spread out); at least the answer's `Retry-After`.
 * `undefined` when `Retry-After` asks for longer than `maxRetryDelay`.
 */
export function retryWait(error: OriginError, attempt: number, settings: RequestSettings, random: () => number = Math.random): number | undefined {
  const base = settings.retryDelay ?? 0;
  const cap = settings.maxRetryDelay ?? Number.POSITIVE_INFINITY;
  const backoff = Math.min(cap, base * 2 ** attempt);
  const jittered = backoff / 2 + random() * (backoff / 2);
  const after = retryAfterMs(error.retryAfter);
  if (after !== undefined && after > cap) return undefined;
  return Math.round(Math.max(jittered, after ?? 0));
}

/** A `Retry-After` (delay-seconds or an HTTP-date) in milliseconds from now. */
function retryAfterMs(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** One GET, as {@link openGet} describes, without retries. */
async function attemptGet(url: string, id: ImageId, settings: RequestSettings, options: { timeBody?: boolean }): Promise<OpenResponse> {
  const { signal, timeout } = settings;
  signal?.throwIfAborted();
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    const what = options.timeBody === true ? 'complete answer' : 'response headers';
    controller.abort(new OriginTimeoutError(id, `GET ${url}: no ${what} within ${timeout} ms (headers timeout)`, { timeout: 'headers', timeoutMs: timeout }));
  }, timeout);
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  const release = () => {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  };
  let response: Response;
  try {
    response = await fetch(url, { headers: settings.headers, signal: controller.signal, redirect: 'follow' });
  } catch (cause) {
    release();
    if (signal?.aborted === true && !timedOut) throw signal.reason;
    if (timedOut) throw controller.signal.reason;
    throw new OriginError(id, `GET ${url}: ${describeCause(cause)}`, { cause });
  }
  // The timeout covers the response headers only (unless asked otherwise): a long body is fine.
  if (options.timeBody !== true) clearTimeout(timer);
  if (!response.ok || response.body === null) {
    release();
    await response.body?.cancel().catch(() => undefined);
    const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
    throw new OriginError(id, `GET ${url} answered ${response.status} ${response.statusText}`.trimEnd(), {
      status: response.status,
      ...(retryAfter === undefined ? {} : { retryAfter }),
    });
  }
  const webBody = response.body;
  const body = (highWaterMark: number): Readable => {
    const idleTimeout = settings.bodyIdleTimeout;
    const reader = webBody.getReader();
    let received = 0;
    let idle: NodeJS.Timeout | undefined;
    const stream: Readable = new Readable({
      highWaterMark,
      read() {
        if (idleTimeout !== undefined) {
          idle = setTimeout(() => {
            const error = new OriginTimeoutError(id, `GET ${url}: no body byte for ${idleTimeout} ms after ${received} bytes (body idle timeout)`, {
              timeout: 'body-idle',
              timeoutMs: idleTimeout,
            });
            controller.abort(error); // drops the connection
            stream.destroy(error);
          }, idleTimeout);
        }
        reader.read().then(
          (result) => {
            clearTimeout(idle);
            if (result.done) stream.push(null);
            else {
              received += result.value.byteLength;
              stream.push(result.value);
            }
          },
          (cause: unknown) => {
            clearTimeout(idle);
            stream.destroy(cause instanceof Error ? cause : new Error(String(cause)));
          },
        );
      },
      destroy(error, callback) {
        clearTimeout(idle);
        reader.cancel(error ?? undefined).catch(() => undefined);
        callback(error);
      },
    });
    return stream;
  };
  return { response, release, body };
}

/** GETs `url` and reads the whole answer as text, `timeout` covering all of it (per attempt). Errors as {@link openGet}. */
export async function getText(url: string, id: ImageId, settings: RequestSettings): Promise<string> {
  const { response, release } = await openGet(url, id, settings, { timeBody: true });
  try {
    return await response.text();
  } catch (cause) {
    if (settings.signal?.aborted === true) throw settings.signal.reason;
    if (OriginError.isInstance(cause)) throw cause; // the timeout's reason
    throw new OriginError(id, `GET ${url}: the answer broke off: ${describeCause(cause)}`, { cause });
  } finally {
    release();
  }
}

/**
 * A `Retry-After` value worth passing on (RFC 9110 10.2.3): delay-seconds
 * (at most 9 digits) or an HTTP-date, trimmed; anything else is dropped.
 */
export function parseRetryAfter(value: string | null): string | undefined {
  const text = value?.trim();
  if (text === undefined || text === '' || text.length > 64) return undefined;
  if (/^\d{1,9}$/.test(text)) return text;
  return /^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(text) && !Number.isNaN(Date.parse(text)) ? text : undefined;
}

export function describeCause(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = cause.cause instanceof Error ? `: ${cause.cause.message}` : '';
    return `${cause.message}${inner}`;
  }
  return String(cause);
}

export function lowerCaseKeys(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
}
