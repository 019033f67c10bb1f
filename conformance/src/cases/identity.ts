import { expect } from 'vitest';
import { makeBytes, readImage, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { readTimes, storedDigest, writeFromAnotherProcess, writeVerified } from './shared.js';

/**
 * File identity: metadata belongs to the file it was recorded for. A file
 * replaced or rewritten under the same id by someone else starts at 0 hits,
 * with no stored digest, whatever the old entry had.
 */
export const identityCases: CaseGroup = {
  name: 'file identity',
  description:
    'A file replaced under its id by another process (rename over it: new inode; or rewritten in place: new size and mtime) does not inherit the old file\'s hits, digest or last access; its reads count from 1.',
  register(kit) {
    for (const how of ['rename', 'inplace'] as const) {
      const what = how === 'rename' ? 'replaced by a rename from another process (new inode)' : 'rewritten in place by another process (same inode, new size)';
      kit.it(`getHitCount(id) and getStoredChecksum(id) of a file ${what}: 0 hits, no digest; reads count from 1`, async ({ driver, dir }) => {
        await writeVerified(driver, 'img', makeBytes(2000, 1));
        await writeImage(driver, 'other', makeBytes(100, 2));
        await readTimes(driver, 'img', 3);
        await readTimes(driver, 'other', 2);
        await writeFromAnotherProcess(dir, 'img', 1500, { fill: 9, how: how });
        expect(await driver.getHitCount('img'), 'hits of the new file').toBe(0);
        expect(await storedDigest(driver, 'img'), 'the old digest does not describe the new bytes').toBeUndefined();
        const listed = await driver.getCachedImages();
        expect(listed.map((i) => [i.imageId, i.size, i.hits])).toEqual([
          ['img', 1500, 0],
          ['other', 100, 2],
        ]);
        expect((await readImage(driver, 'img')).equals(Buffer.alloc(1500, 9))).toBe(true);
        expect(await driver.getHitCount('img'), 'the first read of the new file is its first hit').toBe(1);
        expect(await storedDigest(driver, 'img')).toBeUndefined();
        await driver.clean();
        expect((await driver.getCachedImages()).map((i) => [i.imageId, i.hits]), 'after clean()').toEqual([
          ['img', 1],
          ['other', 2],
        ]);
      });
    }

    kit.it('getLeastRecentlyAccessed() after a file is replaced: the new file is not ranked by the old one\'s last access', async ({ driver, dir }) => {
      await writeImage(driver, 'a', makeBytes(100, 1));
      await writeImage(driver, 'b', makeBytes(100, 2));
      await readImage(driver, 'b');
      await readImage(driver, 'a'); // the old b was read before a
      // Another process (tens of milliseconds to start) puts a new b in place after a's read.
      await writeFromAnotherProcess(dir, 'b', 100, { fill: 9, how: 'rename' });
      expect((await driver.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual([
        ['a', 1],
        ['b', 0],
      ]);
      expect((await driver.getLeastRecentlyAccessed())?.imageId, 'the new b (written after a was read) is newer than a').toBe('a');
    });
  },
};
