import { utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { expect } from 'vitest';
import { abortWrite, endWrite, makeBytes, writeChunk, writeImage, inspectFile } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { ErrorCodes, expectRejects, layout, namesIn, whereOnDisk } from './common.js';

const HOUR = 3600;
const DAY = 24 * HOUR;

/** Writes a file directly in incomplete/ with its mtime `ageSeconds` in the past. */
async function stalledFile(dir: string, id: string, ageSeconds: number): Promise<void> {
  const path = layout(dir).incomplete(id);
  await writeFile(path, makeBytes(500));
  const t = Date.now() / 1000 - ageSeconds;
  await utimes(path, t, t);
}

/**
 * Group 10: clean(). Every invalid/ file goes; incomplete/ files older than
 * the stall time go, younger ones stay; clean(0) removes every incomplete
 * file except those owned by a live writer of this process, which can still
 * commit afterwards.
 */
export const cleanCases: CaseGroup = {
  name: 'clean',
  description:
    'Every `invalid/` file is removed and counted. `incomplete/` files older than the stall time are removed and younger ones kept. The default stall time is one day. `clean(0)` removes all incomplete files except one that a live writer of this process owns, and that writer still commits (also when its file is older than the stall time). A negative or NaN stall time is rejected with `CACHE_INVALID_ARGUMENT`. Active entries and the queue are untouched; a queue marker of a cached image is removed.',
  register(kit) {
    kit.it('clean() removes every file in invalid/ and reports how many', async ({ driver, dir }) => {
      for (const id of ['f1', 'f2']) {
        const writer = await driver.openForWrite(id);
        await abortWrite(writer, new Error('x'));
      }
      await writeFile(layout(dir).invalid('dropped'), makeBytes(10));
      expect(await namesIn(dir, 'invalid')).toEqual(['dropped', 'f1', 'f2']);
      const report = await driver.clean();
      expect(report.invalid).toBe(3);
      expect(report.stalled).toBe(0);
      expect(report.errors).toEqual([]);
      expect(await namesIn(dir, 'invalid')).toEqual([]);
    });

    kit.it('clean(stallTime) removes incomplete files older than the stall time and keeps younger ones', async ({ driver, dir }) => {
      await stalledFile(dir, 'old', 2 * HOUR);
      await stalledFile(dir, 'older', 3 * DAY);
      await stalledFile(dir, 'young', 60);
      const report = await driver.clean(HOUR);
      expect(report.stalled).toBe(2);
      expect(report.invalid).toBe(0);
      expect(await namesIn(dir, 'incomplete')).toEqual(['young']);
    });

    kit.it('clean() without a stall time uses one day', async ({ driver, dir }) => {
      await stalledFile(dir, 'two-days', 2 * DAY);
      await stalledFile(dir, 'one-hour', HOUR);
      const report = await driver.clean();
      expect(report.stalled).toBe(1);
      expect(await namesIn(dir, 'incomplete')).toEqual(['one-hour']);
    });

    kit.it('clean(0) removes every incomplete file but keeps the one a live writer owns, which still commits', async ({ driver, dir }) => {
      await stalledFile(dir, 'x', 0);
      await stalledFile(dir, 'y', HOUR);
      const data = makeBytes(50_000, 8);
      const writer = await driver.openForWrite('live');
      await writeChunk(writer, data.subarray(0, 20_000));
      const report = await driver.clean(0);
      expect(report.stalled).toBe(2);
      expect(await namesIn(dir, 'incomplete')).toEqual(['live']);
      await pipeline(Readable.from([data.subarray(20_000)]), writer);
      expect(await whereOnDisk(dir, 'live')).toEqual(['active']);
      expect((await inspectFile(layout(dir).active('live'))).equals(data)).toBe(true);
      expect(await driver.isCached('live')).toBe(true);
    });

    kit.it('clean(stallTime) keeps a live writer file even when it has not been written for longer than the stall time', async ({ driver, dir }) => {
      const writer = await driver.openForWrite('paused');
      await writeChunk(writer, makeBytes(1000));
      const t = Date.now() / 1000 - 2 * DAY;
      await utimes(layout(dir).incomplete('paused'), t, t);
      const report = await driver.clean(HOUR);
      expect(report.stalled).toBe(0);
      expect(await namesIn(dir, 'incomplete')).toEqual(['paused']);
      await endWrite(writer);
      expect(await whereOnDisk(dir, 'paused')).toEqual(['active']);
    });

    kit.it('clean(stallTime) rejects a negative or NaN stall time with InvalidArgumentError and deletes nothing', async ({ driver, dir }) => {
      await stalledFile(dir, 's', DAY);
      for (const bad of [-1, Number.NaN]) {
        await expectRejects(driver.clean(bad), ErrorCodes.INVALID_ARGUMENT, `clean(${bad})`);
      }
      expect(await namesIn(dir, 'incomplete')).toEqual(['s']);
    });

    kit.it('clean() removes the queue marker of an image that is already cached (a crash between commit and marker removal)', async ({ driver, dir }) => {
      await writeImage(driver, 'done', makeBytes(10));
      expect(await driver.queueImage('waiting')).toBe(true);
      await writeFile(join(dir, 'queue', 'done'), ''); // what a crash after the commit's rename leaves
      expect((await driver.getQueuedImages()).sort()).toEqual(['done', 'waiting']);
      expect(await driver.clean()).toMatchObject({ staleQueueMarkers: 1 });
      expect(await driver.getQueuedImages()).toEqual(['waiting']);
      expect(await driver.isCached('done')).toBe(true);
    });

    kit.it('clean(0) leaves active entries and queue markers alone', async ({ driver, dir }) => {
      await writeImage(driver, 'a', makeBytes(100));
      expect(await driver.queueImage('q')).toBe(true);
      await stalledFile(dir, 's', DAY);
      await driver.clean(0);
      expect(await whereOnDisk(dir, 'a')).toEqual(['active']);
      expect(await whereOnDisk(dir, 'q')).toEqual(['queue']);
      expect(await whereOnDisk(dir, 's')).toEqual([]);
      expect(await driver.getCachedImages()).toHaveLength(1);
      expect(await driver.getQueuedImages()).toEqual(['q']);
    });
  },
};
