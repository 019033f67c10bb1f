import { writeFile } from 'node:fs/promises';
import { expect } from 'vitest';
import { abortWrite, makeBytes, snapshotTree, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { ErrorCodes, expectRejects, layout, whereOnDisk } from './common.js';

/**
 * Group 3: ids that have no active entry. Deleting them is a no-op; reading
 * or sizing them rejects with `ImageNotCachedError`; their hit count is 0. An
 * id that is only being written, invalid or queued is not cached either.
 */
export const unknownIdCases: CaseGroup = {
  name: 'unknown ids',
  description:
    'Deleting an unknown id is a no-op. `openForRead` and `getImageSize` reject with `CACHE_IMAGE_NOT_CACHED`, also for ids that are only being written, invalid or queued. `getHitCount` is 0. `deleteCachedImage` leaves an id\'s queue, incomplete and invalid files alone.',
  register(kit) {
    kit.it('deleteCachedImage(id) of an unknown id is a no-op', async ({ driver, dir }) => {
      await writeImage(driver, 'a', makeBytes(10));
      const before = await snapshotTree(dir);
      await expect(driver.deleteCachedImage('unknown')).resolves.toBeUndefined();
      expect(await snapshotTree(dir)).toEqual(before);
      expect(await driver.isCached('a')).toBe(true);
    });

    kit.it('deleteQueuedImage(id) of an unknown id is a no-op', async ({ driver, dir }) => {
      expect(await driver.queueImage('q')).toBe(true);
      const before = await snapshotTree(dir);
      await expect(driver.deleteQueuedImage('unknown')).resolves.toBeUndefined();
      expect(await snapshotTree(dir)).toEqual(before);
      expect(await driver.getQueuedImages()).toEqual(['q']);
    });

    kit.it('openForRead(id) rejects an unknown id with ImageNotCachedError', async ({ driver }) => {
      await expectRejects(driver.openForRead('unknown'), ErrorCodes.IMAGE_NOT_CACHED, "openForRead('unknown')");
    });

    kit.it('getImageSize(id) rejects an unknown id with ImageNotCachedError', async ({ driver }) => {
      await expectRejects(driver.getImageSize('unknown'), ErrorCodes.IMAGE_NOT_CACHED, "getImageSize('unknown')");
    });

    kit.it('getHitCount(id) is 0 for an unknown id', async ({ driver }) => {
      expect(await driver.getHitCount('unknown')).toBe(0);
    });

    kit.it('openForRead(id) and getImageSize(id) reject with ImageNotCachedError an id that is only being written, invalid or queued', async ({ driver, dir }) => {
      const at = layout(dir);
      const writer = await driver.openForWrite('writing');
      writer.write(makeBytes(100));
      await writeFile(at.invalid('failed'), makeBytes(50));
      expect(await driver.queueImage('queued')).toBe(true);
      try {
        for (const id of ['writing', 'failed', 'queued']) {
          expect(await driver.isCached(id), `isCached(${id})`).toBe(false);
          expect(await driver.getHitCount(id), `getHitCount(${id})`).toBe(0);
          await expectRejects(driver.openForRead(id), ErrorCodes.IMAGE_NOT_CACHED, `openForRead(${id})`);
          await expectRejects(driver.getImageSize(id), ErrorCodes.IMAGE_NOT_CACHED, `getImageSize(${id})`);
        }
        expect(await driver.isCacheable('writing'), 'an id being written is not cacheable').toBe(false);
        expect(await driver.isCacheable('failed'), 'an id with only an invalid/ file is cacheable').toBe(true);
        expect(await driver.isCacheable('queued'), 'a queued id is cacheable').toBe(true);
        expect(await driver.getCachedImages()).toEqual([]);
        expect(await driver.getCacheSize()).toBe(0);
      } finally {
        await abortWrite(writer);
      }
    });

    kit.it('deleteCachedImage(id) leaves the queue marker and the incomplete/ and invalid/ files of the id alone', async ({ driver, dir }) => {
      const at = layout(dir);
      await writeImage(driver, 'a', makeBytes(10));
      await writeFile(at.queue('a'), '');
      await writeFile(at.incomplete('a'), makeBytes(5));
      await writeFile(at.invalid('a'), makeBytes(6));
      await driver.deleteCachedImage('a');
      expect(await whereOnDisk(dir, 'a')).toEqual(['incomplete', 'invalid', 'queue']);
      expect(await driver.isCached('a')).toBe(false);
    });
  },
};
