import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, ImageCache, MemoryDriver, type CacheDriver } from '../src/index.js';
import { collect, tempDir, write } from './helpers.js';

/**
 * A driver with only the required contract methods (no statImage, no
 * quarantineImage, no getStoredChecksum), delegating to a MemoryDriver: what
 * ImageCache must cope with for a driver written from scratch.
 */
function bareDriver(inner: MemoryDriver): CacheDriver {
  const required = [
    'configure', 'close', 'isCached', 'isBeingCached', 'isCacheable', 'isQueued', 'queueImage', 'getQueuedImages',
    'getCachedImages', 'getCacheSize', 'getImageSize', 'getHitCount', 'getLeastRecentlyAccessed', 'openForWrite',
    'openForRead', 'deleteCachedImage', 'deleteAllCachedImages', 'deleteQueuedImage', 'deleteAllQueuedImages', 'clean',
    'getImageFilepath',
  ] as const;
  const driver: Record<string, unknown> = {
    name: 'bare',
    cacheDir: inner.cacheDir,
    capabilities: inner.capabilities,
    supports: { ...inner.supports, storedChecksum: false },
  };
  for (const method of required) driver[method] = (inner[method] as (...args: unknown[]) => unknown).bind(inner);
  return driver as unknown as CacheDriver;
}

for (const kind of ['DirectoryCacheDriver (statImage, quarantineImage)', 'a bare driver (core fallbacks)'] as const) {
  describe(`ImageCache.stat / statFile / listFiles / quarantine over ${kind}`, () => {
    let dir: string;
    let cleanup: () => Promise<void>;
    let cache: ImageCache;
    const bare = kind.startsWith('a bare');

    beforeEach(async () => {
      ({ dir, cleanup } = await tempDir('stat-quarantine'));
      const inner = new MemoryDriver({ cacheDir: dir });
      cache = await ImageCache.open({ driver: bare ? bareDriver(inner) : inner });
      if (bare) expect(cache.driver.statImage).toBeUndefined();
      else expect(typeof cache.driver.statImage).toBe('function');
    });
    afterEach(async () => {
      await cache.close();
      await cleanup();
    });

    it('stat(id): size, mtime, identity, hits, access and commit times, stored digest; null when not cached', async () => {
      const digest = 'b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9'; // sha256("hello world")
      await cache.cacheImage('img', Readable.from([Buffer.from('hello world')]), { checksum: { algorithm: 'sha256', digest } });
      await collect(await cache.openForRead('img'));
      await collect(await cache.openForRead('img'));
      const stat = await cache.stat('img');
      const [listed] = await cache.getCachedImages();
      expect(stat).toMatchObject({ imageId: 'img', size: 11, hits: 2 });
      expect(stat?.lastAccessed).toBe(listed?.lastAccessed);
      expect(stat?.lastModified).toBe(listed?.lastModified);
      expect(stat?.identity).toMatch(/^\d+:11:\d+$/);
      expect(typeof stat?.mtime).toBe('number');
      expect(stat?.storedChecksum).toBe(bare ? undefined : `sha256:${digest}`);
      expect(await cache.stat('absent')).toBeNull();
      await expect(cache.stat('../x')).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    });

    it('stat(id) of a file replaced under the id: a new identity, no inherited hits or digest', async () => {
      await write(cache.driver, 'img', 'old bytes');
      await collect(await cache.openForRead('img'));
      const before = await cache.stat('img');
      await writeFile(join(dir, 'incomplete', 'img'), 'new bytes, more of them');
      await rename(join(dir, 'incomplete', 'img'), join(dir, 'img'));
      const after = await cache.stat('img');
      expect(after?.identity).not.toBe(before?.identity);
      expect(after).toMatchObject({ size: 23, hits: 0, storedChecksum: undefined });
    });

    it('statFile(id, status) and listFiles(status): the files of each part of the cache, with sizes', async () => {
      await write(cache.driver, 'a', 'aaaa');
      await writeFile(join(dir, 'invalid', 'broken'), 'xyz');
      await writeFile(join(dir, 'invalid', 'also-broken'), '12345');
      await writeFile(join(dir, 'incomplete', 'partial'), '12');
      await cache.queueImage('queued');
      expect(await cache.statFile('broken', 'invalid')).toMatchObject({ imageId: 'broken', status: 'invalid', size: 3 });
      expect(await cache.statFile('a', 'invalid')).toBeNull();
      expect(await cache.statFile('a', 'active')).toMatchObject({ imageId: 'a', status: 'active', size: 4 });
      expect((await cache.listFiles('invalid')).map((f) => [f.imageId, f.size])).toEqual([
        ['also-broken', 5],
        ['broken', 3],
      ]);
      expect((await cache.listFiles('incomplete')).map((f) => [f.imageId, f.size])).toEqual([['partial', 2]]);
      expect((await cache.listFiles('queue')).map((f) => f.imageId)).toEqual(['queued']);
      expect((await cache.listFiles('active')).map((f) => f.imageId)).toEqual(['a']);
      await expect(cache.listFiles('elsewhere' as never)).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
      await expect(cache.statFile('a', 'nowhere' as never)).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    });

    it('quarantine(id, { reason }): the file moves to invalid/, the entry and its hits are gone; false when not cached', async () => {
      await write(cache.driver, 'img', 'suspect bytes');
      await collect(await cache.openForRead('img'));
      expect(await cache.quarantine('img', { reason: 'sha256 mismatch' })).toBe(true);
      expect(await cache.isCached('img')).toBe(false);
      expect(await cache.getCachedImages()).toEqual([]);
      expect(await readFile(join(dir, 'invalid', 'img'), 'utf8')).toBe('suspect bytes');
      expect(await cache.quarantine('img', { reason: 'again' })).toBe(false);
      // A new entry under the id starts from nothing.
      await write(cache.driver, 'img', 'good bytes');
      expect(await cache.getHitCount('img')).toBe(0);
    });

    it('quarantine(id, { identity }) moves only that file: a replacement under the id stays', async () => {
      await write(cache.driver, 'img', 'checked');
      const checked = await cache.stat('img');
      await writeFile(join(dir, 'incomplete', 'img'), 'replacement');
      await rename(join(dir, 'incomplete', 'img'), join(dir, 'img'));
      expect(await cache.quarantine('img', { reason: 'mismatch', identity: checked?.identity as string })).toBe(false);
      expect(await cache.isCached('img')).toBe(true);
      expect(await readdir(join(dir, 'invalid'))).toEqual([]);
      const now = await cache.stat('img');
      expect(await cache.quarantine('img', { reason: 'mismatch', identity: now?.identity as string })).toBe(true);
      expect(await readFile(join(dir, 'invalid', 'img'), 'utf8')).toBe('replacement');
    });

    it('quarantine() without a reason, or with a bad identity, is an InvalidArgumentError and moves nothing', async () => {
      await write(cache.driver, 'img', 'bytes');
      for (const options of [undefined, {}, { reason: '' }, { reason: '  ' }, { reason: 7 }, { reason: 'x', identity: '' }]) {
        await expect(cache.quarantine('img', options as never), JSON.stringify(options)).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
      }
      expect(await cache.isCached('img')).toBe(true);
    });
  });
}
