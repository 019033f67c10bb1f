import { rm } from 'node:fs/promises';
import { ImageCache } from '@cache/core';
import { expect } from 'vitest';
import { abortWrite, makeBytes, readImage, writeChunk, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { layout } from './common.js';
import { expectConsistent, readTimes, reopen, storedDigest, writeVerified } from './shared.js';

/**
 * Deletion leaves no metadata behind: an id deleted (one, all, by prune, or
 * whose file vanished before a rewrite failed) and cached again starts at
 * 0 hits with no digest, and `clean()` finds no orphan record to remove.
 */
export const deletionCases: CaseGroup = {
  name: 'deletion leaves no metadata',
  description:
    '`deleteCachedImage`, `deleteAllCachedImages`, prune and a rolled-back rewrite of an id whose file vanished leave no metadata: a re-cached id starts at 0 hits with no stale digest, `clean()` finds no orphan record, and the listing, `getCacheSize` and the per-id calls agree (also for a new driver instance).',
  register(kit) {
    const expectFresh = async (driver: Parameters<typeof readImage>[0], id: string, context: string) => {
      expect(await driver.getHitCount(id), `${context}: a re-cached id starts at 0 hits`).toBe(0);
      expect(await storedDigest(driver, id), `${context}: a re-cached id has no stale digest`).toBeUndefined();
      const listed = (await driver.getCachedImages()).find((image) => image.imageId === id);
      expect(listed?.hits, `${context}: listed with 0 hits`).toBe(0);
    };

    kit.it('deleteCachedImage(id) then a new write of id: 0 hits, no digest, and clean() finds no orphan record', async (env) => {
      const { driver } = env;
      await writeVerified(driver, 'gone', makeBytes(700, 1));
      await readTimes(driver, 'gone', 3);
      await writeImage(driver, 'stays', makeBytes(300, 2));
      await readTimes(driver, 'stays', 1);
      await driver.deleteCachedImage('gone');
      expect(await driver.getHitCount('gone'), 'getHitCount of a deleted id').toBe(0);
      expect(await storedDigest(driver, 'gone'), 'getStoredChecksum of a deleted id').toBeUndefined();
      expect(await driver.clean(), 'a delete left no record for clean() to remove').toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
      await writeImage(driver, 'gone', makeBytes(500, 3));
      await expectFresh(driver, 'gone', 'after deleteCachedImage');
      expect(await driver.getHitCount('stays'), 'the other entry keeps its hits').toBe(1);
      await expectConsistent(driver, 'after delete and re-cache');
      if (kit.persistent) {
        await expectFresh(await reopen(env), 'gone', 'a new driver after delete and re-cache');
      }
    });

    kit.it('deleteAllCachedImages() (also of entries another driver instance committed) then new writes of the same ids: 0 hits, no digests, clean() finds no orphan record', async (env) => {
      const { driver } = env;
      // With a persistent driver, one entry comes from another instance: delete-all forgets what this instance never wrote too.
      const writerOf = async (id: string) => (kit.persistent && id === 'c' ? reopen(env) : driver);
      for (const id of ['a', 'b', 'c']) {
        const writer = await writerOf(id);
        await writeVerified(writer, id, makeBytes(100, id.charCodeAt(0)));
        await readTimes(writer, id, 2);
      }
      expect(await driver.deleteAllCachedImages()).toBe(3);
      expect(await driver.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
      for (const id of ['a', 'b', 'c']) await writeImage(driver, id, makeBytes(50, 9));
      for (const id of ['a', 'b', 'c']) await expectFresh(driver, id, 'after deleteAllCachedImages');
      expect(await driver.getCacheSize()).toBe(150);
      await expectConsistent(driver, 'after delete-all and re-cache');
    });

    kit.it('prune() evicts entries with their metadata: re-cached evicted ids start at 0 hits with no digest', async (env) => {
      const { driver } = env;
      for (const id of ['p1', 'p2', 'p3']) {
        await writeVerified(driver, id, makeBytes(1000, id.charCodeAt(1)));
        await readTimes(driver, id, 2);
      }
      await readImage(driver, 'p3'); // p3 most recent; p1 least
      const cache = await ImageCache.open({ driver, maxSize: 1000 });
      expect(await cache.prune()).toEqual({ files: 2, bytes: 2000 });
      expect(await driver.clean()).toMatchObject({ orphanRecords: 0 });
      for (const id of ['p1', 'p2']) {
        await writeImage(driver, id, makeBytes(10, 1));
        await expectFresh(driver, id, 'after prune');
      }
      expect(await driver.getHitCount('p3'), 'the survivor keeps its hits').toBe(3);
      await expectConsistent(driver, 'after prune and re-cache');
    });

    kit.it('openForWrite(id) rolled back after the cached file vanished: the stale record is forgotten, a new write of id starts at 0 hits', async (env) => {
      const { driver, dir } = env;
      await writeVerified(driver, 'v', makeBytes(400, 5));
      await readTimes(driver, 'v', 4);
      await rm(layout(dir).active('v')); // deleted by another process, metadata untouched
      const writer = await driver.openForWrite('v');
      await writeChunk(writer, makeBytes(100, 6));
      await abortWrite(writer, new Error('origin reset'));
      expect(await driver.clean(), 'the rollback forgot the stale record; clean() has none to remove').toMatchObject({ orphanRecords: 0 });
      await writeImage(driver, 'v', makeBytes(200, 7));
      await expectFresh(driver, 'v', 'after a rolled-back rewrite');
    });
  },
};
