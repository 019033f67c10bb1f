/**
 * `@cache/origin`: where image bytes come from on a cache miss. An origin is
 * an HTTP(S) URL template (`https://origin/images/{id}`) or a local directory
 * holding one file per image id. Both give a stream, a size when known, and
 * typed {@link OriginError}s.
 *
 * @packageDocumentation
 */
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, OriginError, assertImageId, type ImageId } from '@cache/core';
import { isErrnoError } from '@cache/core/driver';

export { OriginError } from '@cache/core';

/** One image as the origin serves it. */
export interface OriginImage {
  /**
   * The bytes. Consume or destroy it. An origin failure mid-stream (including
   * a body shorter or longer than the announced `size`) errors it with an
   * {@link OriginError}; an abort by the caller's signal errors it with the
   * signal's reason.
   */
  stream: Readable;
  /** Byte length, when the origin says (HTTP `Content-Length` of an unencoded body, file size). */
  size: number | undefined;
}

/** Options of {@link Origin.open}. */
export interface OriginOpenOptions {
  /**
   * Aborts the request and destroys the stream. An abort is the caller's
   * doing, not an origin failure: `open()` rejects, and the stream errors,
   * with the signal's `reason` (an `AbortError` by default), not an `OriginError`.
   */
  signal?: AbortSignal;
}

/** A source of images by id. */
export interface Origin {
  /** Human-readable description (the URL template or the directory), for logs and CLI output. */
  readonly description: string;
  /**
   * Opens one image. Rejects with `InvalidImageIdError` for an invalid id, with
   * an {@link OriginError} whose `status` is 404 when the origin does not have
   * it, and with another status or none for other failures.
   */
  open(id: ImageId, options?: OriginOpenOptions): Promise<OriginImage>;
}

/** Options of {@link HttpOrigin}. */
export interface HttpOriginOptions {
  /** Extra request headers (e.g. `authorization`). */
  headers?: Record<string, string>;
  /** Milliseconds to wait for the response headers (a long body is fine). @default 30000 */
  timeout?: number;
}

const ID_PLACEHOLDER = '{id}';
const CHUNK_SIZE = 1024 * 1024;

/**
 * Fetches `template` with `{id}` replaced by the URL-encoded image id, using
 * Node's built-in `fetch`. It asks for an unencoded body (`Accept-Encoding:
 * identity`) so the bytes cached are the image's bytes; should the origin
 * compress anyway, the decoded bytes are streamed and `size` is unknown.
 *
 * @example
 * ```ts
 * const origin = new HttpOrigin('https://images.example/v2/images/{id}/file');
 * const { stream, size } = await origin.open('cirros');
 * ```
 */
export class HttpOrigin implements Origin {
  readonly description: string;
  readonly #template: string;
  readonly #headers: Record<string, string>;
  readonly #timeout: number;

  /**
   * @param template - an `http:` or `https:` URL containing `{id}`.
   * @throws InvalidArgumentError for a template without `{id}`, an invalid URL, another scheme, or a bad timeout.
   */
  constructor(template: string, options: HttpOriginOptions = {}) {
    if (typeof template !== 'string' || !template.includes(ID_PLACEHOLDER)) {
      throw new InvalidArgumentError(`an HTTP origin needs a URL template containing ${ID_PLACEHOLDER}, got ${JSON.stringify(template)}`);
    }
    let url: URL;
    try {
      url = new URL(template.replaceAll(ID_PLACEHOLDER, 'x'));
    } catch (cause) {
      throw new InvalidArgumentError(`origin ${JSON.stringify(template)} is not a valid URL: ${(cause as Error).message}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new InvalidArgumentError(`origin URL must be http: or https:, got ${url.protocol}`);
    }
    const timeout = options.timeout ?? 30_000;
    if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0) {
      throw new InvalidArgumentError(`origin timeout must be a number of ms > 0, got ${String(timeout)}`);
    }
    this.description = template;
    this.#template = template;
    // Identity unless the caller insists otherwise: a compressed body's Content-Length is not the image size.
    this.#headers = { 'accept-encoding': 'identity', ...lowerCaseKeys(options.headers ?? {}) };
    this.#timeout = timeout;
  }

  /** The URL of one image. Throws `InvalidImageIdError` for an invalid id. */
  urlFor(id: ImageId): string {
    assertImageId(id);
    return this.#template.replaceAll(ID_PLACEHOLDER, encodeURIComponent(id));
  }

  async open(id: ImageId, options: OriginOpenOptions = {}): Promise<OriginImage> {
    const url = this.urlFor(id);
    const { signal } = options;
    signal?.throwIfAborted();
    // The timeout covers the response headers only; a long body is fine. The caller's signal aborts both.
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.#timeout);
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const release = () => signal?.removeEventListener('abort', onAbort);
    let response: Response;
    try {
      response = await fetch(url, { headers: this.#headers, signal: controller.signal, redirect: 'follow' });
    } catch (cause) {
      release();
      if (signal?.aborted === true && !timedOut) throw signal.reason;
      const reason = timedOut ? `no response headers within ${this.#timeout} ms` : describeCause(cause);
      throw new OriginError(id, `GET ${url}: ${reason}`, { cause });
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok || response.body === null) {
      release();
      await response.body?.cancel().catch(() => undefined);
      throw new OriginError(id, `GET ${url} answered ${response.status} ${response.statusText}`.trimEnd(), {
        status: response.status,
      });
    }
    const encoding = response.headers.get('content-encoding');
    const length = response.headers.get('content-length');
    const encoded = encoding !== null && encoding.trim().toLowerCase() !== 'identity';
    const size = !encoded && length !== null && /^\d+$/.test(length.trim()) ? Number(length.trim()) : undefined;
    const body = Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>, { highWaterMark: CHUNK_SIZE });
    const stream = guardStream(body, { id, what: `GET ${url}`, size, signal });
    stream.once('close', release);
    return { stream, size };
  }
}

/**
 * Reads `<directory>/<id>`. Ids are validated first, so no id can name a path
 * outside the directory. A file that is missing, or is not a regular file,
 * is a 404 `OriginError`.
 */
export class DirectoryOrigin implements Origin {
  readonly description: string;
  /** Absolute path of the directory. */
  readonly directory: string;

  /** @throws InvalidArgumentError for an empty path. */
  constructor(directory: string) {
    if (typeof directory !== 'string' || directory.length === 0) {
      throw new InvalidArgumentError('a directory origin needs a non-empty path');
    }
    this.directory = resolve(directory);
    this.description = this.directory;
  }

  async open(id: ImageId, options: OriginOpenOptions = {}): Promise<OriginImage> {
    assertImageId(id);
    const { signal } = options;
    signal?.throwIfAborted();
    const path = join(this.directory, id);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (cause) {
      const missing = isErrnoError(cause, 'ENOENT', 'ENOTDIR');
      throw new OriginError(id, missing ? `no file ${path}` : `cannot open ${path}: ${describeCause(cause)}`, {
        cause,
        ...(missing ? { status: 404 } : {}),
      });
    }
    let size: number;
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw new OriginError(id, `${path} is not a regular file`, { status: 404 });
      size = stat.size;
      signal?.throwIfAborted();
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw OriginError.isInstance(error) || signal?.aborted === true
        ? error
        : new OriginError(id, `cannot stat ${path}: ${describeCause(error)}`, { cause: error });
    }
    const file = createReadStream(path, { fd: handle, highWaterMark: CHUNK_SIZE });
    // The size is the file's when opened; a file that shrinks or grows while being read is an origin failure.
    return { stream: guardStream(file, { id, what: `read ${path}`, size, signal }), size };
  }
}

/**
 * Builds an origin from an operator's string: an `http(s)://` URL template
 * containing `{id}`, a `file://` URL, or a directory path (relative paths
 * resolve against the working directory).
 *
 * @throws InvalidArgumentError for an empty spec, another URL scheme, or a malformed URL.
 */
export function createOrigin(spec: string, options: HttpOriginOptions = {}): Origin {
  if (typeof spec !== 'string' || spec.trim() === '') {
    throw new InvalidArgumentError('origin must be a URL template such as https://origin/images/{id} or a directory path');
  }
  if (/^https?:\/\//i.test(spec)) return new HttpOrigin(spec, options);
  if (/^file:\/\//i.test(spec)) {
    let path: string;
    try {
      path = fileURLToPath(spec);
    } catch (cause) {
      throw new InvalidArgumentError(`origin ${JSON.stringify(spec)} is not a usable file: URL: ${(cause as Error).message}`);
    }
    return new DirectoryOrigin(path);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) {
    throw new InvalidArgumentError(`unsupported origin scheme in ${JSON.stringify(spec)}: use http://, https://, file:// or a path`);
  }
  return new DirectoryOrigin(spec);
}

interface GuardContext {
  id: ImageId;
  /** What is being read, for messages (`GET <url>`, `read <path>`). */
  what: string;
  /** Expected byte count, when known. */
  size: number | undefined;
  signal: AbortSignal | undefined;
}

/**
 * Passes `source` through, turning its failures into `OriginError`s (or the
 * caller's abort reason), and failing when it ends short of or beyond `size`.
 * Destroying the returned stream destroys the source.
 */
function guardStream(source: Readable, context: GuardContext): Readable {
  const { id, what, size, signal } = context;
  let received = 0;
  const guarded = new Transform({
    readableHighWaterMark: CHUNK_SIZE,
    writableHighWaterMark: CHUNK_SIZE,
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      received += chunk.length;
      if (size !== undefined && received > size) {
        callback(new OriginError(id, `${what} sent more than the expected ${size} bytes`));
        return;
      }
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      if (size !== undefined && received !== size) {
        callback(new OriginError(id, `${what} ended after ${received} of ${size} bytes`));
        return;
      }
      callback();
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

function lowerCaseKeys(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
}

function describeCause(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = cause.cause instanceof Error ? `: ${cause.cause.message}` : '';
    return `${cause.message}${inner}`;
  }
  return String(cause);
}
