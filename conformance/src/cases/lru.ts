import { utimes, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { makeBytes, readImage, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { layout } from './common.js';

/**
 * Group 8: least-recently-accessed order. Fresh entries count as accessed at
 * their commit; a completed read makes an entry the most recent; ties in
 * access time are broken by commit time, then by id.
 */
export const lruCases: CaseGroup = {
  name: 'least recently accessed',
  description:
    'LRA is `{imageId, size}`. A fresh entry counts as accessed at its commit. A read moves an entry to most recent. The order does not depend on ids. Ties in time are broken by id (files placed on disk with equal times).',
  register(kit) {
    kit.it('getLeastRecentlyAccessed() is the oldest commit when nothing was read, as exactly {imageId, size}', async ({ driver }) => {
      await writeImage(driver, 'a', makeBytes(100));
      await writeImage(driver, 'b', makeBytes(200));
      await writeImage(driver, 'c', makeBytes(300));
      expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'a', size: 100 });
    });

    kit.it('getLeastRecentlyAccessed() moves past an entry that was read: commit a, b, c; read a -> b', async ({ driver }) => {
      await writeImage(driver, 'a', makeBytes(100));
      await writeImage(driver, 'b', makeBytes(200));
      await writeImage(driver, 'c', makeBytes(300));
      await readImage(driver, 'a');
      expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'b', size: 200 });
      await readImage(driver, 'b');
      expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'c', size: 300 });
      await readImage(driver, 'c');
      expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'a', size: 100 });
    });

    kit.it('getLeastRecentlyAccessed() does not depend on id order: commit c, b, a -> c', async ({ driver }) => {
      for (const id of ['c', 'b', 'a']) await writeImage(driver, id, makeBytes(10));
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('c');
      await readImage(driver, 'c');
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('b');
    });

    kit.it('getCachedImages() ordered by lastAccessed follows the reads', async ({ driver }) => {
      for (const id of ['a', 'b', 'c', 'd']) await writeImage(driver, id, makeBytes(10));
      for (const id of ['c', 'a', 'd', 'b']) {
        // More than one kernel timestamp tick (1-10 ms), so a driver that ranks by atime sees distinct times too.
        await sleep(12);
        await readImage(driver, id);
      }
      const images = await driver.getCachedImages();
      const byAccess = [...images].sort((x, y) => x.lastAccessed - y.lastAccessed).map((image) => image.imageId);
      expect(byAccess).toEqual(['c', 'a', 'd', 'b']);
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('c');
    });

    kit.it('getLeastRecentlyAccessed() after deleteCachedImage(id) of the least recent is the next one', async ({ driver }) => {
      for (const id of ['a', 'b', 'c']) await writeImage(driver, id, makeBytes(10));
      await driver.deleteCachedImage('a');
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('b');
      await driver.deleteCachedImage('b');
      await driver.deleteCachedImage('c');
      expect(await driver.getLeastRecentlyAccessed()).toBeNull();
    });

    kit.it('getLeastRecentlyAccessed() breaks a tie in access and commit time by id (files with equal times, placed on disk)', async ({ driver, dir }) => {
      const at = layout(dir);
      const t = Math.floor(Date.now() / 1000) - 3600;
      for (const id of ['m', 'c', 'x']) {
        await writeFile(at.active(id), makeBytes(50));
        await utimes(at.active(id), t, t);
      }
      await writeImage(driver, 'a', makeBytes(10));
      expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'c', size: 50 });
      await driver.deleteCachedImage('c');
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('m');
    });
  },
};
