import { InvalidArgumentError, OriginError, assertImageId, type ImageId } from '@cache/core';
import { digestAlgorithm, hexDigest, type ExpectedDigest, type LengthAnnouncement } from './expected.js';
import { assertHttpUrl, openHttpImage, openScope, resolveHttpOptions, type HttpOriginOptions, type ResolvedHttpOptions } from './http.js';
import type { OriginImage } from './image.js';
import type { Origin, OriginOpenOptions } from './origin.js';
import { getText, type RequestSettings } from './request.js';
import { redactUrl } from './redact.js';

/** Options of {@link GlanceOrigin}: those of an HTTP origin. Put the Keystone token in `headers['x-auth-token']`. */
export type GlanceOriginOptions = HttpOriginOptions;

/** The fields of a Glance v2 image record that the origin reads. */
interface GlanceImage {
  status?: unknown;
  size?: unknown;
  checksum?: unknown;
  os_hash_algo?: unknown;
  os_hash_value?: unknown;
}

/**
 * An OpenStack Glance (image API v2) as the origin. For each image it asks
 * `GET {endpoint}/v2/images/{id}` for the record, refuses an image that is
 * not `active`, and announces the record's `size` as the length and its
 * `os_hash_algo`/`os_hash_value` (multihash, sha512 by default) as the digest,
 * or its `checksum` (md5) when the multihash is absent or of an algorithm the
 * cache cannot verify. Then it streams `GET {endpoint}/v2/images/{id}/file`
 * (whose `Content-Length` and `Content-MD5` must agree with the record).
 * Every request carries the configured `headers`, e.g. `x-auth-token`.
 *
 * @example
 * ```ts
 * const origin = new GlanceOrigin('https://glance.example:9292', { headers: { 'x-auth-token': token } });
 * const image = await origin.open('7f0e...'); // image.expected.digest: { algorithm: 'sha512', hex, source: 'glance' }
 * ```
 */
export class GlanceOrigin implements Origin {
  readonly description: string;
  /** The endpoint, without a trailing slash. */
  readonly endpoint: string;
  readonly #options: ResolvedHttpOptions;

  /**
   * @param endpoint - the image service's `http(s)` URL as in the Keystone catalog, e.g. `https://glance.example:9292`.
   * @throws InvalidArgumentError for an invalid URL, another scheme, or a bad option.
   */
  constructor(endpoint: string, options: GlanceOriginOptions = {}) {
    if (typeof endpoint !== 'string' || endpoint.trim() === '') {
      throw new InvalidArgumentError('a Glance origin needs the image service URL, e.g. https://glance.example:9292');
    }
    assertHttpUrl(endpoint, 'Glance endpoint');
    this.endpoint = endpoint.replace(/\/+$/, '');
    this.description = `glance ${redactUrl(this.endpoint)}`;
    this.#options = resolveHttpOptions(options);
  }

  /** The URL of an image's record. Throws `InvalidImageIdError` for an invalid id. */
  recordUrl(id: ImageId): string {
    assertImageId(id);
    return `${this.endpoint}/v2/images/${encodeURIComponent(id)}`;
  }

  async open(id: ImageId, options: OriginOpenOptions = {}): Promise<OriginImage> {
    const url = this.recordUrl(id);
    options.signal?.throwIfAborted();
    const scope = openScope(id, `GET ${url}/file`, this.#options, options.signal);
    try {
      const image = await this.#open(id, url, scope.settings);
      image.stream.once('close', scope.release);
      return image;
    } catch (error) {
      scope.release();
      throw error;
    }
  }

  async #open(id: ImageId, url: string, settings: RequestSettings): Promise<OriginImage> {
    const fromManifest = await this.#options.manifest?.digestFor(id, settings);
    const record = parseRecord(id, url, await getText(url, id, settings));
    if (record.status !== 'active') {
      throw new OriginError(id, `Glance image is ${JSON.stringify(record.status)}, not "active": it has no data to serve`);
    }
    const lengths: LengthAnnouncement[] = [];
    if (typeof record.size === 'number' && Number.isSafeInteger(record.size) && record.size >= 0) {
      lengths.push({ value: record.size, source: 'glance' });
    }
    const digests: ExpectedDigest[] = fromManifest === undefined ? [] : [fromManifest];
    const algorithm = typeof record.os_hash_algo === 'string' ? digestAlgorithm(record.os_hash_algo) : undefined;
    const multihash = algorithm === undefined ? undefined : hexDigest(algorithm, record.os_hash_value);
    if (algorithm !== undefined && multihash !== undefined) digests.push({ algorithm, hex: multihash, source: 'glance' });
    const md5 = hexDigest('md5', record.checksum);
    if (md5 !== undefined) digests.push({ algorithm: 'md5', hex: md5, source: 'glance' });
    return openHttpImage(
      { id, url: `${url}/file`, lengths, digests, allowUnverified: this.#options.allowUnverified, signal: settings.signal },
      settings,
    );
  }
}

function parseRecord(id: ImageId, url: string, text: string): GlanceImage {
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch (cause) {
    throw new OriginError(id, `GET ${url}: the image record is not JSON: ${(cause as Error).message}`, { cause });
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record)) {
    throw new OriginError(id, `GET ${url}: the image record is not a JSON object`);
  }
  return record as GlanceImage;
}
