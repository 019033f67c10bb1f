import { createHash } from 'node:crypto';
import { expect } from 'vitest';
import { endWrite, makeBytes, readImage, sha256, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { reopen, requiredCase, SKIP_REASONS, storedDigest, writeVerified } from './shared.js';

/**
 * Stored digests, for drivers that declare `supports.storedChecksum`: the
 * digest a verified write hands to the writer comes back from
 * `getStoredChecksum`, survives reopening, and is gone with the entry.
 */
export const storedDigestCases: CaseGroup = {
  name: 'stored digest',
  description:
    'For `supports.storedChecksum`: the digest of a checksum-verified write (sha256 via `ImageCache.cacheImage`, bare md5 via `setChecksum`) comes back from `getStoredChecksum`, is unchanged by reads, survives reopening, is `undefined` for unverified entries and absent ids, and is gone after delete, delete-all and an unverified re-cache.',
  register(kit) {
    const noDigest = !kit.supports.storedChecksum && SKIP_REASONS.noStoredChecksum;
    const digestCase = (title: string, fn: Parameters<typeof kit.it>[1]) => requiredCase(kit, title, [noDigest], fn);

    digestCase('getStoredChecksum(id) returns the digest of a checksum-verified write, exactly as formatted, and undefined for an unverified one', async ({ driver }) => {
      expect(typeof driver.getStoredChecksum, 'a driver that declares storedChecksum implements getStoredChecksum').toBe('function');
      const data = makeBytes(5000, 1);
      const digest = await writeVerified(driver, 'verified', data);
      expect(digest).toBe(`sha256:${sha256(data)}`);
      await writeImage(driver, 'plain', makeBytes(100, 2));
      const writer = await driver.openForWrite('md5');
      const md5Data = makeBytes(300, 3);
      writer.setChecksum(createHash('md5').update(md5Data).digest('hex'));
      await endWrite(writer, md5Data);
      expect(await storedDigest(driver, 'verified')).toBe(digest);
      expect(await storedDigest(driver, 'plain')).toBeUndefined();
      expect(await storedDigest(driver, 'md5'), 'a bare md5 hex (Glance style) is stored as given').toBe(createHash('md5').update(md5Data).digest('hex'));
      expect(await storedDigest(driver, 'absent')).toBeUndefined();
      await readImage(driver, 'verified');
      expect(await storedDigest(driver, 'verified'), 'reads leave the digest as it is').toBe(digest);
    });

    const reopenTitle = 'getStoredChecksum(id) of a new driver on the same directory after close() returns the same digest';
    requiredCase(kit, reopenTitle, [noDigest, !kit.persistent && SKIP_REASONS.notPersistent], async (env) => {
      const digest = await writeVerified(env.driver, 'd', makeBytes(2048, 4));
      await env.driver.close();
      expect(await storedDigest(await reopen(env), 'd')).toBe(digest);
    });

    digestCase('getStoredChecksum(id) after deleteCachedImage(id), after an unverified rewrite of a cached id, and after delete-all: undefined', async ({ driver }) => {
      await writeVerified(driver, 'x', makeBytes(100, 5));
      await driver.deleteCachedImage('x');
      expect(await storedDigest(driver, 'x')).toBeUndefined();
      await writeVerified(driver, 'y', makeBytes(100, 6));
      await driver.deleteCachedImage('y');
      await writeImage(driver, 'y', makeBytes(100, 7));
      expect(await storedDigest(driver, 'y'), 'a new unverified entry does not inherit the old digest').toBeUndefined();
      await writeVerified(driver, 'w', makeBytes(100, 9));
      await writeImage(driver, 'w', makeBytes(120, 10)); // rewritten in place of the cached entry, without a digest
      expect(await storedDigest(driver, 'w'), 'an unverified rewrite of a cached id drops the old digest').toBeUndefined();
      await driver.deleteCachedImage('w');
      await writeVerified(driver, 'z', makeBytes(100, 8));
      const digests = new Set([await storedDigest(driver, 'z')]);
      expect(digests.has(undefined)).toBe(false);
      expect(await driver.deleteAllCachedImages()).toBe(2);
      expect(await storedDigest(driver, 'z')).toBeUndefined();
    });
  },
};
