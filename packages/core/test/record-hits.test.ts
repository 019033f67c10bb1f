// ImageCache.recordHits: hits counted by the caller (reads opened with countHit: false), written in one call.
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, ImageCache, MemoryDriver, type CacheDriver } from '../src/index.js';
import { collect, tempDir, write } from './helpers.js';

describe('ImageCache.recordHits', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let driver: MemoryDriver;
  let cache: ImageCache;

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('record-hits'));
    driver = new MemoryDriver({ cacheDir: dir });
    cache = await ImageCache.open({ driver });
  });
  afterEach(async () => {
    await cache.close();
    await cleanup();
  });

  it('adds count hits to the file the caller read, at the time given; a read with countHit: false records none itself', async () => {
    await write(driver, 'img', 'some bytes');
    const stat = await cache.stat('img');
    expect(stat).not.toBeNull();
    expect(cache.canRecordHits).toBe(true);
    expect((await collect(await cache.openForRead('img', { countHit: false, identity: stat?.identity as string }))).toString()).toBe('some bytes');
    expect(await cache.getHitCount('img')).toBe(0);

    const time = (stat?.mtime as number) + 1000;
    expect(await cache.recordHits('img', 3, { identity: stat?.identity as string, time })).toBe(true);
    expect(await cache.getHitCount('img')).toBe(3);
    expect((await cache.stat('img'))?.lastAccessed).toBe(time);
    expect(await cache.recordHits('img', 2, { identity: stat?.identity as string })).toBe(true);
    expect(await cache.getHitCount('img')).toBe(5);
    // Zero hits: nothing to record.
    expect(await cache.recordHits('img', 0, { identity: stat?.identity as string })).toBe(false);
    expect(await cache.getHitCount('img')).toBe(5);
  });

  it('records nothing for a file that is gone or was replaced (false), and refuses a bad count or identity', async () => {
    await write(driver, 'img', 'first');
    const first = await cache.stat('img');
    await write(driver, 'other', 'second, longer');
    await rename(join(dir, 'other'), join(dir, 'img')); // another file under the name (new inode and size)
    expect(await cache.recordHits('img', 4, { identity: first?.identity as string })).toBe(false);
    expect(await cache.recordHits('absent', 1, { identity: first?.identity as string })).toBe(false);
    const now = await cache.stat('img');
    expect(now?.identity).not.toBe(first?.identity);
    expect(now?.hits).toBe(0);

    for (const count of [-1, 1.5, Number.NaN]) {
      await expect(cache.recordHits('img', count, { identity: now?.identity as string })).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    }
    await expect(cache.recordHits('img', 1, {} as { identity: string })).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    await expect(cache.recordHits('../escape', 1, { identity: now?.identity as string })).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
    expect((await cache.stat('img'))?.hits).toBe(0);
  });

  it('a driver without recordHits: canRecordHits is false and recordHits records nothing', async () => {
    const inner = new MemoryDriver({ cacheDir: join(dir, 'bare') });
    // Every method of the driver but recordHits, bound to it (a driver written before recordHits existed).
    const without: Record<string, unknown> = { name: inner.name, cacheDir: inner.cacheDir, capabilities: inner.capabilities, supports: inner.supports };
    for (let proto = Object.getPrototypeOf(inner); proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
      for (const key of Object.getOwnPropertyNames(proto)) {
        const value = (inner as unknown as Record<string, unknown>)[key];
        if (key === 'constructor' || key === 'recordHits' || key in without || typeof value !== 'function') continue;
        without[key] = (value as (...args: unknown[]) => unknown).bind(inner);
      }
    }
    expect(without['recordHits']).toBeUndefined();
    const other = await ImageCache.open({ driver: without as unknown as CacheDriver });
    try {
      await write(inner, 'img', 'bytes');
      const stat = await other.stat('img');
      expect(other.canRecordHits).toBe(false);
      expect(await other.recordHits('img', 2, { identity: stat?.identity as string })).toBe(false);
      expect(await other.getHitCount('img')).toBe(0);
    } finally {
      await other.close();
    }
  });
});
