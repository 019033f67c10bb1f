import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { getAttribute, setAttribute } from 'fs-xattr';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { abortWrite, getTestFilesystems, probeFilesystem, readImage, readPartially, writeImage } from '@cache/conformance';
import { ImageCache, type CacheWarning } from '@cache/core';
import { nsToSeconds } from '@cache/core/driver';
import { ATIME_SLACK_NS, ATTRIBUTE_CACHE_SLACK_NS, XATTR, XattrDriver } from '../src/index.js';
import { glanceCache, glanceGetXattr, glanceList, glanceRead } from './glance.js';

/** Sets a file's atime and leaves its mtime (to the microsecond, all utimes can do). */
async function setAtime(path: string, atime: number): Promise<void> {
  const { mtimeMs } = await stat(path);
  await utimes(path, atime, mtimeMs / 1000);
}

// The driver's own cases run on every test filesystem that keeps user xattrs
// (the kit checks the refusal on the others).
const filesystems = [];
for (const fs of getTestFilesystems()) {
  const probe = await probeFilesystem(fs.root);
  if (probe.xattr.supported) filesystems.push(fs);
}

describe.each(filesystems)('xattr driver on $name ($root)', (fs) => {
  let dir: string;
  let driver: XattrDriver;
  let warnings: CacheWarning[];

  beforeEach(async () => {
    dir = await mkdtemp(join(fs.root, 'xattr-driver-'));
    warnings = [];
    driver = new XattrDriver({ cacheDir: dir, onWarning: (w) => warnings.push(w) });
    await driver.configure();
  });

  afterEach(async () => {
    await driver.close();
    await rm(dir, { recursive: true, force: true });
  });

  const bytes = (text: string) => Buffer.from(text);
  const secondsAgo = (s: number) => Date.now() / 1000 - s;

  it('configure() leaves no probe file behind', async () => {
    expect((await readdir(dir)).sort()).toEqual(['incomplete', 'invalid', 'queue']);
  });

  it("commit sets Glance's user.hits = \"0\" and our nanosecond last-access attribute", async () => {
    // The commit's instant lies between these two clock reads, however long the write takes.
    const before = Date.now();
    await writeImage(driver, 'img', bytes('data'));
    const after = Date.now();
    const path = join(dir, 'img');
    expect(glanceGetXattr(path, 'hits')).toBe('0');
    const ns = (await getAttribute(path, XATTR.lastAccessed)).toString();
    expect(ns).toMatch(/^\d{19}$/);
    const ms = Number(BigInt(ns) / 1_000_000n);
    expect(ms).toBeGreaterThanOrEqual(before);
    // core's clock is strictly increasing: within one millisecond it steps by 1 µs, so it may run a hair ahead.
    expect(ms).toBeLessThanOrEqual(after + 1);
  });

  it('lists, reads and prunes a directory written by Glance (recency from atime until we record our own)', async () => {
    const aAccessed = secondsAgo(300); // one instant: the Python helpers below may take seconds on a busy machine
    glanceCache(dir, 'glance-a', 'aaaa', aAccessed);
    glanceCache(dir, 'glance-b', 'bbbb', secondsAgo(100));
    glanceCache(dir, 'glance-c', 'cccc', secondsAgo(200));
    glanceRead(dir, 'glance-c');
    glanceRead(dir, 'glance-c');
    await utimes(join(dir, 'glance-c'), secondsAgo(200), secondsAgo(400)); // Glance's reads changed nothing we rank by
    const images = await driver.getCachedImages();
    expect(images.map((i) => [i.imageId, i.hits, i.size])).toEqual([
      ['glance-a', 0, 4],
      ['glance-b', 0, 4],
      ['glance-c', 2, 4],
    ]);
    expect(Math.abs((images[0]?.lastAccessed ?? 0) - aAccessed)).toBeLessThan(1);
    expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'glance-a', size: 4 });
    expect((await readImage(driver, 'glance-a')).toString()).toBe('aaaa');
    expect(await driver.getHitCount('glance-a')).toBe(1);
    const cache = await ImageCache.open({ driver, maxSize: 8 });
    expect(await cache.prune()).toEqual({ files: 1, bytes: 4 }); // glance-c (200 s ago); glance-a was just read
    expect((await driver.getCachedImages()).map((i) => i.imageId)).toEqual(['glance-a', 'glance-b']);
  });

  it('what we write reads back through Glance: hits, atime order, and Glance increments on top of ours', async () => {
    await writeImage(driver, 'one', bytes('1'));
    await writeImage(driver, 'two', bytes('22'));
    // Only atime moves (as reads do); a changed mtime would mean the file was rewritten.
    await setAtime(join(dir, 'one'), secondsAgo(500));
    await setAtime(join(dir, 'two'), secondsAgo(400));
    await readImage(driver, 'one');
    await readImage(driver, 'one');
    const seen = glanceList(dir);
    expect(seen.cached.map((e) => [e.image_id, e.hits, e.size])).toEqual([
      ['one', 2, 1],
      ['two', 0, 2],
    ]);
    expect(seen.lru).toBe('two'); // our reads moved `one`'s atime forward for Glance
    expect(glanceRead(dir, 'two')).toBe('22');
    expect(await driver.getHitCount('two')).toBe(1);
  });

  it('ranks by its own last-access attribute, not atime, so noatime/relatime mounts keep exact LRU', async () => {
    await writeImage(driver, 'a', bytes('a'));
    await writeImage(driver, 'b', bytes('b'));
    await readImage(driver, 'a');
    // What a noatime mount (or a relatime one within a day) shows: atime never moves.
    await setAtime(join(dir, 'a'), secondsAgo(86_400 * 3));
    expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'b', size: 1 });
    await readImage(driver, 'b');
    expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'a', size: 1 });
  });

  it('an atime later than our last access by more than ATIME_SLACK_NS (a read by Glance or any other program) is the last access', async () => {
    await writeImage(driver, 'a', bytes('a'));
    await writeImage(driver, 'b', bytes('b'));
    // a: last read by us 100 s ago. b: last read by us 200 s ago, then read by another program 50 s ago.
    const ns = (ago: number) => BigInt(Math.round((Date.now() / 1000 - ago) * 1e6)) * 1000n;
    await setAttribute(join(dir, 'a'), XATTR.lastAccessed, ns(100).toString());
    await setAtime(join(dir, 'a'), secondsAgo(100));
    await setAttribute(join(dir, 'b'), XATTR.lastAccessed, ns(200).toString());
    await setAtime(join(dir, 'b'), secondsAgo(50));
    expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'a', size: 1 });
    const b = (await driver.getCachedImages()).find((i) => i.imageId === 'b');
    expect(Math.abs((b?.lastAccessed ?? 0) - secondsAgo(50))).toBeLessThan(1);
    // Within the slack, atime is the file's own commit or our last access seen through the kernel's coarse clock.
    const recorded = ns(200);
    await setAttribute(join(dir, 'b'), XATTR.lastAccessed, recorded.toString());
    const { mtimeMs } = await stat(join(dir, 'b'));
    const nearly = recorded + ATIME_SLACK_NS - 1_000_000n;
    await utimes(join(dir, 'b'), Number(nearly / 1000n) / 1e6, mtimeMs / 1000);
    expect((await driver.getCachedImages()).find((i) => i.imageId === 'b')?.lastAccessed).toBe(nsToSeconds(recorded));
    expect(await driver.getLeastRecentlyAccessed()).toEqual({ imageId: 'b', size: 1 });
  });

  it('our reads leave atime alone (O_NOATIME), partial ones too; a completed read sets it no later than ctime and our attribute', async () => {
    // Larger than one read chunk (1 MiB), so that the partial read stops before the end.
    await writeImage(driver, 'img', Buffer.alloc(4 * 1024 * 1024, 3));
    const path = join(dir, 'img');
    await setAtime(path, secondsAgo(3 * 86_400)); // so that relatime would update it on any read
    const before = await stat(path, { bigint: true });
    expect(await readPartially(driver, 'img', 1)).toBeLessThan(4 * 1024 * 1024);
    expect((await stat(path, { bigint: true })).atimeNs, 'a partial read').toBe(before.atimeNs);
    await readImage(driver, 'img');
    const after = await stat(path, { bigint: true });
    const recorded = BigInt((await getAttribute(path, XATTR.lastAccessed)).toString());
    expect(after.atimeNs > before.atimeNs, 'a completed read sets atime').toBe(true);
    expect(after.atimeNs <= after.ctimeNs, `atime ${after.atimeNs} <= ctime ${after.ctimeNs}: relatime still updates it on the next read`).toBe(true);
    expect(after.atimeNs <= recorded, `atime ${after.atimeNs} <= our last access ${recorded}`).toBe(true);
  });

  it('counts every one of 64 concurrent reads (no lost increments within a process)', async () => {
    await writeImage(driver, 'hot', Buffer.alloc(64 * 1024, 1));
    await Promise.all(Array.from({ length: 64 }, () => readImage(driver, 'hot')));
    expect(await driver.getHitCount('hot')).toBe(64);
    expect(glanceGetXattr(join(dir, 'hot'), 'hits')).toBe('64');
    expect(warnings).toEqual([]);
  });

  it('a rollback leaves the reason in user.error on the file in invalid/, as Glance does', async () => {
    const writer = await driver.openForWrite('img');
    writer.write(bytes('partial'));
    await abortWrite(writer, new Error('origin reset by peer'));
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
    expect(glanceGetXattr(join(dir, 'invalid', 'img'), 'error')).toBe('origin reset by peer');
  });

  it('quarantine(id, { reason }) leaves the reason in user.error on the file in invalid/', async () => {
    await writeImage(driver, 'img', bytes('suspect'));
    expect(await driver.quarantineImage('img', { reason: 'sha256 mismatch: expected a, got b' })).toBe(true);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['img']);
    expect(glanceGetXattr(join(dir, 'invalid', 'img'), 'error')).toBe('sha256 mismatch: expected a, got b');
    expect(await driver.isCached('img')).toBe(false);
    expect(warnings).toEqual([]);
  });

  it('a read of an entry deleted meanwhile completes, without an error or a warning', async () => {
    await writeImage(driver, 'img', bytes('still readable'));
    const stream = await driver.openForRead('img');
    await driver.deleteCachedImage('img');
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('still readable');
    expect(warnings).toEqual([]);
    expect(await driver.isCached('img')).toBe(false);
  });

  it('clean() gives a file dropped in without attributes user.hits = 0', async () => {
    await writeImage(driver, 'ours', bytes('x'));
    await writeFile(join(dir, 'dropped-in'), 'yy');
    expect(await driver.clean()).toMatchObject({ adoptedFiles: 1 });
    expect(glanceGetXattr(join(dir, 'dropped-in'), 'hits')).toBe('0');
    expect(await driver.clean()).toMatchObject({ adoptedFiles: 0 });
  });

  it('attributes kept in memory per (inode, ctime) never hide a change made behind the driver: hits set by another program, a file replaced', async () => {
    await writeImage(driver, 'kept', Buffer.from('kept bytes'));
    await writeImage(driver, 'other', Buffer.from('other'));
    const path = join(dir, 'kept');
    // Attributes are kept only once the file's ctime is older than ATTRIBUTE_CACHE_SLACK_NS: wait for that (a condition, not a delay).
    const ctimeNs = (await stat(path, { bigint: true })).ctimeNs;
    while (BigInt(Date.now()) * 1_000_000n <= ctimeNs + ATTRIBUTE_CACHE_SLACK_NS + 1_000_000n) await new Promise((resolve) => setTimeout(resolve, 10));
    const hitsOf = async (id: string) => (await driver.getCachedImages()).find((image) => image.imageId === id)?.hits;
    expect(await hitsOf('kept')).toBe(0); // read from the file, and kept
    expect(await hitsOf('kept')).toBe(0); // from memory
    // Another program (Glance's inc_xattr) sets user.hits: ctime moves, so the next listing reads the file again.
    await setAttribute(path, XATTR.hits, '41');
    expect(await hitsOf('kept')).toBe(41);
    expect(await driver.getHitCount('kept')).toBe(41);
    await readImage(driver, 'kept');
    expect(await hitsOf('kept')).toBe(42);
    // Replaced by a rename (a new inode, no attributes of ours): not the kept record.
    await writeFile(join(dir, '.replacement'), 'new bytes!');
    await rename(join(dir, '.replacement'), path);
    expect((await driver.getCachedImages()).map((image) => [image.imageId, image.size, image.hits])).toEqual([
      ['kept', 10, 0],
      ['other', 5, 0],
    ]);
  });

  it('getHitCount keeps what it read per (inode, ctime) too, and never hides a change: hits set by another program, a file replaced, a listing after it', async () => {
    await writeImage(driver, 'counted', Buffer.from('counted bytes'));
    const path = join(dir, 'counted');
    const ctimeNs = (await stat(path, { bigint: true })).ctimeNs;
    while (BigInt(Date.now()) * 1_000_000n <= ctimeNs + ATTRIBUTE_CACHE_SLACK_NS + 1_000_000n) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await driver.getHitCount('counted')).toBe(0); // read from the file, and kept
    expect(await driver.getHitCount('counted')).toBe(0); // from memory
    // Only hits and identity were read: a listing still reads the times from the file.
    expect((await driver.getCachedImages()).find((image) => image.imageId === 'counted')).toMatchObject({ hits: 0, size: 13 });
    await setAttribute(path, XATTR.hits, '9');
    expect(await driver.getHitCount('counted')).toBe(9);
    await readImage(driver, 'counted');
    expect(await driver.getHitCount('counted')).toBe(10);
    // Rewritten in place by another program (same inode, new size and mtime): the kept count is not its own.
    const again = (await stat(path, { bigint: true })).ctimeNs;
    while (BigInt(Date.now()) * 1_000_000n <= again + ATTRIBUTE_CACHE_SLACK_NS + 1_000_000n) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await driver.getHitCount('counted')).toBe(10);
    await writeFile(path, 'rewritten in place, longer');
    expect(await driver.getHitCount('counted')).toBe(0);
    // Deleted through the driver: nothing kept answers for it.
    await driver.deleteCachedImage('counted');
    expect(await driver.getHitCount('counted')).toBe(0);
    expect(await driver.isCached('counted')).toBe(false);
  });

  it('stores the verified checksum on the file', async () => {
    const cache = await ImageCache.open({ driver });
    const digest = createHash('sha256').update('hello').digest('hex');
    await cache.cacheImage('hello', Readable.from([bytes('hello')]), { checksum: { algorithm: 'sha256', digest } });
    expect(await driver.getStoredChecksum('hello')).toBe(`sha256:${digest}`);
  });
});

describe('xattr driver test filesystems', () => {
  it('at least one test filesystem keeps user xattrs, so the cases above ran', () => {
    expect(filesystems.length, `no filesystem with user xattrs among ${getTestFilesystems().map((f) => f.name).join(', ')}`).toBeGreaterThan(0);
  });
});
