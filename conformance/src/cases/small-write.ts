import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { RESERVED_NAMES, SMALL_WRITE_BYTES, type CacheDriver, type WriteSmallImageOptions } from '@cache/core';
import { expect } from 'vitest';
import { runChildThenKill } from '../child.js';
import { endWrite, inspectFile, makeBytes, readImage, sha256, snapshotTree, writeChunk, writeImage, type TreeNode } from '../helpers.js';
import type { CaseEnv, CaseFn, CaseGroup } from '../kit.js';
import { fillUp, mountScratch } from '../scratch-mount.js';
import { verifyCacheDir } from '../verify.js';
import { HOSTILE_IDS } from './image-ids.js';
import { ErrorCodes, expectEpochSecondsBetween, expectFails, layout, listedIds, namesIn, nowSeconds, whereOnDisk } from './common.js';
import { childCase, readTimes, reopen, requiredCase, rows, SKIP_REASONS, storedDigest } from './shared.js';

/** The driver's `writeSmallImage`, called as a method (the group runs only for drivers that have it). */
function writeSmall(driver: CacheDriver, id: string, bytes: Uint8Array, options?: WriteSmallImageOptions): Promise<boolean> {
  const method = driver.writeSmallImage;
  if (typeof method !== 'function') throw new Error('the driver lost its writeSmallImage method after the kit saw it');
  return options === undefined ? method.call(driver, id, bytes) : method.call(driver, id, bytes, options);
}

/**
 * The image-facing part of a cache directory's tree: everything but the
 * driver's own files (dot-files and reserved names such as `cache.db`), whose
 * metadata store may be read, and so touched, by any call.
 */
async function imageTree(dir: string): Promise<TreeNode[]> {
  const own = new Set(RESERVED_NAMES.map((name) => name.toLowerCase()));
  return (await snapshotTree(dir)).filter((node) => {
    const top = node.path.split('/')[0] as string;
    return node.path === '.' ? false : !top.startsWith('.') && !own.has(top.toLowerCase());
  });
}

/** Asserts `id` is committed with exactly `data`: the active file, a read, the size, nothing in `incomplete/` or `invalid/`. */
async function expectCommitted(driver: CacheDriver, dir: string, id: string, data: Buffer, context: string): Promise<void> {
  expect(await whereOnDisk(dir, id), `${context}: where '${id}' is on disk`).toEqual(['active']);
  expect((await inspectFile(layout(dir).active(id))).equals(data), `${context}: the active file has exactly the ${data.length} bytes given`).toBe(true);
  expect(await driver.getImageSize(id), `${context}: getImageSize`).toBe(data.length);
  expect(await namesIn(dir, 'incomplete'), `${context}: nothing left in incomplete/`).toEqual([]);
  expect(await namesIn(dir, 'invalid'), `${context}: nothing in invalid/`).toEqual([]);
  expect((await readImage(driver, id)).equals(data), `${context}: openForRead gives the bytes back`).toBe(true);
}

/**
 * The optional `writeSmallImage(id, bytes, { checksum, onNoSpace })`: a
 * commit from memory must leave what `openForWrite` and `end(bytes)` leave.
 * Every case is registered as skipped when the driver has no such method.
 */
export const smallWriteCases: CaseGroup = {
  name: 'small commits from memory (writeSmallImage)',
  description:
    'For drivers with the optional `writeSmallImage(id, bytes, { checksum, onNoSpace })` (skipped otherwise): the exact bytes (empty, 1 byte, 4 KiB, `SMALL_WRITE_BYTES`, a `Uint8Array` view at an offset into a larger buffer), and the size, hits 0 and times `openForWrite` would leave, also for a re-cached id; the stored digest of `checksum` (for `supports.storedChecksum`); `false` and nothing changed when the id is cached or an `openForWrite` writer has it (whose commit still wins); nothing left in `incomplete/`; invalid ids and bytes refused with nothing changed on disk; kept across close and reopen and a SIGKILL (persistent drivers); exactly one `true` among concurrent calls for one id; `onNoSpace` asked on ENOSPC (a small tmpfs the kit mounts and fills; Linux and root only).',
  register(kit) {
    const missing = 'the driver has no writeSmallImage (optional: ImageCache streams small images through openForWrite instead)';
    const has = kit.optionalMethods.has('writeSmallImage');
    const noMethod = !has && missing;
    const smallCase = (title: string, fn: CaseFn) => requiredCase(kit, title, [noMethod], fn);

    smallCase(
      'writeSmallImage(id, bytes) commits exactly the bytes given: empty, 1 byte, 4 KiB, SMALL_WRITE_BYTES, and a Uint8Array view at an offset into a larger buffer',
      async ({ driver, dir }) => {
        const backing = makeBytes(3 * 4096, 9);
        const view = new Uint8Array(backing.buffer, backing.byteOffset + 1234, 4096 + 17);
        const cases: [string, Uint8Array, Buffer][] = [
          ['empty', new Uint8Array(0), Buffer.alloc(0)],
          ['one-byte', Buffer.from([0xa5]), Buffer.from([0xa5])],
          ['four-kib', makeBytes(4096, 1), makeBytes(4096, 1)],
          ['largest', makeBytes(SMALL_WRITE_BYTES, 2), makeBytes(SMALL_WRITE_BYTES, 2)],
          ['view', view, Buffer.from(backing.subarray(1234, 1234 + 4096 + 17))],
        ];
        for (const [id, bytes, expected] of cases) {
          expect(await writeSmall(driver, id, bytes), `writeSmallImage('${id}') of ${bytes.length} bytes resolves true`).toBe(true);
          await expectCommitted(driver, dir, id, expected, `writeSmallImage('${id}')`);
        }
        expect(backing.equals(makeBytes(3 * 4096, 9)), 'the caller\'s buffer is left as it was').toBe(true);
        expect(await listedIds(driver)).toEqual(['empty', 'four-kib', 'largest', 'one-byte', 'view']);
        expect(await driver.getCacheSize()).toBe(cases.reduce((sum, [, bytes]) => sum + bytes.length, 0));
        expect(await verifyCacheDir(dir, { driver })).toEqual([]);
      },
    );

    smallCase(
      'writeSmallImage(id, bytes) leaves the entry openForWrite would: listed with its size and hits 0, access and commit times of the commit, queue marker removed, not being cached',
      async ({ driver, dir }) => {
        expect(await driver.queueImage('small')).toBe(true);
        const from = nowSeconds();
        await writeImage(driver, 'streamed', makeBytes(3000, 1));
        expect(await writeSmall(driver, 'small', makeBytes(3000, 2))).toBe(true);
        const to = nowSeconds();
        const images = await driver.getCachedImages();
        expect(images.map((i) => [i.imageId, i.size, i.hits])).toEqual([
          ['small', 3000, 0],
          ['streamed', 3000, 0],
        ]);
        for (const image of images) {
          expectEpochSecondsBetween(image.lastModified, `lastModified of '${image.imageId}'`, from, to);
          expectEpochSecondsBetween(image.lastAccessed, `lastAccessed of '${image.imageId}'`, from, to);
        }
        expect(await driver.getHitCount('small')).toBe(0);
        expect(await driver.isCached('small')).toBe(true);
        expect(await driver.isBeingCached('small')).toBe(false);
        expect(await driver.isCacheable('small')).toBe(false);
        expect(await driver.isQueued('small'), 'the commit removes the queue marker').toBe(false);
        expect(await driver.getQueuedImages()).toEqual([]);
        expect(await whereOnDisk(dir, 'small')).toEqual(['active']);
        await readTimes(driver, 'small', 2);
        expect(await driver.getHitCount('small'), 'reads of a small commit count as any other').toBe(2);
        expect(await verifyCacheDir(dir, { driver })).toEqual([]);
      },
    );

    smallCase(
      'writeSmallImage(id, bytes) of a re-cached id starts from 0 hits, with its own size and bytes (after a streamed or a small entry was read and deleted)',
      async ({ driver, dir }) => {
        await writeImage(driver, 'a', makeBytes(5000, 1));
        expect(await writeSmall(driver, 'b', makeBytes(6000, 2))).toBe(true);
        await readTimes(driver, 'a', 3);
        await readTimes(driver, 'b', 2);
        await driver.deleteCachedImage('a');
        await driver.deleteCachedImage('b');
        expect(await writeSmall(driver, 'a', makeBytes(700, 3))).toBe(true);
        expect(await writeSmall(driver, 'b', makeBytes(800, 4))).toBe(true);
        expect(await rows(driver), 'the re-cached entries: new sizes, 0 hits').toEqual([
          ['a', 700, 0],
          ['b', 800, 0],
        ]);
        expect(await driver.getHitCount('a')).toBe(0);
        expect(await driver.getHitCount('b')).toBe(0);
        await expectCommitted(driver, dir, 'a', makeBytes(700, 3), "re-cached 'a'");
        expect(await driver.getHitCount('a'), 'hits count from 0 again').toBe(1);
      },
    );

    const digestTitle =
      'writeSmallImage(id, bytes, { checksum }) stores the digest as given (sha256 and bare md5); without it, and for a re-cached id without it, none';
    requiredCase(kit, digestTitle, [noMethod, !kit.supports.storedChecksum && SKIP_REASONS.noStoredChecksum], async ({ driver }) => {
      expect(typeof driver.getStoredChecksum, 'a driver that declares storedChecksum implements getStoredChecksum').toBe('function');
      const data = makeBytes(4096, 1);
      const digest = `sha256:${sha256(data)}`;
      expect(await writeSmall(driver, 'verified', data, { checksum: digest })).toBe(true);
      const md5Data = makeBytes(100, 2);
      const md5 = createHash('md5').update(md5Data).digest('hex');
      expect(await writeSmall(driver, 'md5', md5Data, { checksum: md5 })).toBe(true);
      expect(await writeSmall(driver, 'plain', makeBytes(100, 3))).toBe(true);
      expect(await storedDigest(driver, 'verified')).toBe(digest);
      expect(await storedDigest(driver, 'md5'), 'a bare md5 hex (Glance style) is stored as given').toBe(md5);
      expect(await storedDigest(driver, 'plain')).toBeUndefined();
      await readImage(driver, 'verified');
      expect(await storedDigest(driver, 'verified'), 'reads leave the digest as it is').toBe(digest);
      await driver.deleteCachedImage('verified');
      expect(await writeSmall(driver, 'verified', data)).toBe(true);
      expect(await storedDigest(driver, 'verified'), 'a re-cached id without a checksum does not inherit the old digest').toBeUndefined();
    });

    smallCase(
      'writeSmallImage(id, bytes) of a cached id resolves false and changes nothing: bytes, file, size, hits, times, digest',
      async ({ driver, dir }) => {
        const data = makeBytes(2000, 1);
        await writeImage(driver, 'img', data);
        await readTimes(driver, 'img', 2);
        const before = await driver.getCachedImages();
        const digestBefore = await storedDigest(driver, 'img');
        const tree = await imageTree(dir);
        expect(await writeSmall(driver, 'img', makeBytes(1000, 2)), 'writeSmallImage of a cached id').toBe(false);
        expect(await writeSmall(driver, 'img', makeBytes(2000, 3), { checksum: `sha256:${sha256(makeBytes(2000, 3))}` }), 'again, with a checksum').toBe(false);
        expect(await imageTree(dir), 'the files under the cache directory are unchanged').toEqual(tree);
        expect((await inspectFile(layout(dir).active('img'))).equals(data)).toBe(true);
        expect(await driver.getCachedImages(), 'the entry (size, hits, times) is unchanged').toEqual(before);
        expect(await storedDigest(driver, 'img')).toBe(digestBefore);
        expect(await driver.getHitCount('img')).toBe(2);
      },
    );

    smallCase(
      'writeSmallImage(id, bytes) while an openForWrite writer has the id resolves false and changes nothing; the writer then commits its own bytes',
      async ({ driver, dir }) => {
        const streamed = makeBytes(9000, 1);
        const writer = await driver.openForWrite('img');
        await writeChunk(writer, streamed.subarray(0, 3000));
        const tree = await imageTree(dir);
        expect(await writeSmall(driver, 'img', makeBytes(500, 2)), 'writeSmallImage of an id being written').toBe(false);
        expect(await writeSmall(driver, 'img', new Uint8Array(0)), 'again, empty').toBe(false);
        expect(await imageTree(dir), 'the files under the cache directory are unchanged').toEqual(tree);
        expect(await whereOnDisk(dir, 'img')).toEqual(['incomplete']);
        expect(await driver.isCached('img')).toBe(false);
        expect(await driver.getCachedImages()).toEqual([]);
        await endWrite(writer, streamed.subarray(3000));
        await expectCommitted(driver, dir, 'img', streamed, "the writer's commit");
        expect(await rows(driver)).toEqual([['img', 9000, 1]]);
      },
    );

    smallCase(
      'writeSmallImage(id, bytes) refuses every invalid id with InvalidImageIdError and changes nothing on disk',
      async ({ driver, dir }) => {
        await writeImage(driver, 'a', makeBytes(100, 1));
        const tree = await snapshotTree(dir);
        for (const [label, id] of HOSTILE_IDS) {
          await expectFails(() => writeSmall(driver, id as string, makeBytes(10, 2)), ErrorCodes.INVALID_IMAGE_ID, `writeSmallImage(${label})`);
        }
        expect(await snapshotTree(dir), `the tree under ${dir} must be unchanged`).toEqual(tree);
        expect(await listedIds(driver)).toEqual(['a']);
      },
    );

    smallCase(
      'writeSmallImage(id, bytes) refuses bytes that are not a Uint8Array with InvalidArgumentError and changes nothing on disk',
      async ({ driver, dir }) => {
        const tree = await snapshotTree(dir);
        for (const [label, bytes] of [
          ['a string', 'abc'],
          ['an array of numbers', [1, 2, 3]],
          ['null', null],
          ['an ArrayBuffer', new ArrayBuffer(4)],
        ] as const) {
          await expectFails(() => writeSmall(driver, 'img', bytes as unknown as Uint8Array), ErrorCodes.INVALID_ARGUMENT, `writeSmallImage('img', ${label})`);
        }
        expect(await snapshotTree(dir), `the tree under ${dir} must be unchanged`).toEqual(tree);
        expect(await driver.isCached('img')).toBe(false);
      },
    );

    smallCase(
      'writeSmallImage(id, bytes) called 8 times at once for one id in one process: exactly one resolves true, and the file is that call\'s bytes',
      async ({ driver, dir }) => {
        const seeds = [1, 2, 3, 4, 5, 6, 7, 8];
        const results = await Promise.all(seeds.map((seed) => writeSmall(driver, 'img', makeBytes(4000 + seed, seed))));
        expect(results.filter(Boolean).length, `exactly one true among ${JSON.stringify(results)}`).toBe(1);
        const winner = seeds[results.indexOf(true)] as number;
        await expectCommitted(driver, dir, 'img', makeBytes(4000 + winner, winner), 'the one commit');
        expect(await rows(driver)).toEqual([['img', 4000 + winner, 1]]);
      },
    );

    const reopenTitle = 'writeSmallImage(id, bytes) entries survive close() and a new driver on the directory: bytes, size, hits and stored digest';
    requiredCase(kit, reopenTitle, [noMethod, !kit.persistent && SKIP_REASONS.notPersistent], async (env) => {
      const data = makeBytes(4096, 1);
      const digest = `sha256:${sha256(data)}`;
      expect(await writeSmall(env.driver, 'kept', data, { checksum: digest })).toBe(true);
      expect(await writeSmall(env.driver, 'read', makeBytes(10, 2))).toBe(true);
      await readTimes(env.driver, 'read', 2);
      const before = await env.driver.getCachedImages();
      await env.driver.close();
      const again = await reopen(env);
      expect(await again.getCachedImages()).toEqual(before);
      expect(await rows(again)).toEqual([
        ['kept', 4096, 0],
        ['read', 10, 2],
      ]);
      if (kit.supports.storedChecksum) expect(await storedDigest(again, 'kept')).toBe(digest);
      await expectCommitted(again, env.dir, 'kept', data, 'after reopen');
      expect(await again.writeSmallImage?.('kept', makeBytes(10, 3)), 'still cached after reopen').toBe(false);
    });

    const killTitle = 'writeSmallImage(id, bytes) in a process that is then SIGKILLed: every entry it reported true is committed, with hits 0 and its digest';
    if (!has) kit.skip(killTitle, missing);
    else
      childCase(kit, killTitle, async (env: CaseEnv, driverModule: string) => {
        const outcomes = await runChildThenKill(driverModule, env.dir, {
          mode: 'sequential',
          ops: [
            { op: 'small-write', id: 's1', size: 4096, seed: 21, checksum: true },
            { op: 'small-write', id: 's2', size: 1, seed: 22 },
            { op: 'small-write', id: 's3', size: SMALL_WRITE_BYTES, seed: 23, checksum: true },
            { op: 'small-write', id: 's1', size: 100, seed: 24 },
          ],
        });
        expect(outcomes, 'the child committed three entries and was refused the cached one').toEqual(['ok', 'ok', 'ok', 'false']);
        const { driver, dir } = env;
        expect(await rows(driver)).toEqual([
          ['s1', 4096, 0],
          ['s2', 1, 0],
          ['s3', SMALL_WRITE_BYTES, 0],
        ]);
        expect((await inspectFile(join(dir, 's3'))).equals(makeBytes(SMALL_WRITE_BYTES, 23))).toBe(true);
        expect(await namesIn(dir, 'incomplete')).toEqual([]);
        if (kit.supports.storedChecksum) {
          expect(await storedDigest(driver, 's1')).toBe(`sha256:${sha256(makeBytes(4096, 21))}`);
          expect(await storedDigest(driver, 's2')).toBeUndefined();
        }
      });

    const noSpaceTitle =
      'writeSmallImage(id, bytes, { onNoSpace }) on a full filesystem asks onNoSpace with the unwritten bytes: true (space freed) retries and commits; false, or no handler, rejects with CacheStorageError and commits nothing';
    requiredCase(kit, noSpaceTitle, [noMethod, !kit.noSpace.supported && kit.noSpace.reason], async (env) => {
      const mount = await mountScratch();
      let driver: CacheDriver | undefined;
      try {
        const cacheDir = join(mount.path, 'cache');
        driver = await env.create(cacheDir);
        await driver.configure();
        // Metadata of an entry first, so the store has what it needs before the disk is full.
        expect(await writeSmall(driver, 'first', makeBytes(100, 1))).toBe(true);
        const filler = join(mount.path, 'filler');
        const data = makeBytes(SMALL_WRITE_BYTES, 2);

        await fillUp(filler);
        const asked: number[] = [];
        const committed = await writeSmall(driver, 'retried', data, {
          onNoSpace: async (unwritten) => {
            asked.push(unwritten);
            await rm(filler, { force: true });
            return true;
          },
        });
        expect(asked.length, 'onNoSpace was asked once (it freed the space)').toBe(1);
        expect(asked[0], 'onNoSpace is told the bytes still unwritten').toBeGreaterThan(0);
        expect(asked[0]).toBeLessThanOrEqual(SMALL_WRITE_BYTES);
        expect(committed, 'the retried write commits').toBe(true);
        await expectCommitted(driver, cacheDir, 'retried', data, 'after onNoSpace freed space');

        for (const [id, options] of [
          ['refused', { onNoSpace: async () => false }],
          ['unhandled', {}],
        ] as const) {
          await fillUp(filler);
          await expectFails(() => writeSmall(driver as CacheDriver, id, data, options), ErrorCodes.STORAGE, `writeSmallImage('${id}') on a full filesystem`);
          await rm(filler, { force: true });
          expect(await driver.isCached(id), `'${id}' is not cached`).toBe(false);
          expect(await whereOnDisk(cacheDir, id), `'${id}': nothing active or incomplete (a partial file goes to invalid/)`).not.toContain('active');
          expect(await namesIn(cacheDir, 'incomplete')).toEqual([]);
          expect(await listedIds(driver)).toEqual(['first', 'retried']);
        }
        expect(await driver.isBeingCached('refused')).toBe(false);
        expect(await writeSmall(driver, 'refused', data), 'the id can be written once there is space').toBe(true);
      } finally {
        await driver?.close();
        await mount.unmount();
      }
    });
  },
};
