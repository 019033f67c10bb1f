import { pipeline } from 'node:stream/promises';
import {
  createChecksumHash,
  formatChecksum,
  ImageChangedError,
  ImageNotCachedError,
  parseStoredChecksum,
  type ImageCache,
  type ImageId,
} from '@cache/core';
/** How one entry's verification ended. */
export interface VerifyResult {
  imageId: ImageId;
  /**
   * - `ok`: the file hashes to the stored digest;
   * - `mismatch`: it does not; the entry was quarantined (see `action`);
   * - `unverifiable`: no digest was stored at commit (cached without a checksum, or by Glance), or the driver keeps none;
   * - `missing`: not cached (a given id that is not in the cache, or deleted while verifying).
   */
  status: 'ok' | 'mismatch' | 'unverifiable' | 'missing';
  /** The stored digest, as stored (`sha256:<hex>` or md5 hex). */
  expected?: string;
  /** The digest computed now, in the same form. */
  actual?: string;
  /** For a mismatch: where the entry went. */
  action?: 'moved-to-invalid' | 'deleted';
  /** Where the file now is (for `moved-to-invalid`). */
  path?: string;
  /** Why it is unverifiable. */
  reason?: string;
}

/** How a mismatching entry is taken out of the cache. */
export type QuarantineMode = 'invalid' | 'delete';

/** Times an entry replaced while it was being verified is looked at again before it counts as missing. */
const MAX_ATTEMPTS = 3;

/**
 * Re-hashes one active entry against the digest stored at commit, through
 * the cache: `stat(id)` for the digest and the file's identity, then
 * `openForRead(id, { countHit: false, identity })`, so verification counts
 * no hit and does not change the LRU order. A mismatching entry is moved to
 * `invalid/` with `quarantine(id, { identity })` (kept for inspection until
 * the next `clean`; its metadata is forgotten), or deleted with
 * `mode: 'delete'`. An entry replaced while it was being hashed is verified
 * again (the replacement is another file); one deleted meanwhile is `missing`.
 */
export async function verifyEntry(cache: ImageCache, id: ImageId, mode: QuarantineMode): Promise<VerifyResult> {
  for (let attempt = 1; ; attempt++) {
    const result = await verifyOnce(cache, id, mode);
    if (result !== 'replaced') return result;
    if (attempt >= MAX_ATTEMPTS) return { imageId: id, status: 'missing' };
  }
}

async function verifyOnce(cache: ImageCache, id: ImageId, mode: QuarantineMode): Promise<VerifyResult | 'replaced'> {
  const entry = await cache.stat(id);
  if (entry === null) return { imageId: id, status: 'missing' };
  if (cache.driver.getStoredChecksum === undefined) {
    return { imageId: id, status: 'unverifiable', reason: `the ${cache.driver.name} driver stores no digests` };
  }
  const stored = entry.storedChecksum;
  if (stored === undefined) return { imageId: id, status: 'unverifiable', reason: 'no digest was stored when it was cached' };
  const expected = parseStoredChecksum(stored);
  if (expected === undefined) return { imageId: id, status: 'unverifiable', reason: `stored digest ${JSON.stringify(stored)} is not readable` };
  const hash = createChecksumHash(expected);
  try {
    await pipeline(await cache.openForRead(id, { countHit: false, identity: entry.identity }), hash);
  } catch (error) {
    if (ImageNotCachedError.isInstance(error)) return { imageId: id, status: 'missing' };
    if (ImageChangedError.isInstance(error)) return 'replaced';
    throw error;
  }
  const actual = formatChecksum({ algorithm: expected.algorithm, digest: hash.digest('hex') });
  if (actual === formatChecksum(expected)) return { imageId: id, status: 'ok', expected: stored, actual };
  if (mode === 'delete') {
    await cache.deleteCachedImage(id);
    return { imageId: id, status: 'mismatch', expected: stored, actual, action: 'deleted' };
  }
  const reason = `digest mismatch found by image-cache verify: expected ${stored}, got ${actual}`;
  if (!(await cache.quarantine(id, { reason, identity: entry.identity }))) {
    // Deleted or replaced after it was hashed: look again.
    return (await cache.isCached(id)) ? 'replaced' : { imageId: id, status: 'missing' };
  }
  return { imageId: id, status: 'mismatch', expected: stored, actual, action: 'moved-to-invalid', path: cache.getImageFilepath(id, 'invalid') };
}
