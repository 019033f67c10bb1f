import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CacheDriver } from '@cache/core';
import { expect } from 'vitest';
import { isRegularFile, listNames, makeBytes, readImage, snapshotTree, writeImage, inspectFile } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { verifyCacheDir } from '../verify.js';
import { ErrorCodes, expectFails, expectEpochSecondsBetween, expectRejects, layout, listedIds, nowSeconds } from './common.js';

/** Entries of different sizes, committed in an order that is not the id order. */
const ENTRIES: readonly [string, number][] = [
  ['m', 1000],
  ['B', 1],
  ['z', 0],
  ['a1', 65_537],
  ['a', 300_000],
];

async function populate(driver: CacheDriver): Promise<Map<string, Buffer>> {
  const data = new Map<string, Buffer>();
  let seed = 10;
  for (const [id, size] of ENTRIES) {
    const bytes = makeBytes(size, seed++);
    await writeImage(driver, id, bytes);
    data.set(id, bytes);
  }
  return data;
}

/**
 * Puts files that are not entries into the base dir. `cache.db` and
 * `cache.db-wal` are created only when the driver has not made its own and
 * does not reserve the name (a SQLite driver's live database must not be
 * overwritten, and SQLite opens a `-wal` file it finds beside a database in
 * rollback-journal mode as that database's log). Returns the junk names
 * placed: {@link JUNK} without the driver's reserved names.
 */
async function addJunk(dir: string, driver: CacheDriver): Promise<string[]> {
  const own = new Set(driver.reservedNames ?? []);
  for (const [name, bytes] of [['cache.db', makeBytes(4096, 99)], ['cache.db-wal', makeBytes(512, 98)]] as const) {
    if (!own.has(name)) await writeFile(join(dir, name), bytes, { flag: 'wx' }).catch(ignoreExists);
  }
  await writeFile(join(dir, '.lock'), '');
  await writeFile(join(dir, '.probe-x'), 'abc');
  await mkdir(join(dir, 'subdir'));
  await writeFile(join(dir, 'subdir', 'payload'), makeBytes(777, 97));
  await symlink('a', join(dir, 'link'));
  await symlink(join('subdir', 'payload'), join(dir, 'link2'));
  return JUNK.filter((name) => !own.has(name));
}

function ignoreExists(error: NodeJS.ErrnoException): void {
  if (error.code !== 'EEXIST') throw error;
}

const JUNK = ['cache.db', 'cache.db-wal', '.lock', '.probe-x', 'subdir', 'link', 'link2'];

/**
 * Group 2 and 13: listings of a populated cache (records, order, sizes,
 * paths), and that only real entries are listed, counted and deleted.
 */
export const listingCases: CaseGroup = {
  name: 'listing',
  description:
    'Several entries of different sizes (0 B to 300 KB). `getCachedImages()` is sorted by id, with exactly `{imageId, hits, lastAccessed, lastModified, size}` and epoch-second times. `getCacheSize()` is the sum of the sizes, and `getImageSize()` matches the files. `getImageFilepath()` is a synchronous path join with no I/O. `cache.db*`, dot-files, sub-directories and symlinks are not listed, counted, read through or deleted.',
  register(kit) {
    kit.it('getCachedImages() lists every entry sorted by id with exactly {imageId, hits, lastAccessed, lastModified, size}', async ({ driver, dir }) => {
      const from = nowSeconds();
      const data = await populate(driver);
      const images = await driver.getCachedImages();
      const to = nowSeconds();
      expect(images.map((image) => image.imageId)).toEqual([...data.keys()].sort());
      for (const image of images) {
        expect(Object.keys(image).sort(), `keys of ${image.imageId}`).toEqual(['hits', 'imageId', 'lastAccessed', 'lastModified', 'size']);
        expect(image.size, `size of ${image.imageId}`).toBe(data.get(image.imageId)?.length);
        expect(image.hits, `hits of ${image.imageId}`).toBe(0);
        expectEpochSecondsBetween(image.lastAccessed, `lastAccessed of ${image.imageId}`, from, to);
        expectEpochSecondsBetween(image.lastModified, `lastModified of ${image.imageId}`, from, to);
        expect(image.lastAccessed, 'a fresh entry counts as accessed at its commit').toBeGreaterThanOrEqual(image.lastModified);
      }
      expect(await verifyCacheDir(dir, { driver })).toEqual([]);
    });

    kit.it('getCacheSize() is the sum of the entry sizes', async ({ driver }) => {
      await populate(driver);
      expect(await driver.getCacheSize()).toBe(ENTRIES.reduce((sum, [, size]) => sum + size, 0));
    });

    kit.it('getImageSize(id) is the size of each entry, and of its file on disk', async ({ driver, dir }) => {
      await populate(driver);
      for (const [id, size] of ENTRIES) {
        expect(await driver.getImageSize(id), `getImageSize(${id})`).toBe(size);
        expect((await inspectFile(layout(dir).active(id))).length, `file ${id}`).toBe(size);
      }
    });

    kit.it('isCached(id) is true and isCacheable(id) false for each entry; openForRead(id) returns its bytes', async ({ driver }) => {
      const data = await populate(driver);
      for (const [id, bytes] of data) {
        expect(await driver.isCached(id), `isCached(${id})`).toBe(true);
        expect(await driver.isCacheable(id), `isCacheable(${id})`).toBe(false);
        expect(await driver.isBeingCached(id), `isBeingCached(${id})`).toBe(false);
        expect((await readImage(driver, id)).equals(bytes), `bytes of ${id}`).toBe(true);
      }
    });

    kit.it('getImageFilepath(id, status) joins the cache dir, status and id, synchronously and without I/O', async ({ driver, dir }) => {
      await populate(driver);
      const before = await snapshotTree(dir);
      for (const id of ['a', 'unknown-id']) {
        const active = driver.getImageFilepath(id);
        expect(typeof active, 'getImageFilepath returns a string, not a promise').toBe('string');
        expect(active).toBe(join(dir, id));
        expect(driver.getImageFilepath(id, 'active')).toBe(join(dir, id));
        for (const status of ['incomplete', 'invalid', 'queue'] as const) {
          expect(driver.getImageFilepath(id, status)).toBe(join(dir, status, id));
        }
      }
      expect(await snapshotTree(dir), 'getImageFilepath must not touch the disk').toEqual(before);
    });

    kit.it('getImageFilepath(id, status) rejects an unknown status with InvalidArgumentError', async ({ driver }) => {
      await expectFails(
        () => driver.getImageFilepath('a', 'bogus' as unknown as 'active'),
        ErrorCodes.INVALID_ARGUMENT,
        "getImageFilepath('a', 'bogus')",
      );
    });

    kit.it('getCachedImages() ignores cache.db, dot-files, sub-directories and symlinks in the cache dir', async ({ driver, dir }) => {
      await populate(driver);
      await addJunk(dir, driver);
      expect(await listedIds(driver)).toEqual(ENTRIES.map(([id]) => id).sort());
      const lra = await driver.getLeastRecentlyAccessed();
      expect(JUNK).not.toContain(lra?.imageId);
    });

    kit.it('getCacheSize() counts only real entries, not cache.db, dot-files, sub-directories or symlinks', async ({ driver, dir }) => {
      await populate(driver);
      await addJunk(dir, driver);
      expect(await driver.getCacheSize()).toBe(ENTRIES.reduce((sum, [, size]) => sum + size, 0));
    });

    kit.it('deleteAllCachedImages() deletes and counts only real entries, leaving the junk alone', async ({ driver, dir }) => {
      await populate(driver);
      const junk = await addJunk(dir, driver);
      const before = await listNames(dir);
      expect(before).toEqual(expect.arrayContaining([...junk, 'incomplete', 'invalid', 'queue']));
      expect(await driver.deleteAllCachedImages()).toBe(ENTRIES.length);
      expect(await driver.getCachedImages()).toEqual([]);
      expect(await driver.getCacheSize()).toBe(0);
      const entries = new Set(ENTRIES.map(([id]) => id));
      const left = await listNames(dir);
      // Only the entries went; the junk and the driver's own files (e.g. cache.db-shm) stay.
      expect(left.sort()).toEqual(before.filter((name) => !entries.has(name)).sort());
      expect(await driver.deleteAllCachedImages()).toBe(0);
    });

    kit.it('isCached(id), getImageSize(id), openForRead(id) and deleteCachedImage(id) do not treat a symlink or a directory as an entry', async ({ driver, dir }) => {
      await populate(driver);
      const junk = await addJunk(dir, driver);
      for (const id of ['link', 'link2', 'subdir']) {
        expect(await driver.isCached(id), `isCached(${id})`).toBe(false);
        expect(await driver.getHitCount(id), `getHitCount(${id})`).toBe(0);
        await expectRejects(driver.getImageSize(id), ErrorCodes.IMAGE_NOT_CACHED, `getImageSize(${id})`);
        await expectRejects(driver.openForRead(id), ErrorCodes.IMAGE_NOT_CACHED, `openForRead(${id}) must not follow a symlink`);
        await driver.deleteCachedImage(id);
      }
      expect((await listNames(dir)).filter((name) => junk.includes(name)).sort()).toEqual([...junk].sort());
      expect(await isRegularFile(join(dir, 'subdir', 'payload'))).toBe(true);
      expect(await isRegularFile(layout(dir).active('a')), 'the symlink target is untouched').toBe(true);
    });

    kit.it('verifyCacheDir(dir) reports the symlinks and the sub-directory, not the driver files', async ({ driver, dir }) => {
      await populate(driver);
      await addJunk(dir, driver);
      const problems = await verifyCacheDir(dir, { driver });
      expect(problems.map((p) => [p.kind, p.path]).sort()).toEqual(
        [
          ['not-a-regular-file', join(dir, 'link')],
          ['not-a-regular-file', join(dir, 'link2')],
          ['not-a-regular-file', join(dir, 'subdir')],
        ].sort(),
      );
    });
  },
};
