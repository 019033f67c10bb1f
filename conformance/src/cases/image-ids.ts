import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CacheDriver } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, readImage, snapshotTree, writeImage } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { ErrorCodes, expectFails, layout, listedIds, whereOnDisk } from './common.js';

/** Ids that must be refused, with a label for the case title. */
export const HOSTILE_IDS: readonly [label: string, id: unknown][] = [
  ['"" (empty)', ''],
  ['"."', '.'],
  ['".."', '..'],
  ['"../x"', '../x'],
  ['"../../escape"', '../../escape'],
  ['"/abs/path"', '/abs/path'],
  ['"a/b"', 'a/b'],
  ['"a\\\\b"', 'a\\b'],
  ['"a\\0b" (NUL)', 'a\0b'],
  ['".hidden"', '.hidden'],
  ['"x" x 256 (256 bytes)', 'x'.repeat(256)],
  ['"é" x 128 (256 bytes)', 'é'.repeat(128)],
  ['"incomplete"', 'incomplete'],
  ['"invalid"', 'invalid'],
  ['"queue"', 'queue'],
  ['"INCOMPLETE" (reserved, any case)', 'INCOMPLETE'],
  ['"cache.db"', 'cache.db'],
  ['"Cache.DB" (reserved, any case)', 'Cache.DB'],
  ['"cache.db-wal"', 'cache.db-wal'],
  ['"cache.db-shm"', 'cache.db-shm'],
  ['"cache.db-journal"', 'cache.db-journal'],
  ['"\\uD800" (lone surrogate)', '\uD800'],
  ['42 (a number)', 42],
  ['null', null],
  ['undefined', undefined],
  ['an object whose toString() is "a"', { toString: () => 'a' }],
];

/** Every id-taking method, as `[call, run]`. */
const ID_METHODS: readonly [string, (driver: CacheDriver, id: string) => unknown][] = [
  ['isCached(id)', (d, id) => d.isCached(id)],
  ['isBeingCached(id)', (d, id) => d.isBeingCached(id)],
  ['isCacheable(id)', (d, id) => d.isCacheable(id)],
  ['isQueued(id)', (d, id) => d.isQueued(id)],
  ['queueImage(id)', (d, id) => d.queueImage(id)],
  ['getImageSize(id)', (d, id) => d.getImageSize(id)],
  ['getHitCount(id)', (d, id) => d.getHitCount(id)],
  ['openForWrite(id)', (d, id) => d.openForWrite(id)],
  ['openForRead(id)', (d, id) => d.openForRead(id)],
  ['deleteCachedImage(id)', (d, id) => d.deleteCachedImage(id)],
  ['deleteQueuedImage(id)', (d, id) => d.deleteQueuedImage(id)],
  ['getImageFilepath(id)', (d, id) => d.getImageFilepath(id)],
  ["getImageFilepath(id, 'incomplete')", (d, id) => d.getImageFilepath(id, 'incomplete')],
];

/** Destroys a stream an accepting call returned, so a failing case leaks nothing. */
function discard(value: unknown): void {
  if (typeof value === 'object' && value !== null && typeof (value as { destroy?: unknown }).destroy === 'function') {
    (value as { destroy(): void }).destroy();
  }
}

/** Valid ids that look unusual; all must work end to end. */
const UNUSUAL_VALID_IDS = [
  'x'.repeat(255),
  `${'é'.repeat(127)}x`,
  'with space',
  'dots.in.the.middle',
  'trailing.',
  'a..b',
  '-leading-dash',
  'colon:and;semicolon',
  'ümlaut-ß',
  '😀-emoji',
  'cache.dbx',
  'incomplete2',
  '0',
];

/**
 * Group 12: image ids. Every id-taking method refuses hostile ids (path
 * tricks, reserved names, too long, not a string) with `InvalidImageIdError`
 * and touches nothing on disk, the parent directory included; long and
 * unusual valid ids work end to end.
 */
export const imageIdCases: CaseGroup = {
  name: 'image ids',
  description:
    'One case per hostile id: `\'\'`, `.`, `..`, `../x`, `../../escape`, `/abs/path`, `a/b`, `a\\b`, `a\\0b`, `.hidden`, 256-byte ids (ASCII and `é`), `incomplete`, `invalid`, `queue`, `INCOMPLETE`, `cache.db`, `Cache.DB`, `cache.db-wal/-shm/-journal`, a lone surrogate, `42`, `null`, `undefined`, and an object whose `toString()` is valid. Each id-taking method must reject with `CACHE_INVALID_IMAGE_ID`, and the recursive tree (including the parent that `..` reaches) must be unchanged. 255-byte ids and unusual valid ids work end to end.',
  register(kit) {
    for (const [label, id] of HOSTILE_IDS) {
      kit.it(`isCached(id) and every other id-taking method reject ${label} with InvalidImageIdError and touch nothing`, async ({ dir, create }) => {
        // The cache lives one level down, so the parent that ".." reaches is this case's own directory.
        const cacheDir = join(dir, 'cache');
        const driver = await create(cacheDir);
        await driver.configure();
        await writeImage(driver, 'a', makeBytes(100));
        expect(await driver.queueImage('q')).toBe(true);
        await writeFile(join(dir, 'x'), 'outside');
        await writeFile(join(dir, 'escape'), 'outside');
        await writeFile(layout(cacheDir).incomplete('i'), 'partial');
        await writeFile(layout(cacheDir).invalid('v'), 'failed');
        const before = await snapshotTree(dir);
        for (const [call, run] of ID_METHODS) {
          await expectFails(
            () => {
              const result = run(driver, id as string);
              return result instanceof Promise
                ? result.then((value) => {
                    discard(value);
                    return value;
                  })
                : result;
            },
            ErrorCodes.INVALID_IMAGE_ID,
            `${call} with ${label}`,
          );
        }
        expect(await snapshotTree(dir), `the tree under ${dir} must be unchanged`).toEqual(before);
        expect(await listedIds(driver)).toEqual(['a']);
        expect(await driver.getQueuedImages()).toEqual(['q']);
      });
    }

    kit.it('openForWrite(id), openForRead(id), getImageSize(id), queueImage(id) and the listings work with a 255-byte id (ASCII and multi-byte)', async ({ driver, dir }) => {
      for (const id of UNUSUAL_VALID_IDS.slice(0, 2)) {
        expect(Buffer.byteLength(id)).toBe(255);
        const data = makeBytes(1000);
        await writeImage(driver, id, data);
        expect(await whereOnDisk(dir, id)).toEqual(['active']);
        expect(await driver.isCached(id)).toBe(true);
        expect(await listedIds(driver)).toEqual([id]);
        expect((await readImage(driver, id)).equals(data)).toBe(true);
        expect(await driver.getImageSize(id)).toBe(1000);
        expect(await driver.getHitCount(id)).toBe(1);
        expect(driver.getImageFilepath(id)).toBe(join(dir, id));
        await driver.deleteCachedImage(id);
        expect(await driver.isCached(id)).toBe(false);
        expect(await driver.queueImage(id)).toBe(true);
        expect(await driver.getQueuedImages()).toEqual([id]);
        await driver.deleteQueuedImage(id);
      }
    });

    kit.it('openForWrite(id) and openForRead(id) work with unusual but valid ids (spaces, inner dots, unicode, emoji, near-reserved names)', async ({ driver, dir }) => {
      for (const [i, id] of UNUSUAL_VALID_IDS.entries()) await writeImage(driver, id, makeBytes(10 + i, i));
      expect(await listedIds(driver)).toEqual([...UNUSUAL_VALID_IDS].sort());
      for (const [i, id] of UNUSUAL_VALID_IDS.entries()) {
        expect((await readImage(driver, id)).equals(makeBytes(10 + i, i)), `bytes of ${id}`).toBe(true);
        expect(await whereOnDisk(dir, id), `file of ${id}`).toEqual(['active']);
      }
      expect(await driver.deleteAllCachedImages()).toBe(UNUSUAL_VALID_IDS.length);
    });
  },
};
