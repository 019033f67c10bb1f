import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
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
import { lowerCaseKeys, openGet, type RequestSettings } from './request.js';
import type { Origin, OriginOpenOptions } from './origin.js';

/** Options shared by the HTTP origins ({@link HttpOrigin}, `GlanceOrigin`). */
export interface HttpOriginOptions {
  /**
   * Headers sent with every request the origin makes (the image, its
   * metadata, an `http(s)` manifest): e.g. `authorization`, or Glance's
   * `x-auth-token`. Names are case-insensitive.
   */
  headers?: Record<string, string>;
  /** Milliseconds to wait for the response headers (a long body is fine). @default 30000 */
  timeout?: number;
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

/** Validated {@link HttpOriginOptions}. */
export interface ResolvedHttpOptions {
  headers: Record<string, string>;
  timeout: number;
  manifest: ChecksumManifest | undefined;
  allowUnverified: boolean;
}

/** Validates the options shared by HTTP origins; `InvalidArgumentError` for a bad one. */
export function resolveHttpOptions(options: HttpOriginOptions): ResolvedHttpOptions {
  const timeout = options.timeout ?? 30_000;
  if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0) {
    throw new InvalidArgumentError(`origin timeout must be a number of ms > 0, got ${String(timeout)}`);
  }
  const allowUnverified = options.allowUnverified ?? false;
  if (typeof allowUnverified !== 'boolean') {
    throw new InvalidArgumentError(`origin allowUnverified must be a boolean, got ${String(allowUnverified)}`);
  }
  return {
    // Identity unless the caller insists otherwise: a compressed body's Content-Length is not the image size.
    headers: { 'accept-encoding': 'identity', ...lowerCaseKeys(options.headers ?? {}) },
    timeout,
    manifest: options.manifest === undefined ? undefined : new ChecksumManifest(options.manifest),
    allowUnverified,
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
  const { response, release } = await openGet(url, id, settings);
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
  const body = Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>, { highWaterMark: CHUNK_SIZE });
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
    this.description = template;
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
    const settings: RequestSettings = { headers: this.#options.headers, timeout: this.#options.timeout, signal: options.signal };
    options.signal?.throwIfAborted();
    const fromManifest = await this.#options.manifest?.digestFor(id, settings);
    return openHttpImage(
      {
        id,
        url,
        lengths: [],
        digests: fromManifest === undefined ? [] : [fromManifest],
        allowUnverified: this.#options.allowUnverified,
        signal: options.signal,
      },
      settings,
    );
  }
}
