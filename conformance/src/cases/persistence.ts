import { expect } from 'vitest';
import { runChildThenKill } from '../child.js';
import { makeBytes, readImage, sha256, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { childCase, readTimes, recencyOrder, reopen, requiredCase, SKIP_REASONS, storedDigest, writeVerified } from './shared.js';

/**
 * Persistence: what one driver instance recorded is there for the next one,
 * after `close()` and after a process that wrote was SIGKILLed. Skipped (with
 * the reason) for drivers that declare `supports.persistent: false`.
 */
export const persistenceCases: CaseGroup = {
  name: 'persistence',
  description:
    'After `close()` and a new driver on the same directory, and after a process that wrote is SIGKILLed: every entry keeps its size, hits, `lastAccessed`, `lastModified` order and stored digest; the queue keeps its order; opening and closing changes nothing (no compaction that loses counts). Skipped for `supports.persistent: false`.',
  register(kit) {
    const reopenTitle =
      'close() then a new driver on the same directory: every entry keeps its size, hits, lastAccessed, lastModified order and stored digest';
    requiredCase(kit, reopenTitle, [!kit.persistent && SKIP_REASONS.notPersistent], async (env) => {
      const { driver } = env;
      const digests = new Map<string, string>();
      digests.set('old', await writeVerified(driver, 'old', makeBytes(3000, 1)));
      await writeImage(driver, 'mid', makeBytes(2000, 2));
      digests.set('new', await writeVerified(driver, 'new', makeBytes(1000, 3)));
      await readTimes(driver, 'mid', 3);
      await readTimes(driver, 'old', 2);
      const before = await driver.getCachedImages();
      const beforeDigests = await Promise.all(['mid', 'new', 'old'].map((id) => storedDigest(driver, id)));
      await driver.close();

      const again = await reopen(env);
      const after = await again.getCachedImages();
      expect(after.map((i) => [i.imageId, i.size, i.hits]), 'ids, sizes and hits after reopen').toEqual(
        before.map((i) => [i.imageId, i.size, i.hits]),
      );
      expect(after.map((i) => i.lastAccessed), 'lastAccessed after reopen').toEqual(before.map((i) => i.lastAccessed));
      expect(after.map((i) => i.lastModified), 'lastModified after reopen').toEqual(before.map((i) => i.lastModified));
      expect(recencyOrder(after), 'eviction order after reopen').toEqual(['new', 'mid', 'old']);
      expect((await again.getLeastRecentlyAccessed())?.imageId).toBe('new');
      const afterDigests = await Promise.all(['mid', 'new', 'old'].map((id) => storedDigest(again, id)));
      expect(afterDigests, 'stored digests after reopen').toEqual(beforeDigests);
      if (kit.supports.storedChecksum) expect(afterDigests).toEqual([undefined, digests.get('new'), digests.get('old')]);
      await readImage(again, 'new');
      expect(await again.getHitCount('new'), 'hits go on counting from where they were').toBe(1);
      expect(await again.getHitCount('mid')).toBe(3);
    });

    const queueTitle = 'getQueuedImages() of a new driver after close() keeps the queue and its order';
    requiredCase(kit, queueTitle, [!kit.persistent && SKIP_REASONS.notPersistent], async (env) => {
      for (const id of ['q3', 'q1', 'q2']) expect(await env.driver.queueImage(id)).toBe(true);
      await env.driver.close();
      const again = await reopen(env);
      expect(await again.getQueuedImages()).toEqual(['q3', 'q1', 'q2']);
    });

    const hitsOnlyTitle = 'close() right after reads: a new driver sees every hit (hits are recorded before the read ends, not buffered until later)';
    requiredCase(kit, hitsOnlyTitle, [!kit.persistent && SKIP_REASONS.notPersistent], async (env) => {
      await writeImage(env.driver, 'hot', makeBytes(500, 4));
      await readTimes(env.driver, 'hot', 5);
      await env.driver.close();
      const again = await reopen(env);
      expect(await again.getHitCount('hot')).toBe(5);
      await again.close();
      const third = await reopen(env);
      expect(await third.getHitCount('hot'), 'opening and closing a driver changes nothing (no compaction that loses counts)').toBe(5);
    });

    childCase(
      kit,
      'openForWrite(id) and openForRead(id) in a process that is then SIGKILLed: a new driver keeps its entries, hits, order and stored digests',
      async (env, driverModule) => {
        const outcomes = await runChildThenKill(driverModule, env.dir, {
          mode: 'sequential',
          ops: [
            { op: 'write', id: 'k1', size: 4000, seed: 11, checksum: true },
            { op: 'write', id: 'k2', size: 3000, seed: 12 },
            { op: 'write', id: 'k3', size: 2000, seed: 13, checksum: true },
            { op: 'read', id: 'k1' },
            { op: 'read', id: 'k1' },
            { op: 'read', id: 'k2' },
            { op: 'queue', id: 'later' },
          ],
        });
        expect(outcomes, 'the child did every operation').toEqual(Array(7).fill('ok'));
        const { driver } = env;
        expect((await driver.getCachedImages()).map((i) => [i.imageId, i.size, i.hits])).toEqual([
          ['k1', 4000, 2],
          ['k2', 3000, 1],
          ['k3', 2000, 0],
        ]);
        expect((await readImage(driver, 'k3')).equals(makeBytes(2000, 13))).toBe(true);
        expect(recencyOrder(await driver.getCachedImages()), 'eviction order: k1 (last read before k2), k2, then k3 (read here last)').toEqual(['k1', 'k2', 'k3']);
        expect(await driver.getQueuedImages()).toEqual(['later']);
        if (kit.supports.storedChecksum) {
          const digestOf = (size: number, seed: number) => `sha256:${sha256(makeBytes(size, seed))}`;
          expect(await storedDigest(driver, 'k1')).toBe(digestOf(4000, 11));
          expect(await storedDigest(driver, 'k2')).toBeUndefined();
          expect(await storedDigest(driver, 'k3')).toBe(digestOf(2000, 13));
        }
      },
    );
  },
};
