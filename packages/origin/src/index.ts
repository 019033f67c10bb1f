/**
 * `@cache/origin`: where image bytes come from on a cache miss. An origin is
 * an HTTP(S) URL template (`https://origin/images/{id}`), an OpenStack Glance
 * image service, or a local directory holding one file per image id. Each
 * gives a stream, what the origin announced about it (length, digest) and
 * typed {@link OriginError}s.
 *
 * @packageDocumentation
 */
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from '@cache/core';
import { DirectoryOrigin } from './directory.js';
import { GlanceOrigin } from './glance.js';
import { HttpOrigin, type HttpOriginOptions } from './http.js';
import type { Origin } from './origin.js';

export { OriginError } from '@cache/core';
export { OriginLengthError, OriginTimeoutError, type OriginTimeout } from './errors.js';
export {
  expectedChecksum,
  type DigestAlgorithm,
  type DigestSource,
  type ExpectedDigest,
  type LengthSource,
  type OriginExpectation,
  type Verification,
} from './expected.js';
export type { OriginImage } from './image.js';
export type { Origin, OriginOpenOptions } from './origin.js';
export { HTTP_ORIGIN_DEFAULTS, HttpOrigin, type HttpOriginOptions } from './http.js';
export { GlanceOrigin, type GlanceOriginOptions } from './glance.js';
export { DirectoryOrigin, type DirectoryOriginOptions } from './directory.js';
export { ChecksumManifest } from './manifest.js';
export { redactUrl } from './redact.js';

/** Options of {@link createOrigin}: those of the HTTP origins; a directory origin uses only `manifest`. */
export type CreateOriginOptions = HttpOriginOptions;

/**
 * Builds an origin from an operator's string: an `http(s)://` URL template
 * containing `{id}`, `glance+http(s)://host:port` for a Glance image service
 * (see {@link GlanceOrigin}), a `file://` URL, or a directory path (relative
 * paths resolve against the working directory).
 *
 * @throws InvalidArgumentError for an empty spec, another URL scheme, or a malformed URL.
 */
export function createOrigin(spec: string, options: CreateOriginOptions = {}): Origin {
  if (typeof spec !== 'string' || spec.trim() === '') {
    throw new InvalidArgumentError('origin must be a URL template such as https://origin/images/{id} or a directory path');
  }
  if (/^https?:\/\//i.test(spec)) return new HttpOrigin(spec, options);
  if (/^glance\+https?:\/\//i.test(spec)) return new GlanceOrigin(spec.slice('glance+'.length), options);
  if (/^file:\/\//i.test(spec)) {
    let path: string;
    try {
      path = fileURLToPath(spec);
    } catch (cause) {
      throw new InvalidArgumentError(`origin ${JSON.stringify(spec)} is not a usable file: URL: ${(cause as Error).message}`);
    }
    return new DirectoryOrigin(path, directoryOptions(options));
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) {
    throw new InvalidArgumentError(
      `unsupported origin scheme in ${JSON.stringify(spec)}: use http://, https://, glance+http(s)://, file:// or a path`,
    );
  }
  return new DirectoryOrigin(spec, directoryOptions(options));
}

function directoryOptions(options: CreateOriginOptions): { manifest?: string } {
  return options.manifest === undefined ? {} : { manifest: options.manifest };
}
