import { writeFile } from 'node:fs/promises';
import { ImageCache, type CacheDriver } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, readImage, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { layout, listedIds, whereOnDisk } from './common.js';

const KIB = 1024;

/** e00 ... e10, committed in that order, 1 KiB each. */
const ELEVEN = Array.from({ length: 11 }, (_, i) => `e${String(i).padStart(2, '0')}`);

async function commitEleven(driver: CacheDriver): Promise<void> {
  for (const [i, id] of ELEVEN.entries()) await writeImage(driver, id, makeBytes(KIB, i));
}

/**
 * Group 9: prune through the facade (`ImageCache.open({ driver, maxSize })`):
 * evicts least recently accessed entries until the cache is within budget,
 * and stops.
 */
export const pruneCases: CaseGroup = {
  name: 'prune (ImageCache facade)',
  description:
    'Through `ImageCache.open({ driver, maxSize })`: eleven 1 KiB entries at 5 KiB prune to `{files: 6, bytes: 6144}`, evicting the six least recently accessed. A recently read entry survives. `maxSize: 0` empties the cache and stops. An empty cache, or one exactly at the budget, returns zeros. `incomplete/`, `invalid/` and `queue/` are left alone.',
  register(kit) {
    kit.it('ImageCache.prune() evicts the six least recently accessed of eleven 1 KiB entries at maxSize 5 KiB', async ({ driver, dir }) => {
      await commitEleven(driver);
      const cache = await ImageCache.open({ driver, maxSize: 5 * KIB });
      expect(await cache.prune()).toEqual({ files: 6, bytes: 6 * KIB });
      expect(await listedIds(driver)).toEqual(ELEVEN.slice(6));
      expect(await driver.getCacheSize()).toBe(5 * KIB);
      for (const id of ELEVEN.slice(0, 6)) expect(await whereOnDisk(dir, id), `${id} evicted`).toEqual([]);
      for (const id of ELEVEN.slice(6)) expect(await whereOnDisk(dir, id), `${id} kept`).toEqual(['active']);
      expect(await cache.prune(), 'a second prune has nothing to do').toEqual({ files: 0, bytes: 0 });
    });

    kit.it('ImageCache.prune() keeps an entry that was read recently', async ({ driver }) => {
      await commitEleven(driver);
      await readImage(driver, 'e00');
      const cache = await ImageCache.open({ driver, maxSize: 5 * KIB });
      expect(await cache.prune()).toEqual({ files: 6, bytes: 6 * KIB });
      expect(await listedIds(driver)).toEqual(['e00', 'e07', 'e08', 'e09', 'e10']);
    });

    kit.it('ImageCache.prune() with maxSize 0 evicts everything and stops', async ({ driver }) => {
      await commitEleven(driver);
      const cache = await ImageCache.open({ driver, maxSize: 0 });
      expect(await cache.prune()).toEqual({ files: 11, bytes: 11 * KIB });
      expect(await driver.getCachedImages()).toEqual([]);
      expect(await driver.getLeastRecentlyAccessed()).toBeNull();
      expect(await cache.prune()).toEqual({ files: 0, bytes: 0 });
    });

    kit.it('ImageCache.prune() on an empty cache returns {files: 0, bytes: 0}', async ({ driver }) => {
      const cache = await ImageCache.open({ driver, maxSize: 0 });
      expect(await cache.prune()).toEqual({ files: 0, bytes: 0 });
    });

    kit.it('ImageCache.prune() evicts nothing when the cache is exactly at maxSize', async ({ driver }) => {
      await commitEleven(driver);
      const cache = await ImageCache.open({ driver, maxSize: 11 * KIB });
      expect(await cache.prune()).toEqual({ files: 0, bytes: 0 });
      expect(await listedIds(driver)).toEqual(ELEVEN);
    });

    kit.it('ImageCache.prune() leaves incomplete/, invalid/ and queue/ alone', async ({ driver, dir }) => {
      const at = layout(dir);
      await commitEleven(driver);
      await writeFile(at.incomplete('stalled'), makeBytes(3 * KIB));
      await writeFile(at.invalid('broken'), makeBytes(3 * KIB));
      expect(await driver.queueImage('wanted')).toBe(true);
      const cache = await ImageCache.open({ driver, maxSize: 0 });
      expect(await cache.prune()).toEqual({ files: 11, bytes: 11 * KIB });
      expect(await whereOnDisk(dir, 'stalled')).toEqual(['incomplete']);
      expect(await whereOnDisk(dir, 'broken')).toEqual(['invalid']);
      expect(await whereOnDisk(dir, 'wanted')).toEqual(['queue']);
    });
  },
};
