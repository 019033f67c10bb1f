import { createReadStream } from 'node:fs';
import { rename } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createChecksumHash, formatChecksum, parseStoredChecksum, type ImageCache, type ImageId } from '@cache/core';
import { isErrnoError } from '@cache/core/driver';
import { readStoredChecksum } from '../open-cache.js';

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

/**
 * Re-hashes one active entry against the digest stored at commit. The file is
 * read directly, not through `openForRead`, so verification counts no hit and
 * does not change the LRU order. A mismatching entry is moved to `invalid/`
 * (kept for inspection until the next `clean`) and its metadata forgotten, or
 * deleted with `mode: 'delete'`.
 */
export async function verifyEntry(cache: ImageCache, id: ImageId, mode: QuarantineMode): Promise<VerifyResult> {
  if (!(await cache.isCached(id))) return { imageId: id, status: 'missing' };
  const stored = await readStoredChecksum(cache, id);
  if (stored === null) return { imageId: id, status: 'unverifiable', reason: `the ${cache.driver.name} driver stores no digests` };
  if (stored === undefined) return { imageId: id, status: 'unverifiable', reason: 'no digest was stored when it was cached' };
  const expected = parseStoredChecksum(stored);
  if (expected === undefined) return { imageId: id, status: 'unverifiable', reason: `stored digest ${JSON.stringify(stored)} is not readable` };
  const path = cache.getImageFilepath(id, 'active');
  const hash = createChecksumHash(expected);
  try {
    await pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), hash);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT')) return { imageId: id, status: 'missing' };
    throw error;
  }
  const actual = formatChecksum({ algorithm: expected.algorithm, digest: hash.digest('hex') });
  if (actual === formatChecksum(expected)) return { imageId: id, status: 'ok', expected: stored, actual };
  if (mode === 'delete') {
    await cache.deleteCachedImage(id);
    return { imageId: id, status: 'mismatch', expected: stored, actual, action: 'deleted' };
  }
  const invalidPath = cache.getImageFilepath(id, 'invalid');
  try {
    await rename(path, invalidPath);
  } catch (error) {
    if (isErrnoError(error, 'ENOENT')) return { imageId: id, status: 'missing' };
    throw error;
  }
  await cache.deleteCachedImage(id); // the file is gone from the active set; this forgets its metadata
  return { imageId: id, status: 'mismatch', expected: stored, actual, action: 'moved-to-invalid', path: invalidPath };
}
