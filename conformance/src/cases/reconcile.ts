import { rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { makeBytes, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { layout, namesIn } from './common.js';
import { expectConsistent, readTimes, writeFromAnotherProcess } from './shared.js';

const HOUR = 3600;

/**
 * clean() reconciles metadata with the files and returns what it did; the
 * counts are checked against a prepared directory, and a second clean()
 * finds nothing left to do.
 */
export const reconcileCases: CaseGroup = {
  name: 'clean reconciles',
  description:
    '`clean()` on a prepared directory (a record whose file was deleted behind the driver\'s back, a file dropped in without metadata, a stale queue marker, an invalid and a stalled file) returns exactly those counts (`orphanRecords` 1 for `metadataStore: \'separate\'`, 0 for `\'files\'`), a replaced file counts as orphan plus adoption, dot-files are never adopted, and a second `clean()` does nothing.',
  register(kit) {
    const separate = kit.supports.metadataStore === 'separate';

    kit.it(
      `clean() on a prepared directory returns exactly what it did: invalid 1, stalled 1, orphanRecords ${separate ? 1 : 0} (metadataStore: ${kit.supports.metadataStore}), adoptedFiles 1, staleQueueMarkers 1; a second clean() does nothing`,
      async ({ driver, dir }) => {
        const at = layout(dir);
        await writeImage(driver, 'kept', makeBytes(1000, 1));
        await writeImage(driver, 'orphan', makeBytes(700, 2));
        await writeImage(driver, 'queued', makeBytes(300, 3));
        await readTimes(driver, 'kept', 2);
        await rm(at.active('orphan')); // deleted behind the driver's back: its record (if kept apart) is an orphan
        await writeFromAnotherProcess(dir, 'adopted', 400, { fill: 5 }); // a file with no record
        await writeFile(at.queue('queued'), ''); // a marker left by a crash between commit and marker removal
        await writeFile(at.invalid('broken'), makeBytes(10, 4));
        await writeFile(at.incomplete('stalled'), makeBytes(10, 5));
        const old = Date.now() / 1000 - 2 * HOUR;
        await utimes(at.incomplete('stalled'), old, old);

        const report = await driver.clean(HOUR);
        expect({ ...report, errors: report.errors.length }).toEqual({
          invalid: 1,
          stalled: 1,
          orphanRecords: separate ? 1 : 0,
          adoptedFiles: 1,
          staleQueueMarkers: 1,
          errors: 0,
        });
        expect(await namesIn(dir, 'invalid')).toEqual([]);
        expect(await namesIn(dir, 'incomplete')).toEqual([]);
        expect(await driver.getQueuedImages()).toEqual([]);
        expect((await driver.getCachedImages()).map((i) => [i.imageId, i.size, i.hits])).toEqual([
          ['adopted', 400, 0],
          ['kept', 1000, 2],
          ['queued', 300, 0],
        ]);
        await expectConsistent(driver, 'after clean()');
        const again = await driver.clean(HOUR);
        expect({ ...again, errors: again.errors.length }, 'a second clean() finds nothing to do').toEqual({
          invalid: 0,
          stalled: 0,
          orphanRecords: 0,
          adoptedFiles: 0,
          staleQueueMarkers: 0,
          errors: 0,
        });
      },
    );

    kit.it(
      `clean() counts a record of a file replaced by another process as an orphan (${separate ? 1 : 0}) and adopts the new file (1); hits of the new file start at 0`,
      async ({ driver, dir }) => {
        await writeImage(driver, 'r', makeBytes(800, 1));
        await readTimes(driver, 'r', 3);
        await writeFromAnotherProcess(dir, 'r', 900, { fill: 5 });
        const report = await driver.clean();
        expect({ orphanRecords: report.orphanRecords, adoptedFiles: report.adoptedFiles }).toEqual({
          orphanRecords: separate ? 1 : 0,
          adoptedFiles: 1,
        });
        expect((await driver.getCachedImages()).map((i) => [i.imageId, i.size, i.hits])).toEqual([['r', 900, 0]]);
        expect(await driver.clean()).toMatchObject({ orphanRecords: 0, adoptedFiles: 0 });
      },
    );

    kit.it('clean() adopts every file dropped in without metadata (ids like constructor and __proto__ too), counts each once, and they read and count hits afterwards', async ({ driver, dir }) => {
      // Names that are also Object.prototype members: a driver keeping records in a plain object finds a "record" for them.
      const ids = ['__proto__', 'constructor', 'd1', 'd2', 'hasOwnProperty', 'toString'];
      for (const id of ids) await writeFromAnotherProcess(dir, id, 100, { fill: 5 });
      await writeFile(join(dir, '.driver-own-dotfile-of-the-kit'), 'not an image');
      expect((await driver.getCachedImages()).map((i) => [i.imageId, i.hits]), 'listed before clean(), with 0 hits').toEqual(ids.map((id) => [id, 0]));
      expect(await driver.clean()).toMatchObject({ adoptedFiles: ids.length, orphanRecords: 0 });
      expect(await driver.clean()).toMatchObject({ adoptedFiles: 0, orphanRecords: 0 });
      await readTimes(driver, 'd2', 2);
      await readTimes(driver, 'constructor', 1);
      expect((await driver.getCachedImages()).map((i) => [i.imageId, i.hits])).toEqual(
        ids.map((id) => [id, id === 'd2' ? 2 : id === 'constructor' ? 1 : 0]),
      );
    });

    kit.it('clean() adopts a dropped-in file with its mtime as lastAccessed and lastModified, so an old file is evicted first', async ({ driver, dir }) => {
      await writeImage(driver, 'recent', makeBytes(100, 1));
      await writeFromAnotherProcess(dir, 'old', 100, { fill: 5 });
      const hourAgo = Math.floor(Date.now() / 1000) - HOUR; // whole seconds: every filesystem keeps them exactly
      await utimes(layout(dir).active('old'), hourAgo, hourAgo);
      await driver.clean();
      const old = (await driver.getCachedImages()).find((i) => i.imageId === 'old');
      expect(old?.lastAccessed, 'adopted: last access = mtime').toBe(hourAgo);
      expect(old?.lastModified, 'adopted: commit time = mtime').toBe(hourAgo);
      expect((await driver.getLeastRecentlyAccessed())?.imageId).toBe('old');
    });
  },
};
