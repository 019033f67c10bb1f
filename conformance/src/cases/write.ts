import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { expect } from 'vitest';
import { abortWrite, chunked, endWrite, failingSource, makeBytes, readImage, rejectionOf, whenClosed, writeChunk, writeImage, inspectFile } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { verifyCacheDir } from '../verify.js';
import { ErrorCodes, expectRejects, layout, listedIds, namesIn, whereOnDisk } from './common.js';

/**
 * Groups 4, 5 and 6: the write protocol. Finishing a writer commits
 * (incomplete/ -> active, metadata, queue marker removed); an error, a failing
 * source or an abort rolls back to invalid/; a second writer of the same id is
 * refused at once; a failed rewrite leaves the committed entry intact.
 */
export const writeCases: CaseGroup = {
  name: 'write, commit and rollback',
  description:
    'A commit leaves the exact bytes active, no `incomplete/` file, no queue marker, and hits 0. An empty image commits too. Nothing is visible before the commit. `destroy(err)`, `destroy()` and a source that fails midway all roll back to `invalid/`. A failed write keeps the queue marker. A second writer is refused at once with `CACHE_IMAGE_BEING_CACHED` and the first writer\'s bytes stay intact. A rewrite replaces the entry atomically. A failed rewrite leaves the committed entry (bytes, size, hits, times) intact.',
  register(kit) {
    kit.it('openForWrite(id) commits when the writer finishes: exact bytes active, nothing in incomplete/, listed with hits 0', async ({ driver, dir }) => {
      const at = layout(dir);
      const data = makeBytes(300_000, 4);
      const writer = await driver.openForWrite('img');
      expect(writer.imageId).toBe('img');
      await pipeline(Readable.from(chunked(data, 10_000)), writer);
      expect(writer.bytesWritten).toBe(data.length);
      expect((await inspectFile(at.active('img'))).equals(data), 'the active file has exactly the written bytes').toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
      expect(await namesIn(dir, 'incomplete')).toEqual([]);
      expect(await namesIn(dir, 'invalid')).toEqual([]);
      expect(await driver.isCached('img')).toBe(true);
      expect(await driver.isBeingCached('img')).toBe(false);
      const [image] = await driver.getCachedImages();
      expect(image).toMatchObject({ imageId: 'img', hits: 0, size: data.length });
      expect((await readImage(driver, 'img')).equals(data)).toBe(true);
      expect(await verifyCacheDir(dir, { driver })).toEqual([]);
    });

    kit.it('openForWrite(id) commits an empty image', async ({ driver, dir }) => {
      await writeImage(driver, 'empty', Buffer.alloc(0));
      expect(await whereOnDisk(dir, 'empty')).toEqual(['active']);
      expect(await driver.getImageSize('empty')).toBe(0);
      expect(await listedIds(driver)).toEqual(['empty']);
      expect((await readImage(driver, 'empty')).length).toBe(0);
    });

    kit.it('openForWrite(id) keeps the entry out of the active set until the commit', async ({ driver, dir }) => {
      const at = layout(dir);
      const writer = await driver.openForWrite('img');
      await writeChunk(writer, makeBytes(5000));
      expect(await whereOnDisk(dir, 'img')).toEqual(['incomplete']);
      expect(await driver.isBeingCached('img')).toBe(true);
      expect(await driver.isCached('img')).toBe(false);
      expect(await driver.isCacheable('img')).toBe(false);
      expect(await driver.getCachedImages()).toEqual([]);
      expect(await driver.getCacheSize()).toBe(0);
      await expectRejects(driver.openForRead('img'), ErrorCodes.IMAGE_NOT_CACHED, 'openForRead during the write');
      await endWrite(writer, makeBytes(100));
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
      expect((await inspectFile(at.active('img'))).length).toBe(5100);
      expect(await driver.isBeingCached('img')).toBe(false);
    });

    kit.it('openForWrite(id) commit removes the queue marker of a queued id', async ({ driver, dir }) => {
      expect(await driver.queueImage('img')).toBe(true);
      await writeImage(driver, 'img', makeBytes(2000));
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
      expect(await driver.isQueued('img')).toBe(false);
      expect(await driver.getQueuedImages()).toEqual([]);
    });

    kit.it('openForWrite(id) rolls back to invalid/ on writer.destroy(err): nothing active, not listed', async ({ driver, dir }) => {
      const writer = await driver.openForWrite('img');
      await writeChunk(writer, makeBytes(4096));
      await abortWrite(writer, new Error('x'));
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
      expect(await driver.isCached('img')).toBe(false);
      expect(await driver.isBeingCached('img')).toBe(false);
      expect(await driver.getCachedImages()).toEqual([]);
      expect(await driver.getCacheSize()).toBe(0);
      expect(await driver.getHitCount('img')).toBe(0);
      await expectRejects(driver.openForRead('img'), ErrorCodes.IMAGE_NOT_CACHED, 'openForRead after rollback');
      expect(await verifyCacheDir(dir, { driver })).toEqual([]);
    });

    kit.it('openForWrite(id) rolls back to invalid/ when the writer is destroyed without an error (abandoned write)', async ({ driver, dir }) => {
      const writer = await driver.openForWrite('img');
      writer.write(makeBytes(100));
      await abortWrite(writer);
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
      expect(await driver.isCached('img')).toBe(false);
    });

    kit.it('openForWrite(id) rolls back to invalid/ when the source fails midway; pipeline rejects with the source error', async ({ driver, dir }) => {
      const failure = new Error('source failed midway');
      const writer = await driver.openForWrite('img');
      const error = await rejectionOf(pipeline(Readable.from(failingSource(chunked(makeBytes(200_000), 50_000), failure)), writer));
      expect(error).toBe(failure);
      await whenClosed(writer);
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
      expect(await driver.isCached('img')).toBe(false);
      expect(await driver.getCachedImages()).toEqual([]);
    });

    kit.it('clean() removes the invalid/ file a rollback left', async ({ driver, dir }) => {
      const writer = await driver.openForWrite('img');
      await abortWrite(writer, new Error('x'));
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
      const report = await driver.clean();
      expect(report.invalid).toBe(1);
      expect(await whereOnDisk(dir, 'img')).toEqual([]);
    });

    kit.it('openForWrite(id) keeps the queue marker when the write fails', async ({ driver, dir }) => {
      expect(await driver.queueImage('img')).toBe(true);
      const writer = await driver.openForWrite('img');
      await abortWrite(writer, new Error('x'));
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid', 'queue']);
      expect(await driver.getQueuedImages()).toEqual(['img']);
    });

    kit.it('openForWrite(id) rejects a second writer with ImageBeingCachedError; the first commits its own bytes intact', async ({ driver, dir }) => {
      const first = await driver.openForWrite('img');
      const firstData = makeBytes(150_000, 1);
      await writeChunk(first, firstData.subarray(0, 1000));
      await expectRejects(driver.openForWrite('img'), ErrorCodes.IMAGE_BEING_CACHED, 'second openForWrite(img)');
      await expectRejects(driver.openForWrite('img'), ErrorCodes.IMAGE_BEING_CACHED, 'third openForWrite(img)');
      await pipeline(Readable.from(chunked(firstData.subarray(1000), 7000)), first);
      expect((await inspectFile(layout(dir).active('img'))).equals(firstData), 'the first writer bytes are intact').toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
      expect(await driver.getImageSize('img')).toBe(firstData.length);
    });

    kit.it('openForWrite(id) refuses a second writer even before the first wrote a byte, and accepts one after the first finished', async ({ driver, dir }) => {
      const first = await driver.openForWrite('img');
      await expectRejects(driver.openForWrite('img'), ErrorCodes.IMAGE_BEING_CACHED, 'second openForWrite(img)');
      await abortWrite(first, new Error('gave up'));
      const data = makeBytes(1234, 5);
      await writeImage(driver, 'img', data);
      expect((await inspectFile(layout(dir).active('img'))).equals(data)).toBe(true);
    });

    kit.it('openForWrite(id) on a cached id replaces the entry when it commits; readers see the old bytes until then', async ({ driver }) => {
      const v1 = makeBytes(10_000, 1);
      const v2 = makeBytes(20_000, 2);
      await writeImage(driver, 'img', v1);
      await readImage(driver, 'img');
      const writer = await driver.openForWrite('img');
      await writeChunk(writer, v2.subarray(0, 5000));
      expect((await readImage(driver, 'img')).equals(v1), 'readers see the committed version during a rewrite').toBe(true);
      await pipeline(Readable.from([v2.subarray(5000)]), writer);
      expect((await readImage(driver, 'img')).equals(v2)).toBe(true);
      expect(await driver.getImageSize('img')).toBe(v2.length);
      expect(await listedIds(driver)).toEqual(['img']);
    });

    kit.it('openForWrite(id) on a cached id, then destroy (a failed rewrite), leaves the committed entry intact: bytes, size, hits, times', async ({ driver, dir }) => {
      const v1 = makeBytes(10_000, 1);
      await writeImage(driver, 'img', v1);
      await readImage(driver, 'img');
      await readImage(driver, 'img');
      const [before] = await driver.getCachedImages();
      expect(before).toMatchObject({ imageId: 'img', hits: 2, size: v1.length });
      const writer = await driver.openForWrite('img');
      writer.write(makeBytes(3000, 2));
      await abortWrite(writer, new Error('rewrite failed'));
      expect(await whereOnDisk(dir, 'img')).toEqual(['active', 'invalid']);
      expect((await inspectFile(layout(dir).active('img'))).equals(v1)).toBe(true);
      expect(await driver.isCached('img')).toBe(true);
      expect(await driver.getHitCount('img'), 'the hits of the committed entry survive a failed rewrite').toBe(2);
      expect(await driver.getCachedImages()).toEqual([before]);
    });
  },
};
