import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ImageCache } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, readImage, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { requiredCase, SKIP_REASONS, writeFromAnotherProcess } from './shared.js';

const run = promisify(execFile);

/** Another process touches queue markers, one at a time, oldest first. */
async function queueFromAnotherProcess(dir: string, ids: string[]): Promise<void> {
  const script = `
    const fs = require('node:fs'); const path = require('node:path');
    const [dir, ...ids] = process.argv.slice(1);
    let t = Math.floor(Date.now() / 1000) - ids.length;
    for (const id of ids) { const p = path.join(dir, 'queue', id); fs.writeFileSync(p, ''); fs.utimesSync(p, t, t); t += 1; }
  `;
  await run(process.execPath, ['-e', script, dir, ...ids]);
}

/**
 * Cases a third-party driver meets in real deployments: files and queue
 * markers written by another process, several driver instances on one
 * directory, and recency under coarse or equal timestamps.
 */
export const interopCases: CaseGroup = {
  name: 'other writers and coarse clocks',
  description:
    'Real deployments: a file another process committed Glance-style (no metadata) is listed, read, counted and pruned; queue markers another process created come back oldest first; a second driver instance on the same directory sees the first one\'s commits, hits and deletes; reads and commits made back to back, within one clock tick, keep their order in LRU, whatever the ids and sizes.',
  register(kit) {
    kit.it('getCachedImages() lists a file another process committed without metadata; it reads, counts hits and prunes', async ({ driver, dir }) => {
      await writeImage(driver, 'ours', makeBytes(100));
      await writeFromAnotherProcess(dir, 'theirs', 300, { fill: 7, dropQueueMarker: true });
      const images = await driver.getCachedImages();
      expect(images.map((i) => [i.imageId, i.size, i.hits])).toEqual([
        ['ours', 100, 0],
        ['theirs', 300, 0],
      ]);
      expect(await driver.isCached('theirs')).toBe(true);
      expect(await driver.getCacheSize()).toBe(400);
      expect((await readImage(driver, 'theirs')).equals(Buffer.alloc(300, 7))).toBe(true);
      expect(await driver.getHitCount('theirs')).toBe(1);
      const cache = await ImageCache.open({ driver, maxSize: 300 });
      expect(await cache.prune()).toEqual({ files: 1, bytes: 100 }); // `theirs` was read last
      expect((await driver.getCachedImages()).map((i) => i.imageId)).toEqual(['theirs']);
      await driver.clean();
      expect((await driver.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual([['theirs', 1]]);
    });

    kit.it('getQueuedImages() lists markers another process created, oldest first', async ({ driver, dir }) => {
      await queueFromAnotherProcess(dir, ['q-3', 'q-1', 'q-2']);
      expect(await driver.getQueuedImages()).toEqual(['q-3', 'q-1', 'q-2']);
      expect(await driver.queueImage('q-1')).toBe(false);
      await writeImage(driver, 'q-1', makeBytes(10));
      expect(await driver.getQueuedImages()).toEqual(['q-3', 'q-2']);
    });

    const shared = "getCachedImages() of a second driver instance on the same directory sees the first one's commits and hits";
    requiredCase(kit, shared, [!kit.persistent && SKIP_REASONS.notPersistent], async ({ driver, dir, create }) => {
      const other = await create(dir);
      await other.configure();
      await writeImage(driver, 'shared', makeBytes(64));
      await readImage(driver, 'shared');
      expect((await other.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual([['shared', 1]]);
      await readImage(other, 'shared');
      expect(await driver.getHitCount('shared')).toBe(2);
      await other.deleteCachedImage('shared');
      expect(await driver.isCached('shared')).toBe(false);
      expect(await driver.getCachedImages()).toEqual([]);
    });

    kit.it('getLeastRecentlyAccessed() follows reads made back to back, within one clock tick', async ({ driver }) => {
      for (const id of ['x', 'y', 'z']) await writeImage(driver, id, makeBytes(10));
      await readImage(driver, 'z');
      await readImage(driver, 'x');
      await readImage(driver, 'y');
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('z');
      const order = (await driver.getCachedImages()).sort((a, b) => a.lastAccessed - b.lastAccessed).map((i) => i.imageId);
      expect(order).toEqual(['z', 'x', 'y']);
    });

    kit.it('getLeastRecentlyAccessed() keeps commit order for entries committed back to back, whatever their ids and sizes', async ({ driver }) => {
      const order = ['m', 'b', 'y', 'a'];
      for (const [i, id] of order.entries()) await writeImage(driver, id, makeBytes(1000 - i * 100));
      const seen: string[] = [];
      for (let lra = await driver.getLeastRecentlyAccessed(); lra !== null; lra = await driver.getLeastRecentlyAccessed()) {
        seen.push(lra.imageId);
        await driver.deleteCachedImage(lra.imageId);
      }
      expect(seen).toEqual(order);
    });
  },
};
