import { OriginError, type Checksum, type ImageId } from '@cache/core';
import { parseDictionary } from './structured-fields.js';

/** Digest algorithms an origin can announce and the cache can verify. */
export type DigestAlgorithm = 'sha256' | 'sha512' | 'md5';

/**
 * Where an announced digest came from:
 * - `repr-digest`, `content-digest`: the RFC 9530 `Repr-Digest` / `Content-Digest` response headers;
 * - `digest`: the older RFC 3230 `Digest` header;
 * - `content-md5`: the `Content-MD5` header (what Glance sends);
 * - `manifest`: a `sha256sum`-style manifest configured on the origin;
 * - `glance`: the image's Glance metadata (`os_hash_algo`/`os_hash_value`, else `checksum`).
 */
export type DigestSource = 'repr-digest' | 'content-digest' | 'digest' | 'content-md5' | 'manifest' | 'glance';

/**
 * Where an announced length came from: the `Content-Length` of an unencoded
 * HTTP body, the image's Glance metadata (`size`), or the size of a file.
 */
export type LengthSource = 'content-length' | 'glance' | 'file';

/** A digest an origin announced for an image's bytes. */
export interface ExpectedDigest {
  readonly algorithm: DigestAlgorithm;
  /** Lower-case hexadecimal. */
  readonly hex: string;
  readonly source: DigestSource;
}

/**
 * What an origin announced about an image before sending it: the yardsticks a
 * fill is measured against. Every field is optional: an origin may announce
 * nothing (a close-delimited HTTP body without any digest header).
 */
export interface OriginExpectation {
  /**
   * The byte length. The image's stream enforces it: a body that ends short
   * of it or runs past it errors with an {@link OriginLengthError}.
   */
  readonly length?: number;
  /** Where {@link OriginExpectation.length} came from. */
  readonly lengthSource?: LengthSource;
  /**
   * The strongest digest announced (sha512, then sha256, then md5). The
   * origin does not check it itself: pass it on as the cache's checksum
   * (see {@link expectedChecksum}), which verifies it while caching and stores it.
   */
  readonly digest?: ExpectedDigest;
}

/**
 * How far the end of an image's body can be trusted, best first:
 * - `digest`: a digest was announced, so every byte is verified (by the cache, with {@link expectedChecksum});
 * - `length`: the length was announced and the stream enforces it;
 * - `framing`: no length, but the HTTP framing (chunked transfer coding, or the
 *   `Content-Length` of an encoded body) makes a cut connection an error rather than an end;
 * - `none`: a close-delimited body with nothing announced: a cut connection
 *   looks exactly like the end of the image.
 */
export type Verification = 'digest' | 'length' | 'framing' | 'none';

/** One length announcement, before conflicting ones are rejected. */
export interface LengthAnnouncement {
  value: number;
  source: LengthSource;
}

const STRENGTH: Record<DigestAlgorithm, number> = { sha512: 3, sha256: 2, md5: 1 };
const BYTES: Record<DigestAlgorithm, number> = { sha512: 64, sha256: 32, md5: 16 };

/**
 * Merges what one response announced. Lengths must agree, and so must digests
 * of the same algorithm: an origin that contradicts itself is an
 * {@link OriginError}. Of the digests, the strongest wins; among equals, the
 * first listed.
 */
export function resolveExpectation(
  id: ImageId,
  what: string,
  lengths: readonly LengthAnnouncement[],
  digests: readonly ExpectedDigest[],
): OriginExpectation {
  const [firstLength] = lengths;
  for (const other of lengths) {
    if (firstLength !== undefined && other.value !== firstLength.value) {
      throw new OriginError(id, `${what}: the ${firstLength.source} length ${firstLength.value} contradicts the ${other.source} length ${other.value}`);
    }
  }
  let best: ExpectedDigest | undefined;
  for (const digest of digests) {
    const same = digests.find((d) => d.algorithm === digest.algorithm);
    if (same !== undefined && same.hex !== digest.hex) {
      throw new OriginError(
        id,
        `${what}: the ${same.source} ${same.algorithm} digest ${same.hex} contradicts the ${digest.source} one ${digest.hex}`,
      );
    }
    if (best === undefined || STRENGTH[digest.algorithm] > STRENGTH[best.algorithm]) best = digest;
  }
  return {
    ...(firstLength === undefined ? {} : { length: firstLength.value, lengthSource: firstLength.source }),
    ...(best === undefined ? {} : { digest: best }),
  };
}

/**
 * The announced digest as a checksum for `@cache/core`
 * (`cache.readThrough(id, { fetch })` with a fetch resolving to
 * `{ source, checksum }`, `getCachingStream(id, source, { checksum })`,
 * `cacheImage(...)`), or `undefined` when none was announced.
 *
 * @example
 * ```ts
 * const image = await origin.open(id);
 * await cache.cacheImage(id, image.stream, { checksum: expectedChecksum(image) });
 * ```
 */
export function expectedChecksum(image: { readonly expected?: OriginExpectation | undefined }): Checksum | undefined {
  const digest = image.expected?.digest;
  return digest === undefined ? undefined : { algorithm: digest.algorithm, digest: digest.hex };
}

/** Maps a digest algorithm name (`sha-256`, `SHA-512`, `sha512`, `MD5`...) to ours; `undefined` for any other. */
export function digestAlgorithm(name: string): DigestAlgorithm | undefined {
  const key = name.trim().toLowerCase().replaceAll('-', '');
  return key === 'sha256' || key === 'sha512' || key === 'md5' ? key : undefined;
}

/** A hex digest checked for its algorithm's length, lower-cased; `undefined` when malformed. */
export function hexDigest(algorithm: DigestAlgorithm, hex: unknown): string | undefined {
  if (typeof hex !== 'string' || hex.length !== BYTES[algorithm] * 2 || !/^[0-9a-fA-F]+$/.test(hex)) return undefined;
  return hex.toLowerCase();
}

function fromBytes(algorithm: DigestAlgorithm, bytes: Buffer, source: DigestSource): ExpectedDigest | undefined {
  return bytes.length === BYTES[algorithm] ? { algorithm, hex: bytes.toString('hex'), source } : undefined;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function fromBase64(algorithm: DigestAlgorithm, text: string, source: DigestSource): ExpectedDigest | undefined {
  const value = text.trim();
  return BASE64.test(value) ? fromBytes(algorithm, Buffer.from(value, 'base64'), source) : undefined;
}

/**
 * The digests of an RFC 9530 `Repr-Digest` or `Content-Digest` field value
 * (a structured-field dictionary such as `sha-256=:<base64>:, sha-512=:<base64>:`).
 * Members with other algorithms, or values that are not byte sequences of
 * the right length, are skipped; a value that does not parse as a dictionary
 * is ignored as a whole (RFC 8941 section 4.2).
 */
export function parseDigestFields(value: string | null, source: 'repr-digest' | 'content-digest'): ExpectedDigest[] {
  if (value === null) return [];
  const members = parseDictionary(value);
  if (members === undefined) return [];
  const digests: ExpectedDigest[] = [];
  for (const [key, item] of members) {
    const algorithm = key === 'sha-256' ? 'sha256' : key === 'sha-512' ? 'sha512' : key === 'md5' ? 'md5' : undefined;
    if (algorithm === undefined || !Buffer.isBuffer(item)) continue;
    const digest = fromBytes(algorithm, item, source);
    if (digest !== undefined) digests.push(digest);
  }
  return digests;
}

/**
 * The digests of an RFC 3230 `Digest` field value (`SHA-256=<base64>,
 * MD5=<base64>`; algorithm names are case-insensitive). Other algorithms and
 * malformed values are skipped.
 */
export function parseLegacyDigest(value: string | null): ExpectedDigest[] {
  if (value === null) return [];
  const digests: ExpectedDigest[] = [];
  for (const part of value.split(',')) {
    const equals = part.indexOf('=');
    if (equals <= 0) continue;
    const name = part.slice(0, equals).trim().toLowerCase();
    const algorithm = name === 'sha-256' ? 'sha256' : name === 'sha-512' ? 'sha512' : name === 'md5' ? 'md5' : undefined;
    if (algorithm === undefined) continue;
    const digest = fromBase64(algorithm, part.slice(equals + 1), 'digest');
    if (digest !== undefined) digests.push(digest);
  }
  return digests;
}

/**
 * The digest of a `Content-MD5` field value: base64 of the 16-byte MD5 (RFC
 * 1864), or the 32-character hex digest that Glance sends there (the two
 * cannot be confused: base64 of 16 bytes is 24 characters). None when malformed.
 */
export function parseContentMd5(value: string | null): ExpectedDigest[] {
  if (value === null) return [];
  const hex = hexDigest('md5', value.trim());
  const digest = hex !== undefined ? { algorithm: 'md5' as const, hex, source: 'content-md5' as const } : fromBase64('md5', value, 'content-md5');
  return digest === undefined ? [] : [digest];
}
