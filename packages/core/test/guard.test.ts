import { Readable, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, guardDriver, ImageCache, type CacheDriver, type CacheWriter, type CleanReport, type ReadOptions } from '../src/index.js';

/**
 * A driver written from scratch, not on DirectoryCacheDriver: it has no
 * guards of its own and records every call that reaches it.
 */
class RawDriver implements CacheDriver {
  readonly name = 'raw';
  readonly cacheDir = '/nonexistent/raw-driver';
  readonly capabilities = { xattr: false, atime: false };
  readonly supports = { persistent: false, storedChecksum: false, crossProcessHits: 'best-effort', metadataStore: 'separate' } as const;
  readonly reservedNames = ['raw.db'];
  readonly calls: string[] = [];
  readonly #secret = 'private fields work through the wrapper';
  #configured = 0;

  get configuredTimes(): number {
    return this.#configured;
  }
  async configure(): Promise<void> {
    this.calls.push('configure');
    await new Promise((resolve) => setImmediate(resolve));
    this.#configured++;
  }
  async close(): Promise<void> {
    this.calls.push('close');
  }
  secret(): string {
    return this.#secret;
  }
  #record(name: string, ...args: unknown[]) {
    this.calls.push(`${name}(${args.map((a) => JSON.stringify(a)).join(', ')})`);
  }
  async isCached(id: string) { this.#record('isCached', id); return false; }
  async isBeingCached(id: string) { this.#record('isBeingCached', id); return false; }
  async isCacheable(id: string) { this.#record('isCacheable', id); return true; }
  async isQueued(id: string) { this.#record('isQueued', id); return false; }
  async queueImage(id: string) { this.#record('queueImage', id); return true; }
  async getQueuedImages() { this.#record('getQueuedImages'); return []; }
  async getCachedImages() { this.#record('getCachedImages'); return []; }
  async getCacheSize() { this.#record('getCacheSize'); return 0; }
  async getImageSize(id: string): Promise<number> { this.#record('getImageSize', id); return 0; }
  async getHitCount(id: string) { this.#record('getHitCount', id); return 0; }
  async getLeastRecentlyAccessed() { this.#record('getLeastRecentlyAccessed'); return null; }
  async openForWrite(id: string): Promise<CacheWriter> {
    this.#record('openForWrite', id);
    return Object.assign(new Writable({ write: (_c, _e, cb) => cb() }), { imageId: id, bytesWritten: 0, setChecksum: () => undefined });
  }
  async openForRead(id: string, options?: ReadOptions) { this.#record('openForRead', id, ...(options === undefined ? [] : [options])); return Readable.from([]); }
  async deleteCachedImage(id: string) { this.#record('deleteCachedImage', id); }
  async deleteAllCachedImages() { this.#record('deleteAllCachedImages'); return 0; }
  async deleteQueuedImage(id: string) { this.#record('deleteQueuedImage', id); }
  async deleteAllQueuedImages() { this.#record('deleteAllQueuedImages'); return 0; }
  async clean(): Promise<CleanReport> {
    this.#record('clean');
    return { invalid: 0, stalled: 0, orphanRecords: 0, adoptedFiles: 0, staleQueueMarkers: 0, errors: [] };
  }
  getImageFilepath(id: string) { this.#record('getImageFilepath', id); return `${this.cacheDir}/${id}`; }
}

describe('guardDriver(): the guards ImageCache.open applies to any driver', () => {
  it('rejects every call with DriverNotOpenError before configure(), and the driver sees none of them', async () => {
    const raw = new RawDriver();
    const driver = guardDriver(raw);
    for (const call of [() => driver.isCached('a'), () => driver.getCachedImages(), () => driver.clean(), () => driver.openForWrite('a')]) {
      await expect(call()).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
    }
    expect(raw.calls).toEqual([]);
  });

  it('configure() runs the driver once for concurrent and repeated calls; close() is idempotent and closes the door', async () => {
    const raw = new RawDriver();
    const driver = guardDriver(raw);
    await Promise.all([driver.configure(), driver.configure(), driver.configure()]);
    await driver.configure();
    expect(raw.configuredTimes).toBe(1);
    expect(await driver.isCached('a')).toBe(false);
    await driver.close();
    await driver.close();
    expect(raw.calls.filter((c) => c === 'close')).toHaveLength(1);
    await expect(driver.isCached('a')).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
    await expect(driver.configure()).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
    expect(raw.calls.filter((c) => c.startsWith('isCached'))).toEqual(['isCached("a")']);
  });

  it('validates ids (also against the driver\'s reservedNames) before the driver sees them', async () => {
    const raw = new RawDriver();
    const cache = await ImageCache.open({ driver: raw });
    for (const bad of ['../x', '', '.hidden', 'a/b', 'cache.db', 'raw.db', 'RAW.DB']) {
      for (const call of [
        () => cache.driver.isCached(bad),
        () => cache.driver.openForRead(bad),
        () => cache.driver.deleteCachedImage(bad),
        () => cache.driver.queueImage(bad),
      ]) {
        await expect(call(), `id ${JSON.stringify(bad)}`).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
      }
      expect(() => cache.driver.getImageFilepath(bad)).toThrow(expect.objectContaining({ code: ErrorCodes.INVALID_IMAGE_ID }));
    }
    expect(raw.calls).toEqual(['configure']);
    expect(await cache.isCached('good')).toBe(false);
    expect(raw.calls).toEqual(['configure', 'isCached("good")']);
  });

  it('validates openForRead ranges before the driver sees them, and passes valid options through as given', async () => {
    const raw = new RawDriver();
    const cache = await ImageCache.open({ driver: raw });
    for (const bad of [{ start: -1 }, { start: 0.5 }, { start: 5, end: 4 }, { end: Number.NaN }, { countHit: 0 }, { bogus: true }]) {
      await expect(cache.openForRead('a', bad as ReadOptions), JSON.stringify(bad)).rejects.toMatchObject({ code: ErrorCodes.INVALID_ARGUMENT });
    }
    expect(raw.calls).toEqual(['configure']);
    await cache.openForRead('a', { start: 3, end: 9, countHit: false });
    expect(raw.calls.at(-1)).toBe('openForRead("a", {"start":3,"end":9,"countHit":false})');
  });

  it('passes the driver\'s own methods and fields through, bound to the driver; wrapping twice gives the same wrapper', async () => {
    const raw = new RawDriver();
    const cache = await ImageCache.open({ driver: raw });
    const wrapped = cache.driver as RawDriver;
    expect(wrapped.secret()).toBe('private fields work through the wrapper');
    expect(wrapped.name).toBe('raw');
    expect(wrapped.supports).toBe(raw.supports);
    expect(wrapped).toBeInstanceOf(RawDriver);
    expect(guardDriver(cache.driver)).toBe(cache.driver);
    await cache.close();
    expect(raw.calls.at(-1)).toBe('close');
  });
});

describe('ImageCache over a DirectoryCacheDriver: the small queries skip the guard, with the same errors', () => {
  it('rejects a bad id and a closed driver as the guard does; answers from the files', async () => {
    const { tempDir, write } = await import('./helpers.js');
    const { MemoryDriver } = await import('../src/index.js');
    const { dir, cleanup } = await tempDir('guard-direct');
    try {
      const driver = new MemoryDriver({ cacheDir: dir });
      const cache = await ImageCache.open({ driver });
      await write(cache.driver, 'present', 'four');
      expect(await cache.isCached('present')).toBe(true);
      expect(await cache.getImageSize('present')).toBe(4);
      expect(await cache.getHitCount('present')).toBe(0);
      for (const bad of ['', '../x', '.hidden', 'a/b', 'queue', 42 as unknown as string]) {
        for (const call of [cache.isCached(bad), cache.getImageSize(bad), cache.getHitCount(bad)]) {
          await expect(call).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
        }
      }
      await cache.close();
      for (const call of [cache.isCached('present'), cache.getImageSize('present'), cache.getHitCount('present')]) {
        await expect(call).rejects.toMatchObject({ code: ErrorCodes.DRIVER_NOT_OPEN });
      }
    } finally {
      await cleanup();
    }
  });

  it('a subclass that overrides a query goes through the guard: a bad id never reaches it', async () => {
    const { tempDir } = await import('./helpers.js');
    const { MemoryDriver } = await import('../src/index.js');
    const seen: string[] = [];
    class Overriding extends MemoryDriver {
      override isCached(id: string): Promise<boolean> {
        seen.push(id);
        return Promise.resolve(false);
      }
    }
    const { dir, cleanup } = await tempDir('guard-override');
    try {
      const cache = await ImageCache.open({ driver: new Overriding({ cacheDir: dir }) });
      await expect(cache.isCached('../escape')).rejects.toMatchObject({ code: ErrorCodes.INVALID_IMAGE_ID });
      expect(await cache.isCached('fine')).toBe(false);
      expect(seen).toEqual(['fine']);
      await cache.close();
    } finally {
      await cleanup();
    }
  });
});
