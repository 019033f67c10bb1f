import { execFile } from 'node:child_process';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { ImageCache, type CachedImage, type CacheDriver } from '@cache/core';
import { expect } from 'vitest';
import { makeBytes, readImage, sha256 } from '../helpers.js';
import type { CaseEnv, ConformanceKit } from '../kit.js';

/** Writes `data` through the facade with a verified sha256, so the driver is handed a digest to store. */
export async function writeVerified(driver: CacheDriver, id: string, data: Buffer): Promise<string> {
  const cache = await ImageCache.open({ driver });
  const digest = sha256(data);
  expect(await cache.cacheImage(id, Readable.from([data]), { checksum: { algorithm: 'sha256', digest } }), `cacheImage('${id}')`).toBe(true);
  return `sha256:${digest}`;
}

/** Reads an entry `times` times, completely. */
export async function readTimes(driver: CacheDriver, id: string, times: number): Promise<void> {
  for (let i = 0; i < times; i++) await readImage(driver, id);
}

/** The listing as `[id, size, hits]` rows. */
export async function rows(driver: CacheDriver): Promise<[string, number, number][]> {
  return (await driver.getCachedImages()).map((image) => [image.imageId, image.size, image.hits]);
}

/** Ids in eviction order (least recently used first), by the contract's one rule. */
export function recencyOrder(images: readonly CachedImage[]): string[] {
  return [...images]
    .sort((a, b) => a.lastAccessed - b.lastAccessed || a.lastModified - b.lastModified || (a.imageId < b.imageId ? -1 : 1))
    .map((image) => image.imageId);
}

/** The stored digest of `id`, through the optional method (undefined when the driver has none). */
export async function storedDigest(driver: CacheDriver, id: string): Promise<string | undefined> {
  return driver.getStoredChecksum === undefined ? undefined : driver.getStoredChecksum(id);
}

/** A second driver on the case's directory, configured. */
export async function reopen(env: CaseEnv): Promise<CacheDriver> {
  const other = await env.create(env.dir);
  await other.configure();
  return other;
}

/** Asserts the listing, `getCacheSize()` and the per-id calls agree with each other. */
export async function expectConsistent(driver: CacheDriver, context: string): Promise<void> {
  const images = await driver.getCachedImages();
  expect(await driver.getCacheSize(), `${context}: getCacheSize() = sum of listed sizes`).toBe(
    images.reduce((sum, image) => sum + image.size, 0),
  );
  for (const image of images) {
    expect(await driver.isCached(image.imageId), `${context}: isCached('${image.imageId}') of a listed entry`).toBe(true);
    expect(await driver.getHitCount(image.imageId), `${context}: getHitCount('${image.imageId}') = listed hits`).toBe(image.hits);
    expect(await driver.getImageSize(image.imageId), `${context}: getImageSize('${image.imageId}') = listed size`).toBe(image.size);
  }
}

/** The reasons the groups give when they skip a case for what the driver declares. */
export const SKIP_REASONS = {
  notPersistent: 'the driver keeps metadata per instance (supports.persistent: false)',
  noStoredChecksum: 'the driver does not declare supports.storedChecksum',
} as const;

/**
 * Registers a case that runs only when the driver has what it needs: each of
 * `unmet` is `false` (that need is met) or the reason to skip the case; the
 * first reason given is the one reported.
 */
export function requiredCase(kit: ConformanceKit, title: string, unmet: readonly (string | false)[], fn: Parameters<ConformanceKit['it']>[1]): void {
  const reason = unmet.find((item): item is string => item !== false);
  if (reason !== undefined) kit.skip(title, reason);
  else kit.it(title, fn);
}

/** Registers a case that needs the driver to be loadable in other processes (`driverModule`). */
export function childCase(kit: ConformanceKit, title: string, fn: (env: CaseEnv, driverModule: string) => Promise<void>): void {
  if (!kit.persistent) {
    kit.skip(title, SKIP_REASONS.notPersistent);
    return;
  }
  const driverModule = kit.driverModule;
  if (driverModule === undefined) {
    // A persistent driver is shared by processes: the kit must be able to prove it. Not a skip: a failure that says what to do.
    kit.it(title, () => {
      throw new Error(
        'the driver declares supports.persistent, so the kit runs it in other processes too: pass ' +
          'describeDriverConformance({ ..., driverModule: new URL("../dist/driver-module.js", import.meta.url) }), ' +
          'a JavaScript module exporting createDriver(cacheDir) that plain `node` can import',
      );
    });
    return;
  }
  kit.it(title, (env) => fn(env, driverModule));
}

/** Bytes of an image written by child processes: `makeBytes(size, seed)`. */
export { makeBytes };

const run = promisify(execFile);

/**
 * Another process puts a file of `size` bytes, each `fill`, under `id`,
 * without this driver, as Glance, `mv` or an operator's script would:
 * - `rename` (default): write `incomplete/<id>`, rename it over `<id>` (a new
 *   inode), and with `dropQueueMarker` remove `queue/<id>` as a commit does;
 * - `inplace`: truncate and rewrite `<id>` itself (same inode, new size and mtime).
 */
export async function writeFromAnotherProcess(
  dir: string,
  id: string,
  size: number,
  options: { fill: number; how?: 'rename' | 'inplace'; dropQueueMarker?: boolean },
): Promise<void> {
  const script = `
    const fs = require('node:fs'); const path = require('node:path');
    const [dir, id, size, fill, how, dropMarker] = process.argv.slice(1);
    const data = Buffer.alloc(Number(size), Number(fill));
    if (how === 'rename') {
      const tmp = path.join(dir, 'incomplete', id);
      fs.writeFileSync(tmp, data);
      fs.renameSync(tmp, path.join(dir, id));
      if (dropMarker === 'yes') fs.rmSync(path.join(dir, 'queue', id), { force: true });
    } else {
      fs.writeFileSync(path.join(dir, id), data);
    }
  `;
  const args = [dir, id, String(size), String(options.fill), options.how ?? 'rename', options.dropQueueMarker === true ? 'yes' : 'no'];
  await run(process.execPath, ['-e', script, ...args]);
}
