import { execFile } from 'node:child_process';
import { chmod, mkdir, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import type { CacheDriver } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, readImage, snapshotTree, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { verifyCacheDir } from '../verify.js';
import { ErrorCodes, expectRejects, listedIds } from './common.js';

const run = promisify(execFile);

/**
 * Makes `dir` unwritable for this process: `chmod 0555` for an ordinary
 * user; as root, who ignores modes, a read-only bind mount of the directory
 * on itself (writes then fail with EROFS). Returns how, and the undo.
 */
async function makeUnwritable(dir: string): Promise<{ how: string; undo: () => Promise<void> }> {
  if (process.getuid?.() !== 0) {
    const subs = ['incomplete', 'invalid', 'queue'].map((sub) => join(dir, sub));
    for (const path of [...subs, dir]) await chmod(path, 0o555);
    return {
      how: 'chmod 0555',
      undo: async () => {
        for (const path of [dir, ...subs]) await chmod(path, 0o755);
      },
    };
  }
  try {
    await run('mount', ['--bind', dir, dir]);
    await run('mount', ['-o', 'remount,bind,ro', dir]);
  } catch (error) {
    await run('umount', [dir]).catch(() => undefined);
    throw new Error(`as root, the kit makes a directory unwritable with a read-only bind mount, which failed: ${(error as Error).message}`);
  }
  return { how: 'read-only bind mount (root)', undo: () => run('umount', [dir]).then(() => undefined) };
}

/** Every async method of the contract, called with valid arguments. */
const CALLS: readonly [string, (driver: CacheDriver) => Promise<unknown>][] = [
  ['isCached(id)', (d) => d.isCached('a')],
  ['isBeingCached(id)', (d) => d.isBeingCached('a')],
  ['isCacheable(id)', (d) => d.isCacheable('a')],
  ['isQueued(id)', (d) => d.isQueued('a')],
  ['queueImage(id)', (d) => d.queueImage('fresh')],
  ['getQueuedImages()', (d) => d.getQueuedImages()],
  ['getCachedImages()', (d) => d.getCachedImages()],
  ['getCacheSize()', (d) => d.getCacheSize()],
  ['getImageSize(id)', (d) => d.getImageSize('a')],
  ['getHitCount(id)', (d) => d.getHitCount('a')],
  ['getLeastRecentlyAccessed()', (d) => d.getLeastRecentlyAccessed()],
  ['openForWrite(id)', (d) => d.openForWrite('fresh')],
  ['openForRead(id)', (d) => d.openForRead('a')],
  ['deleteCachedImage(id)', (d) => d.deleteCachedImage('a')],
  ['deleteAllCachedImages()', (d) => d.deleteAllCachedImages()],
  ['deleteQueuedImage(id)', (d) => d.deleteQueuedImage('q')],
  ['deleteAllQueuedImages()', (d) => d.deleteAllQueuedImages()],
  ['clean()', (d) => d.clean(0)],
];

/** Destroys whatever a call that should have failed returned (a stream), so nothing leaks. */
function discard(value: unknown): void {
  if (typeof value === 'object' && value !== null && typeof (value as { destroy?: unknown }).destroy === 'function') {
    (value as { destroy(): void }).destroy();
  }
}

/**
 * Group 1: an empty cache, and the driver lifecycle (`configure()` creates the
 * layout and may be called twice; every method rejects with
 * `DriverNotOpenError` before `configure()` and after `close()`).
 */
export const lifecycleCases: CaseGroup = {
  name: 'lifecycle and empty cache',
  description:
    'Empty cache: `isCached`/`isBeingCached`/`isQueued` false, `isCacheable` true, empty listings, size 0, LRA `null`, `deleteAll*` return 0, `clean()` reports zeros. `configure()` creates the layout (also for a missing dir), refuses when the dir or `incomplete/` is a file, and may be called twice. `close()` may be called twice. A second driver on the same dir sees the entries. Each async method rejects with `CACHE_DRIVER_NOT_OPEN` after `close()` and before `configure()`, without touching the disk.',
  register(kit) {
    kit.it('isCached/isBeingCached/isQueued(id) are false and isCacheable(id) is true on an empty cache', async ({ driver }) => {
      expect(await driver.isCached('a')).toBe(false);
      expect(await driver.isBeingCached('a')).toBe(false);
      expect(await driver.isQueued('a')).toBe(false);
      expect(await driver.isCacheable('a')).toBe(true);
    });

    kit.it('getCachedImages() is [], getCacheSize() 0, getQueuedImages() [] on an empty cache', async ({ driver }) => {
      expect(await driver.getCachedImages()).toEqual([]);
      expect(await driver.getCacheSize()).toBe(0);
      expect(await driver.getQueuedImages()).toEqual([]);
    });

    kit.it('getLeastRecentlyAccessed() is null and getHitCount(id) 0 on an empty cache', async ({ driver }) => {
      expect(await driver.getLeastRecentlyAccessed()).toBeNull();
      expect(await driver.getHitCount('a')).toBe(0);
    });

    kit.it('deleteAllCachedImages() and deleteAllQueuedImages() return 0 on an empty cache', async ({ driver }) => {
      expect(await driver.deleteAllCachedImages()).toBe(0);
      expect(await driver.deleteAllQueuedImages()).toBe(0);
    });

    kit.it('clean() on an empty cache reports zeros', async ({ driver }) => {
      const report = await driver.clean();
      expect(report).toEqual({ invalid: 0, stalled: 0, orphanRecords: 0, adoptedFiles: 0, staleQueueMarkers: 0, errors: [] });
      expect(await driver.clean(0)).toEqual({ invalid: 0, stalled: 0, orphanRecords: 0, adoptedFiles: 0, staleQueueMarkers: 0, errors: [] });
    });

    kit.it('configure() creates incomplete/, invalid/ and queue/', async ({ driver, dir }) => {
      for (const sub of ['incomplete', 'invalid', 'queue']) {
        expect((await stat(join(dir, sub))).isDirectory(), `${sub}/ must be a directory`).toBe(true);
      }
      expect(await verifyCacheDir(dir, { driver })).toEqual([]);
    });

    kit.it('configure() creates a cache directory that does not exist yet', async ({ dir, create }) => {
      const nested = join(dir, 'not', 'yet', 'there');
      const driver = await create(nested);
      await driver.configure();
      for (const sub of ['incomplete', 'invalid', 'queue']) {
        expect((await stat(join(nested, sub))).isDirectory(), `${sub}/ must be a directory`).toBe(true);
      }
      expect(await driver.getCachedImages()).toEqual([]);
    });

    kit.it('configure() rejects with BadDriverConfigurationError when the cache directory is a file', async ({ dir, create }) => {
      const file = join(dir, 'a-file');
      await writeFile(file, 'not a directory');
      const driver = await create(file);
      await expectRejects(driver.configure(), ErrorCodes.BAD_DRIVER_CONFIGURATION, 'configure() on a file');
    });

    kit.it('configure() rejects with BadDriverConfigurationError when incomplete/ is a file', async ({ dir, create }) => {
      const base = join(dir, 'cache');
      await mkdir(base);
      await writeFile(join(base, 'incomplete'), 'not a directory');
      const driver = await create(base);
      await expectRejects(driver.configure(), ErrorCodes.BAD_DRIVER_CONFIGURATION, 'configure() with incomplete/ a file');
    });

    kit.it('configure() rejects with BadDriverConfigurationError on a cache directory the process cannot write, and leaves it as it was', async ({ dir, create }) => {
      const target = join(dir, 'read-only');
      for (const sub of ['', 'incomplete', 'invalid', 'queue']) await mkdir(join(target, sub), { recursive: true });
      const before = await snapshotTree(target);
      const unlock = await makeUnwritable(target);
      try {
        const driver = await create(target);
        await expectRejects(driver.configure(), ErrorCodes.BAD_DRIVER_CONFIGURATION, `configure() on an unwritable directory (${unlock.how})`);
        await expectRejects(driver.isCached('a'), ErrorCodes.DRIVER_NOT_OPEN, 'a driver that refused to configure is not open');
      } finally {
        await unlock.undo();
      }
      expect(await snapshotTree(target), 'the refusal wrote nothing').toEqual(before);
    });

    kit.it('configure() twice is fine and keeps the entries', async ({ driver }) => {
      const data = makeBytes(1000);
      await writeImage(driver, 'a', data);
      await driver.configure();
      await driver.configure();
      expect(await listedIds(driver)).toEqual(['a']);
      expect(await readImage(driver, 'a')).toEqual(data);
    });

    kit.it('close() twice is fine', async ({ driver }) => {
      await driver.close();
      await driver.close();
    });

    kit.it('configure() of a second driver on the same directory sees the committed entries and queue', async ({ driver, dir, create }) => {
      await writeImage(driver, 'b', makeBytes(10, 2));
      await writeImage(driver, 'a', makeBytes(20, 3));
      for (const id of ['z', 'q', 'm']) expect(await driver.queueImage(id)).toBe(true);
      await driver.close();
      const second = await create(dir);
      await second.configure();
      expect((await second.getCachedImages()).map((image) => [image.imageId, image.size])).toEqual([
        ['a', 20],
        ['b', 10],
      ]);
      expect((await second.getQueuedImages()).sort(), 'the queue is on disk (its order is checked by the queue cases)').toEqual(['m', 'q', 'z']);
      expect(await readImage(second, 'a')).toEqual(makeBytes(20, 3));
    });

    for (const [call, run] of CALLS) {
      kit.it(`${call} rejects with DriverNotOpenError after close()`, async ({ driver, dir }) => {
        await writeImage(driver, 'a', makeBytes(100));
        expect(await driver.queueImage('q')).toBe(true);
        await driver.close();
        const before = await snapshotTree(dir);
        const error = await expectRejects(
          run(driver).then((value) => {
            discard(value);
            return value;
          }),
          ErrorCodes.DRIVER_NOT_OPEN,
          `${call} after close()`,
        );
        expect(error).toBeInstanceOf(Error);
        expect(await snapshotTree(dir), `${call} after close() must not touch the disk`).toEqual(before);
      });
    }

    for (const [call, run] of CALLS) {
      kit.it(`${call} rejects with DriverNotOpenError before configure()`, async ({ driver, dir, create }) => {
        await writeImage(driver, 'a', makeBytes(100));
        expect(await driver.queueImage('q')).toBe(true);
        const fresh = await create(dir);
        const before = await snapshotTree(dir);
        await expectRejects(
          run(fresh).then((value) => {
            discard(value);
            return value;
          }),
          ErrorCodes.DRIVER_NOT_OPEN,
          `${call} before configure()`,
        );
        expect(await snapshotTree(dir), `${call} before configure() must not touch the disk`).toEqual(before);
      });
    }
  },
};
