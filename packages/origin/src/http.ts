import { InvalidArgumentError, assertImageId, type ImageId } from '@cache/core';
import {
  parseContentMd5,
  parseDigestFields,
  parseLegacyDigest,
  resolveExpectation,
  type ExpectedDigest,
  type LengthAnnouncement,
  type OriginExpectation,
  type Verification,
} from './expected.js';
import { CHUNK_SIZE, originImage, type OriginImage } from './image.js';
import { ChecksumManifest } from './manifest.js';
import { OriginTimeoutError } from './errors.js';
import { lowerCaseKeys, openGet, type RequestSettings } from './request.js';
import type { Origin, OriginOpenOptions } from './origin.js';
import { redactUrl } from './redact.js';

/** Options shared by the HTTP origins ({@link HttpOrigin}, `GlanceOrigin`). */
export interface HttpOriginOptions {
  /**
   * Headers sent with every request the origin makes (the image, its
   * metadata, an `http(s)` manifest): e.g. `authorization`, or Glance's
   * `x-auth-token`. Names are case-insensitive.
   */
  headers?: Record<string, string>;
  /**
   * Milliseconds to wait for the response headers of each attempt (a long
   * body is fine); for the small text answers (a Glance image record, an
   * `http(s)` manifest), for the whole answer. Running out is an
   * {@link OriginTimeoutError} (`headers`), retried like a failed connection.
   * @default 30000
   */
  headersTimeout?: number;
  /** The former name of {@link headersTimeout}; `headersTimeout` wins when both are given. @deprecated use `headersTimeout` */
  timeout?: number;
  /**
   * Milliseconds without any body byte, while the cache is waiting for one,
   * after which the image stream fails with an {@link OriginTimeoutError}
   * (`body-idle`) and the connection is dropped. A consumer that stops
   * reading (backpressure) does not count. `0` turns it off. @default 30000
   */
  bodyIdleTimeout?: number;
  /**
   * Milliseconds for a whole `open()` and its body: retries, their waits,
   * the metadata and manifest requests and every body byte. Running out fails
   * `open()` or the stream with an {@link OriginTimeoutError} (`total`). Think
   * of the largest image over the slowest link before setting one.
   * `0` or `undefined`: no limit. @default undefined
   */
  totalTimeout?: number;
  /**
   * Retries of a request that failed before any byte of its answer was taken:
   * no connection, a reset, the headers timeout, a 5xx or 429 answer. Never a
   * 404 (or another 4xx), never once body bytes have flowed: a body that
   * breaks off fails the stream, and the caller decides. Applies to every
   * request (the image, a Glance record, an `http(s)` manifest). @default 2
   */
  retries?: number;
  /**
   * Milliseconds before the first retry; each further one waits twice as
   * long, capped at {@link maxRetryDelay}, and every wait is between half
   * and all of that (jitter). An answer's `Retry-After` is waited for when
   * longer. @default 250
   */
  retryDelay?: number;
  /**
   * The longest wait before a retry. An answer whose `Retry-After` asks for
   * longer is not retried: its `OriginError` (with `retryAfter`) is thrown
   * at once, for a server to pass on. @default 10000
   */
  maxRetryDelay?: number;
  /**
   * A checksum manifest (`sha256sum` format: `<hex>  <name>` lines) as a file
   * path or an `http(s)` URL, read at every `open()`. The digest it gives an
   * image is announced as `expected.digest` (source `manifest`).
   */
  manifest?: string;
  /**
   * Let a fill be cached when nothing can verify it: a close-delimited body
   * (no `Content-Length`, not chunked) with no digest, whose cut connection
   * looks just like its end. When false, such an image is served with
   * `cacheable: false`. @default false
   */
  allowUnverified?: boolean;
}

const ID_PLACEHOLDER = '{id}';

/** The defaults of {@link HttpOriginOptions}' timeouts and retries, in milliseconds (`totalTimeout`: none). */
export const HTTP_ORIGIN_DEFAULTS: Readonly<{
  headersTimeout: number;
  bodyIdleTimeout: number;
  totalTimeout: undefined;
  retries: number;
  retryDelay: number;
  maxRetryDelay: number;
}> = Object.freeze({ headersTimeout: 30_000, bodyIdleTimeout: 30_000, totalTimeout: undefined, retries: 2, retryDelay: 250, maxRetryDelay: 10_000 });

/** Validated {@link HttpOriginOptions}. */
export interface ResolvedHttpOptions {
  headers: Record<string, string>;
  headersTimeout: number;
  /** `undefined`: off. */
  bodyIdleTimeout: number | undefined;
  /** `undefined`: no limit. */
  totalTimeout: number | undefined;
  retries: number;
  retryDelay: number;
  maxRetryDelay: number;
  manifest: ChecksumManifest | undefined;
  allowUnverified: boolean;
}

/** Validates the options shared by HTTP origins; `InvalidArgumentError` for a bad one. */
export function resolveHttpOptions(options: HttpOriginOptions): ResolvedHttpOptions {
  const headersTimeout = options.headersTimeout ?? options.timeout ?? HTTP_ORIGIN_DEFAULTS.headersTimeout;
  milliseconds(headersTimeout, options.headersTimeout === undefined && options.timeout !== undefined ? 'timeout' : 'headersTimeout', false);
  const bodyIdleTimeout = milliseconds(options.bodyIdleTimeout ?? HTTP_ORIGIN_DEFAULTS.bodyIdleTimeout, 'bodyIdleTimeout', true);
  const totalTimeout = milliseconds(options.totalTimeout ?? 0, 'totalTimeout', true);
  const retries = options.retries ?? HTTP_ORIGIN_DEFAULTS.retries;
  if (typeof retries !== 'number' || !Number.isSafeInteger(retries) || retries < 0 || retries > 100) {
    throw new InvalidArgumentError(`origin retries must be a whole number from 0 to 100, got ${String(retries)}`);
  }
  const retryDelay = milliseconds(options.retryDelay ?? HTTP_ORIGIN_DEFAULTS.retryDelay, 'retryDelay', true) ?? 0;
  const maxRetryDelay = milliseconds(options.maxRetryDelay ?? HTTP_ORIGIN_DEFAULTS.maxRetryDelay, 'maxRetryDelay', true) ?? 0;
  if (maxRetryDelay < retryDelay) {
    throw new InvalidArgumentError(`origin maxRetryDelay (${maxRetryDelay} ms) must not be below retryDelay (${retryDelay} ms)`);
  }
  const allowUnverified = options.allowUnverified ?? false;
  if (typeof allowUnverified !== 'boolean') {
    throw new InvalidArgumentError(`origin allowUnverified must be a boolean, got ${String(allowUnverified)}`);
  }
  return {
    // Identity unless the caller insists otherwise: a compressed body's Content-Length is not the image size.
    headers: { 'accept-encoding': 'identity', ...lowerCaseKeys(options.headers ?? {}) },
    headersTimeout,
    bodyIdleTimeout,
    totalTimeout,
    retries,
    retryDelay,
    maxRetryDelay,
    manifest: options.manifest === undefined ? undefined : new ChecksumManifest(options.manifest),
    allowUnverified,
  };
}

/** Longest delay a Node timer holds (about 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;

/** Checks a number of milliseconds: > 0 (or 0, meaning off, when `zeroOff`: then `undefined`); at most {@link MAX_TIMER}. */
function milliseconds(value: unknown, name: string, zeroOff: boolean): number | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (value === 0 && !zeroOff) || value > MAX_TIMER) {
    throw new InvalidArgumentError(`origin ${name} must be a number of ms ${zeroOff ? '>= 0' : '> 0'} and at most ${MAX_TIMER}, got ${String(value)}`);
  }
  return value === 0 ? undefined : value;
}

/** The request settings of one `open()`, and the signal that carries its total timeout. */
export interface OpenScope {
  settings: RequestSettings;
  /** Clears the total timeout; call once the body is done with or `open()` failed. */
  release: () => void;
}

/**
 * Request settings for one `open()`: the options, and a signal that aborts
 * with the caller's reason, or with an {@link OriginTimeoutError} (`total`)
 * when `totalTimeout` runs out.
 */
export function openScope(id: ImageId, what: string, options: ResolvedHttpOptions, signal: AbortSignal | undefined): OpenScope {
  const base: RequestSettings = {
    headers: options.headers,
    timeout: options.headersTimeout,
    bodyIdleTimeout: options.bodyIdleTimeout,
    retries: options.retries,
    retryDelay: options.retryDelay,
    maxRetryDelay: options.maxRetryDelay,
    signal,
  };
  const total = options.totalTimeout;
  if (total === undefined) return { settings: base, release: () => undefined };
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  if (signal?.aborted === true) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => {
    controller.abort(new OriginTimeoutError(id, `${what}: not complete within ${total} ms (total timeout)`, { timeout: 'total', timeoutMs: total }));
  }, total);
  return {
    settings: { ...base, signal: controller.signal },
    release: () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    },
  };
}

/** Checks that `url` parses and is `http:` or `https:`; `what` names it in messages. */
export function assertHttpUrl(url: string, what: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(url)} is not a valid URL: ${(cause as Error).message}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new InvalidArgumentError(`${what} URL must be http: or https:, got ${parsed.protocol}`);
  }
}

/** What an HTTP image response is read with. */
export interface ResponseContext {
  id: ImageId;
  url: string;
  /** Announcements from elsewhere (Glance metadata, a manifest), preferred over the response's own headers. */
  lengths: LengthAnnouncement[];
  digests: ExpectedDigest[];
  allowUnverified: boolean;
  signal: AbortSignal | undefined;
}

/**
 * Opens `url` and turns its response into an {@link OriginImage}: the
 * headers' announcements (`Content-Length`, `Repr-Digest`, `Content-Digest`,
 * `Digest`, `Content-MD5`; none of them for an encoded body, whose headers
 * describe the compressed bytes) merged with `context`'s, and the
 * verification level the framing allows.
 */
export async function openHttpImage(context: ResponseContext, settings: RequestSettings): Promise<OriginImage> {
  const { id, url } = context;
  const opened = await openGet(url, id, settings);
  const { response, release } = opened;
  const headers = response.headers;
  const encoding = headers.get('content-encoding');
  const encoded = encoding !== null && encoding.trim().toLowerCase() !== 'identity';
  const contentLength = headers.get('content-length')?.trim() ?? null;
  const lengths = [...context.lengths];
  const digests = [...context.digests];
  if (!encoded) {
    if (contentLength !== null && /^\d+$/.test(contentLength)) lengths.push({ value: Number(contentLength), source: 'content-length' });
    digests.push(
      ...parseDigestFields(headers.get('repr-digest'), 'repr-digest'),
      ...parseDigestFields(headers.get('content-digest'), 'content-digest'),
      ...parseLegacyDigest(headers.get('digest')),
      ...parseContentMd5(headers.get('content-md5')),
    );
  }
  let expected: OriginExpectation;
  try {
    expected = resolveExpectation(id, `GET ${url}`, lengths, digests);
  } catch (error) {
    release();
    await response.body?.cancel().catch(() => undefined);
    throw error;
  }
  // A chunked body (or an encoded one with a Content-Length) has framing: a cut connection is an error, not an end.
  const framed = contentLength !== null || /\bchunked\b/i.test(headers.get('transfer-encoding') ?? '');
  const verification: Verification =
    expected.digest !== undefined ? 'digest' : expected.length !== undefined ? 'length' : framed ? 'framing' : 'none';
  const body = opened.body(CHUNK_SIZE);
  const image = originImage(body, {
    id,
    what: `GET ${url}`,
    expected,
    verification,
    allowUnverified: context.allowUnverified,
    signal: context.signal,
  });
  image.stream.once('close', release);
  return image;
}

/**
 * Fetches `template` with `{id}` replaced by the URL-encoded image id, using
 * Node's built-in `fetch`. It asks for an unencoded body (`Accept-Encoding:
 * identity`) so the bytes cached are the image's bytes; should the origin
 * compress anyway, the decoded bytes are streamed, and the length and
 * digests in the headers (which describe the compressed bytes) are ignored.
 *
 * What the response announces becomes the image's `expected`:
 * `Content-Length`; `Repr-Digest` / `Content-Digest` (RFC 9530,
 * `sha-256=:<base64>:`); `Digest` (RFC 3230, `SHA-256=<base64>`);
 * `Content-MD5`; and a digest from the `manifest` option.
 *
 * @example
 * ```ts
 * const origin = new HttpOrigin('https://images.example/v2/images/{id}/file');
 * const { stream, size, expected, cacheable } = await origin.open('cirros');
 * ```
 */
export class HttpOrigin implements Origin {
  readonly description: string;
  readonly #template: string;
  readonly #options: ResolvedHttpOptions;

  /**
   * @param template - an `http:` or `https:` URL containing `{id}`.
   * @throws InvalidArgumentError for a template without `{id}`, an invalid URL, another scheme, or a bad option.
   */
  constructor(template: string, options: HttpOriginOptions = {}) {
    if (typeof template !== 'string' || !template.includes(ID_PLACEHOLDER)) {
      throw new InvalidArgumentError(`an HTTP origin needs a URL template containing ${ID_PLACEHOLDER}, got ${JSON.stringify(template)}`);
    }
    assertHttpUrl(template.replaceAll(ID_PLACEHOLDER, 'x'), 'origin');
    this.description = redactUrl(template);
    this.#template = template;
    this.#options = resolveHttpOptions(options);
  }

  /** The URL of one image. Throws `InvalidImageIdError` for an invalid id. */
  urlFor(id: ImageId): string {
    assertImageId(id);
    return this.#template.replaceAll(ID_PLACEHOLDER, encodeURIComponent(id));
  }

  async open(id: ImageId, options: OriginOpenOptions = {}): Promise<OriginImage> {
    const url = this.urlFor(id);
    options.signal?.throwIfAborted();
    const scope = openScope(id, `GET ${url}`, this.#options, options.signal);
    try {
      const { settings } = scope;
      const fromManifest = await this.#options.manifest?.digestFor(id, settings);
      const image = await openHttpImage(
        {
          id,
          url,
          lengths: [],
          digests: fromManifest === undefined ? [] : [fromManifest],
          allowUnverified: this.#options.allowUnverified,
          signal: settings.signal,
        },
        settings,
      );
      image.stream.once('close', scope.release);
      return image;
    } catch (error) {
      scope.release();
      throw error;
    }
  }
}
