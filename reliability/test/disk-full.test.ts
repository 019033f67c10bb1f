/**
 * A full disk. Each driver gets its own freshly mounted 8 MiB tmpfs (root
 * only). Caching an image larger than the free space must fail cleanly: a
 * typed CACHE_STORAGE_ERROR saying the filesystem is full, nothing partial
 * active, `incomplete/` empty (the partial file is in `invalid/`), earlier
 * entries, their metadata and the queue untouched; once space is freed the
 * same image caches. Through getCachingStream the client still gets every byte.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setAttributeSync } from 'fs-xattr';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ImageCache, type CachedImage } from '@cache/core';
import { drain } from '@cache/conformance';
import { chunksOf, makeContent, sha256Hex } from './fixtures/content.mjs';
import { createDriver, DRIVER_NAMES, namesIn, removeDir } from './helpers.js';

const MiB = 1024 * 1024;
const MOUNT_SIZE = '8m';

function run(command: string, args: readonly string[]): void {
  execFileSync(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function errorText(error: unknown): string {
  const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
  return stderr || (error as Error).message;
}

function unmount(dir: string): void {
  try {
    run('umount', [dir]);
  } catch {
    run('umount', ['-l', dir]);
  }
  rmdirSync(dir);
}

/**
 * Whether this process can mount a tmpfs (and whether user xattrs work on it),
 * found out once at collection by mounting and unmounting a 1 MiB tmpfs.
 */
function probeTmpfs(): { mountSkip: string | undefined; xattrSkip: string | undefined } {
  if (process.getuid?.() !== 0) {
    return { mountSkip: 'not root: mounting a small tmpfs to fill needs root (run pnpm test as root)', xattrSkip: undefined };
  }
  const dir = mkdtempSync(join(tmpdir(), 'reliability-tmpfs-probe-'));
  try {
    run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
  } catch (error) {
    rmdirSync(dir);
    return { mountSkip: `mount -t tmpfs failed: ${errorText(error)}`, xattrSkip: undefined };
  }
  let xattrSkip: string | undefined;
  try {
    writeFileSync(join(dir, 'probe'), 'x');
    setAttributeSync(join(dir, 'probe'), 'user.probe', '1');
  } catch (error) {
    xattrSkip = `the xattr driver needs user xattrs, but tmpfs refused one (${(error as Error).message}; Linux >= 6.6 has them)`;
  } finally {
    unmount(dir);
  }
  return { mountSkip: undefined, xattrSkip };
}

const { mountSkip, xattrSkip } = probeTmpfs();
console.log(
  mountSkip === undefined
    ? `[reliability] disk full: each driver runs on its own ${MOUNT_SIZE} tmpfs, mounted for the test`
    : `[reliability] disk full: skipped: ${mountSkip}`,
);

async function freeBytes(dir: string): Promise<number> {
  const info = await statfs(dir);
  return info.bavail * info.bsize;
}

const sha256 = (data: Buffer) => ({ algorithm: 'sha256' as const, digest: sha256Hex(data) });

for (const name of DRIVER_NAMES) {
  const skip = mountSkip ?? (name === 'xattr' ? xattrSkip : undefined);
  const suffix = skip === undefined ? '' : ` [skipped: ${skip}]`;

  describe(`${name} on a full ${MOUNT_SIZE} tmpfs`, () => {
    let mountDir: string | undefined;
    let cacheDir: string;
    let cache: ImageCache;
    const cacheErrors: Error[] = [];

    beforeAll(() => {
      const dir = mkdtempSync(join(tmpdir(), `reliability-full-${name}-`));
      try {
        run('mount', ['-t', 'tmpfs', '-o', `size=${MOUNT_SIZE}`, 'tmpfs', dir]);
      } catch (error) {
        rmdirSync(dir);
        throw new Error(`mount -t tmpfs -o size=${MOUNT_SIZE} on ${dir} failed: ${errorText(error)}`);
      }
      mountDir = dir;
    });

    afterAll(() => {
      if (mountDir !== undefined) unmount(mountDir);
    });

    beforeEach(async () => {
      cacheDir = await mkdtemp(join(mountDir as string, 'cache-'));
      cacheErrors.length = 0;
      cache = await ImageCache.open({ driver: createDriver(name, cacheDir), onCacheError: (error) => cacheErrors.push(error) });
    });

    afterEach(async () => {
      await cache.close();
      await removeDir(cacheDir);
    });

    /** Two or three 1 MiB entries (one read once), two queued ids; returns what must survive. */
    async function fillWithEarlierEntries(ids: readonly string[]) {
      const contents = new Map(ids.map((id) => [id, makeContent(id, MiB)]));
      for (const [id, data] of contents) expect(await cache.cacheImage(id, Readable.from(chunksOf(data)), { checksum: sha256(data) })).toBe(true);
      for await (const _ of await cache.openForRead(ids[0] as string));
      expect(await cache.queueImage('queued-1')).toBe(true);
      expect(await cache.queueImage('queued-2')).toBe(true);
      return { contents, listing: await cache.getCachedImages(), queue: await cache.getQueuedImages() };
    }

    async function expectCleanFailure(id: string, earlier: { contents: Map<string, Buffer>; listing: CachedImage[]; queue: string[] }) {
      expect(await cache.isCached(id), 'nothing partial is active').toBe(false);
      expect((await namesIn(cacheDir)).includes(id), `no ${id} file in the cache directory`).toBe(false);
      expect(await namesIn(join(cacheDir, 'incomplete')), 'incomplete/ is empty').toEqual([]);
      expect(await namesIn(join(cacheDir, 'invalid')), 'the partial file was moved to invalid/').toEqual([id]);
      expect(await cache.getCachedImages(), 'earlier entries and their metadata are unchanged').toEqual(earlier.listing);
      expect(await cache.getQueuedImages(), 'queue markers are unchanged').toEqual(earlier.queue);
      for (const [earlierId, data] of earlier.contents) {
        expect(sha256Hex(await readFile(join(cacheDir, earlierId))), `bytes of ${earlierId}`).toBe(sha256Hex(data));
      }
    }

    /** Frees space (clean() removes the partial file; two entries are deleted) and checks the image now caches. */
    async function freeSpaceAndRetry(id: string, big: Buffer, victims: readonly string[], viaStream: boolean) {
      expect((await cache.clean()).invalid, 'clean() removed the partial file').toBe(1);
      for (const victim of victims) await cache.deleteCachedImage(victim);
      if (viaStream) {
        const stream = cache.getCachingStream(id, Readable.from(chunksOf(big)), { checksum: sha256(big) });
        const drained = await drain(stream);
        expect(drained.error).toBeUndefined();
        expect((await stream.cacheOutcome).status).toBe('committed');
      } else {
        expect(await cache.cacheImage(id, Readable.from(chunksOf(big)), { checksum: sha256(big) })).toBe(true);
      }
      expect(sha256Hex(await readFile(join(cacheDir, id))), 'the same image caches once there is room').toBe(sha256Hex(big));
      expect(await namesIn(join(cacheDir, 'incomplete'))).toEqual([]);
      expect(await namesIn(join(cacheDir, 'invalid'))).toEqual([]);
    }

    it.skipIf(skip !== undefined)(
      `${name}: cacheImage of an image larger than the free space rejects with CACHE_STORAGE_ERROR (filesystem full), leaves nothing partial and earlier entries intact; after clean() and deletes it caches${suffix}`,
      async () => {
        const earlier = await fillWithEarlierEntries(['early-a', 'early-b', 'early-c']);
        const free = await freeBytes(cacheDir);
        const big = makeContent('big', free + MiB);
        const error: Error & { code?: string } = await cache.cacheImage('big', Readable.from(chunksOf(big)), { checksum: sha256(big) }).then(
          (result) => new Error(`cacheImage resolved ${result} on a full filesystem`),
          (e: unknown) => e as Error,
        );
        console.log(`[reliability] disk full, ${name}: ${free} bytes free, a ${big.length}-byte image: ${error.constructor.name} ${error.code}: ${error.message}`);
        await expectCleanFailure('big', earlier);
        await freeSpaceAndRetry('big', big, ['early-b', 'early-c'], false);
        // Last, so that everything above is proven even while this fails.
        expect({ code: error.code, name: error.name }, 'the rejection is a typed CacheStorageError').toEqual({
          code: 'CACHE_STORAGE_ERROR',
          name: 'CacheStorageError',
        });
        expect(error.message).toMatch(/filesystem is full/);
      },
    );

    it.skipIf(skip !== undefined)(
      `${name}: getCachingStream of an image larger than the free space gives the client every byte; the cache write fails (typed, reported) and rolls back; after clean() it caches${suffix}`,
      async () => {
        const earlier = await fillWithEarlierEntries(['early-a', 'early-b']);
        const free = await freeBytes(cacheDir);
        const big = makeContent('big-stream', free + MiB / 2);
        const stream = cache.getCachingStream('big', Readable.from(chunksOf(big)), { checksum: sha256(big) });
        const events: Error[] = [];
        stream.on('cacheError', (error: Error) => events.push(error));
        const drained = await drain(stream);
        expect(drained.error, 'the client stream does not fail').toBeUndefined();
        expect(drained.ended).toBe(true);
        expect(drained.data.length).toBe(big.length);
        expect(sha256Hex(drained.data), 'the client got every byte').toBe(sha256Hex(big));
        const outcome = await stream.cacheOutcome;
        expect(outcome.status).toBe('failed');
        expect(events, 'one cacheError event').toHaveLength(1);
        expect(cacheErrors, 'onCacheError called once').toHaveLength(1);
        await expectCleanFailure('big', earlier);
        await freeSpaceAndRetry('big', big, ['early-b'], true);
        const error = outcome.error as Error & { code?: string };
        console.log(`[reliability] disk full via getCachingStream, ${name}: the client got ${drained.data.length} bytes; cache outcome ${outcome.status}: ${error.constructor.name} ${error.code}: ${error.message}`);
        expect({ code: error.code, name: error.name }, 'the reported cache error is a typed CacheStorageError').toEqual({
          code: 'CACHE_STORAGE_ERROR',
          name: 'CacheStorageError',
        });
        expect(error.message).toMatch(/filesystem is full/);
      },
    );
  });
}
