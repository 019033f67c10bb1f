import { OriginError, type ImageId } from '@cache/core';

/** How an origin makes its HTTP requests. */
export interface RequestSettings {
  /** Request headers, keys lower-case. */
  headers: Record<string, string>;
  /** Milliseconds to wait for the response headers (for {@link getText}: for the whole answer). */
  timeout: number;
  /** The caller's signal: aborts the request and the body, with its reason. */
  signal?: AbortSignal | undefined;
}

/** A 2xx response whose body is still to be read. */
export interface OpenResponse {
  response: Response;
  /** Stops listening to the caller's signal (and clears a timer still running); call once the body is done with. */
  release: () => void;
}

/**
 * GETs `url` with Node's `fetch`. Resolves once the response headers are in,
 * for a 2xx answer with a body. Rejects with an `OriginError` carrying the
 * status for another answer, without one when there was no answer in time or
 * at all, and with the caller's abort reason when it aborted.
 */
export async function openGet(url: string, id: ImageId, settings: RequestSettings, options: { timeBody?: boolean } = {}): Promise<OpenResponse> {
  const { signal, timeout } = settings;
  signal?.throwIfAborted();
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new OriginError(id, `GET ${url}: no ${options.timeBody === true ? 'complete answer' : 'response headers'} within ${timeout} ms`));
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
  return { response, release };
}

/** GETs `url` and reads the whole answer as text, `timeout` covering all of it. Errors as {@link openGet}. */
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
