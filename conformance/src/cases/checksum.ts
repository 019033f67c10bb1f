import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { ImageCache } from '@cache/core';
import { expect } from 'vitest';
import { abortWrite, chunked, drain, endWrite, failingSource, makeBytes, readImage, sha256, whenClosed, writeChunk, writeImage, inspectFile } from '../helpers.js';
import type { CaseGroup } from '../kit.js';
import { verifyCacheDir } from '../verify.js';
import { ErrorCodes, expectRejects, layout, whereOnDisk } from './common.js';

const SIZE = 3 * 1024 * 1024 + 17;
const CHUNK = 64 * 1024;
const WRONG_SHA256 = '0'.repeat(64);

function source(data: Buffer): Readable {
  return Readable.from(chunked(data, CHUNK));
}

/**
 * Group 14: writing through the facade with verification.
 * `cacheImage(id, source, { checksum })` commits verified bytes or rejects
 * with `ChecksumMismatchError` leaving the file in invalid/;
 * `getCachingStream()` gives the client every byte, commits when the stream
 * ends, ends with `ChecksumMismatchError` after the data on a mismatch, and
 * errors (never ends cleanly) when the source fails.
 */
export const checksumCases: CaseGroup = {
  name: 'checksum and caching stream (ImageCache facade)',
  description:
    '`cacheImage` with sha256 or md5 commits. A wrong digest rejects with `CACHE_CHECKSUM_MISMATCH` and, by then, the file is in `invalid/`. `getCachingStream` gives every byte and commits by `end`. A wrong checksum delivers all bytes, then the mismatch error, and puts the entry in `invalid/`. A failing source errors the client (never a clean end). A client that stops early causes a rollback. A concurrent writer or an already cached id leaves the client stream intact.',
  register(kit) {
    kit.it('ImageCache.cacheImage(id, stream, { checksum: sha256 }) commits the verified bytes', async ({ driver, dir }) => {
      const data = makeBytes(SIZE, 21);
      const cache = await ImageCache.open({ driver });
      expect(await cache.cacheImage('img', source(data), { checksum: { algorithm: 'sha256', digest: sha256(data) } })).toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
      expect((await inspectFile(layout(dir).active('img'))).equals(data)).toBe(true);
      expect(await driver.getImageSize('img')).toBe(SIZE);
      expect(await verifyCacheDir(dir, { driver })).toEqual([]);
    });

    kit.it('ImageCache.cacheImage(id, stream, { checksum: md5 hex }) commits the verified bytes (Glance checksum)', async ({ driver, dir }) => {
      const data = makeBytes(100_000, 22);
      const cache = await ImageCache.open({ driver });
      const md5 = createHash('md5').update(data).digest('hex');
      expect(await cache.cacheImage('img', source(data), { checksum: md5 })).toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
    });

    kit.it('ImageCache.cacheImage(id) with a wrong digest rejects with ChecksumMismatchError: nothing active, file in invalid/', async ({ driver, dir }) => {
      const data = makeBytes(SIZE, 23);
      const cache = await ImageCache.open({ driver });
      await expectRejects(
        cache.cacheImage('img', source(data), { checksum: { algorithm: 'sha256', digest: WRONG_SHA256 } }),
        ErrorCodes.CHECKSUM_MISMATCH,
        'cacheImage with a wrong sha256',
      );
      expect(await whereOnDisk(dir, 'img'), 'when cacheImage rejects, the partial file is already in invalid/').toEqual(['invalid']);
      expect(await driver.isCached('img')).toBe(false);
      expect(await driver.getCachedImages()).toEqual([]);
    });

    kit.it('ImageCache.cacheImage(id) returns false for a cached id and leaves the entry alone', async ({ driver }) => {
      const v1 = makeBytes(1000, 1);
      await writeImage(driver, 'img', v1);
      const cache = await ImageCache.open({ driver });
      expect(await cache.cacheImage('img', source(makeBytes(2000, 2)))).toBe(false);
      expect((await readImage(driver, 'img')).equals(v1)).toBe(true);
    });

    kit.it('ImageCache.getCachingStream(id, source) gives the client every byte and the entry is committed when the stream ends', async ({ driver, dir }) => {
      const data = makeBytes(SIZE, 24);
      const cache = await ImageCache.open({ driver });
      const client = cache.getCachingStream('img', source(data));
      const { data: got, error, ended } = await drain(client);
      expect(error).toBeUndefined();
      expect(ended).toBe(true);
      expect(got.equals(data), 'the client got every byte exactly once').toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
      expect((await inspectFile(layout(dir).active('img'))).equals(data)).toBe(true);
    });

    kit.it('ImageCache.getCachingStream(id, source, { checksum }) with a matching sha256 commits when the stream ends', async ({ driver, dir }) => {
      const data = makeBytes(SIZE, 25);
      const cache = await ImageCache.open({ driver });
      const client = cache.getCachingStream('img', source(data), { checksum: { algorithm: 'sha256', digest: sha256(data) } });
      const committed = new Promise<boolean>((resolve) => client.once('end', () => resolve(driver.isCached('img'))));
      const { data: got, error } = await drain(client);
      expect(error).toBeUndefined();
      expect(got.equals(data)).toBe(true);
      expect(await committed, 'the entry is active as soon as the client sees end').toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active']);
    });

    kit.it('ImageCache.getCachingStream(id) with a wrong checksum gives every byte, then ChecksumMismatchError; entry in invalid/', async ({ driver, dir }) => {
      const data = makeBytes(SIZE, 26);
      const cache = await ImageCache.open({ driver });
      const client = cache.getCachingStream('img', source(data), { checksum: { algorithm: 'sha256', digest: WRONG_SHA256 } });
      const { data: got, error, ended } = await drain(client);
      expect(got.length, 'the client got all the bytes before the error').toBe(data.length);
      expect(got.equals(data)).toBe(true);
      expect(ended, 'the stream must not end cleanly').toBe(false);
      await expectRejects(Promise.reject(error), ErrorCodes.CHECKSUM_MISMATCH, 'caching stream error');
      await whenClosed(client);
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
      expect(await driver.isCached('img')).toBe(false);
    });

    kit.it('ImageCache.getCachingStream(id) with a source that fails midway errors the client stream; nothing active', async ({ driver, dir }) => {
      const failure = new Error('origin failed midway');
      const cache = await ImageCache.open({ driver });
      const client = cache.getCachingStream('img', Readable.from(failingSource(chunked(makeBytes(500_000, 27), CHUNK), failure)));
      const { data: got, error, ended } = await drain(client);
      expect(ended, 'a failed source must never look like a complete stream').toBe(false);
      expect(error).toBe(failure);
      expect(got.length).toBeLessThanOrEqual(500_000);
      await whenClosed(client);
      expect(await driver.isCached('img')).toBe(false);
      expect(await driver.getCachedImages()).toEqual([]);
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
    });

    kit.it('ImageCache.getCachingStream(id) whose client stops early rolls the entry back to invalid/', async ({ driver, dir }) => {
      const cache = await ImageCache.open({ driver });
      const client = cache.getCachingStream('img', source(makeBytes(SIZE, 28)));
      await new Promise<void>((resolve, reject) => {
        client.once('data', () => resolve());
        client.once('error', reject);
      });
      client.destroy();
      await whenClosed(client);
      expect((await client.cacheOutcome).status).toBe('aborted');
      expect(await whereOnDisk(dir, 'img')).toEqual(['invalid']);
      expect(await driver.isCached('img')).toBe(false);
    });

    kit.it('ImageCache.getCachingStream(id) while another writer has the id still gives the client every byte', async ({ driver, dir }) => {
      const other = await driver.openForWrite('img');
      const otherData = makeBytes(5000, 29);
      await writeChunk(other, otherData.subarray(0, 100));
      const cache = await ImageCache.open({ driver });
      const data = makeBytes(SIZE, 30);
      const { data: got, error } = await drain(cache.getCachingStream('img', source(data)));
      expect(error).toBeUndefined();
      expect(got.equals(data)).toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['incomplete']);
      await endWrite(other, otherData.subarray(100));
      expect((await inspectFile(layout(dir).active('img'))).equals(otherData), 'the other writer commits its own bytes').toBe(true);
    });

    kit.it('ImageCache.getCachingStream(id) of a cached id passes the source through and leaves the entry alone', async ({ driver }) => {
      const v1 = makeBytes(1000, 31);
      await writeImage(driver, 'img', v1);
      const cache = await ImageCache.open({ driver });
      const data = makeBytes(50_000, 32);
      const client = cache.getCachingStream('img', source(data));
      const { data: got, error } = await drain(client);
      expect(error).toBeUndefined();
      expect(got.equals(data)).toBe(true);
      expect((await client.cacheOutcome).status).toBe('skipped');
      expect((await readImage(driver, 'img')).equals(v1)).toBe(true);
    });

    kit.it('openForWrite(id) then abort leaves the id cacheable for the facade', async ({ driver, dir }) => {
      const writer = await driver.openForWrite('img');
      await abortWrite(writer, new Error('x'));
      const cache = await ImageCache.open({ driver });
      const data = makeBytes(10_000, 33);
      expect(await cache.cacheImage('img', source(data), { checksum: { algorithm: 'sha256', digest: sha256(data) } })).toBe(true);
      expect(await whereOnDisk(dir, 'img')).toEqual(['active', 'invalid']);
    });
  },
};
