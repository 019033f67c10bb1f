import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { abortWrite, makeBytes, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { layout, namesIn, whereOnDisk } from './common.js';

/** A hundred ids in an order that is neither sorted nor reverse-sorted (a fixed shuffle). */
const SHUFFLED = Array.from({ length: 100 }, (_, i) => `id-${String((i * 37 + 11) % 100).padStart(2, '0')}`);

/**
 * Group 11: the prefetch queue. Markers are zero-byte files in queue/;
 * getQueuedImages() is FIFO even for ids queued in quick succession; cached
 * ids and ids being written are not queued; a commit removes the marker.
 */
export const queueCases: CaseGroup = {
  name: 'queue',
  description:
    '`queueImage` returns true once, then false. The marker is an empty file. The queue is FIFO for `z, a, m` and for 100 ids queued back to back. Cached ids and ids being written are not queued. `deleteQueuedImage` and `deleteAllQueuedImages` return counts and ignore junk in `queue/`. A commit removes the marker.',
  register(kit) {
    kit.it('queueImage(id) returns true, then isQueued(id) is true and queue/<id> is an empty file', async ({ driver, dir }) => {
      expect(await driver.queueImage('img')).toBe(true);
      expect(await driver.isQueued('img')).toBe(true);
      expect((await stat(layout(dir).queue('img'))).size).toBe(0);
      expect(await whereOnDisk(dir, 'img')).toEqual(['queue']);
      expect(await driver.isCached('img')).toBe(false);
      expect(await driver.isCacheable('img')).toBe(true);
    });

    kit.it('queueImage(id) returns false when the id is already queued', async ({ driver }) => {
      expect(await driver.queueImage('img')).toBe(true);
      expect(await driver.queueImage('img')).toBe(false);
      expect(await driver.getQueuedImages()).toEqual(['img']);
    });

    kit.it("getQueuedImages() is FIFO: 'z', 'a', 'm' queued in quick succession come back as z, a, m", async ({ driver }) => {
      for (const id of ['z', 'a', 'm']) expect(await driver.queueImage(id)).toBe(true);
      expect(await driver.getQueuedImages()).toEqual(['z', 'a', 'm']);
    });

    kit.it('getQueuedImages() keeps FIFO order for a hundred ids queued back to back', async ({ driver }) => {
      for (const id of SHUFFLED) expect(await driver.queueImage(id)).toBe(true);
      expect(await driver.getQueuedImages()).toEqual(SHUFFLED);
      const first = SHUFFLED[0] as string;
      await driver.deleteQueuedImage(first);
      expect(await driver.queueImage(first)).toBe(true);
      expect(await driver.getQueuedImages()).toEqual([...SHUFFLED.slice(1), first]);
    });

    kit.it('queueImage(id) returns false for a cached id and creates no marker', async ({ driver, dir }) => {
      await writeImage(driver, 'img', makeBytes(10));
      expect(await driver.queueImage('img')).toBe(false);
      expect(await driver.isQueued('img')).toBe(false);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
    });

    kit.it('queueImage(id) returns false for an id being written and creates no marker', async ({ driver, dir }) => {
      const writer = await driver.openForWrite('img');
      try {
        expect(await driver.queueImage('img')).toBe(false);
        expect(await driver.isQueued('img')).toBe(false);
        expect(await namesIn(dir, 'queue')).toEqual([]);
      } finally {
        await abortWrite(writer);
      }
    });

    kit.it('deleteQueuedImage(id) removes the marker', async ({ driver, dir }) => {
      for (const id of ['a', 'b']) await driver.queueImage(id);
      await driver.deleteQueuedImage('a');
      expect(await driver.isQueued('a')).toBe(false);
      expect(await driver.getQueuedImages()).toEqual(['b']);
      expect(await namesIn(dir, 'queue')).toEqual(['b']);
    });

    kit.it('deleteAllQueuedImages() removes every marker and returns how many, ignoring junk in queue/', async ({ driver, dir }) => {
      for (const id of ['c', 'a', 'b']) await driver.queueImage(id);
      await writeFile(join(dir, 'queue', '.tmp-marker'), '');
      await mkdir(join(dir, 'queue', 'subdir'));
      expect((await driver.getQueuedImages()).sort()).toEqual(['a', 'b', 'c']);
      expect(await driver.deleteAllQueuedImages()).toBe(3);
      expect(await driver.getQueuedImages()).toEqual([]);
      expect(await namesIn(dir, 'queue')).toEqual(['.tmp-marker', 'subdir']);
      expect(await driver.deleteAllQueuedImages()).toBe(0);
    });

    kit.it('openForWrite(id) commit of a queued id removes its marker and leaves the other markers', async ({ driver, dir }) => {
      for (const id of ['z', 'a', 'm']) await driver.queueImage(id);
      await writeImage(driver, 'a', makeBytes(100));
      expect((await driver.getQueuedImages()).sort()).toEqual(['m', 'z']);
      expect(await whereOnDisk(dir, 'a')).toEqual(['active']);
    });

    kit.it('deleteCachedImage(id) then queueImage(id) queues it again', async ({ driver }) => {
      await writeImage(driver, 'img', makeBytes(10));
      expect(await driver.queueImage('img')).toBe(false);
      await driver.deleteCachedImage('img');
      expect(await driver.queueImage('img')).toBe(true);
      expect(await driver.getQueuedImages()).toEqual(['img']);
    });
  },
};
