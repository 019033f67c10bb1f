/**
 * Durability modes (docs/adr/0007). Relaxed commits (no fsync) made by a
 * child process that is then SIGKILLed are re-verified by the next driver
 * that opens the directory: kept when their bytes match their stored digest,
 * moved to `invalid/` otherwise, so a torn file (made here on disk in place
 * of a relaxed-committed entry: truncated, garbage, zeros, with its identity
 * kept) is never served. A live relaxed writer's commits are left alone.
 * Strict commits made at once (group commit) are all durable and recorded.
 */
import { open, readFile, stat, truncate, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageCache, SMALL_WRITE_BYTES, STATE_DIRECTORY, type CacheDriver, type CacheWarning, type Durability } from '@cache/core';
import { SqliteDriver } from '@cache/driver-sqlite';
import { XattrDriver } from '@cache/driver-xattr';
import { contentForId, sha256Hex, sizeForId } from './fixtures/content.mjs';
import { activeFileIds, DRIVER_NAMES, freshDir, namesIn, reliabilityTarget, removeDir, startFixture, type DriverName } from './helpers.js';

const target = await reliabilityTarget();
const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await removeDir(dir);
});

async function newDir(name: string): Promise<string> {
  const dir = await freshDir(target.fs.root, `durability-${name}`);
  dirs.push(dir);
  return dir;
}

function openDriver(
  name: DriverName,
  cacheDir: string,
  options: { durability?: Durability; syncInterval?: number; warnings?: CacheWarning[] } = {},
): SqliteDriver | XattrDriver {
  const common = {
    cacheDir,
    ...(options.durability === undefined ? {} : { durability: options.durability }),
    ...(options.syncInterval === undefined ? {} : { syncInterval: options.syncInterval }),
    onWarning: (warning: CacheWarning) => options.warnings?.push(warning),
  };
  return name === 'sqlite' ? new SqliteDriver(common) : new XattrDriver(common);
}

/** Runs the relaxed-writer fixture until it has committed `images`, then returns it (alive). */
async function relaxedChild(name: DriverName, cacheDir: string, images: { id: string; digest: boolean }[], via: 'stream' | 'bytes' = 'stream') {
  const child = startFixture('relaxed-writer.mjs', [JSON.stringify({ driver: name, cacheDir, images, via })]);
  for (const image of images) expect(await child.nextLine()).toBe(`committed ${image.id}`);
  expect(await child.nextLine()).toBe('done');
  return child;
}

async function kill(child: Awaited<ReturnType<typeof relaxedChild>>): Promise<void> {
  child.child.kill('SIGKILL');
  expect((await child.exited).signal).toBe('SIGKILL');
}

/** Overwrites a file in place with `bytes` and puts its mtime back: same inode, size and mtime, other content. */
async function overwriteKeepingIdentity(path: string, bytes: Buffer): Promise<void> {
  const before = await stat(path);
  const handle = await open(path, 'r+');
  try {
    await handle.write(bytes, 0, bytes.length, 0);
  } finally {
    await handle.close();
  }
  await utimes(path, before.atime, before.mtime);
}

async function expectNotServed(driver: CacheDriver, id: string): Promise<void> {
  expect(await driver.isCached(id), `${id} is not cached`).toBe(false);
  await expect(driver.openForRead(id)).rejects.toMatchObject({ code: 'CACHE_IMAGE_NOT_CACHED' });
}

async function expectServedIntact(driver: CacheDriver, id: string): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of await driver.openForRead(id)) chunks.push(chunk as Buffer);
  expect(sha256Hex(Buffer.concat(chunks)), `${id} is served with its own bytes`).toBe(sha256Hex(contentForId(id)));
}

describe.each(DRIVER_NAMES)('durability modes, %s driver', (name) => {
  const skip = name === 'xattr' ? target.xattrSkipReason : undefined;
  const test = skip === undefined ? it : it.skip;
  const suffix = skip === undefined ? '' : ` [skipped: ${skip}]`;

  test(`rejects an unknown durability or sync interval with a typed error, creating nothing${suffix}`, async () => {
    const dir = await newDir(`${name}-options`);
    expect(() => openDriver(name, join(dir, 'c'), { durability: 'fast' as Durability })).toThrow(
      expect.objectContaining({ code: 'CACHE_INVALID_ARGUMENT', message: expect.stringContaining("'strict' or 'relaxed'") }),
    );
    expect(() => openDriver(name, join(dir, 'c'), { durability: 'relaxed', syncInterval: -1 })).toThrow(
      expect.objectContaining({ code: 'CACHE_INVALID_ARGUMENT' }),
    );
    expect(await namesIn(dir)).toEqual([]);
  });

  // Ids whose content is small enough for writeSmallImage (sizes are fixed per id).
  const small = (prefix: string) => {
    for (let i = 0; ; i++) if (sizeForId(`${prefix}-${i}`) <= SMALL_WRITE_BYTES) return `${prefix}-${i}`;
  };
  test.each([
    { via: 'stream' as const, how: 'streamed', withDigest: 'with-digest', noDigest: 'no-digest' },
    { via: 'bytes' as const, how: 'bytes in memory (writeSmallImage)', withDigest: small('bytes-digest'), noDigest: small('bytes-plain') },
  ])(`relaxed commits ($how) of a SIGKILLed process: verified ones stay, ones without a digest move to invalid/${suffix}`, async ({ via, withDigest, noDigest }) => {
    const dir = await newDir(`${name}-kill-${via}`);
    const child = await relaxedChild(
      name,
      dir,
      [
        { id: withDigest, digest: true },
        { id: noDigest, digest: false },
      ],
      via,
    );
    expect(await namesIn(join(dir, STATE_DIRECTORY)), 'the journal of unsynced commits is there while the writer lives').toHaveLength(1);
    await kill(child);

    const warnings: CacheWarning[] = [];
    const driver = openDriver(name, dir, { warnings });
    await driver.configure();
    try {
      await expectServedIntact(driver, withDigest);
      await expectNotServed(driver, noDigest);
      expect(await namesIn(join(dir, 'invalid'))).toEqual([noDigest]);
      expect((await driver.getCachedImages()).map((image) => image.imageId)).toEqual([withDigest]);
      expect(await namesIn(join(dir, STATE_DIRECTORY)), 'the journal is gone once recovered').toEqual([]);
      expect(warnings.map((warning) => warning.code)).toEqual(['CACHE_UNSYNCED_RECOVERED']);
      expect(warnings[0]?.message).toContain(`1 entry verified, 1 moved to invalid/ (${noDigest})`);
    } finally {
      await driver.close();
    }
    // Recovered once: the next open finds nothing to do.
    const again = openDriver(name, dir, { warnings });
    await again.configure();
    await again.close();
    expect(warnings).toHaveLength(1);
  });

  test(`torn files in place of relaxed commits (truncated, garbage, zeros; identity kept) are never served${suffix}`, async () => {
    const dir = await newDir(`${name}-torn`);
    const ids = ['truncated', 'garbage', 'zeros', 'intact'];
    const child = await relaxedChild(
      name,
      dir,
      ids.map((id) => ({ id, digest: true })),
    );
    await kill(child);
    const size = (id: string) => contentForId(id).length;
    await truncate(join(dir, 'truncated'), Math.floor(size('truncated') / 2));
    await overwriteKeepingIdentity(join(dir, 'garbage'), Buffer.alloc(size('garbage'), 0x5a));
    await overwriteKeepingIdentity(join(dir, 'zeros'), Buffer.alloc(size('zeros'), 0));

    const driver = openDriver(name, dir);
    await driver.configure();
    try {
      for (const id of ['truncated', 'garbage', 'zeros']) await expectNotServed(driver, id);
      await expectServedIntact(driver, 'intact');
      expect(await activeFileIds(dir, driver.reservedNames)).toEqual(['intact']);
      expect(await namesIn(join(dir, 'invalid'))).toEqual(['garbage', 'truncated', 'zeros']);
      expect((await readFile(join(dir, 'invalid', 'zeros'))).equals(Buffer.alloc(size('zeros'), 0)), 'the torn file is kept in invalid/ as it was').toBe(true);
    } finally {
      await driver.close();
    }
  });

  test(`a live relaxed writer's commits are left alone; they are recovered once it is killed${suffix}`, async () => {
    const dir = await newDir(`${name}-live`);
    const child = await relaxedChild(name, dir, [{ id: 'live', digest: false }]);
    const first = openDriver(name, dir);
    await first.configure();
    try {
      await expectServedIntact(first, 'live');
    } finally {
      await first.close();
    }
    await kill(child);
    const second = openDriver(name, dir);
    await second.configure();
    try {
      await expectNotServed(second, 'live');
    } finally {
      await second.close();
    }
  });

  test(`relaxed in this process: another driver leaves its commits alone; close() syncs and clears the journal${suffix}`, async () => {
    const dir = await newDir(`${name}-clean`);
    const relaxed = openDriver(name, dir, { durability: 'relaxed', syncInterval: 0 });
    const cache = await ImageCache.open({ driver: relaxed });
    for (const id of ['a', 'b']) expect(await cache.cacheImage(id, Readable.from([contentForId(id)]))).toBe(true);
    expect(await namesIn(join(dir, STATE_DIRECTORY))).toHaveLength(1);
    const other = openDriver(name, dir);
    await other.configure();
    try {
      expect((await other.getCachedImages()).map((image) => image.imageId)).toEqual(['a', 'b']);
    } finally {
      await other.close();
    }
    await relaxed.sync();
    expect(await namesIn(join(dir, STATE_DIRECTORY)), 'sync() with no write under way clears the journal').toEqual([]);
    expect(await cache.cacheImage('c', Readable.from([contentForId('c')]))).toBe(true);
    await cache.close();
    expect(await namesIn(join(dir, STATE_DIRECTORY)), 'close() clears it').toEqual([]);

    const reopened = openDriver(name, dir);
    await reopened.configure();
    try {
      expect((await reopened.getCachedImages()).map((image) => image.imageId)).toEqual(['a', 'b', 'c']);
      for (const id of ['a', 'b', 'c']) await expectServedIntact(reopened, id);
    } finally {
      await reopened.close();
    }
  });

  test(`32 concurrent strict commits all land, with their digests, and survive a reopen${suffix}`, async () => {
    const dir = await newDir(`${name}-group`);
    const cache = await ImageCache.open({ driver: openDriver(name, dir) });
    const ids = Array.from({ length: 32 }, (_, i) => `g-${String(i).padStart(2, '0')}`);
    const results = await Promise.all(
      ids.map((id) => cache.cacheImage(id, Readable.from([contentForId(id)]), { checksum: { algorithm: 'sha256', digest: sha256Hex(contentForId(id)) } })),
    );
    expect(results).toEqual(ids.map(() => true));
    await cache.close();
    const driver = openDriver(name, dir);
    await driver.configure();
    try {
      expect((await driver.getCachedImages()).map((image) => [image.imageId, image.size])).toEqual(ids.map((id) => [id, contentForId(id).length]));
      for (const id of ids) expect(await driver.getStoredChecksum?.(id)).toBe(`sha256:${sha256Hex(contentForId(id))}`);
      expect(await namesIn(join(dir, 'incomplete'))).toEqual([]);
      expect(await namesIn(join(dir, STATE_DIRECTORY)), 'strict commits keep no journal').toEqual([]);
    } finally {
      await driver.close();
    }
  });
});
