import { readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageCache, type CacheDriver } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, writeImage, inspectFile } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { readTimes, reopen, requiredCase, SKIP_REASONS, writeVerified } from './shared.js';

/** The facade over the case's driver (it uses the driver's `statImage`/`quarantineImage` when it has them). */
function facade(driver: CacheDriver): Promise<ImageCache> {
  return ImageCache.open({ driver });
}

/** Renames a new file over the entry, as another process (or Glance) would. */
async function replaceFile(dir: string, id: string, data: Buffer): Promise<void> {
  await writeFile(join(dir, 'incomplete', id), data);
  await rename(join(dir, 'incomplete', id), join(dir, id));
}

/**
 * One entry at a time, through `ImageCache`: `stat(id)` reports the file and
 * the metadata the listing reports; `quarantine(id)` takes an entry out to
 * `invalid/` and forgets it.
 */
export const statQuarantineCases: CaseGroup = {
  name: 'stat and quarantine',
  description:
    "Through `ImageCache` (the driver's `statImage`/`quarantineImage`, or core's fallback): `stat(id)` gives the size, identity, hits, access and commit times the listing gives, and the stored digest; `null` when not cached; a file replaced under the id gets a new identity and no inherited hits. `quarantine(id, { reason })` moves the file to `invalid/` and forgets the entry (also for a new driver on the directory); with `identity` it leaves a replacement alone.",
  register(kit) {
    kit.it('stat(id) reports the size, identity, hits and times getCachedImages() lists, and the stored digest; null when not cached', async ({ driver }) => {
      const cache = await facade(driver);
      const digest = await writeVerified(driver, 'img', makeBytes(3000, 31));
      await writeImage(driver, 'other', makeBytes(10, 32));
      await readTimes(driver, 'img', 2);
      const stat = await cache.stat('img');
      const listed = (await driver.getCachedImages()).find((image) => image.imageId === 'img');
      expect(stat).not.toBeNull();
      expect(stat?.imageId).toBe('img');
      expect(stat?.size).toBe(3000);
      expect(stat?.hits).toBe(2);
      expect(stat?.lastAccessed).toBe(listed?.lastAccessed);
      expect(stat?.lastModified).toBe(listed?.lastModified);
      expect(typeof stat?.identity).toBe('string');
      expect(stat?.identity).not.toBe((await cache.stat('other'))?.identity);
      expect(stat?.storedChecksum, 'the digest stored at commit (supports.storedChecksum)').toBe(kit.supports.storedChecksum ? digest : undefined);
      expect(await cache.stat('absent')).toBeNull();
    });

    kit.it('stat(id) of a file renamed over the entry: a new identity, the new size, 0 hits and no digest', async ({ driver, dir }) => {
      const cache = await facade(driver);
      await writeVerified(driver, 'img', makeBytes(2000, 33));
      await readTimes(driver, 'img', 3);
      const before = await cache.stat('img');
      await replaceFile(dir, 'img', makeBytes(2500, 34));
      const after = await cache.stat('img');
      expect(after?.identity).not.toBe(before?.identity);
      expect(after?.size).toBe(2500);
      expect(after?.hits).toBe(0);
      expect(after?.storedChecksum).toBeUndefined();
    });

    kit.it('quarantine(id, { reason }) moves the file to invalid/ and forgets the entry; a new entry under the id starts from 0 hits', async ({ driver, dir }) => {
      const cache = await facade(driver);
      const data = makeBytes(1500, 35);
      await writeVerified(driver, 'img', data);
      await writeImage(driver, 'other', makeBytes(10, 36));
      await readTimes(driver, 'img', 2);
      expect(await cache.quarantine('img', { reason: 'digest mismatch' })).toBe(true);
      expect(await driver.isCached('img')).toBe(false);
      expect((await driver.getCachedImages()).map((image) => image.imageId)).toEqual(['other']);
      expect(await driver.getHitCount('img')).toBe(0);
      expect((await inspectFile(join(dir, 'invalid', 'img'))).equals(data), 'the quarantined bytes are kept in invalid/ for inspection').toBe(true);
      expect(await cache.quarantine('img', { reason: 'again' }), 'nothing left to quarantine').toBe(false);
      await writeImage(driver, 'img', makeBytes(1500, 37));
      expect(await driver.getHitCount('img')).toBe(0);
      expect(await cache.stat('img')).toMatchObject({ hits: 0, storedChecksum: undefined });
    });

    kit.it('quarantine(id, { identity }) leaves alone a file that replaced the one it names', async ({ driver, dir }) => {
      const cache = await facade(driver);
      await writeImage(driver, 'img', makeBytes(1000, 38));
      const checked = await cache.stat('img');
      await replaceFile(dir, 'img', makeBytes(1200, 39));
      expect(await cache.quarantine('img', { reason: 'mismatch', identity: checked?.identity as string })).toBe(false);
      expect(await driver.isCached('img')).toBe(true);
      expect(await readdir(join(dir, 'invalid'))).toEqual([]);
    });

    const reopenTitle = 'quarantine(id) is seen by a new driver on the same directory: the entry is not listed and has no hits';
    requiredCase(kit, reopenTitle, [!kit.persistent && SKIP_REASONS.notPersistent], async (env) => {
      const cache = await facade(env.driver);
      await writeImage(env.driver, 'img', makeBytes(800, 40));
      await readTimes(env.driver, 'img', 2);
      expect(await cache.quarantine('img', { reason: 'mismatch' })).toBe(true);
      await env.driver.close();
      const other = await reopen(env);
      expect(await other.getCachedImages()).toEqual([]);
      expect(await other.getHitCount('img')).toBe(0);
      await writeImage(other, 'img', makeBytes(800, 41));
      expect(await other.getHitCount('img')).toBe(0);
    });
  },
};
