import { OriginError, normalizeChecksum, type FetchedImage, type ImageId } from '@cache/core';
import { expectedChecksum, type OriginImage } from '@cache/origin';
import { digestEtag } from './entry.js';

/** How the server fills the cache from one opened origin image. */
export interface OriginFill {
  /** For `cache.readThrough`'s fetch: the stream, the announced digest as the checksum, and whether to cache it. */
  fetched: FetchedImage;
  /**
   * The strong ETag the entry gets once the announced digest is verified and
   * stored (`"<algorithm>:<hex>"`), for the miss response; `undefined` without a digest.
   */
  etag: string | undefined;
  /**
   * False for bytes nothing can verify (a close-delimited body without a
   * digest, from an origin without `allowUnverified`): they are passed on to
   * the client and not cached. An origin that does not say (`cacheable`
   * absent) is trusted, as before origins reported it.
   */
  cacheable: boolean;
}

/**
 * Turns what the origin announced into the cache fill: the digest becomes the
 * checksum core verifies while caching (a mismatch is a `ChecksumMismatchError`
 * and nothing is committed), the length is already enforced by the origin's
 * stream, and an unverifiable body is not cached.
 */
export function originFill(id: ImageId, image: OriginImage): OriginFill {
  const cacheable = image.cacheable !== false;
  let checksum;
  try {
    checksum = normalizeChecksum(expectedChecksum(image));
  } catch (cause) {
    image.stream.destroy();
    throw new OriginError(id, `the origin announced an unusable digest: ${(cause as Error).message}`, { cause });
  }
  return {
    fetched: { source: image.stream, ...(checksum === undefined ? {} : { checksum }), cache: cacheable },
    etag: checksum === undefined ? undefined : digestEtag(checksum),
    cacheable,
  };
}
