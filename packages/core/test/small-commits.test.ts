import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FdHandle } from '../src/driver-api.js';
import { ImageCache, MemoryDriver, SMALL_WRITE_BYTES } from '../src/index.js';
import { memoryCacheEach, openUnder, tempDir } from './helpers.js';

/** `size` bytes, each position distinct enough that a misplaced chunk shows. */
function pattern(size: number, seed: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 7 + seed) % 251;
  return data;
}

describe.each(['strict', 'relaxed'] as const)('small commits on the event loop (%s)', (durability) => {
  let dir: string;
  let cache: ImageCache;

  memoryCacheEach(`small-commits-${durability}`, (opened) => ({ cache, dir } = opened), { durability, syncInterval: 0 });

  it('commits entries below, at and above SMALL_WRITE_BYTES byte for byte, and in chunks that cross it', async () => {
    const cases: [string, Buffer[]][] = [
      ['tiny', [pattern(4096, 1)]],
      ['at-threshold', [pattern(SMALL_WRITE_BYTES, 2)]],
      ['one-above', [pattern(SMALL_WRITE_BYTES + 1, 3)]],
      // Chunks written synchronously (within the first SMALL_WRITE_BYTES) and on the threadpool after them.
      ['crossing', Array.from({ length: 40 }, (_, i) => pattern(4000, 10 + i))],
    ];
    for (const [id, parts] of cases) {
      expect(await cache.cacheImage(id, Readable.from(parts))).toBe(true);
      expect(await readFile(join(dir, id)), id).toEqual(Buffer.concat(parts));
      expect(await cache.driver.getImageSize(id)).toBe(Buffer.concat(parts).length);
    }
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await openUnder(dir), 'no descriptor of a committed file stays open').toEqual([]);
  });

  it('a small write that fails is rolled back whole to invalid/ and its descriptor closed', async () => {
    const failing = Readable.from(
      (async function* () {
        yield pattern(1000, 5);
        throw new Error('origin reset');
      })(),
    );
    await expect(cache.cacheImage('broken', failing)).rejects.toThrow('origin reset');
    expect(await cache.driver.isCached('broken')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual(['broken']);
    expect(await openUnder(dir), 'the rolled-back file is closed').toEqual([]);
  });

  it('a source that closes before its end (destroyed without an error) fails the write with a premature close and commits nothing', async () => {
    const source = new Readable({ read() {} });
    source.push(pattern(2048, 7));
    const write = cache.cacheImage('cut', source);
    setImmediate(() => source.destroy());
    await expect(write).rejects.toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
    expect(await cache.driver.isCached('cut')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await openUnder(dir)).toEqual([]);
  });

  it('a checksum mismatch rolls the whole small file back to invalid/ and names both digests', async () => {
    const data = pattern(3000, 4);
    await expect(cache.cacheImage('bad-sum', Readable.from([data]), { checksum: { algorithm: 'md5', digest: '0'.repeat(32) } })).rejects.toMatchObject({
      code: 'CACHE_CHECKSUM_MISMATCH',
    });
    expect(await cache.driver.isCached('bad-sum')).toBe(false);
    expect(await readFile(join(dir, 'invalid', 'bad-sum'))).toEqual(data);
  });

  it('a second writer of an id being written gets no file of its own (the exclusive create still holds)', async () => {
    const first = await cache.driver.openForWrite('busy');
    await expect(cache.driver.openForWrite('busy')).rejects.toMatchObject({ code: 'CACHE_IMAGE_BEING_CACHED' });
    await pipeline(Readable.from([pattern(100, 9)]), first);
    expect(await readFile(join(dir, 'busy'))).toEqual(pattern(100, 9));
  });
});

describe('FdHandle', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempDir('fd-handle')));
  afterEach(async () => cleanup());

  it('closes once: a second close is a no-op, and a write after close fails with EBADF instead of reaching another file', async () => {
    const { openSync } = await import('node:fs');
    const handle = new FdHandle(openSync(join(dir, 'f'), 'wx'));
    expect((await handle.write(Buffer.from('abc'), 0, 3, 0)).bytesWritten).toBe(3);
    expect((await handle.writev([Buffer.from('de'), Buffer.from('f')], 3)).bytesWritten).toBe(3);
    await handle.sync();
    await handle.datasync();
    expect((await handle.stat({ bigint: true })).size).toBe(6n);
    handle.closeNow();
    expect(handle.fd).toBe(-1);
    await handle.close();
    handle.closeNow();
    await expect(handle.write(Buffer.from('x'), 0, 1, 0)).rejects.toMatchObject({ code: 'EBADF' });
    expect(await readFile(join(dir, 'f'), 'utf8')).toBe('abcdef');
    expect(await openUnder(dir)).toEqual([]);
  });
});

describe.each(['strict', 'relaxed'] as const)('small commits from memory: cacheImage of bytes, driver.writeSmallImage (%s)', (durability) => {
  let dir: string;
  let cache: ImageCache;

  memoryCacheEach(`small-bytes-${durability}`, (opened) => ({ cache, dir } = opened), { durability, syncInterval: 0 });

  it('commits a Buffer, a Uint8Array view into a larger buffer, and bytes above SMALL_WRITE_BYTES, byte for byte', async () => {
    const big = pattern(10_000, 11);
    const cases: [string, Uint8Array, Buffer][] = [
      ['buffer', pattern(4096, 1), pattern(4096, 1)],
      ['view', new Uint8Array(big.buffer, big.byteOffset + 100, 3000), big.subarray(100, 3100)],
      ['at-threshold', pattern(SMALL_WRITE_BYTES, 2), pattern(SMALL_WRITE_BYTES, 2)],
      ['one-above', pattern(SMALL_WRITE_BYTES + 1, 3), pattern(SMALL_WRITE_BYTES + 1, 3)],
      ['empty', Buffer.alloc(0), Buffer.alloc(0)],
    ];
    for (const [id, bytes, expected] of cases) {
      expect(await cache.cacheImage(id, bytes), id).toBe(true);
      expect(await readFile(join(dir, id)), id).toEqual(expected);
      expect(await cache.driver.getImageSize(id)).toBe(expected.length);
    }
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual([]);
    expect(await openUnder(dir), 'no descriptor of a committed file stays open').toEqual([]);
  });

  it('stores the verified digest with the entry', async () => {
    const data = pattern(5000, 6);
    const digest = createHash('sha256').update(data).digest('hex');
    expect(await cache.cacheImage('summed', data, { checksum: { algorithm: 'sha256', digest } })).toBe(true);
    expect(await cache.driver.getStoredChecksum?.('summed')).toBe(`sha256:${digest}`);
    expect(await readFile(join(dir, 'summed'))).toEqual(data);
  });

  it('a checksum mismatch rejects before any file is touched: nothing in the cache, incomplete/ or invalid/', async () => {
    const data = pattern(3000, 4);
    await expect(cache.cacheImage('bad-sum', data, { checksum: { algorithm: 'md5', digest: '0'.repeat(32) } })).rejects.toMatchObject({
      code: 'CACHE_CHECKSUM_MISMATCH',
      actual: createHash('md5').update(data).digest('hex'),
    });
    expect(await cache.driver.isCached('bad-sum')).toBe(false);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
    expect(await readdir(join(dir, 'invalid'))).toEqual([]);
    // The write lock was not taken or was given back: the id can be cached now.
    expect(await cache.cacheImage('bad-sum', data)).toBe(true);
  });

  it('resolves false and leaves the committed file alone when the id is cached, or being written by another writer', async () => {
    expect(await cache.cacheImage('twice', pattern(100, 1))).toBe(true);
    expect(await cache.cacheImage('twice', pattern(200, 2))).toBe(false);
    expect(await readFile(join(dir, 'twice'))).toEqual(pattern(100, 1));

    const writer = await cache.driver.openForWrite('busy');
    expect(await cache.cacheImage('busy', pattern(50, 3))).toBe(false);
    expect(await cache.driver.writeSmallImage?.('busy', pattern(50, 3))).toBe(false);
    await pipeline(Readable.from([pattern(60, 4)]), writer);
    expect(await readFile(join(dir, 'busy')), "the other writer's bytes, not ours").toEqual(pattern(60, 4));
    expect(await readdir(join(dir, 'invalid'))).toEqual([]);
  });

  it('writeSmallImage refuses more than SMALL_WRITE_BYTES, or no bytes at all, with a typed error and writes nothing', async () => {
    await expect(cache.driver.writeSmallImage?.('large', pattern(SMALL_WRITE_BYTES + 1, 1))).rejects.toMatchObject({ code: 'CACHE_INVALID_ARGUMENT' });
    await expect(cache.driver.writeSmallImage?.('text', 'abc' as unknown as Uint8Array)).rejects.toMatchObject({ code: 'CACHE_INVALID_ARGUMENT' });
    await expect(cache.driver.writeSmallImage?.('../escape', pattern(10, 1))).rejects.toMatchObject({ code: 'CACHE_INVALID_IMAGE_ID' });
    expect((await readdir(dir)).filter((name) => !['incomplete', 'invalid', 'queue', '.image-cache'].includes(name))).toEqual([]);
    expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
  });

  it('removes the queue marker of the id it commits', async () => {
    expect(await cache.driver.queueImage('queued')).toBe(true);
    expect(await cache.cacheImage('queued', pattern(700, 8))).toBe(true);
    expect(await cache.driver.getQueuedImages()).toEqual([]);
  });
});

/** A MemoryDriver whose commit hook fails: the commit must roll back as a failed writer does. */
class FailingCommitDriver extends MemoryDriver {
  protected override async prepareCommit(): Promise<void> {
    throw new Error('metadata store is gone');
  }
}

describe('small commits from memory: a failed commit', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempDir('small-bytes-fail')));
  afterEach(async () => cleanup());

  it('rolls the file back whole to invalid/, rejects with a CacheStorageError, and gives the write lock back', async () => {
    const cache = await ImageCache.open({ driver: new FailingCommitDriver({ cacheDir: dir }) });
    try {
      const data = pattern(2500, 9);
      await expect(cache.cacheImage('doomed', data)).rejects.toMatchObject({ code: 'CACHE_STORAGE_ERROR', message: expect.stringContaining('metadata store is gone') });
      expect(await cache.driver.isCached('doomed')).toBe(false);
      expect(await readdir(join(dir, 'incomplete'))).toEqual([]);
      expect(await readFile(join(dir, 'invalid', 'doomed'))).toEqual(data);
      expect(await openUnder(dir)).toEqual([]);
      // The lock was released: a second attempt gets as far as the commit again (and fails the same way).
      await expect(cache.cacheImage('doomed', data)).rejects.toMatchObject({ code: 'CACHE_STORAGE_ERROR' });
    } finally {
      await cache.close();
    }
  });
});
